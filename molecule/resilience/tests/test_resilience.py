"""What the drills measured, the secrets, check mode, and how changes are applied."""

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

testinfra_hosts = ["ansible://fastpg-resilience"]

ROOT = Path(__file__).resolve().parents[3]
# The installed collection's playbook (scripts/test.sh), else this checkout's (ansible.cfg).
SITE = "fastpg.stack.site"
DRILLS = "/var/lib/fastpg-drills"
SHARED_VARS = ROOT / "molecule" / "resources" / "inventory" / "group_vars" / "all.yml"
PASSWORD = yaml.safe_load(SHARED_VARS.read_text())["fastpg_db_password"]
# A distinctive piece of the password, free of characters that output escaping changes.
PASSWORD_PIECE = PASSWORD.split(":")[0]


def playbook(*args, inventory=None):
    exe = Path(sys.executable).parent / "ansible-playbook"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    eph = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if eph and (Path(eph) / "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(Path(eph) / "ansible.cfg")
    if "ANSIBLE_COLLECTIONS_PATH" not in env:
        env["ANSIBLE_COLLECTIONS_PATH"] = str(ROOT / "collections")
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    inv = inventory or os.environ["MOLECULE_INVENTORY_FILE"]
    done = subprocess.run([str(exe if exe.exists() else shutil.which("ansible-playbook")), "-i", str(inv),
                           SITE, *args], env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr


def recap(out, host="fastpg-resilience"):
    m = re.search(rf"^{re.escape(host)}\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", out, re.M)
    assert m, out[-3000:]
    return {"ok": int(m[1]), "changed": int(m[2]), "unreachable": int(m[3]), "failed": int(m[4])}


def figures(host, name):
    data = json.loads(host.file(f"{DRILLS}/{name}.json").content_string)
    print(f"{name}: {data}")
    return data


def sql(host, query, db="fastpg"):
    return host.check_output("runuser -u postgres -- psql -XAtq -d %s -c %s", db, query)


def pg_state(host):
    return {
        "postmaster_start": sql(host, "SELECT pg_postmaster_start_time()"),
        "system_identifier": sql(host, "SELECT system_identifier FROM pg_control_system()"),
        "users": int(sql(host, "SELECT count(*) FROM users")),
        "app_pid": host.check_output("systemctl show --property=MainPID --value fastapi-app"),
    }


@pytest.fixture(scope="module")
def baseline(host):
    return pg_state(host)


# --- The drills (side_effect) -------------------------------------------------------------

def test_sigkill_of_uvicorn_recovers_within_5_seconds(host, baseline):
    data = figures(host, "sigkill")
    assert data["healthy"]
    assert data["new_pid"] != data["killed_pid"]
    assert data["recovered_s"] <= 5.0


def test_postgresql_restart_under_load_fails_only_inside_the_restart(host):
    data = figures(host, "load-restart")
    assert data["requests"] == 1000 and data["concurrency"] == 50
    assert data["ok_before_restart"] >= 100, "the load did not run before the restart"
    assert data["ok_after_last_failure"] >= 100, "too few requests after the outage to prove recovery"
    assert data["failed_before_restart"] == 0
    assert data["failed_after_restart"] == 0
    assert data["health_after"] == 200
    assert data["pool_after"]["checked_out"] == 0


def test_container_restart_brings_everything_back_with_the_data(host):
    data = figures(host, "after-restart")
    assert data["seeded"] == 5 and data["found"] == 5
    assert host.service("postgresql@17-main").is_running
    assert host.service("fastapi-app").is_running


# --- Secrets ------------------------------------------------------------------------------

def test_password_was_on_no_command_line_during_the_converge(host):
    log = host.file("/var/log/fastpg-argv.log")
    assert log.exists
    lines = log.content_string.splitlines()
    assert any("ansible" in line.lower() or "python3" in line for line in lines), "the sampler saw nothing"
    assert any("pg_createcluster" in line for line in lines), "the sampler missed the converge"
    assert not [line for line in lines if PASSWORD_PIECE in line]


# --- Check mode ---------------------------------------------------------------------------

def test_check_diff_on_a_converged_host_changes_nothing_and_leaks_nothing(host):
    rc, out = playbook("--check", "--diff", "-vvv", "--limit", "fastpg-resilience")
    assert rc == 0, out[-3000:]
    assert recap(out)["changed"] == 0
    assert PASSWORD_PIECE not in out


def test_check_mode_on_a_fresh_host_does_not_fail(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_connection": "community.docker.docker"},
        "children": {"dbservers": {"hosts": {"fastpg-fresh": None}},
                     "appservers": {"hosts": {"fastpg-fresh": None}}}}}))
    (tmp_path / "group_vars").mkdir()
    shutil.copy(SHARED_VARS, tmp_path / "group_vars" / "all.yml")
    rc, out = playbook("--check", inventory=inv)
    assert rc == 0, out[-3000:]
    assert recap(out, "fastpg-fresh")["failed"] == 0
    assert "PostgreSQL is not installed yet" in out


