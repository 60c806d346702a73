#!/usr/bin/env python3
"""Completion latency of local-sandbox runs: from the run's own last
instruction (a timestamp it prints) to the host recording `succeeded`.

Usage: SLEEP=5.3 python3 host/benches/completion_latency.py target/debug/automation-host 5

Starts BINARY on a free port with SQLite in a temporary directory, runs a
`sleep $SLEEP; date +%s.%N` script N times through local-sandbox, one at a
time, and prints the p50, max and every sample in milliseconds (see
BENCHMARKS.md, "run bookkeeping")."""
import datetime, json, os, shutil, socket, statistics, subprocess, sys, tempfile, time, urllib.request

binary, n = sys.argv[1], int(sys.argv[2])
d = tempfile.mkdtemp()
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
env = dict(os.environ, AUTOMATION_DATA_DIR=d, AUTOMATION_API_KEY="bench-key-0123456789abcdef",
           AUTOMATION_LISTEN=f"127.0.0.1:{port}", AUTOMATION_BIND=f"127.0.0.1:{port}", RUST_LOG="warn")
p = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=open(d + "/log", "w"))
base = f"http://127.0.0.1:{port}"
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"authorization": "Bearer bench-key-0123456789abcdef", "content-type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
for _ in range(200):
    try:
        call("GET", "/health"); break
    except Exception:
        time.sleep(0.1)
a = call("POST", "/v1/automations", {"name": "latency", "trigger": {"type": "manual"},
     "preset": {"name": "script", "config": {"interpreter": "sh", "script": "sleep " + os.environ.get("SLEEP", "1.3") + "; date +%s.%N"}},
     "executor": {"plugin": "local-sandbox", "config": {}}})
lat = []
for i in range(n):
    r = call("POST", f"/v1/automations/{a['id']}/dispatch", {})
    while True:
        run = call("GET", f"/v1/runs/{r['id']}")
        if run["status"] not in ("pending", "running"):
            break
        time.sleep(0.05)
    assert run["status"] == "succeeded", run
    end = float(run["output"]["stdout"].strip())
    fin = datetime.datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00")).timestamp()
    lat.append((fin - end) * 1000)
p.terminate(); p.wait()
shutil.rmtree(d, ignore_errors=True)
lat.sort()
print(f"{os.path.basename(binary)}: n={n} p50={statistics.median(lat):.0f} ms max={lat[-1]:.0f} ms all={[round(x) for x in lat]}")
