"""One database host, two app hosts, one outsider on a private network."""

import json
import os

import pytest
import testinfra

INVENTORY = os.environ.get("MOLECULE_INVENTORY_FILE")
testinfra_hosts = ["ansible://fastpg-db"]


def remote(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=INVENTORY)


APPS = {"fastpg-app1": 6, "fastpg-app2": 9}

HEALTH = (
    "import json,urllib.request;"
    "r=urllib.request.urlopen('http://127.0.0.1:8000/%s',timeout=10);"
    "print(json.dumps({'status':r.status,'body':json.loads(r.read())}))"
)


def address_of(name):
    out = remote(name).check_output("ip -4 -o addr show scope global")
    return out.split()[3].split("/")[0]


def test_postgresql_listens_on_loopback_and_its_own_address_only(host):
    own = address_of("fastpg-db")
    assert host.socket(f"tcp://{own}:5432").is_listening
    assert host.socket("tcp://127.0.0.1:5432").is_listening
    assert not host.socket("tcp://0.0.0.0:5432").is_listening


def test_backups_go_to_the_database_hosts_own_repository(host):
    conf = host.file("/etc/pgbackrest/pgbackrest.conf").content_string
    assert "repo1-path=/var/lib/pgbackrest" in conf and "repo1-host" not in conf and "tls-server" not in conf
    repo = json.loads(host.check_output("runuser -u postgres -- pgbackrest --stanza=main info --output=json"))[0]
    assert [b["type"] for b in repo["backup"]][:1] == ["full"]
    assert host.service("fastpg-backup-full.timer").is_running and host.service("fastpg-backup-diff.timer").is_running
    assert not host.service("pgbackrest").is_running
    host.check_output("runuser -u postgres -- pgbackrest --stanza=main check")
    assert host.check_output("runuser -u postgres -- psql -XAtq -c 'SHOW archive_mode'") == "on"


def test_pg_hba_admits_the_app_hosts_only_each_app_to_its_own_database(host):
    hba = host.file("/etc/postgresql/17/main/pg_hba.conf").content_string
    rules = [line.split() for line in hba.splitlines() if line.startswith("host")]
    assert sorted((rule[1], rule[2], rule[3]) for rule in rules) == sorted(
        (name, name, f"{address_of(a)}/32") for a in APPS for name in ("fastpg", "notes"))
    assert all(rule[0] == "hostssl" and rule[4] == "scram-sha-256" for rule in rules)


def test_apps_connect_over_tls_only(host):
    q = ("SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_ssl s "
         "JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'fastpg'")
    with_tls, without = host.check_output("runuser -u postgres -- psql -XAtq -c %s", q).split("|")
    assert int(with_tls) > 0 and int(without) == 0


def test_app_env_asks_for_verify_full():
    # fastpg-app2's apps connect directly (fastpg-app1's through PgBouncer: test_pgbouncer.py).
    env = remote("fastpg-app2").file("/opt/fastapi-app/current/app.env").content_string
    assert "PGSSLMODE=verify-full" in env
    assert "PGSSLROOTCERT=/opt/fastapi-app/db-ca.pem" in env


def test_plain_connection_from_an_app_host_is_refused():
    out = remote("fastpg-app1").run(
        "/opt/fastapi-app/current/venv/bin/python -c %s",
        "import asyncio,asyncpg\n"
        "async def main():\n"
        "    try:\n"
        "        await asyncpg.connect(host='fastpg-db', user='fastpg', database='fastpg', password='x', ssl=False)\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e)\n"
        "asyncio.run(main())",
    )
    assert "no pg_hba.conf entry" in out.stdout and "no encryption" in out.stdout, out.stdout + out.stderr


def test_outsider_is_refused_by_pg_hba():
    out = remote("fastpg-outsider").run(
        "psql -XAtq -w -h fastpg-db -U fastpg -d fastpg -c 'SELECT 1'")
    assert out.rc != 0
    assert "no pg_hba.conf entry" in out.stderr