# --- Changes ------------------------------------------------------------------------------

def test_changed_pool_setting_restarts_only_the_app(host):
    before = pg_state(host)
    rc, out = playbook("-vvv", "-e", "fastapi_app_pool_size=8", "--limit", "fastpg-resilience")
    assert rc == 0, out[-3000:]
    assert PASSWORD_PIECE not in out
    after = pg_state(host)
    assert after["app_pid"] != before["app_pid"]
    assert after["postmaster_start"] == before["postmaster_start"]
    stats = json.loads(host.check_output("python3 -c %s",
                                         "import urllib.request;print(urllib.request.urlopen("
                                         "'http://127.0.0.1:8000/pool-stats').read().decode())"))
    assert stats["pool_size"] == 8


SETTINGS = yaml.safe_load(SHARED_VARS.read_text())["postgresql_settings"]


def test_changed_reloadable_setting_reloads_without_restart(host):
    before = pg_state(host)
    settings = dict(SETTINGS, work_mem="3MB")
    rc, out = playbook("-e", json.dumps({"postgresql_settings": settings, "fastapi_app_pool_size": 8}),
                       "--limit", "fastpg-resilience")
    assert rc == 0, out[-3000:]
    assert sql(host, "SHOW work_mem") == "3MB"
    after = pg_state(host)
    assert after["postmaster_start"] == before["postmaster_start"]
    assert after["app_pid"] == before["app_pid"]


def test_changed_shared_buffers_restarts_postgresql(host):
    before = pg_state(host)
    settings = dict(SETTINGS, work_mem="3MB", shared_buffers="192MB")
    rc, out = playbook("-e", json.dumps({"postgresql_settings": settings, "fastapi_app_pool_size": 8}),
                       "--limit", "fastpg-resilience")
    assert rc == 0, out[-3000:]
    assert sql(host, "SHOW shared_buffers") == "192MB"
    assert sql(host, "SELECT count(*) FROM pg_settings WHERE pending_restart") == "0"
    assert pg_state(host)["postmaster_start"] != before["postmaster_start"]


def test_no_run_reinitialised_the_cluster_or_lost_a_row(host, baseline):
    now = pg_state(host)
    assert now["system_identifier"] == baseline["system_identifier"]
    assert now["users"] >= baseline["users"]
    assert figures(host, "after-restart")["found"] == 5


# --- A user's own app ---------------------------------------------------------------------

APP_CODE = "/opt/fastapi-app/app"
REFERENCE_APP = ROOT / "roles" / "fastapi_app" / "files" / "reference_app"
# The settings the tests above left in place, so these runs change only the app.
LAST_VARS = {"postgresql_settings": dict(SETTINGS, work_mem="3MB", shared_buffers="192MB"),
             "fastapi_app_pool_size": 8}


# --- The virtualenv -----------------------------------------------------------------------

def task_status(out, task):
    """What the default callback printed for a task: ok, changed, skipping or failed."""
    # A task polled with until/retries prints "FAILED - RETRYING" lines before its status.
    m = re.search(rf"^TASK \[[^\]]*{re.escape(task)}\][^\n]*\n+(?:FAILED - RETRYING:[^\n]*\n+)*(\w+)", out, re.M)
    assert m, f"task {task!r} not in the output"
    return m[1]


