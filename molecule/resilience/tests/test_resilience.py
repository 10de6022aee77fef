"""What the drills measured, the secrets, check mode, and how changes are applied."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

testinfra_hosts = ["ansible://fastpg-resilience"]

ROOT = Path(__file__).resolve().parents[3]
SITE = str(ROOT / "site.yml")
DRILLS = "/var/lib/fastpg-drills"
SHARED_VARS = ROOT / "molecule" / "resources" / "inventory" / "group_vars" / "all.yml"
PASSWORD = yaml.safe_load(SHARED_VARS.read_text())["fastpg_db_password"]
# A distinctive piece of the password, free of characters that output escaping changes.
PASSWORD_PIECE = PASSWORD.split(":")[0]


def playbook(*args, inventory=None):
    exe = Path(sys.executable).parent / "ansible-playbook"
    env = dict(os.environ, ANSIBLE_ROLES_PATH=str(ROOT / "roles"), ANSIBLE_NOCOLOR="1")
    eph = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if eph and (Path(eph) / "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(Path(eph) / "ansible.cfg")
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
    m = re.search(rf"^TASK \[[^\]]*{re.escape(task)}\][^\n]*\n+(\w+)", out, re.M)
    assert m, f"task {task!r} not in the output"
    return m[1]


def test_re_run_installs_nothing_and_a_lost_virtualenv_is_rebuilt(host):
    extra = ["-e", json.dumps(LAST_VARS), "--limit", "fastpg-resilience"]
    rc, out = playbook(*extra)
    assert rc == 0, out[-3000:]
    assert recap(out)["changed"] == 0
    # The venv is current: none of its steps is even included, pip least of all.
    assert task_status(out, "Finish the virtualenv") == "skipping"
    assert "Venv | Install the requirements into the virtualenv" not in out
    pid = pg_state(host)["app_pid"]

    host.check_output("rm -rf /opt/fastapi-app/venv")
    rc, out = playbook(*extra)
    assert rc == 0, out[-3000:]
    assert task_status(out, "Venv | Install the requirements into the virtualenv") == "changed"
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