@pytest.mark.parametrize("app", sorted(APPS))
def test_app_host_is_admitted_and_asked_for_its_password(app):
    node = remote(app)
    # The app hosts have no psql; asyncpg from the app's venv knocks instead.
    out = node.run(
        "/opt/fastapi-app/current/venv/bin/python -c %s",
        "import asyncio,asyncpg\n"
        "async def main():\n"
        "    try:\n"
        "        await asyncpg.connect(host='fastpg-db', user='fastpg', database='fastpg', password='wrong')\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__, e)\n"
        "asyncio.run(main())",
    )
    assert "password authentication failed" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("app", sorted(APPS))
def test_each_app_is_healthy_with_the_database_connected(app):
    r = json.loads(remote(app).check_output("python3 -c %s", HEALTH % "health"))
    assert r["status"] == 200
    assert r["body"]["database"] == "connected"


@pytest.mark.parametrize("app,size", sorted(APPS.items()))
def test_host_var_beats_group_var_beats_role_default(app, size):
    node = remote(app)
    r = json.loads(node.check_output("python3 -c %s", HEALTH % "pool-stats"))
    assert r["body"]["pool_size"] == size
    assert r["body"]["max_overflow"] == 30
    content = node.file("/opt/fastapi-app/current/app/database.py").content_string
    assert f"POOL_SIZE = {size}\n" in content
    assert "MAX_OVERFLOW = 30\n" in content


CREATE_USER = (
    "import json,sys,urllib.request;"
    "req=urllib.request.Request('http://127.0.0.1:8000/users/',method='POST',"
    "data=json.dumps({'username':sys.argv[1],'email':sys.argv[1]+'@example.com',"
    "'password':'multihost-pass'}).encode(),headers={'Content-Type':'application/json'});"
    "print(urllib.request.urlopen(req,timeout=10).read().decode())"
)


def test_a_user_created_on_one_app_host_is_read_on_the_other():
    import time

    name = f"mh{int(time.time() * 1000)}"
    created = json.loads(remote("fastpg-app1").check_output("python3 -c %s %s", CREATE_USER, name))
    fetched = json.loads(remote("fastpg-app2").check_output("python3 -c %s", HEALTH % f"users/{created['id']}"))
    assert fetched["status"] == 200
    assert fetched["body"]["username"] == name


# --- A second app beside the default one: a user's own app (fastpg_apps in molecule.yml) ---

import hashlib  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]
NOTES = ROOT / "tests" / "apps" / "notes"
NOTES_SECRET = "notes-secret-key-9Zk4"


