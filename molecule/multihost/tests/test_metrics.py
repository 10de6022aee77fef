"""Metrics: the exporters on every host, Prometheus on fastpg-mon scraping them, the alert rules.
Values are asserted through Prometheus' own API, on the monitoring host's loopback."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from test_multihost import playbook, remote

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from steady_load import SteadyLoad, container_address  # noqa: E402

testinfra_hosts = ["ansible://fastpg-mon"]
HOSTS = ("fastpg-db", "fastpg-app1", "fastpg-app2", "fastpg-mon")


def query(host, promql):
    """An instant query, through promtool (the monitoring host has no curl)."""
    out = host.check_output("promtool query instant -o json http://127.0.0.1:9090 %s", promql)
    return json.loads(out or "[]")


def value(host, promql):
    result = query(host, promql)
    return float(result[0]["value"][1]) if result else None


def wait_for(check, what, seconds=90):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(2)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def test_every_target_is_scraped(host):
    def all_up():
        up = {(r["metric"]["job"], r["metric"]["host"]): r["value"][1] for r in query(host, "up") if "host" in r["metric"]}
        return up if len(up) == 8 and set(up.values()) == {"1"} else None
    up = wait_for(all_up, "every target up")
    assert {host for job, host in up if job == "node"} == set(HOSTS)
    assert set(up) >= {("postgres", "fastpg-db"), ("pgbouncer", "fastpg-app1"),
                       ("fastpg-app", "fastpg-app1"), ("fastpg-app", "fastpg-app2")}


def test_postgresql_is_up_through_its_exporter(host):
    assert value(host, "pg_up") == 1


def test_pool_gauges_summed_over_workers_equal_workers_times_pool_size(host):
    # fastpg-app2: 2 workers x pool_size 9; fastpg-app1: 2 x 6 (the scenario's values).
    for app, total in (("fastpg-app2", 18), ("fastpg-app1", 12)):
        got = wait_for(lambda: value(host, f'sum(fastpg_pool_size{{host="{app}"}})') == total or None,
                       f"{app}'s pool gauges")
        assert got
        assert value(host, f'count(fastpg_pool_size{{host="{app}"}})') == 2  # one series per worker


def test_pool_gauges_are_right_again_after_a_restart(host):
    """A zero-downtime restart replaces every worker: the runtime directory starts empty, so
    the sum is the new workers' only."""
    app2 = remote("fastpg-app2")
    before = {r["metric"]["pid"] for r in query(host, 'fastpg_pool_size{host="fastpg-app2"}')}
    app2.check_output("systemctl restart fastapi-app")

    def renewed():
        pids = {r["metric"]["pid"] for r in query(host, 'fastpg_pool_size{host="fastpg-app2"}')}
        return (pids and not pids & before and value(host, 'sum(fastpg_pool_size{host="fastpg-app2"})') == 18) or None
    assert wait_for(renewed, "the new workers' pool gauges, and only theirs")
    assert value(host, 'count(fastpg_pool_size{host="fastpg-app2"})') == 2


def test_each_app_reports_it_reaches_its_database(host):
    healthy = wait_for(lambda: query(host, "fastpg_app_healthy") or None, "fastpg_app_healthy")
    assert {r["metric"]["host"]: r["value"][1] for r in healthy} == {"fastpg-app1": "1", "fastpg-app2": "1"}


def test_request_metrics_come_by_route_and_status(host):
    r = query(host, 'fastpg_http_requests_total{route="/health",status="200"}')
    assert r and sum(float(x["value"][1]) for x in r) > 0


