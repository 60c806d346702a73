#!/usr/bin/env bash
# Starts a real OpenHands agent-server (pinned version) for the host's tests.
#
#     tests/agent_server/start.sh [PORT]
#
# - creates the venv if it is missing or holds another version (one `pip
#   install`, ~100 s cold; guarded by a lock so parallel callers wait);
# - starts the server on PORT (or a free port) in its own session, with its
#   working directory (where it keeps `workspace/bash_events`), log and pid
#   file under target/agent-server-run/PORT/;
# - waits until GET /health answers (at most AGENT_SERVER_START_TIMEOUT, 60 s);
# - prints on stdout, one per line:
#       AGENT_SERVER_URL=http://127.0.0.1:PORT
#       AGENT_SERVER_PID_FILE=/abs/path/server.pid
#       AGENT_SERVER_LOG=/abs/path/server.log
#       AGENT_SERVER_DIR=/abs/path
#   and exits 0, leaving the server running. Progress goes to stderr.
#
# Idempotent: if the pid file for PORT names a live server that answers, it is
# reused. Stop it with tests/agent_server/stop.sh PORT (or the pid file).
#
# Environment:
#   AGENT_SERVER_SESSION_API_KEY  require this X-Session-API-Key (unset: no auth)
#   AGENT_SERVER_VENV             venv directory (default: <repo>/target/agent-server-venv)
#   AGENT_SERVER_PYTHON           Python 3.12+ used to create it
#                                 (default: ~/.pyenv/versions/3.12.1/bin/python, else python3.12)
#   AGENT_SERVER_RUN_BASE         where per-port run directories go
#                                 (default: <repo>/target/agent-server-run)
#   AGENT_SERVER_START_TIMEOUT    seconds to wait for /health (default 60)
set -euo pipefail

VERSION=1.58.2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
venv=${AGENT_SERVER_VENV:-$repo/target/agent-server-venv}
run_base=${AGENT_SERVER_RUN_BASE:-$repo/target/agent-server-run}
start_timeout=${AGENT_SERVER_START_TIMEOUT:-60}

log() { echo "agent-server/start.sh: $*" >&2; }

pick_python() {
    if [ -n "${AGENT_SERVER_PYTHON:-}" ]; then echo "$AGENT_SERVER_PYTHON"; return; fi
    for p in "$HOME/.pyenv/versions/3.12.1/bin/python" python3.12 python3.13; do
        if command -v "$p" >/dev/null 2>&1; then command -v "$p"; return; fi
    done
    log "no Python 3.12 found; set AGENT_SERVER_PYTHON"
    exit 1
}

venv_ok() {
    [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$VERSION" >/dev/null 2>&1 <<'EOF'
import sys, importlib.metadata as m
sys.exit(0 if m.version("openhands-agent-server") == sys.argv[1] else 1)
EOF
}

ensure_venv() {
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9
    if ! venv_ok; then
        local py t0
        py=$(pick_python)
        t0=$(date +%s)
        log "creating $venv with $py (openhands-agent-server==$VERSION; takes a minute or two)"
        rm -rf "$venv"
        "$py" -m venv "$venv"
        "$venv/bin/pip" install -q "openhands-agent-server==$VERSION" >&2
        venv_ok || { log "the venv does not hold openhands-agent-server $VERSION after pip install"; exit 1; }
        log "venv ready in $(( $(date +%s) - t0 )) s"
    fi
    flock -u 9
    exec 9>&-
}

free_port() {
    "$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

healthy() {
    curl -sf --max-time 2 "http://127.0.0.1:$1/health" >/dev/null 2>&1
}

report() {
    echo "AGENT_SERVER_URL=http://127.0.0.1:$port"
    echo "AGENT_SERVER_PID_FILE=$dir/server.pid"
    echo "AGENT_SERVER_LOG=$dir/server.log"
    echo "AGENT_SERVER_DIR=$dir"
}

ensure_venv

port=${1:-}
if [ -z "$port" ]; then
    port=$(free_port)
fi
case $port in
    '' | *[!0-9]*) log "bad port: $port"; exit 2 ;;
esac
dir=$run_base/$port
mkdir -p "$dir"
pid_file=$dir/server.pid

# Reuse a server this script started earlier on the same port.
if [ -f "$pid_file" ]; then
    old=$(cat "$pid_file" 2>/dev/null || true)
    if [ -n "$old" ] && kill -0 "$old" 2>/dev/null && healthy "$port"; then
        log "reusing the server already running as pid $old"
        report
        exit 0
    fi
    rm -f "$pid_file"
fi
if healthy "$port"; then
    log "port $port already answers, but not from a server this script started"
    exit 1
fi

(
    cd "$dir"
    if [ -n "${AGENT_SERVER_SESSION_API_KEY:-}" ]; then
        export SESSION_API_KEY=$AGENT_SERVER_SESSION_API_KEY
    else
        unset SESSION_API_KEY OH_SESSION_API_KEYS_0
    fi
    # No network: litellm's cost map is read from the package, no banner.
    export LITELLM_LOCAL_MODEL_COST_MAP=True OPENHANDS_SUPPRESS_BANNER=1
    # Its own session (and process group), detached from the caller's terminal
    # and stdin, so it outlives this script and stop.sh can signal the group.
    exec setsid "$venv/bin/python" -m openhands.agent_server --host 127.0.0.1 --port "$port" \
        </dev/null >>"$dir/server.log" 2>&1
) &
pid=$!
echo "$pid" >"$pid_file"
log "started pid $pid on port $port (log: $dir/server.log)"

deadline=$(( $(date +%s) + start_timeout ))
until healthy "$port"; do
    if ! kill -0 "$pid" 2>/dev/null; then
        log "the server exited before answering; last log lines:"
        tail -n 30 "$dir/server.log" >&2 || true
        rm -f "$pid_file"
        exit 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        log "no answer on /health after ${start_timeout} s; stopping it. Last log lines:"
        tail -n 30 "$dir/server.log" >&2 || true
        "$here/stop.sh" "$port" >&2 || true
        exit 1
    fi
    sleep 0.2
done
report