def test_re_run_installs_nothing_and_a_lost_virtualenv_is_rebuilt(host):
    extra = ["-e", json.dumps(LAST_VARS), "--limit", "fastpg-resilience"]
    rc, out = playbook(*extra)
    assert rc == 0, out[-3000:]
    assert recap(out)["changed"] == 0
    # The venv is current: pip does not run, in the background or in the foreground.
    assert task_status(out, "Setup | Build a new virtualenv in the background") == "skipping"
    assert task_status(out, "Deploy | Install the requirements into the virtualenv") == "skipping"
    pid = pg_state(host)["app_pid"]

    # A lost venv has no record of a build: it is rebuilt like a new one, in the background.
    host.check_output("rm -rf /opt/fastapi-app/venv")
    rc, out = playbook(*extra)
    assert rc == 0, out[-3000:]
    assert task_status(out, "Setup | Build a new virtualenv in the background") == "changed"
    assert task_status(out, "Deploy | Wait for the new virtualenv's background build") == "changed"
    assert host.file("/opt/fastapi-app/venv/fastpg-requirements.txt").exists
    assert pg_state(host)["app_pid"] != pid
    assert host.run("python3 -c %s", "import urllib.request;urllib.request.urlopen("
                    "'http://127.0.0.1:8000/health')").rc == 0


def deployed(host):
    return set(host.check_output(f"cd {APP_CODE} && find . -type f | sort").splitlines())


def test_own_app_source_is_deployed_exactly_and_by_content(host, tmp_path):
    src = tmp_path / "my_app"
    shutil.copytree(REFERENCE_APP, src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "extra_module.py").write_text("VALUE = 1\n")
    (src / ".env").write_text("SECRET=never-deployed\n")
    (src / "tests").mkdir()
    (src / "tests" / "test_extra.py").write_text("def test_nothing():\n    pass\n")
    extra = ["-e", json.dumps(dict(LAST_VARS, fastapi_app_source=str(src))), "--limit", "fastpg-resilience"]

    rc, out = playbook(*extra)
    assert rc == 0, out[-3000:]
    files = deployed(host)
    assert "./extra_module.py" in files and "./database.py" in files
    assert not [f for f in files if f.endswith(".env") or f.startswith("./tests/")], files
    pid = pg_state(host)["app_pid"]

    # The same content with new timestamps (a fresh checkout) is no change at all.
    for path in src.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    rc, out = playbook(*extra)
    assert rc == 0, out[-3000:]
    assert recap(out)["changed"] == 0
    assert pg_state(host)["app_pid"] == pid

    # A file removed from the source leaves the host, and the app restarts on the new tree.
    (src / "extra_module.py").unlink()
    rc, out = playbook(*extra)
    assert rc == 0, out[-3000:]
    assert "./extra_module.py" not in deployed(host)
    assert pg_state(host)["app_pid"] != pid
    assert host.run("python3 -c %s", "import urllib.request;urllib.request.urlopen("
                    "'http://127.0.0.1:8000/health')").rc == 0


# --- A configuration the server would refuse ----------------------------------------------

LIVE_FILES = "/etc/postgresql/17/main/conf.d/50-fastpg.conf /etc/postgresql/17/main/pg_hba.conf"
BAD_HBA = [{"type": "host", "database": "all", "user": "fastpg", "address": "10.0.0.300/32",
            "method": "scram-sha-256"}]
REFUSED = {
    "unknown setting name": ({"postgresql_settings": dict(LAST_VARS["postgresql_settings"], shared_bufers="256MB")},
                             r'unrecognized configuration parameter "shared_bufers"'),
    "invalid value": ({"postgresql_settings": dict(LAST_VARS["postgresql_settings"], shared_buffers="lots")},
                      r'invalid value for parameter "shared_buffers": "lots"'),
    "value out of range": ({"postgresql_settings": dict(LAST_VARS["postgresql_settings"], max_connections=99999999)},
                           r'99999999 is outside the valid range for parameter "max_connections"'),
    "malformed hba address": ({"postgresql_hba_entries": BAD_HBA},
                              r"refuses the new pg_hba.conf .* line \d+ \(host +all +fastpg +10\.0\.0\.300/32"),
}


