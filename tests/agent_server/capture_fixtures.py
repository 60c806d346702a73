"""Records agent-server responses as test fixtures for the agent-server plugin.

    python3 tests/agent_server/capture_fixtures.py http://127.0.0.1:PORT \
        guest-examples/agent-server/fixtures

Start the server with tests/agent_server/start.sh first. Every fixture is a
response body exactly as the server sent it, except that the multi-chunk
output case has its 1 MiB `stdout` strings shortened (marked in the file name
and in the strings themselves) so the fixtures stay small. Standard library
only.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

base = sys.argv[1].rstrip("/")
out = sys.argv[2]
os.makedirs(out, exist_ok=True)


def req(method, path, body=None, headers=None):
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    r = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(r) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def save(name, status, text):
    with open(os.path.join(out, name), "w") as f:
        f.write(text)
        if not text.endswith("\n"):
            f.write("\n")
    print(f"{name}: HTTP {status}, {len(text)} chars")


def start(command, timeout=60, cwd=None):
    body = {"command": command, "timeout": timeout}
    if cwd:
        body["cwd"] = cwd
    status, text = req("POST", "/api/bash/start_bash_command", body)
    assert status == 200, (status, text)
    return text, json.loads(text)["id"]


def search(cid, extra=""):
    return req("GET", f"/api/bash/bash_events/search?kind__eq=BashOutput&command_id__eq={cid}&sort_order=TIMESTAMP_DESC&limit=1{extra}")


def wait_final(cid, limit=30):
    for _ in range(limit * 10):
        status, text = search(cid)
        items = json.loads(text)["items"]
        if items and items[0]["exit_code"] is not None:
            return status, text
        time.sleep(0.1)
    raise SystemExit(f"command {cid} did not finish")


# Upload (multipart field `file`, path in the query).
boundary = "fixture-boundary"
payload = b"hello"
body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n"
        f"Content-Type: application/octet-stream\r\n\r\n").encode() + payload + f"\r\n--{boundary}--\r\n".encode()
r = urllib.request.Request(base + "/api/file/upload?path=/tmp/agent-server-fixtures/x", data=body, method="POST",
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
with urllib.request.urlopen(r) as resp:
    save("upload-ok.json", resp.status, resp.read().decode())
r = urllib.request.Request(base + "/api/file/upload?path=relative/x", data=body, method="POST",
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})
try:
    urllib.request.urlopen(r)
except urllib.error.HTTPError as e:
    save("upload-relative-400.json", e.code, e.read().decode())

# A short command run synchronously (the plugin prepares the run directory so).
save("execute-ok.json", *req("POST", "/api/bash/execute_bash_command",
                             {"command": "mkdir -p -- /tmp/agent-server-fixtures/r && chmod 700 -- /tmp/agent-server-fixtures/r", "timeout": 30}))
save("execute-failed.json", *req("POST", "/api/bash/execute_bash_command",
                                 {"command": "mkdir -p -- /proc/agent-server-fixtures/r", "timeout": 30}))

# Running: no output yet.
text, running = start("sleep 3; echo late")
save("start-response.json", 200, text)
save("search-running-empty.json", *search(running))

# Finished: success, failure.
_, ok = start("echo out; echo err >&2")
save("search-succeeded.json", *wait_final(ok))
_, bad = start("echo partial; echo boom >&2; exit 3")
save("search-exit-3.json", *wait_final(bad))

# The agent-server's own timeout: exit_code -1.
_, to = start("echo before; sleep 30", timeout=1)
save("search-timed-out.json", *wait_final(to))

# The command could not start (bad cwd): exit_code -1 and an error text.
_, err = start("echo hi", cwd="/nonexistent/agent-server-fixtures")
save("search-start-error.json", *wait_final(err))

# Stopped through the API: killed by SIGTERM (-15), or a TERM trap (143).
_, k = start("exec sleep 30")
_, kt = start("trap 'echo got term; exit 143' TERM; echo started; sleep 30 & wait")
time.sleep(1)
save("stop-ok.json", *req("POST", f"/api/bash/bash_commands/{k}/stop"))
req("POST", f"/api/bash/bash_commands/{kt}/stop")
save("search-stopped.json", *wait_final(k))
save("search-stopped-trap.json", *wait_final(kt))
save("stop-finished-again.json", *req("POST", f"/api/bash/bash_commands/{k}/stop"))
save("stop-unknown-404.json", *req("POST", "/api/bash/bash_commands/0123456789abcdef0123456789abcdef/stop"))
save("command-event.json", *req("GET", f"/api/bash/bash_events/{running}"))
save("command-event-unknown-404.json", *req("GET", "/api/bash/bash_events/0123456789abcdef0123456789abcdef"))

# Output over 1 MiB: several BashOutput events, only the last has exit_code.
_, big = start("head -c 2200000 /dev/zero | tr '\\0' a; echo; echo tail-of-stdout; echo some-err >&2")
status, text = wait_final(big)


def shorten(text):
    page = json.loads(text)
    for item in page["items"]:
        for k in ("stdout", "stderr"):
            v = item.get(k)
            if v and len(v) > 4096:
                item[k] = f"[{len(v)} chars shortened by capture_fixtures.py]" + v[-64:]
    return json.dumps(page, separators=(",", ":"))


save("search-chunked-1-final.shortened.json", status, shorten(text))
page_id = json.loads(text)["next_page_id"]
n = 2
while page_id:
    status, text = search(big, f"&page_id={page_id}")
    save(f"search-chunked-{n}.shortened.json", status, shorten(text))
    page_id = json.loads(text)["next_page_id"]
    n += 1
# The whole list, ascending (the default order), to show the ordering.
status, text = req("GET", f"/api/bash/bash_events/search?kind__eq=BashOutput&command_id__eq={big}")
save("search-chunked-all-asc.shortened.json", status, shorten(text))
save("search-bad-uuid-422.json", *req("GET", "/api/bash/bash_events/search?command_id__eq=nope"))
save("server-info.json", *req("GET", "/server_info"))
