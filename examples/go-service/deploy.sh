#!/bin/sh
# Deploys dist/go-service as local processes: two replicas, the stable track on 127.0.0.1:$DEPLOY_PORT
# and the canary track on 127.0.0.1:$CANARY_PORT, with dist/load sending them traffic. Each process
# has a pid file in $DEPLOY_DIR; a new one replaces the old, and the script waits until it answers.
#
# GANTRY_DEPLOY_WEIGHT (a progressive step's weight, 100 when not progressive) is the share of
# traffic the new version serves: under 100 the canary replica runs it and gets that share of the
# requests; at 100 both replicas run it and share the traffic evenly.
set -eu
: "${DEPLOY_PORT:?}" "${CANARY_PORT:?}" "${DEPLOY_DIR:?}"
weight=${GANTRY_DEPLOY_WEIGHT:-100}
. ./service.env
mkdir -p "$DEPLOY_DIR"

# stop NAME: stops the process of pid file NAME.pid, if it runs.
stop() {
    if [ -f "$DEPLOY_DIR/$1.pid" ]; then
        kill "$(cat "$DEPLOY_DIR/$1.pid")" 2>/dev/null || true
        rm -f "$DEPLOY_DIR/$1.pid"
    fi
}

# start NAME COMMAND...: replaces process NAME, in its own session so that it outlives the job
# (whose process group is killed when the script ends: wait until it has left it).
start() {
    name=$1
    shift
    stop "$name"
    setsid "$@" >"$DEPLOY_DIR/$name.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$DEPLOY_DIR/$name.pid"
    while [ "$(ps -o sid= -p "$pid" | tr -d ' ')" != "$pid" ]; do
        kill -0 "$pid" || { cat "$DEPLOY_DIR/$name.log"; exit 1; }
        sleep 0.01
    done
}

# serve TRACK PORT: runs this version on PORT and waits until it answers.
serve() {
    bin="$DEPLOY_DIR/go-service-$SERVICE_VERSION"
    cp dist/go-service "$bin.new" && mv -f "$bin.new" "$bin"
    start "$1" env ADDR="127.0.0.1:$2" VERSION="$SERVICE_VERSION" FAULT_RATE="$FAULT_RATE" "$bin"
    echo "$1 on port $2: $(dist/load -wait "http://127.0.0.1:$2/healthz")"
}

cp dist/load "$DEPLOY_DIR/load.new" && mv -f "$DEPLOY_DIR/load.new" "$DEPLOY_DIR/load"
serve canary "$CANARY_PORT"
split=$weight
if [ "$weight" -ge 100 ]; then
    serve stable "$DEPLOY_PORT"
    split=50
fi
start load "$DEPLOY_DIR/load" -stable "http://127.0.0.1:$DEPLOY_PORT" \
    -canary "http://127.0.0.1:$CANARY_PORT" -weight "$split"
echo "deployed $SERVICE_VERSION at weight $weight"
