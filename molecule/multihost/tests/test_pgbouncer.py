"""PgBouncer on fastpg-app1 (fastpg_pgbouncer): its two apps reach the database through it,
fastpg-app2's directly. Load from the controller counts every failed request."""

import hashlib
import re
import sys
import time
from pathlib import Path

from test_multihost import playbook, remote

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from steady_load import SteadyLoad, container_address  # noqa: E402

testinfra_hosts = ["ansible://fastpg-app1"]
PASSWORDS = ("multihost-test-secret-0123", "multihost-notes-secret-4567")
ADMIN = "runuser -u postgres -- psql -XAtq -h /var/run/postgresql -p 6432 -U pgbouncer pgbouncer -c %s"


def admin(host, command):
    """Rows of an admin console command, as dicts."""
    out = host.check_output(ADMIN.replace("-XAtq", "-XAq --csv"), command)
    head, *rows = out.splitlines()
    names = head.split(",")
    return [dict(zip(names, row.split(","))) for row in rows]


def main_pid(host):
    return host.check_output("systemctl show -p MainPID --value pgbouncer")


def app_errors_since(host, since):
    return host.run("journalctl -u fastapi-app -u notes --since @%s --no-pager | grep -ci 'prepared statement'",
                    str(int(since))).stdout.strip()


def closed_by_pgbouncer_since(host, since):
    """Client connections PgBouncer itself closed (any reason but the client's own request)."""
    out = host.check_output("journalctl -u pgbouncer --since @%s --no-pager -o cat", str(int(since)))
    return [line for line in out.splitlines() if "closing because" in line and "client close request" not in line]


def test_apps_connect_to_pgbouncer_on_loopback_and_it_listens_nowhere_else(host):
    assert host.socket("tcp://127.0.0.1:6432").is_listening
    assert not host.socket("tcp://0.0.0.0:6432").is_listening
    env = host.file("/opt/fastapi-app/current/app.env").content_string
    assert "FASTPG_DATABASE_URL=postgresql+asyncpg://fastpg@127.0.0.1:6432/fastpg" in env
    assert "PGSSLMODE" not in env  # loopback; PgBouncer carries the TLS to the database
    assert "prepared_statement_name_func" in host.file("/opt/fastapi-app/current/app/database.py").content_string
    direct = remote("fastpg-app2").file("/opt/fastapi-app/current/app/database.py").content_string
    assert 'CONNECT_ARGS = {"timeout": CONNECT_TIMEOUT}\n' in direct and "prepared_statement_name_func" not in direct


def test_pgbouncer_holds_verifiers_not_passwords(host):
    users = host.file("/etc/pgbouncer/userlist.txt")
    assert (users.user, users.group, users.mode) == ("root", "postgres", 0o640)
    content = users.content_string
    assert '"fastpg" "SCRAM-SHA-256$4096:' in content and '"notes" "SCRAM-SHA-256$4096:' in content
    for f in ("/etc/pgbouncer/userlist.txt", "/etc/pgbouncer/pgbouncer.ini", "/etc/pgbouncer/pg_hba.conf"):
        text = host.file(f).content_string
        assert not any(p in text for p in PASSWORDS), f


def test_pgbouncer_reaches_postgresql_over_verified_tls_only(host):
    ini = host.file("/etc/pgbouncer/pgbouncer.ini").content_string
    assert "server_tls_sslmode = verify-full" in ini
    db = remote("fastpg-db")
    address = host.check_output("ip -4 -o addr show scope global").split()[3].split("/")[0]
    q = ("SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_ssl s "
         f"JOIN pg_stat_activity a USING (pid) WHERE a.client_addr = '{address}'")
    host.check_output("python3 -c %s", "import urllib.request;urllib.request.urlopen('http://127.0.0.1:8000/health')")
    with_tls, without = db.check_output("runuser -u postgres -- psql -XAtq -c %s", q).split("|")
    assert int(with_tls) > 0 and int(without) == 0


def test_admin_console_is_on_the_socket_only(host):
    assert admin(host, "SHOW POOLS")
    tcp = host.run("PGPASSWORD=x psql -XAtq -w -h 127.0.0.1 -p 6432 -U pgbouncer pgbouncer -c 'SHOW POOLS'")
    assert tcp.rc != 0 and "SHOW POOLS" not in tcp.stdout
    app_user = host.run("PGPASSWORD=%s psql -XAtq -w -h 127.0.0.1 -p 6432 -U fastpg pgbouncer -c 'SHOW POOLS'",
                        PASSWORDS[0])
    assert app_user.rc != 0, app_user.stdout


