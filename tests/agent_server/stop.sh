#!/usr/bin/env bash
# Stops an agent-server that start.sh started.
#
#     tests/agent_server/stop.sh PORT | PID_FILE
#
# Sends SIGTERM to the server's process group (start.sh runs it as a session
# leader, so the group id is its pid), waits up to 10 s (the server stops the
# bash commands it still runs on the way out), then SIGKILLs the group.
# Removes the pid file. Stopping a server that is not running is not an error.
# The run directory (log, workspace/bash_events) is left for inspection.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
run_base=${AGENT_SERVER_RUN_BASE:-$repo/target/agent-server-run}

arg=${1:?usage: stop.sh PORT | PID_FILE}
case $arg in
    *[!0-9]*) pid_file=$arg ;;
    *) pid_file=$run_base/$arg/server.pid ;;
esac

if [ ! -f "$pid_file" ]; then
    echo "agent-server/stop.sh: no pid file $pid_file; nothing to stop" >&2
    exit 0
fi
pid=$(cat "$pid_file")
case $pid in
    '' | *[!0-9]*) echo "agent-server/stop.sh: bad pid file $pid_file" >&2; rm -f "$pid_file"; exit 1 ;;
esac

if kill -0 "$pid" 2>/dev/null; then
    # The group if the server leads one, else the process alone.
    if [ "$(ps -o pgid= -p "$pid" | tr -d ' ')" = "$pid" ]; then target=-$pid; else target=$pid; fi
    kill -TERM -- "$target" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "agent-server/stop.sh: pid $pid still alive after 10 s; SIGKILL" >&2
        kill -KILL -- "$target" 2>/dev/null || true
    fi
fi
rm -f "$pid_file"
echo "agent-server/stop.sh: stopped pid $pid" >&2
