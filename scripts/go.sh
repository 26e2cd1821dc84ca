#!/usr/bin/env bash
# Installs Debian's Go toolchain (`golang-go`) when `go` is missing, for the tests that run
# examples/go-service. A no-op when `go` is on PATH. Progress goes to stderr.
set -euo pipefail

if command -v go >/dev/null 2>&1; then
    exit 0
fi
echo "go.sh: installing golang-go" >&2
if [ "$(id -u)" -ne 0 ]; then
    echo "go.sh: go is missing and installing it needs root (apt-get install golang-go)" >&2
    exit 1
fi
apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends golang-go >&2
command -v go >/dev/null
