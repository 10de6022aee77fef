"""The tiers one host carries (host_vars/ of the default scenario): PgBouncer between the app
and PostgreSQL, backups to the host's own repository, Prometheus scraping the host's exporters.
The platform scenario, which shares these tests, leaves the tiers off: their checks skip there."""

import json
import time

import pytest

ADMIN = "runuser -u postgres -- psql -XAq --csv -h /var/run/postgresql -p 6432 -U pgbouncer pgbouncer -c %s"


def needs(hostvars, tier):
    """Skips unless the tier is on: a variable set true, or a group the host is in."""
    if not (hostvars.get(tier) is True or tier in hostvars.get("group_names", [])):
        pytest.skip(f"{tier} is off on this host")


def test_the_app_reaches_postgresql_through_pgbouncer(host, hostvars, http):
    needs(hostvars, "fastpg_pgbouncer")
    env = host.file("/opt/fastapi-app/current/app.env").content_string
    assert "FASTPG_DATABASE_URL=postgresql+asyncpg://fastpg@127.0.0.1:6432/fastpg" in env
    assert not host.socket("tcp://0.0.0.0:6432").is_listening
    assert http("GET", "/users/?limit=1")["status"] == 200
    # The app's pool keeps its connections open: they are PgBouncer's clients.
    rows = host.check_output(ADMIN, "SHOW CLIENTS").splitlines()
    names = rows[0].split(",")
    clients = [r for r in (dict(zip(names, row.split(","))) for row in rows[1:]) if r["database"] == "fastpg"]
    assert clients and {r["user"] for r in clients} == {"fastpg"}, rows


def test_a_full_backup_is_in_the_hosts_own_repository_and_wal_reaches_it(host, hostvars):
    needs(hostvars, "fastpg_backups")
    repo = json.loads(host.check_output("runuser -u postgres -- pgbackrest --stanza=main info --output=json"))[0]
    assert [b["type"] for b in repo["backup"]][:1] == ["full"]
    assert host.service("fastpg-backup-full.timer").is_running
    host.check_output("runuser -u postgres -- pgbackrest --stanza=main check")


def test_prometheus_scrapes_every_exporter_of_the_host(host, hostvars):
    """node, postgres, pgbouncer and the app's own metrics, all up (host_vars: a scrape every 5 s)."""
    needs(hostvars, "monitoring")
    deadline = time.monotonic() + 60
    while True:
        out = host.check_output("promtool query instant -o json http://127.0.0.1:9090 up")
        up = {r["metric"]["job"]: r["value"][1] for r in json.loads(out or "[]") if "host" in r["metric"]}
        if {"node", "postgres", "pgbouncer", "fastpg-app"} <= set(up) and set(up.values()) == {"1"}:
            break
        assert time.monotonic() < deadline, f"not every target up after 60 s: {up}"
        time.sleep(2)
