#!/usr/bin/env python3
"""Fault drills run inside the test container (stdlib only); each writes its figures as JSON.

  drills.py sigkill OUT                 SIGKILL uvicorn's main process, time until /health is 200 again
  drills.py load-restart OUT N C UNIT   N requests, C at a time, over /health and /users/?limit=10;
                                        restarts UNIT once a fifth of them are done
  drills.py seed OUT N                  create N users, record their ids
  drills.py check-seed SEED OUT         after a restart: are those users still there?
Traffic goes to 127.0.0.1 only.
"""

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request

BASE = "http://127.0.0.1:8000"
GRACE_S = 1.0


def get(path, timeout=2.0):
    try:
        with urllib.request.urlopen(BASE + path, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return None, None


def post(path, body):
    req = urllib.request.Request(BASE + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, json.loads(r.read())


def write(out, data):
    with open(out, "w") as fh:
        json.dump(data, fh, indent=2)
    print(json.dumps(data))


def main_pid():
    return int(subprocess.check_output(
        ["systemctl", "show", "--property=MainPID", "--value", "fastapi-app"], text=True))


def wait_healthy(limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status, body = get("/health", timeout=0.5)
        if status == 200 and body["database"] == "connected":
            return True
        time.sleep(0.05)
    return False


def sigkill(out):
    pid = main_pid()
    assert pid > 0 and wait_healthy(), "app not healthy before the drill"
    killed = time.monotonic()
    subprocess.run(["kill", "-KILL", str(pid)], check=True)
    # The old workers may answer for a moment after their parent died: recovery means a new
    # main process, started by systemd, serving /health with the database connected.
    healthy, new_pid = False, 0
    while time.monotonic() - killed < 30:
        new_pid = main_pid()
        if new_pid not in (0, pid):
            status, body = get("/health", timeout=0.5)
            if status == 200 and body["database"] == "connected":
                healthy = True
                break
        time.sleep(0.05)
    recovered = time.monotonic() - killed
    write(out, {"killed_pid": pid, "new_pid": new_pid, "recovered_s": round(recovered, 3),
                "healthy": healthy})


async def one(path):
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", 8000), 10)
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readline(), 35)
        await reader.read()
        writer.close()
        status = int(head.split()[1])
    except (OSError, asyncio.TimeoutError, IndexError, ValueError):
        status = 0
    return start, time.monotonic(), status, path


async def load(total, concurrency, unit):
    paths = ["/health", "/users/?limit=10"]
    results, window = [], {}
    queue = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(paths[i % 2])
    trigger = total // 5

    def restart():
        window["start"] = time.monotonic()
        subprocess.run(["systemctl", "restart", unit], check=True)
        window["end"] = time.monotonic()

    async def worker():
        while True:
            try:
                path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            results.append(await one(path))
            if len(results) == trigger and not window:
                window["thread"] = threading.Thread(target=restart)
                window["thread"].start()

    began = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    window.pop("thread").join()
    elapsed = time.monotonic() - began
    ok = [r for r in results if r[2] == 200]
    failed = [r for r in results if r[2] != 200]
    # A failure belongs to the restart when it ends inside it (plus GRACE_S for the answer
    # of a request the restart broke to come back).
    grace = GRACE_S
    before = [r for r in failed if r[1] < window["start"]]
    after = [r for r in failed if r[1] > window["end"] + grace]
    return {
        "requests": len(results), "concurrency": concurrency, "ok": len(ok), "failed": len(failed),
        "failed_before_restart": len(before), "failed_after_restart": len(after), "grace_s": grace,
        "restart_s": round(window["end"] - window["start"], 3),
        "ok_before_restart": sum(1 for r in ok if r[1] < window["start"]),
        # Recovery: requests sent after the last failure came back, all served.
        "ok_after_last_failure": sum(1 for r in ok if r[0] > max((f[1] for f in failed), default=0)),
        "elapsed_s": round(elapsed, 3), "requests_per_s": round(len(results) / elapsed, 1),
        "statuses": sorted({r[2] for r in results}),
    }


def load_restart(out, total, concurrency, unit):
    assert wait_healthy(), "app not healthy before the drill"
    data = asyncio.run(load(int(total), int(concurrency), unit))
    status, stats = get("/pool-stats")
    data["pool_after"] = stats
    data["health_after"] = get("/health")[0]
    write(out, data)


def seed(out, count):
    ids = []
    stamp = int(time.time())
    for i in range(int(count)):
        name = f"drill{stamp}_{i}"
        status, body = post("/users/", {"username": name, "email": f"{name}@example.com",
                                        "password": "drill-password"})
        assert status == 201
        ids.append(body["id"])
    write(out, {"ids": ids})


def check_seed(seed_file, out):
    ids = json.load(open(seed_file))["ids"]
    found = [i for i in ids if get(f"/users/{i}")[0] == 200]
    write(out, {"seeded": len(ids), "found": len(found)})


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"sigkill": sigkill, "load-restart": load_restart, "seed": seed, "check-seed": check_seed}[cmd](*args)