def test_load_through_pgbouncer_has_no_prepared_statement_error(host):
    since = time.time()
    before = {r["database"]: int(r["total_xact_count"]) for r in admin(host, "SHOW STATS")}
    with SteadyLoad(container_address("fastpg-app1"), clients=60, pause_s=0) as load:
        time.sleep(20)
        servers = [r for r in admin(host, "SHOW SERVERS") if r["database"] == "fastpg"]
        clients = [r for r in admin(host, "SHOW CLIENTS") if r["database"] == "fastpg"]
    after = {r["database"]: int(r["total_xact_count"]) for r in admin(host, "SHOW STATS")}
    errors = app_errors_since(host, since)
    print(f"\nthrough PgBouncer: {load.summary()}; {after['fastpg'] - before['fastpg']} transactions on "
          f"{len(servers)} server connections for {len(clients)} app connections; "
          f"prepared-statement errors in the apps' logs: {errors}")
    assert load.ok > 1000 and load.failed == 0
    assert errors == "0"
    # Many app connections share pgbouncer_default_pool_size (8) server connections (+ the reserve).
    assert len(servers) <= 8 + 5 < len(clients)
    assert after["fastpg"] - before["fastpg"] >= load.ok // 2


def test_a_setting_change_reloads_pgbouncer_without_dropping_a_client(host):
    pid = main_pid(host)
    since = time.time()
    size = {r["key"]: r["value"] for r in admin(host, "SHOW CONFIG")}["default_pool_size"]
    new = "9" if size == "10" else "10"
    with SteadyLoad(container_address("fastpg-app1")) as load:
        # Extra vars: the scenario sets 8 in fastpg-app1's host_vars.
        rc, out = playbook("fastpg.stack.app", extra={"pgbouncer_default_pool_size": int(new)},
                           args=("--limit", "fastpg-app1"))
    assert rc == 0, out[-3000:]
    closed = closed_by_pgbouncer_since(host, since)
    print(f"\nreload (default_pool_size {size} -> {new}): {load.summary()}; connections PgBouncer closed: "
          f"{len(closed)}")
    assert "RUNNING HANDLER [fastpg.stack.pgbouncer : Reload pgbouncer]" in out
    assert load.failed == 0
    assert main_pid(host) == pid
    assert {r["key"]: r["value"] for r in admin(host, "SHOW CONFIG")}["default_pool_size"] == new
    # Every connection that ended was ended by its client (the apps' pools), none by PgBouncer.
    assert not closed, closed[:5]


def test_a_configuration_pgbouncer_refuses_never_goes_live(host):
    ini = hashlib.sha256(host.file("/etc/pgbouncer/pgbouncer.ini").content).hexdigest()
    pid = main_pid(host)
    with SteadyLoad(container_address("fastpg-app1")) as load:
        rc, out = playbook("fastpg.stack.app", extra={"pgbouncer_listen_addr": "256.1.1.1"},
                           args=("--limit", "fastpg-app1"))
    flat = re.sub(r"\s+", " ", out)
    assert rc != 0 and "getaddrinfo('256.1.1.1'" in flat, flat[-3000:]
    reason = re.search(r"FATAL getaddrinfo[^\\]{0,60}", flat)[0]
    print(f"\nrefused listen_addr 256.1.1.1: {reason}; {load.summary()}")
    assert hashlib.sha256(host.file("/etc/pgbouncer/pgbouncer.ini").content).hexdigest() == ini
    assert main_pid(host) == pid and load.failed == 0


def test_no_request_fails_once_a_pgbouncer_restart_has_ended(host):
    with SteadyLoad(container_address("fastpg-app1")) as load:
        time.sleep(3)
        began = time.monotonic()
        host.check_output("systemctl restart pgbouncer")
        ended = time.monotonic()
        time.sleep(10)
    # A request the restart broke may take a moment to come back failed.
    grace = 1.0
    after = load.last_failure is not None and load.last_failure > ended + grace
    print(f"\nPgBouncer restart ({ended - began:.2f} s): {load.summary()}; failures after it ended: "
          f"{'yes' if after else 'none'}")
    assert load.ok > 0 and not after
    assert host.service("pgbouncer").is_running