class SteadyLoad:
    """Keep-alive clients on the controller, looping over GET /users/?limit=1 (a database query)
    against the container's address until stopped: every non-2xx answer and every connection
    error counts as failed. Bounded: it stops by itself after `limit_s`."""

    def __init__(self, host, clients=4, limit_s=600):
        address = json.loads(subprocess.run(
            ["docker", "inspect", host.backend.host], capture_output=True, text=True, check=True).stdout)
        self.address = address[0]["NetworkSettings"]["IPAddress"]
        self.clients, self.limit_s = clients, limit_s
        self.ok = self.failed = 0
        self.last_failure = None
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def client(self):
        conn, deadline = None, time.monotonic() + self.limit_s
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                conn = conn or http.client.HTTPConnection(self.address, 8000, timeout=5)
                conn.request("GET", "/users/?limit=1")
                resp = conn.getresponse()
                resp.read()
                good = 200 <= resp.status < 300
            except (OSError, http.client.HTTPException):
                good, conn = False, None
            with self.lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1
                    self.last_failure = time.monotonic()
            time.sleep(0.02)

    def __enter__(self):
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(self.clients)]
        for t in self.threads:
            t.start()
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        time.sleep(1)
        self.stop.set()
        for t in self.threads:
            t.join()
        self.ended = time.monotonic()


def last_failure(flat):
    """The message of the run's last failed task."""
    tail = flat[flat.rfind("fatal: ["):]
    return tail[tail.find("msg:"):][:700]


def live(host):
    return {"files": host.check_output(f"md5sum {LIVE_FILES}"), "copies": host.check_output(
        "find /etc/postgresql/17/main -name '*~'"), **pg_state(host)}


def restart_succeeds(host):
    return host.run("systemctl restart postgresql@17-main").rc == 0 and host.run(
        "runuser -u postgres -- pg_isready -q").rc == 0


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_configuration_never_goes_live(host, case):
    change, reason = REFUSED[case]
    before = live(host)
    with SteadyLoad(host) as load:
        rc, out = playbook("-e", json.dumps(dict(LAST_VARS, **change)), "--limit", "fastpg-resilience")
    flat = re.sub(r"\s+", " ", out)
    print(f"\n{case}: {last_failure(flat)}")
    print(f"{case}: requests from the controller during the run: {load.ok} ok, {load.failed} failed")
    assert load.ok > 0 and load.failed == 0
    assert rc != 0
    assert re.search(reason, flat), flat[-3000:]
    after = live(host)
    # Byte for byte the files it had, no copy left behind, never restarted, no row lost.
    assert after == before
    assert restart_succeeds(host)


def test_a_value_that_stops_the_server_is_rolled_back(host):
    before = live(host)
    settings = dict(LAST_VARS["postgresql_settings"], huge_pages="on")
    with SteadyLoad(host) as load:
        rc, out = playbook("-e", json.dumps(dict(LAST_VARS, postgresql_settings=settings)),
                           "--limit", "fastpg-resilience")
        recovered_at = time.monotonic()
        time.sleep(3)  # served again after the rollback, on the pool's pre-ping
    flat = re.sub(r"\s+", " ", out)
    down = re.search(r"it was down for about ([0-9.]+) s", flat)
    print(f"\nhuge_pages: on: {last_failure(flat)}")
    print(f"huge_pages: on: requests from the controller during the run: {load.ok} ok, {load.failed} failed "
          f"(all while the server was down)")
    # Requests fail only while the server is down, and none once the run has put it back.
    assert load.failed > 0 and (load.last_failure or 0) <= recovered_at
    assert rc != 0
    assert "did not take the new configuration (Service | Restart for the settings that need it" in flat
    assert down and float(down[1]) < 30
    assert "FATAL" in flat.split("Its journal:", 1)[1]
    after = live(host)
    assert after["files"] == before["files"] and after["copies"] == ""
    assert after["users"] == before["users"] and after["system_identifier"] == before["system_identifier"]
    assert sql(host, "SHOW huge_pages") == "try"
    assert restart_succeeds(host)
    # The next run on the good configuration changes nothing.
    rc, out = playbook("-e", json.dumps(LAST_VARS), "--limit", "fastpg-resilience")
    assert rc == 0 and recap(out)["changed"] == 0, out[-3000:]
