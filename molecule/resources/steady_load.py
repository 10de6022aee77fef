"""Steady HTTP load from the controller: keep-alive clients looping over a few paths until
stopped, counting every answer. Failed: a non-2xx status, a refused or timed-out connection,
or a connection lost without an answer.

One case is retried, once, as HTTP clients do for idempotent requests (RFC 9110 9.2.2,
RFC 9112 9.3.1): a GET whose connection was closed before any byte of an answer came. A
stopping server closes the connections on which no request is being served - idle keep-alive
ones, and ones it accepted whose request has not arrived yet - so the app never saw that
request; it goes again on a new connection, after a quarter of a second (the stopping
processes close their listeners meanwhile), and is counted under `retried`. A second loss, a
refused connection, a timeout or a non-2xx answer counts as failed.
"""

import collections
import http.client
import itertools
import json
import subprocess
import threading
import time

PATHS = ("/health", "/users/?limit=10", "/pool-stats")
# The server closed the connection before answering anything.
CLOSED_WITHOUT_ANSWER = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def container_address(name):
    inspect = json.loads(subprocess.run(["docker", "inspect", name], capture_output=True, text=True,
                                        check=True).stdout)
    networks = inspect[0]["NetworkSettings"]["Networks"]
    return inspect[0]["NetworkSettings"].get("IPAddress") or next(iter(networks.values()))["IPAddress"]


class SteadyLoad:
    def __init__(self, address, port=8000, paths=PATHS, clients=50, limit_s=900, pause_s=0.2, tls=None):
        """tls: an ssl.SSLContext for HTTPS (a front door), else plain HTTP."""
        self.address, self.port, self.paths, self.tls = address, port, paths, tls
        self.clients, self.limit_s, self.pause_s = clients, limit_s, pause_s
        self.ok = self.failed = self.retried = 0
        self.errors = collections.Counter()
        self.first_failure = self.last_failure = None
        self.ok_times = []
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def connect(self):
        if self.tls:
            return http.client.HTTPSConnection(self.address, self.port, timeout=10, context=self.tls)
        return http.client.HTTPConnection(self.address, self.port, timeout=10)

    def _get(self, conn, path):
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp

    def _one(self, conn, path):
        """(connection to reuse or None, error or None)."""
        conn = conn or self.connect()
        try:
            resp = self._get(conn, path)
        except CLOSED_WITHOUT_ANSWER:
            conn.close()
            with self.lock:
                self.retried += 1
            time.sleep(0.25)
            conn = self.connect()
            try:
                resp = self._get(conn, path)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                return None, type(exc).__name__ + " (retried)"
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return None, type(exc).__name__
        if resp.will_close:
            conn.close()
            conn = None
        return conn, None if 200 <= resp.status < 300 else f"HTTP {resp.status}"

    def client(self):
        conn, deadline, n = None, time.monotonic() + self.limit_s, 0
        while not self.stop.is_set() and time.monotonic() < deadline:
            conn, error = self._one(conn, self.paths[n % len(self.paths)])
            n += 1
            with self.lock:
                if error is None:
                    self.ok += 1
                    self.ok_times.append(time.monotonic())
                else:
                    self.failed += 1
                    self.errors[error] += 1
                    self.last_failure = time.monotonic()
                    self.first_failure = self.first_failure or self.last_failure
            time.sleep(self.pause_s)

    def __enter__(self):
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(self.clients)]
        for t in self.threads:
            t.start()
        time.sleep(1)  # running before
        return self

    def __exit__(self, *exc):
        time.sleep(1)  # and after
        self.stop.set()
        for t in self.threads:
            t.join()
        self.ended = time.monotonic()

    def longest_gap(self):
        """The longest time, in seconds, between two answered requests while the load ran."""
        times = sorted(self.ok_times)
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)

    def summary(self):
        errors = ", ".join(f"{n} {e}" for e, n in self.errors.most_common()) or "none"
        return (f"{self.ok} ok, {self.failed} failed ({errors}), {self.retried} retried once after a "
                f"connection closed without an answer; {self.clients} clients over {', '.join(self.paths)}")


class SteadyWrites(SteadyLoad):
    """Writers: each client POSTs a new user to /users/ in a loop. Nothing is retried (a write is
    not idempotent): every failure is counted and reported, and the usernames the app
    acknowledged (201) are kept, to be looked for afterwards."""

    def __init__(self, address, port=8000, clients=4, prefix="w", **kw):
        super().__init__(address, port, paths=("POST /users/",), clients=clients, **kw)
        self.prefix, self.seq, self.acked = prefix, itertools.count(), []

    def _one(self, conn, path):
        name = f"{self.prefix}{next(self.seq)}"
        body = json.dumps({"username": name, "email": f"{name}@example.com", "password": "drill-password"})
        conn = conn or self.connect()
        try:
            conn.request("POST", "/users/", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return None, type(exc).__name__
        if resp.status == 201:
            with self.lock:
                self.acked.append(name)
        if resp.will_close:
            conn.close()
            conn = None
        return conn, None if resp.status == 201 else f"HTTP {resp.status}"
