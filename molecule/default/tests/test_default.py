"""Behaviour of the whole stack on one host: PostgreSQL 17, the app, and what joins them."""

import hashlib
import json
import re

import pytest

APP_DIR = "/opt/fastapi-app"
ENV_FILE = f"{APP_DIR}/current/app.env"
SERVICE = "fastapi-app"

def psql_as_app(host, sql, password_expr="$FASTPG_DATABASE_PASSWORD"):
    cmd = (
        "runuser -u fastapi -- sh -c "
        f"'set -a; . {ENV_FILE}; PGPASSWORD=\"{password_expr}\" "
        f"psql -XAtq -h 127.0.0.1 -U fastpg -d fastpg -c \"{sql}\"'"
    )
    return host.run(cmd)


def expected_settings(v):
    """pgtune-style values computed independently from the inputs the scenario fixes."""
    mem = int(v["postgresql_memory_mb"])
    conns = int(v["postgresql_max_connections"])
    sb_mb = mem // 4
    wal_kb = min(max((sb_mb * 1024 * 3 // 100) // 8 * 8, 32), 16384)
    expected = {
        "max_connections": str(conns),
        "shared_buffers": f"{sb_mb}MB",
        "effective_cache_size": f"{mem * 3 // 4}MB",
        "maintenance_work_mem": f"{min(mem // 16, 2048)}MB",
        "work_mem": f"{max((mem - sb_mb) * 1024 // (conns * 3), 64)}kB",
        "wal_buffers": f"{wal_kb}kB",
        "checkpoint_completion_target": "0.9",
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        "default_statistics_target": "100",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "password_encryption": "scram-sha-256",
        "listen_addresses": "localhost",
    }
    expected.update({k: str(val) for k, val in v.get("postgresql_settings", {}).items()})
    return expected


# --- PostgreSQL ---------------------------------------------------------------------------

def test_postgresql_running_and_enabled(host, layout):
    svc = host.service(layout["service"])
    assert svc.is_running
    assert svc.is_enabled


def test_server_version_is_17(sql):
    assert re.match(r"^17\.\d+", sql("SHOW server_version"))


TUNED = sorted(expected_settings({"postgresql_memory_mb": 1024, "postgresql_max_connections": 100}))


@pytest.mark.parametrize("name", TUNED)
def test_setting_matches_computed_or_overridden_value(sql, hostvars, name):
    want = expected_settings(hostvars)[name]
    got = sql(
        "SELECT CASE WHEN unit IS NULL OR vartype <> 'integer' OR unit = 'ms' "
        "THEN setting ELSE pg_size_pretty(pg_size_bytes(current_setting(name))) END, "
        f"current_setting(name) FROM pg_settings WHERE name = '{name}'"
    )
    raw, shown = got.split("|")
    if re.fullmatch(r"\d+(kB|MB|GB)", want):
        assert sql(f"SELECT pg_size_bytes(current_setting('{name}')) = pg_size_bytes('{want}')") == "t", (
            f"{name}: server has {shown}, expected {want}")
    else:
        assert raw == want or shown == want, f"{name}: server has {shown}, expected {want}"


def test_overrides_beat_computed_values(sql, hostvars):
    assert hostvars["postgresql_settings"]["random_page_cost"] == 1.5
    assert sql("SHOW random_page_cost") == "1.5"
    assert sql("SHOW log_min_duration_statement") == "500ms"


def test_settings_live_in_the_roles_own_include_file(host, layout):
    own = host.file(f"{layout['include_dir']}/50-fastpg.conf")
    assert own.exists and own.user == "postgres" and own.mode == 0o640
    assert "Ansible managed" in own.content_string
    main = host.file(layout["main_conf"]).content_string
    assert "fastpg" not in main
    assert "shared_buffers = '" not in main


def test_cluster_is_utf8_with_checksums(sql):
    assert sql("SHOW server_encoding") == "UTF8"
    assert sql("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = 'fastpg'") == "UTF8"
    assert sql("SHOW data_checksums") == "on"


def test_host_has_no_locale_configured(host, layout):
    """The UTF8 result above must not come from the image: a minimal image has no locale."""
    if layout["family"] != "debian":
        pytest.skip("the locale check is about the minimal Debian image")
    assert not host.file("/etc/default/locale").exists or "UTF-8" not in host.file(
        "/etc/default/locale").content_string


def test_app_user_owns_database_and_so_its_public_schema(sql):
    """PostgreSQL 15+: public belongs to pg_database_owner, which is the database's owner."""
    assert sql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'fastpg'") == "fastpg"
    assert sql("SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'public'",
               database="fastpg") == "pg_database_owner"
    assert sql("SELECT has_schema_privilege('fastpg', 'public', 'CREATE')", database="fastpg") == "t"


def test_app_password_is_scram_hashed(sql):
    assert sql("SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'fastpg'") == "t"


def test_app_user_connects_over_tcp_and_creates_a_table(host):
    out = psql_as_app(host, "CREATE TABLE verify_probe (id int); DROP TABLE verify_probe; SELECT current_user")
    assert out.rc == 0, out.stderr
    assert out.stdout.strip() == "fastpg"


def test_wrong_password_is_refused(host):
    out = psql_as_app(host, "SELECT 1", password_expr="not-the-password")
    assert out.rc != 0
    assert "password authentication failed" in out.stderr


def test_postgres_superuser_cannot_log_in_over_tcp(host):
    out = host.run("runuser -u postgres -- psql -XAtq -w -h 127.0.0.1 -d postgres -c 'SELECT 1'")
    assert out.rc != 0
    assert "no pg_hba.conf entry" in out.stderr


def test_postgresql_listens_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:5432").is_listening
    assert not host.socket("tcp://0.0.0.0:5432").is_listening


# --- The app service ----------------------------------------------------------------------

def test_app_service_running_and_enabled(host):
    svc = host.service(SERVICE)
    assert svc.is_running
    assert svc.is_enabled


def test_the_port_belongs_to_the_socket_unit(host, hostvars):
    sock = host.service(f"{SERVICE}.socket")
    assert sock.is_running and sock.is_enabled
    listen = host.check_output(f"systemctl show -P Listen {SERVICE}.socket")
    address = hostvars.get('fastapi_app_bind_address', '127.0.0.1')
    assert listen.startswith(f"{address}:{hostvars.get('fastapi_app_port', 8000)} ")


def test_the_app_serves_from_a_release_named_by_its_content(host):
    assert re.fullmatch(r"releases/[0-9a-f]{12}", host.check_output(f"readlink {APP_DIR}/current"))
    venv = host.check_output(f"readlink {APP_DIR}/current/venv")
    assert re.fullmatch(rf"{APP_DIR}/venvs/[0-9a-f]{{12}}", venv)
    assert host.check_output(f"systemctl show -P WorkingDirectory {SERVICE}") == f"{APP_DIR}/current/app"
    assert host.file(f"{APP_DIR}/current/app/main.py").exists


def test_app_runs_as_app_user_with_configured_workers(host, hostvars):
    main_pid = host.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    main = host.process.get(pid=int(main_pid))
    assert main.user == "fastapi"
    assert "uvicorn" in main.args
    workers = [p for p in host.process.filter(ppid=int(main_pid)) if "multiprocessing.spawn" in p.args]
    assert len(workers) == int(hostvars["fastapi_app_workers"])
    assert all(w.user == "fastapi" for w in workers)


def test_unit_orders_app_after_postgresql(host, layout):
    after = host.check_output(f"systemctl show -p After --value {SERVICE}").split()
    if layout["family"] == "debian":
        # Every Debian cluster orders itself before postgresql.service, which the app follows.
        assert "postgresql.service" in after
        before = host.check_output(f"systemctl show -p Before --value {layout['service']}").split()
        assert "postgresql.service" in before
    else:
        assert f"{layout['service']}.service" in after


def test_server_reports_no_error_in_the_files_it_read(sql):
    assert sql("SELECT count(*) FROM pg_file_settings WHERE error IS NOT NULL") == "0"
    assert sql("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == "0"


def test_no_copy_of_a_replaced_file_is_left_behind(host, layout):
    left = host.check_output(f"find {layout['conf_dir']} -name '*~'")
    assert left == "", left


def test_unit_exposure_score_is_at_most_2(host):
    out = host.check_output(f"systemd-analyze security --no-pager {SERVICE}.service")
    score = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", out).group(1))
    assert score <= 2.0, out


def test_app_cannot_write_its_own_code(host):
    out = host.run(f"runuser -u fastapi -- touch {APP_DIR}/current/app/intruder.py")
    assert out.rc != 0


def test_only_root_and_the_app_group_can_reach_the_code(host):
    base = host.file(APP_DIR)
    assert (base.user, base.group, base.mode) == ("root", "fastapi", 0o750)
    assert host.run(f"runuser -u nobody -- ls {APP_DIR}/current/app").rc != 0
    owners = host.check_output(f"find {APP_DIR}/current/app -not -user root | head -5")
    assert owners == "", owners


def test_venv_records_the_requirements_it_was_built_from(host):
    stamp = host.file(f"{APP_DIR}/current/venv/fastpg-requirements.txt")
    venv = host.check_output(f"readlink {APP_DIR}/current/venv")
    assert (stamp.user, stamp.mode) == ("root", 0o644)
    # The virtualenv is named by the sha1 of the requirements it was built from.
    assert venv.endswith("/" + hashlib.sha1(stamp.content_string.encode()).hexdigest()[:12])
    assert "fastapi==" in stamp.content_string
    assert host.run(f"{APP_DIR}/current/venv/bin/pip check").rc == 0


def test_app_user_has_no_login_shell(host):
    assert host.user("fastapi").shell in ("/usr/sbin/nologin", "/bin/false")


def test_health_reports_database_connected(http):
    r = http("GET", "/health")
    assert r["status"] == 200
    assert r["body"]["status"] == "healthy"
    assert r["body"]["database"] == "connected"
    assert float(r["headers"]["x-process-time"]) >= 0


def test_post_then_get_user(http):
    import time

    name = f"verify{int(time.time() * 1000)}"
    created = http("POST", "/users/", {"username": name, "email": f"{name}@example.com",
                                       "password": "correct horse battery"})
    assert created["status"] == 201, created
    uid = created["body"]["id"]
    fetched = http("GET", f"/users/{uid}")
    assert fetched["status"] == 200
    assert fetched["body"] == created["body"]
    assert "password" not in json.dumps(fetched["body"])
    again = http("POST", "/users/", {"username": name, "email": f"{name}@example.com",
                                     "password": "correct horse battery"})
    assert again["status"] == 400
    assert http("GET", "/users/999999999")["status"] == 404


def test_pool_stats_report_inventory_pool_size(http, hostvars):
    r = http("GET", "/pool-stats")
    assert r["status"] == 200
    assert r["body"]["pool_size"] == int(hostvars["fastapi_app_pool_size"])
    assert r["body"]["max_overflow"] == int(hostvars["fastapi_app_max_overflow"])


def test_database_py_holds_inventory_pool_values(host, hostvars):
    content = host.file(f"{APP_DIR}/current/app/database.py").content_string
    for var, const in [
        ("fastapi_app_pool_size", "POOL_SIZE"),
        ("fastapi_app_max_overflow", "MAX_OVERFLOW"),
        ("fastapi_app_pool_timeout", "POOL_TIMEOUT"),
        ("fastapi_app_pool_recycle", "POOL_RECYCLE"),
    ]:
        assert f"{const} = {int(hostvars[var])}\n" in content
    # Off unless the inventory turns it on (the role's default).
    assert f"POOL_PRE_PING = {bool(hostvars.get('fastapi_app_pool_pre_ping', False))}\n" in content
    # asyncpg's connect gets the inventory's limit (the role's default: 10 s), not its own minute.
    assert f"CONNECT_TIMEOUT = {int(hostvars.get('fastapi_app_db_connect_timeout', 10))}\n" in content
    assert 'CONNECT_ARGS = {"timeout": CONNECT_TIMEOUT' in content


# --- Secrets ------------------------------------------------------------------------------

def test_env_file_is_private_to_the_app_user(host):
    f = host.file(ENV_FILE)
    assert f.user == "fastapi"
    assert f.mode in (0o600, 0o640)


# Runs inside the container: reads the password from the env file itself, so the secret never
# appears on a command line, then lists world-readable files that contain it.
LEAK_SCAN = r"""
import os, re, stat, sys
env = open(sys.argv[1]).read()
pw = re.search(r'^FASTPG_DATABASE_PASSWORD="((?:[^"\\]|\\.)*)"$', env, re.M).group(1)
pw = re.sub(r'\\(.)', r'\1', pw).encode()
assert len(pw) >= 8
leaks = []
for top in sys.argv[2:]:
    for root, _, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_mode & stat.S_IROTH:
                with open(path, "rb") as fh:
                    if pw in fh.read():
                        leaks.append(path)
print("\n".join(leaks))
"""


def test_no_world_readable_file_contains_the_password(host, layout):
    out = host.check_output(
        "python3 -c %s %s %s %s %s",
        LEAK_SCAN, ENV_FILE, APP_DIR, "/etc/systemd/system", layout["conf_dir"],
    )
    assert out == "", f"password found in world-readable files: {out}"


def test_password_is_not_in_database_py(host, hostvars):
    content = host.file(f"{APP_DIR}/current/app/database.py").content_string
    assert hostvars["fastpg_db_password"] not in content
    assert "FASTPG_DATABASE_PASSWORD" in content
