#!/usr/bin/env bash
# Starts a private container engine for the container executor's tests and benchmarks, and imports
# the test images. Idempotent: a second run reuses the running engine and the imported images.
#
#   eval "$(scripts/engine.sh)"      # exports DOCKER_HOST for this shell
#
# What it does:
# - installs Debian's docker.io and busybox-static with apt-get when dockerd or busybox is missing;
# - starts dockerd on a private socket with its state under $GANTRY_ENGINE_DIR (default
#   /tmp/gantry-engine), without the default bridge and without iptables;
# - imports two images made from busybox-static, with no registry:
#   gantry-test/base:1     sh only (no bash), /etc/os-release says ID=gantry-test-base
#   gantry-test/service:1  busybox httpd on port 80 (EXPOSE 80), /www/index.html says gantry-service
# - prints `export DOCKER_HOST=unix://.../docker.sock` on standard output (all else goes to stderr).
#
#   scripts/engine.sh stop           # stops it (the images stay in its data root)
set -euo pipefail

dir=${GANTRY_ENGINE_DIR:-/tmp/gantry-engine}
sock="$dir/docker.sock"
host="unix://$sock"
log() { printf 'engine.sh: %s\n' "$*" >&2; }

if [ "${1:-}" = stop ]; then
  if [ -f "$dir/dockerd.pid" ]; then
    pid=$(cat "$dir/dockerd.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    log "stopped dockerd $pid"
  fi
  exit 0
fi

need=()
command -v dockerd >/dev/null || need+=(docker.io)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi
busybox=$(command -v busybox || echo /bin/busybox)
docker_cli() { DOCKER_HOST=$host docker "$@"; }

mkdir -p "$dir"
if ! docker_cli version >/dev/null 2>&1; then
  if [ -f "$dir/dockerd.pid" ] && kill -0 "$(cat "$dir/dockerd.pid")" 2>/dev/null; then
    log "dockerd is running but does not answer yet"
  else
    rm -f "$sock" "$dir/dockerd.pid"
    log "starting dockerd on $host (log: $dir/dockerd.log)"
    # containerd and the runtime state live under exec-root; setsid keeps dockerd out of the
    # caller's process group so that an interrupted caller does not take it down.
    setsid dockerd --host "$host" --data-root "$dir/data" --exec-root "$dir/exec" \
      --pidfile "$dir/dockerd.pid" --bridge none --iptables=false --ip6tables=false \
      >"$dir/dockerd.log" 2>&1 </dev/null &
  fi
  for _ in $(seq 1 300); do
    docker_cli version >/dev/null 2>&1 && break
    sleep 0.1
  done
  if ! docker_cli version >/dev/null 2>&1; then
    log "dockerd did not answer within 30 s; its log:"
    tail -n 30 "$dir/dockerd.log" >&2
    exit 1
  fi
fi

# A root filesystem made of busybox-static: every applet as a symlink, no bash.
make_rootfs() {
  local root=$1 id=$2
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,www,var/run}
  chmod 1777 "$root/tmp"
  cp "$busybox" "$root/bin/busybox"
  local applet
  for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  printf 'ID=%s\nNAME="Gantry test image"\n' "$id" >"$root/etc/os-release"
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
}

import() {
  local image=$1 id=$2
  shift 2
  if docker_cli image inspect "$image" >/dev/null 2>&1; then
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  make_rootfs "$tmp/root" "$id"
  echo gantry-service >"$tmp/root/www/index.html"
  tar -C "$tmp/root" -cf "$tmp/rootfs.tar" .
  docker_cli import "$@" "$tmp/rootfs.tar" "$image" >/dev/null
  rm -rf "$tmp"
  log "imported $image"
}

import gantry-test/base:1 gantry-test-base \
  --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' --change 'CMD ["sh"]'
import gantry-test/service:1 gantry-test-service \
  --change 'ENV PATH=/usr/sbin:/usr/bin:/sbin:/bin' --change 'EXPOSE 80' \
  --change 'CMD ["httpd", "-f", "-v", "-p", "80", "-h", "/www"]'

echo "export DOCKER_HOST=$host"