def test_a_query_through_pgbouncer_shows_in_its_exporter():
    app1 = remote("fastpg-app1")
    metric = 'pgbouncer_stats_queries_pooled_total{database="fastpg"}'

    def pooled():
        out = app1.check_output("python3 -c %s", "import urllib.request;"
                                "print(urllib.request.urlopen('http://127.0.0.1:9127/metrics').read().decode())")
        line = next((ln for ln in out.splitlines() if ln.startswith(metric)), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    before = pooled()
    app1.check_output("python3 -c %s", "import urllib.request\nfor _ in range(20): "
                      "urllib.request.urlopen('http://127.0.0.1:8000/health').read()")
    assert pooled() >= before + 20


def test_exporters_listen_on_the_scrapers_addresses_only():
    for name in HOSTS:
        node = remote(name)
        sockets = node.check_output("ss -Hltn").split("\n")
        exporter = [line.split()[3] for line in sockets if line.split()[3].rsplit(":", 1)[1] in
                    ("9100", "9187", "9127")]
        assert exporter, name
        assert not any(a.startswith(("0.0.0.0:", "*:", "[::]:")) for a in exporter), (name, exporter)


def test_the_monitoring_login_has_pg_monitor_and_no_password():
    db = remote("fastpg-db")
    row = db.check_output("runuser -u postgres -- psql -XAtq -c %s",
                          "SELECT rolpassword IS NULL, pg_has_role('prometheus', 'pg_monitor', 'member'), "
                          "rolsuper, rolcreaterole, rolcreatedb FROM pg_authid WHERE rolname = 'prometheus'")
    assert row == "t|t|f|f|f"
    settings = db.file("/etc/default/prometheus-postgres-exporter").content_string
    assert "DATA_SOURCE_NAME=\"host=/run/postgresql port=5432 user=prometheus dbname=postgres" in settings
    assert "password=" not in settings.lower() and "PASS_FILE" not in settings


def test_rules_pass_promtool(host):
    host.check_output("promtool check rules /etc/prometheus/fastpg-rules.yml")
    # The live rules are the ones tested, beside their tests.
    tested = "/etc/prometheus/fastpg-rules.tested"
    assert host.file("/etc/prometheus/fastpg-rules.yml").sha256sum == host.file(f"{tested}/fastpg-rules.yml").sha256sum
    out = host.check_output(f"cd {tested} && promtool test rules fastpg-rules.test.yml")
    assert "SUCCESS" in out


def loaded_lag_rule(host):
    """PatroniReplicationLag's expression as the running Prometheus has it loaded."""
    rules = json.loads(host.check_output("python3 -c %s", "import urllib.request; print(urllib.request.urlopen("
                                         "'http://127.0.0.1:9090/api/v1/rules').read().decode())"))
    return next(rule["query"] for group in rules["data"]["groups"] for rule in group["rules"]
                if rule["name"] == "PatroniReplicationLag")


def test_rules_whose_tests_fail_never_go_live(host):
    """A limit of 4 bytes would page on every write: the rules' tests fail on the candidate, and
    the live rules, and what Prometheus runs, stay as they were."""
    live = host.file("/etc/prometheus/fastpg-rules.yml").sha256sum
    running = loaded_lag_rule(host)
    rc, out = playbook("fastpg.stack.monitoring", extra={"prometheus_replication_lag_bytes": 4})
    flat = re.sub(r"\s+", " ", out)
    refusal = re.search(r"The alert rules' tests failed on the candidate.*?prometheus_replication_lag_for \(\d+\)", flat)
    assert rc != 0 and refusal, out[-3000:]
    print(f"\n{refusal[0]}")
    assert "PatroniReplicationLag" in refusal[0] and "prometheus_replication_lag_bytes (4)" in refusal[0]
    assert host.file("/etc/prometheus/fastpg-rules.yml").sha256sum == live
    assert loaded_lag_rule(host) == running and running.endswith("> 1.048576e+06")
    # The failed candidate is left where it was tested, for a look (its tests removed, so that
    # they run again). The next run with the inventory's values tests and keeps them; nothing
    # live changes.
    assert not host.file("/etc/prometheus/fastpg-rules.tested/fastpg-rules.test.yml").exists
    rc, out = playbook("fastpg.stack.monitoring")
    assert rc == 0, out[-3000:]
    assert host.file("/etc/prometheus/fastpg-rules.yml").sha256sum == live
    assert not re.search(r"Put the tested rules live\] \**\s*changed", out)
    assert re.search(r"Run the rules' tests on the candidate \(promtool test rules\)\] \**\s*ok", out), out[-3000:]


def test_a_saturated_pool_fires_its_alert(host):
    """A lock on the users table holds every request's connection: the pools fill up and the
    alert (for: 15 s in this scenario) fires."""
    db = remote("fastpg-db")
    name = "fastpg-db"
    locker = subprocess.Popen(
        ["docker", "exec", "-i", name, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", "fastpg"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    locker.stdin.write("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(120);\n")
    locker.stdin.flush()
    started = time.monotonic()
    firing = None
    try:
        with SteadyLoad(container_address("fastpg-app2"), clients=100, pause_s=0, paths=("/health",)) as load:
            def alert():
                r = query(host, 'ALERTS{alertname="FastpgPoolNearlyExhausted",alertstate="firing"}')
                return r or None
            firing = wait_for(alert, "FastpgPoolNearlyExhausted to fire", seconds=100)
    finally:
        locker.kill()
        db.run("runuser -u postgres -- psql -XAtq -c %s",
               "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' "
               "AND pid <> pg_backend_pid()")
    print(f"\nsaturated pool: FastpgPoolNearlyExhausted firing after {time.monotonic() - started:.0f} s for "
          f"{sorted({a['metric']['host'] for a in firing})}; load meanwhile: {load.summary()}")
    assert {a["metric"]["host"] for a in firing} == {"fastpg-app2"}
