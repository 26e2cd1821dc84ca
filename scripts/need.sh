#!/usr/bin/env bash
# Installs Debian's package PACKAGE when COMMAND is missing, for the tests that need a tool:
# `go` (golang-go) for examples/go-service, `prometheus` for gantry-release's verification tests,
# `chromium` and `chromedriver` (chromium-driver) for the web UI's browser tests.
# A no-op when COMMAND is on PATH. Progress goes to stderr.
#   scripts/need.sh COMMAND PACKAGE
set -euo pipefail
cmd=$1 package=$2

if command -v "$cmd" >/dev/null 2>&1; then
    exit 0
fi
echo "need.sh: installing $package" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "need.sh: $cmd is missing and installing it needs root (apt-get install $package)" >&2
    exit 1
fi
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package" >&2
command -v "$cmd" >/dev/null
