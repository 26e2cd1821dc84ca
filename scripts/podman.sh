#!/usr/bin/env bash
# Starts Podman's Docker-compatible service on a private socket for the container tests that run
# against Podman, and imports their test image. Idempotent: a second run reuses the running service
# and the imported image.
#
#   eval "$(scripts/podman.sh)"      # exports GANTRY_TEST_PODMAN_HOST for this shell
#
# What it does:
# - installs Debian's podman, runc and busybox-static with apt-get when missing;
# - starts `podman system service` on a private socket, with its storage under $GANTRY_PODMAN_DIR
#   (default /tmp/gantry-podman), as root;
# - imports gantry-test/base:1 (sh only, no bash; /etc/os-release says ID=gantry-test-base), made
#   from busybox-static as scripts/engine.sh makes it, with no registry;
# - prints `export GANTRY_TEST_PODMAN_HOST=unix://.../podman.sock` on standard output (all else goes
#   to stderr). The tests point DOCKER_HOST at it for the runs they make against Podman.
#
# Two settings make it run on a machine like CI's (a container with cgroup v1 and a cgroup2 mount
# beside it, and resource limits it may not raise): the runtime is runc, because crun refuses such
# hybrid cgroups; and containers get explicit, modest ulimits, because Podman's defaults raise
# RLIMIT_NOFILE and RLIMIT_NPROC beyond what the machine permits. Both are in a containers.conf of
# the service's own ($CONTAINERS_CONF), so the system's configuration is left alone.
#
#   scripts/podman.sh stop           # stops it (the image stays in its storage)
set -euo pipefail

dir=${GANTRY_PODMAN_DIR:-/tmp/gantry-podman}
sock="$dir/podman.sock"
host="unix://$sock"
log() { printf 'podman.sh: %s\n' "$*" >&2; }

if [ "${1:-}" = stop ]; then
  if [ -f "$dir/podman.pid" ]; then
    pid=$(cat "$dir/podman.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "stopped podman $pid"
  fi
  exit 0
fi

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
busybox=$(command -v busybox || echo /bin/busybox)

mkdir -p "$dir"
cat >"$dir/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
export CONTAINERS_CONF="$dir/containers.conf"
pm() { podman --root "$dir/storage" --runroot "$dir/run" "$@"; }
answers() { podman --remote --url "$host" version >/dev/null 2>&1; }

if ! answers; then
  if [ -f "$dir/podman.pid" ] && kill -0 "$(cat "$dir/podman.pid")" 2>/dev/null; then
    log "podman is running but does not answer yet"
  else
    rm -f "$sock" "$dir/podman.pid"
    log "starting podman system service on $host (log: $dir/podman.log)"
    # setsid keeps the service out of the caller's process group, so that an interrupted caller
    # does not take it down.
    setsid podman --root "$dir/storage" --runroot "$dir/run" system service --time=0 "$host" \
      >"$dir/podman.log" 2>&1 </dev/null &
    echo $! >"$dir/podman.pid"
  fi
  for _ in $(seq 1 300); do
    answers && break
    sleep 0.1
  done
  if ! answers; then
    log "podman did not answer within 30 s; its log:"
    tail -n 30 "$dir/podman.log" >&2
    exit 1
  fi
fi

if ! pm image exists gantry-test/base:1; then
  tmp=$(mktemp -d)
  root="$tmp/root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root}
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'ID=gantry-test-base\nNAME="Gantry test image"\n' >"$root/etc/os-release"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  tar -C "$root" -cf "$tmp/rootfs.tar" .
  pm import --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["sh"]' \
    "$tmp/rootfs.tar" gantry-test/base:1 >/dev/null
  rm -rf "$tmp"
  log "imported gantry-test/base:1"
fi

echo "export GANTRY_TEST_PODMAN_HOST=$host"
