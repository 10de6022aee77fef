"""The reference app under uvicorn with two worker processes, as deployed: the metrics and
/pool-stats must cover every worker, not the one that happens to answer."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from conftest import _free_port


def test_metrics_and_pool_stats_cover_every_worker(app_dir, database_url, migrated, tmp_path):
    """uvicorn with two workers, as deployed: /metrics and /pool-stats answer for both, and
    still do after a worker is killed and replaced."""
    port = _free_port()
    env = dict(os.environ, FASTPG_DATABASE_URL=database_url, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "main:app", "--port", str(port), "--workers", "2",
                               "--log-level", "warning"], cwd=app_dir, env=env)

    def get(path):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.read().decode()

    def pool_sizes():
        sizes = {}
        for family in text_string_to_metric_families(get("/metrics")):
            if family.name == "fastpg_pool_size":
                sizes = {s.labels["pid"]: s.value for s in family.samples}
        return sizes

    def wait_for(check, what):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if check():
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}")

    try:
        # Warmed up: every worker's pool published, summed workers × pool_size.
        wait_for(lambda: sum(pool_sizes().values()) == 2 * 3, "both workers' pool gauges")
        assert len(pool_sizes()) == 2
        stats = json.loads(get("/pool-stats"))
        assert len(stats["workers"]) == 2 and {w["pool_size"] for w in stats["workers"]} == {3}
        for _ in range(40):
            get("/health")
        total = 0.0
        for family in text_string_to_metric_families(get("/metrics")):
            if family.name == "fastpg_http_requests":
                total = sum(s.value for s in family.samples if s.name.endswith("_total")
                            and s.labels["route"] == "/health" and s.labels["status"] == "200")
        assert total >= 40  # served by either worker, counted in one place
        victim = int(stats["workers"][0]["pid"])
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: str(victim) not in pool_sizes() and sum(pool_sizes().values()) == 2 * 3,
                 "the replacement worker's gauges, without the killed one's")
        assert len(pool_sizes()) == 2
        assert victim not in {w["pid"] for w in json.loads(get("/pool-stats"))["workers"]}
    finally:
        server.terminate()
        server.wait(timeout=30)