def notes_entry():
    """The notes entry of the inventory, as the app hosts have it."""
    exe = Path(sys.executable).parent / "ansible-inventory"
    out = subprocess.run([str(exe), "-i", INVENTORY, "--host", "fastpg-app1"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["fastpg_apps"][0]


def get(app, path, port=8001):
    url = HEALTH.replace("8000/%s", f"{port}%s") % path
    return json.loads(remote(app).check_output("python3 -c %s", url))


def current(app):
    return remote(app).check_output("readlink /opt/notes/current")


@pytest.mark.parametrize("app", sorted(APPS))
def test_own_app_serves_from_its_subdirectory_with_its_own_health_path(app):
    assert get(app, "/healthz") == {"status": 200, "body": {"ok": True}}
    root = remote(app).check_output("ls /opt/notes/current/app").split()
    assert "pyproject.toml" in root and "frontend" not in root and "backend" not in root
    # Beside it, the default app on its own port.
    assert get(app, "/health", 8000)["body"]["database"] == "connected"


@pytest.mark.parametrize("app", sorted(APPS))
def test_own_app_runs_as_its_own_service_and_user_with_its_own_pool(app):
    node = remote(app)
    assert node.service("notes").is_running and node.service("notes").is_enabled
    assert node.check_output("systemctl show -p User --value notes") == "notes"
    assert node.check_output("systemctl show -p WorkingDirectory --value notes") == "/opt/notes/current/app"
    database_py = node.file("/opt/notes/current/app/app/database.py").content_string
    assert "POOL_SIZE = 2\n" in database_py and "MAX_OVERFLOW = 2\n" in database_py


@pytest.mark.parametrize("app", sorted(APPS))
def test_own_app_is_configured_by_environment_variables_only(app):
    digest = hashlib.sha256(NOTES_SECRET.encode()).hexdigest()[:12]
    assert get(app, "/greeting")["body"] == {
        "greeting": "hello from fastpg", "database": "notes", "secret_sha256_12": digest}
    env = remote(app).file("/opt/notes/current/app.env")
    assert (env.user, env.group, env.mode) == ("notes", "notes", 0o600)
    assert "DATABASE_URL=\"postgresql+psycopg://notes:" in env.content_string
    # fastpg-app1's apps go through PgBouncer on its loopback.
    where = "127.0.0.1:6432" if app == "fastpg-app1" else "fastpg-db:5432"
    assert f"@{where}/notes\"" in env.content_string
    # The default app's file has none of it.
    assert NOTES_SECRET not in remote(app).file("/opt/fastapi-app/current/app.env").content_string


@pytest.mark.parametrize("app", sorted(APPS))
def test_own_app_installs_from_pyproject(app):
    reqs = remote(app).file("/opt/notes/current/venv/fastpg-requirements.txt").content_string
    assert "# From the app (pyproject.toml)." in reqs and "psycopg[binary]==3.3.9" in reqs
    assert remote(app).run("/opt/notes/current/venv/bin/python -c 'import psycopg'").rc == 0


def pre_start_units(app):
    """The transient units the pre-start commands ran in (systemd-run), from the journal."""
    out = remote(app).run("journalctl --no-pager -o short-unix -g %s", r"Started run-.* notes pre-start: ").stdout
    return [(float(line.split()[0]), line.split(" notes pre-start: ")[1].rstrip(".")) for line in out.splitlines()
            if " notes pre-start: " in line]


def test_pre_start_ran_once_on_the_first_host_before_any_switch(host):
    ran = pre_start_units("fastpg-app1")
    assert [command for _, command in ran] == ["alembic upgrade head", "python app/seed.py"], ran
    assert pre_start_units("fastpg-app2") == []
    # Before the first host's notes service first started.
    started = remote("fastpg-app1").check_output(
        "journalctl --no-pager -o short-unix -u notes.service -g %s", "^Started")
    assert ran[-1][0] < float(started.splitlines()[0].split()[0])
    # Its migrations (in their own version table) and initial data are in its database.
    assert get("fastpg-app2", "/notes")["body"] == [{"id": 1, "text": "welcome"}]
    tables = host.check_output("runuser -u postgres -- psql -XAtq -d notes -c %s",
                               "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
                               "WHERE schemaname = 'public'")
    assert tables == "notes,notes_alembic_version"


def test_each_app_connects_as_its_own_role_to_its_own_database(host):
    q = ("SELECT DISTINCT usename || '@' || datname FROM pg_stat_activity "
         "WHERE usename IN ('fastpg', 'notes') ORDER BY 1")
    assert host.check_output("runuser -u postgres -- psql -XAtq -c %s", q).split() == ["fastpg@fastpg", "notes@notes"]


def test_own_app_login_is_refused_by_the_default_apps_database():
    out = remote("fastpg-app1").run(
        "/opt/notes/current/venv/bin/python -c %s",
        "import psycopg\n"
        "try:\n"
        "    psycopg.connect(host='fastpg-db', user='notes', dbname='fastpg', password='x', sslmode='require')\n"
        "except Exception as e:\n"
        "    print(type(e).__name__, e)\n",
    )
    assert "no pg_hba.conf entry" in out.stdout and 'database "fastpg"' in out.stdout, out.stdout + out.stderr


def playbook(name, app_vars=None, extra=None, args=()):
    """Runs a playbook of the collection. app_vars are given as the app hosts' variables in a
    second inventory source (above the scenario's group_vars): as extra vars (-e) they would
    outrank every play's values and reach every app of the host."""
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    eph = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if eph and (Path(eph) / "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(Path(eph) / "ansible.cfg")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / "collections"))
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    exe = Path(sys.executable).parent / "ansible-playbook"
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as overlay:
        json.dump({"all": {"children": {"appservers": {"hosts": {app: app_vars or {} for app in APPS}}}}}, overlay)
        overlay.flush()
        done = subprocess.run([str(exe), "-i", INVENTORY, "-i", overlay.name, name, "-e", json.dumps(extra or {}),
                               *args],
                              env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr


def test_rollback_names_the_apps_it_accepts():
    rc, out = playbook("fastpg.stack.rollback", extra={"fastpg_rollback_app": "nope"})
    assert rc != 0
    assert "fastpg_rollback_app is nope; accepted on fastpg-app1: fastapi-app, notes" in re.sub(r"\s+", " ", out)


def test_a_release_that_fails_stops_the_rollout_before_the_next_host(tmp_path):
    broken = tmp_path / "notes"
    shutil.copytree(NOTES, broken)
    main = broken / "backend" / "app" / "main.py"
    main.write_text(main.read_text().replace("from app import config", "from app import settings"))
    before = {app: current(app) for app in APPS}
    # The application tier's own playbook: a deploy that changes only the app.
    rc, out = playbook("fastpg.stack.app", {"fastpg_apps": [dict(notes_entry(), source=str(broken))]})
    flat = re.sub(r"\s+", " ", out)
    print(re.search(r"Release \w+ failed its trial on fastpg-app1.{0,400}", flat)[0])
    assert rc != 0
    assert "ImportError: cannot import name 'settings' from 'app'" in out
    assert f"release {before['fastpg-app1'].split('/')[-1]} goes on serving" in flat
    # The first host kept its release; the second was not touched at all.
    assert {app: current(app) for app in APPS} == before
    assert not re.search(r"^(changed|ok): \[fastpg-app2\]", out.split("PLAY [Application tier")[-1], re.M)
    for app in APPS:
        assert get(app, "/healthz")["status"] == 200
    # The run staged the app's environment file with its secret, and did not print it.
    assert NOTES_SECRET not in out and "multihost-notes-secret" not in out


def test_an_upgrade_to_a_version_the_host_cannot_install_changes_nothing(host):
    # Debian 13's own archive has PostgreSQL 17 only (the backups scenario makes the upgrade).
    before = host.check_output("stat -c %i /var/lib/postgresql/17/main")
    rc, out = playbook("fastpg.stack.upgrade", extra={"fastpg_upgrade_confirm": "fastpg-db", "fastpg_upgrade_to": 18})
    flat = " ".join(out.split())
    print(f"upgrade refused: {flat[flat.find('msg:'):][:220]}")
    assert rc != 0 and "postgresql_version 18 is not available from the distro repository on Debian 13" in flat
    assert "Stop the apps" not in flat and "Take a full backup" not in flat
    assert host.check_output("stat -c %i /var/lib/postgresql/17/main") == before
    assert not host.exists("/usr/lib/postgresql/18/bin/postgres")


def test_a_restore_from_the_hosts_own_repository_brings_every_app_back(host):
    # The repository on the database host itself: its own timers pause and resume, and the
    # restored cluster's first backup is taken there.
    sql = "runuser -u postgres -- psql -XAtq -d fastpg -c %s"
    host.check_output(sql, "CREATE TABLE restore_marker AS SELECT 42 AS answer")
    before = len(json.loads(host.check_output(
        "runuser -u postgres -- pgbackrest --stanza=main info --output=json"))[0]["backup"])
    rc, out = playbook("fastpg.stack.restore", extra={"fastpg_restore_confirm": "fastpg-db"})
    flat = " ".join(out.split())
    assert rc == 0, out[-3000:]
    assert host.check_output(sql, "SELECT answer FROM restore_marker") == "42"
    after = json.loads(host.check_output("runuser -u postgres -- pgbackrest --stanza=main info --output=json"))[0]
    assert len(after["backup"]) == before + 1 and after["backup"][-1]["type"] == "full"
    assert host.service("fastpg-backup-diff.timer").is_running
    assert re.search(r"The data directory it replaced is at /var/lib/postgresql/before-restore/\S+/17-main", flat)
    for app in APPS:
        assert json.loads(remote(app).check_output("python3 -c %s", HEALTH % "health"))["body"]["database"] == "connected"
