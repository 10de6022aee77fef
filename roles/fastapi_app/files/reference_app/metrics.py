"""Prometheus metrics of the reference app, correct across uvicorn's worker processes.

Under systemd, fastpg's unit sets PROMETHEUS_MULTIPROC_DIR to the service's runtime directory
(emptied at every start, so a restart begins from a clean slate): each worker writes its
values there and whichever worker answers /metrics reads them all. Without it (tests, a trial
run), the metrics are the one process's own.

The pool gauges are per worker (a `pid` label, "liveall"): their sum is the service's total,
and a worker that is gone drops out at the next scrape (see forget_dead_workers).
"""

import glob
import os
import re
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.registry import REGISTRY

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "fastpg_http_requests_total", "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
LATENCY = Histogram(
    "fastpg_http_request_duration_seconds", "Time to the response's first byte, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CHECKOUT_WAIT = Histogram(
    "fastpg_pool_checkout_wait_seconds", "Time a request waited for a pooled connection.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
CHECKOUT_TIMEOUTS = Counter(
    "fastpg_pool_checkout_timeouts_total", "Requests that gave up waiting for a pooled connection (pool_timeout).",
)


# Set at each scrape: whether the app reaches its database (what /health answers), so that an
# app that serves but cannot work is seen, not only one that is down.
HEALTHY = Gauge("fastpg_app_healthy", "1 when the app reached its database at the last scrape, else 0.",
                multiprocess_mode="livemostrecent")


def _pool_gauge(name, doc):
    return Gauge(f"fastpg_pool_{name}", doc, multiprocess_mode="liveall")


POOL = {
    "size": _pool_gauge("size", "Configured pool_size of this worker's pool."),
    "capacity": _pool_gauge("capacity", "pool_size + max_overflow: connections this worker may hold."),
    "checked_out": _pool_gauge("checked_out", "Connections in use by requests."),
    "checked_in": _pool_gauge("checked_in", "Idle connections in the pool."),
    "overflow": _pool_gauge("overflow", "Connections above pool_size (negative: not yet opened)."),
}


def set_pool(stats):
    """Publishes this worker's pool figures (a dict with the POOL keys)."""
    for key, gauge in POOL.items():
        gauge.set(stats[key])


def forget_dead_workers():
    """Drops the per-worker gauges of processes that have exited (a worker uvicorn replaced)."""
    if not MULTIPROC_DIR:
        return
    for path in glob.glob(os.path.join(MULTIPROC_DIR, "gauge_live*_*.db")):
        pid = int(re.search(r"_(\d+)\.db$", path).group(1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, MULTIPROC_DIR)
        except PermissionError:
            pass  # alive, and someone else's


def exposition():
    forget_dead_workers()
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, MULTIPROC_DIR)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def workers_pool():
    """Every live worker's pool figures, as the gauges last published them: {pid: {key: value}}."""
    forget_dead_workers()
    if not MULTIPROC_DIR:
        return {}
    files = glob.glob(os.path.join(MULTIPROC_DIR, "gauge_liveall_*.db"))
    found = {}
    for metric in multiprocess.MultiProcessCollector.merge(files, accumulate=False):
        key = metric.name.removeprefix("fastpg_pool_")
        if key not in POOL:
            continue
        for sample in metric.samples:
            found.setdefault(int(sample.labels["pid"]), {})[key] = int(sample.value)
    return found


class Cached:
    """A function's last result, for `ttl` seconds."""

    def __init__(self, fn, ttl):
        self.fn, self.ttl = fn, ttl
        self.value, self.at = None, float("-inf")

    def read(self):
        now = time.monotonic()
        if now - self.at >= self.ttl:
            self.value, self.at = self.fn(), now
        return self.value


class Ticker:
    """Calls a function at most once per `every` seconds (the pool gauges, the busy warning)."""

    def __init__(self, every):
        self.every = every
        self.last = float("-inf")

    def due(self):
        now = time.monotonic()
        if now - self.last < self.every:
            return False
        self.last = now
        return True
