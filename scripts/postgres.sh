#!/usr/bin/env bash
# Starts a throwaway PostgreSQL for Gantry's tests, and prints the line that points them at it:
#
#   eval "$(scripts/postgres.sh)"
#
# Idempotent: a cluster that exists is reused, a server that runs is left running. Installs
# Debian's `postgresql` package when `initdb` is missing. The cluster lives in $GANTRY_PG_DIR
# (default: target/postgres in the repository), belongs to the `postgres` user (initdb refuses to
# run as root), listens on 127.0.0.1:$GANTRY_PG_PORT (default 55432) only, trusts loopback
# connections, and keeps fsync on. Progress goes to stderr; stdout carries only the export line.
#
# Stop it with: runuser -u postgres -- pg_ctl -D "$GANTRY_PG_DIR/data" stop
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${GANTRY_PG_DIR:-$repo/target/postgres}
port=${GANTRY_PG_PORT:-55432}
data=$dir/data
log=$dir/postgres.log

say() { echo "postgres.sh: $*" >&2; }

find_bin() {
    local name=$1 candidate
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    for candidate in /usr/lib/postgresql/*/bin/"$name"; do
        if [ -x "$candidate" ]; then
            echo "$candidate"
            return
        fi
    done
    return 1
}

if ! find_bin initdb >/dev/null; then
    say "initdb not found: installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends postgresql >&2
fi
initdb=$(find_bin initdb)
bindir=$(dirname "$(readlink -f "$initdb")")
pg_ctl=$bindir/pg_ctl
pg_isready=$bindir/pg_isready

# Run a command as the postgres user (we are usually root here).
as_postgres() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

mkdir -p "$dir"
if [ "$(id -u)" = 0 ]; then
    chown postgres: "$dir"
    # The postgres user must be able to reach the directory (a checkout under /root is not).
    if ! runuser -u postgres -- test -x "$dir"; then
        say "letting the postgres user traverse the parents of $dir"
        parent=$dir
        while parent=$(dirname "$parent") && [ "$parent" != / ]; do
            chmod o+x "$parent"
        done
    fi
fi

if [ ! -f "$data/PG_VERSION" ]; then
    say "creating a cluster in $data"
    as_postgres "$initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # Loopback only; fsync stays on (the default) so that durability tests mean something.
    cat >>"$data/postgresql.conf" <<EOF

# Added by scripts/postgres.sh
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 300
fsync = on
EOF
    cat >"$data/pg_hba.conf" <<EOF
# Added by scripts/postgres.sh: trust on loopback only.
local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
EOF
fi

if as_postgres "$pg_ctl" -D "$data" status >/dev/null 2>&1; then
    say "already running ($data)"
else
    say "starting on 127.0.0.1:$port"
    as_postgres "$pg_ctl" -D "$data" -l "$log" -o "-p $port" -w -t 60 start >&2 || {
        tail -n 50 "$log" >&2 || true
        exit 1
    }
fi

for _ in $(seq 1 100); do
    if "$pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
        say "ready on 127.0.0.1:$port"
        echo "export GANTRY_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:$port/postgres"
        exit 0
    fi
    sleep 0.1
done
say "PostgreSQL did not accept connections on 127.0.0.1:$port; see $log"
exit 1
