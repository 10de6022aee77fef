"""What the drills measured, the secrets, check mode, and how changes are applied."""

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from steady_load import SteadyLoad, container_address  # noqa: E402

testinfra_hosts = ["ansible://fastpg-resilience"]

ROOT = Path(__file__).resolve().parents[3]
# The installed collection's playbook (scripts/test.sh), else this checkout's (ansible.cfg).
SITE = "fastpg.stack.site"
# The tiers alone, for runs that change only PostgreSQL's configuration or only the app (site.yml
# runs the same roles); and the rollback.
DATABASE = "fastpg.stack.database"
DEPLOY = "fastpg.stack.app"
ROLLBACK = "fastpg.stack.rollback"
DRILLS = "/var/lib/fastpg-drills"
SHARED_VARS = ROOT / "molecule" / "resources" / "inventory" / "group_vars" / "all.yml"
PASSWORD = yaml.safe_load(SHARED_VARS.read_text())["fastpg_db_password"]
# A distinctive piece of the password, free of characters that output escaping changes.
PASSWORD_PIECE = PASSWORD.split(":")[0]


def playbook(*args, inventory=None, site=SITE, stdin=None):
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
                           site, *args], env=env, capture_output=True, text=True, timeout=900,
                          input=stdin, start_new_session=True)
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
        "vars": {"ansible_connection": "docker"},
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

APP_CODE = "/opt/fastapi-app/current/app"
REFERENCE_APP = ROOT / "roles" / "fastapi_app" / "files" / "reference_app"
TUTORIAL_APP = ROOT / "tests" / "apps" / "tutorial"
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


def test_a_lost_virtualenv_is_rebuilt(host):
    # (A re-run with the venv in place starts no pip: molecule's idempotence step saw changed=0.)
    # A lost venv has no record of a build: it is rebuilt like a new one, in the background,
    # under the same name (its requirements'), so the release and the service stay as they are.
    extra = ["-e", json.dumps(LAST_VARS), "--limit", "fastpg-resilience"]
    venv = host.check_output("readlink -f /opt/fastapi-app/current/venv")
    serving = release(host)
    host.check_output(f"rm -rf {venv}")
    rc, out = playbook(*extra)
    assert rc == 0, out[-3000:]
    assert task_status(out, "Setup | Build a new virtualenv in the background") == "changed"
    assert task_status(out, "Stage | Wait for the new virtualenv's background build") == "changed"
    assert host.file(f"{venv}/fastpg-requirements.txt").exists
    assert release(host) == serving
    assert host.run("systemctl restart fastapi-app").rc == 0
    assert host.run("python3 -c %s", "import urllib.request;urllib.request.urlopen("
                    "'http://127.0.0.1:8000/health')").rc == 0


def deployed(host):
    return set(host.check_output(f"cd {APP_CODE} && find . -type f | sort").splitlines())


def test_own_app_source_is_deployed_exactly_and_by_content(host, tmp_path):
    """The tutorial's own app (tests/apps/tutorial), its code unchanged: it imports the tutorial's
    names from the database.py fastpg writes, and serves."""
    src = tmp_path / "my_app"
    shutil.copytree(TUTORIAL_APP, src, ignore=shutil.ignore_patterns("__pycache__"))
    (src / "extra_module.py").write_text("VALUE = 1\n")
    (src / ".env").write_text("SECRET=never-deployed\n")
    (src / "tests").mkdir()
    (src / "tests" / "test_extra.py").write_text("def test_nothing():\n    pass\n")
    extra = ["-e", json.dumps(dict(LAST_VARS, fastapi_app_source=str(src))), "--limit", "fastpg-resilience"]

    rc, out = playbook(*extra, site=DEPLOY)
    assert rc == 0, out[-3000:]
    files = deployed(host)
    assert "./extra_module.py" in files and "./database.py" in files
    assert not [f for f in files if f.endswith(".env") or f.startswith("./tests/")], files
    made = host.run("python3 -c %s", "import urllib.request as u; print(u.urlopen(u.Request("
                    "'http://127.0.0.1:8000/items/?name=first', method='POST')).read().decode())")
    assert made.rc == 0 and '"name":"first"' in made.stdout, made.stdout + made.stderr
    pid = pg_state(host)["app_pid"]

    # The same content with new timestamps (a fresh checkout) is no change at all.
    for path in src.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    rc, out = playbook(*extra, site=DEPLOY)
    assert rc == 0, out[-3000:]
    assert recap(out)["changed"] == 0
    assert pg_state(host)["app_pid"] == pid

    # Back to the reference app, which the drills after this one load: the files its tree lacks
    # leave the host (rsync --delete), and the app restarts on the new tree.
    rc, out = playbook("-e", json.dumps(LAST_VARS), "--limit", "fastpg-resilience", site=DEPLOY)
    assert rc == 0, out[-3000:]
    files = deployed(host)
    assert "./extra_module.py" not in files and "./database.py" in files and "./alembic.ini" in files, files
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


def message_lines(out):
    """The lines of the run's last failure message (callback_result_format = yaml)."""
    block = out[out.rfind("fatal: ["):].splitlines()
    start = next(i for i, line in enumerate(block) if line.strip().startswith("msg: |"))
    indent = len(block[start]) - len(block[start].lstrip()) + 1
    lines = []
    for line in block[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        lines.append(line.strip())
    return [line for line in lines if line]


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
    with SteadyLoad(container_address(host.backend.host)) as load:
        rc, out = playbook("-e", json.dumps(dict(LAST_VARS, **change)), "--limit", "fastpg-resilience",
                           site=DATABASE)
    flat = re.sub(r"\s+", " ", out)
    print(f"\n{case}: {last_failure(flat)}")
    print(f"{case}: requests from the controller during the run: {load.summary()}")
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
    with SteadyLoad(container_address(host.backend.host)) as load:
        rc, out = playbook("-e", json.dumps(dict(LAST_VARS, postgresql_settings=settings)),
                           "--limit", "fastpg-resilience", site=DATABASE)
        recovered_at = time.monotonic()
        time.sleep(3)  # served again after the rollback, on the pool's pre-ping
    flat = re.sub(r"\s+", " ", out)
    down = re.search(r"it was down for about ([0-9.]+) s", flat)
    print(f"\nhuge_pages: on: {last_failure(flat)}")
    print(f"huge_pages: on: requests from the controller during the run: {load.summary()} "
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
    rc, out = playbook("-e", json.dumps(LAST_VARS), "--limit", "fastpg-resilience", site=DATABASE)
    assert rc == 0 and recap(out)["changed"] == 0, out[-3000:]


# --- Releases: every kind of deploy under a steady load from outside the host ---------------

APP_SECRET = yaml.safe_load((Path(__file__).resolve().parents[1] / "host_vars" / "fastpg-resilience.yml")
                            .read_text())["fastapi_app_secret_environment"]["APP_API_TOKEN"]


def release(host, link="current"):
    return host.check_output(f"basename $(readlink /opt/fastapi-app/{link})")


def http_get(host, path):
    conn = http.client.HTTPConnection(container_address(host.backend.host), 8000, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def drill(host, name, extra_vars, playbook_name=DEPLOY, verbose=False):
    """One run under the steady load; prints how long it took and what the load saw."""
    args = ["-e", json.dumps(extra_vars), "--limit", "fastpg-resilience"] + (["-vvv"] if verbose else [])
    with SteadyLoad(container_address(host.backend.host)) as load:
        start = time.monotonic()
        rc, out = playbook(*args, site=playbook_name)
        took = time.monotonic() - start
    print(f"\n{name}: run {took:.1f} s, rc {rc}; from the controller: {load.summary()}")
    return rc, out, load


def app_copy(tmp_path, name, edit=None):
    src = tmp_path / name
    shutil.copytree(REFERENCE_APP, src, ignore=shutil.ignore_patterns("__pycache__"))
    if edit:
        main = src / "main.py"
        main.write_text(edit(main.read_text()))
    return src


VERSION_ROUTE = '\n\n@app.get("/version")\nasync def version():\n    return {"version": "%s"}\n'


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    return app_copy(tmp_path_factory.mktemp("v2"), "app", lambda t: t + VERSION_ROUTE % "v2")


def test_code_change_drops_no_request(host, v2):
    before = release(host)
    rc, out, load = drill(host, "code change", dict(LAST_VARS, fastapi_app_source=str(v2)))
    assert rc == 0, out[-3000:]
    assert load.ok > 0 and load.failed == 0
    assert release(host) != before and release(host, "previous") == before
    assert http_get(host, "/version") == (200, '{"version":"v2"}')


def test_pool_change_drops_no_request(host, v2):
    rc, out, load = drill(host, "pool change", dict(LAST_VARS, fastapi_app_source=str(v2), fastapi_app_pool_size=9))
    assert rc == 0, out[-3000:]
    assert load.ok > 0 and load.failed == 0
    assert json.loads(http_get(host, "/pool-stats")[1])["pool_size"] == 9


def test_requirements_change_builds_a_new_virtualenv_and_drops_no_request(host, v2):
    venv = host.check_output("readlink /opt/fastapi-app/current/venv")
    rc, out, load = drill(host, "requirements change", dict(
        LAST_VARS, fastapi_app_source=str(v2), fastapi_app_pool_size=9,
        fastapi_app_requirements=["python-dotenv==1.2.4"]))
    assert rc == 0, out[-3000:]
    assert load.ok > 0 and load.failed == 0
    new_venv = host.check_output("readlink /opt/fastapi-app/current/venv")
    assert new_venv != venv
    assert "python-dotenv==1.2.4" in host.file(f"{new_venv}/fastpg-requirements.txt").content_string
    # The release before keeps its own virtualenv, for a rollback.
    assert host.check_output("readlink /opt/fastapi-app/previous/venv") == venv


ENV_VARS = dict(LAST_VARS, fastapi_app_source="", fastapi_app_pool_size=9,
                fastapi_app_requirements=["python-dotenv==1.2.4"])


def worker_environment(host):
    pid = host.check_output("pgrep -u fastapi -n -f multiprocessing")
    return host.check_output(f"tr '\\0' '\\n' < /proc/{pid}/environ")


def test_environment_and_secret_change_drops_no_request_and_leaks_nothing(host, v2):
    change = dict(ENV_VARS, fastapi_app_source=str(v2), fastapi_app_environment={"APP_MODE": "blue"},
                  fastapi_app_secret_environment={"APP_API_TOKEN": APP_SECRET + "-rotated"})
    rc, out, load = drill(host, "environment and secret change", change, verbose=True)
    assert rc == 0, out[-3000:]
    assert load.ok > 0 and load.failed == 0
    env = worker_environment(host)
    assert "APP_MODE=blue" in env and f"APP_API_TOKEN={APP_SECRET}-rotated" in env
    assert APP_SECRET not in out and PASSWORD_PIECE not in out


def test_rollback_returns_to_the_previous_release_and_drops_no_request(host):
    now, before = release(host), release(host, "previous")
    rc, out, load = drill(host, "rollback", {}, playbook_name=ROLLBACK)
    assert rc == 0, out[-3000:]
    assert load.ok > 0 and load.failed == 0
    assert (release(host), release(host, "previous")) == (before, now)
    assert "The database schema was not downgraded" in out
    assert "APP_MODE=resilience" in worker_environment(host)


def test_a_release_that_cannot_start_never_serves(host, tmp_path):
    broken = app_copy(tmp_path, "broken", lambda t: "import fastpg_no_such_module  # noqa\n" + t)
    serving, pid = release(host), pg_state(host)["app_pid"]
    rc, out, load = drill(host, "release that cannot start", dict(ENV_VARS, fastapi_app_source=str(broken),
                                                                  fastapi_app_health_timeout=15))
    flat = re.sub(r"\s+", " ", out)
    print(f"release that cannot start: {last_failure(flat)}")
    assert rc != 0
    assert "ModuleNotFoundError: No module named 'fastpg_no_such_module'" in out
    assert f"It was not switched in: release {serving} goes on serving" in flat
    # The old release served throughout: not one request failed, and it was never restarted.
    assert load.ok > 0 and load.failed == 0
    assert release(host) == serving and pg_state(host)["app_pid"] == pid


LIVE_ONLY_FAILURE = '''
import os as _os
from fastapi.responses import JSONResponse as _JSONResponse


@app.middleware("http")
async def fail_when_socket_activated(request, call_next):
    # Passes the trial (its own socket) and fails once it serves behind the service's socket.
    if request.url.path == "/health" and "LISTEN_FDS" in _os.environ:
        return _JSONResponse({"status": "broken"}, status_code=503)
    return await call_next(request)
'''


def test_a_release_that_fails_once_serving_is_rolled_back_within_seconds(host, tmp_path):
    bad = app_copy(tmp_path, "bad", lambda t: t + LIVE_ONLY_FAILURE)
    serving = release(host)
    rc, out, load = drill(host, "release that fails once serving", dict(
        ENV_VARS, fastapi_app_source=str(bad), fastapi_app_health_timeout=5))
    flat = re.sub(r"\s+", " ", out)
    window = (load.last_failure - load.first_failure) if load.failed else 0.0
    print(f"release that fails once serving: {last_failure(flat)}")
    print(f"release that fails once serving: failed answers for {window:.1f} s (its /health only)")
    assert rc != 0
    assert f"Rolled back to release {serving}, which is serving again." in flat
    assert release(host) == serving
    # Only the bad release's own /health answers failed, and only until the rollback.
    assert set(load.errors) <= {"HTTP 503"} and window < 30
    assert http_get(host, "/health")[0] == 200


SUDO_PASSWORD = "deploy-sudo-pass-31x"


def test_deploy_over_ssh_by_a_user_whose_sudo_asks_for_a_password(host, v2, tmp_path):
    # A login user whose sudo asks for a password, reached over SSH with a key.
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    host.check_output("id deploy || useradd --create-home --shell /bin/bash deploy")
    host.check_output("install -d -m 0700 -o deploy -g deploy ~deploy/.ssh")
    host.check_output("printf '%%s\\n' %s > ~deploy/.ssh/authorized_keys && chown deploy: ~deploy/.ssh/authorized_keys",
                      key.with_suffix(".pub").read_text().strip())
    host.check_output("echo deploy:%s | chpasswd", SUDO_PASSWORD)
    host.check_output("echo 'deploy ALL=(ALL:ALL) ALL' > /etc/sudoers.d/deploy && chmod 0440 /etc/sudoers.d/deploy")
    host.check_output("systemctl start ssh")
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    shutil.copy(SHARED_VARS, inv / "group_vars" / "all.yml")
    shutil.copy(Path(__file__).resolve().parents[1] / "host_vars" / "fastpg-resilience.yml",
                inv / "host_vars" / "fastpg-resilience.yml")
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {
        "hosts": {"fastpg-resilience": {
            "ansible_connection": "ssh", "ansible_host": container_address(host.backend.host),
            "ansible_user": "deploy", "ansible_ssh_private_key_file": str(key),
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"}},
        "children": {"dbservers": {"hosts": {"fastpg-resilience": None}},
                     "appservers": {"hosts": {"fastpg-resilience": None}}}}}))
    # Back to the inventory's app (the reference app, no environment of its own), which the tests
    # after this one read: a change from the release serving, which the drills above left on v2.
    change = ["-e", json.dumps(LAST_VARS), "--limit", "fastpg-resilience"]
    assert http_get(host, "/version")[0] == 200

    # Without the password, sudo refuses: the deploy really needs it (mitogen_linear says "sudo
    # password is required").
    rc, out = playbook(*change, inventory=inv / "hosts.yml")
    assert rc != 0 and re.search(r"[Mm]issing sudo password|password is required", out), out[-2000:]

    # --ask-become-pass, answered on stdin (no terminal): the code goes over and serves.
    before = release(host)
    with SteadyLoad(container_address(host.backend.host)) as load:
        rc, out = playbook("--ask-become-pass", *change, inventory=inv / "hosts.yml", stdin=SUDO_PASSWORD + "\n")
    print(f"\ndeploy over SSH with a sudo password: rc {rc}; from the controller: {load.summary()}")
    assert rc == 0, out[-3000:]
    assert load.failed == 0
    assert release(host) != before
    assert http_get(host, "/version")[0] == 404
    assert SUDO_PASSWORD not in out
    host.check_output("systemctl stop ssh")


def test_only_the_kept_releases_and_their_virtualenvs_remain(host):
    # The drills made more releases than fastapi_app_keep_releases (5): each new one prunes.
    releases = host.check_output("ls /opt/fastapi-app/releases").split()
    assert len(releases) == 5, releases
    assert {release(host), release(host, "previous")} <= set(releases)
    used = {host.check_output(f"readlink /opt/fastapi-app/releases/{r}/venv") for r in releases}
    venvs = set(host.check_output("find /opt/fastapi-app/venvs -mindepth 1 -maxdepth 1 -type d").split())
    assert venvs == used and all(host.file(f"{v}.txt").exists for v in venvs)


def test_app_secret_is_in_no_world_readable_file_and_on_no_command_line(host):
    # As a pattern that does not spell the secret: the argv sampler would record it.
    pattern = APP_SECRET[:-1] + "[" + APP_SECRET[-1] + "]"
    found = host.run(f"grep -rls -- '{pattern}' /etc /opt /var /tmp /root /home /run /srv /usr/local")
    paths = found.stdout.split()
    # The search must find the secret where it belongs, or it proves nothing about the rest.
    assert host.check_output("realpath /opt/fastapi-app/current/app.env") in paths, paths
    for path in paths:
        mode = host.file(path).mode
        assert not mode & 0o004, f"{path} is world-readable ({oct(mode)}) and holds the app's secret"
        assert host.file(path).user in ("fastapi", "root")
    lines = host.file("/var/log/fastpg-argv.log").content_string.splitlines()
    assert not [line for line in lines if APP_SECRET in line]


def test_a_first_release_that_fails_is_stopped(host, tmp_path):
    # Last, as it leaves nothing serving. Without `current` the next release is the host's
    # first: nothing serves to protect, so it is not tried apart but checked as the service, and
    # stopped with its socket when it fails.
    host.check_output("rm /opt/fastapi-app/current")
    # A step of fastpg's own that fails is reported as that, not as the app's health check: here
    # the health check's clock, given a value it cannot add to (as a string timeout once did).
    rc, out = playbook("-e", json.dumps(dict(LAST_VARS, __fastapi_app_health_timeout="soon")),
                       "--limit", "fastpg-resilience", site=DEPLOY)
    flat = re.sub(r"\s+", " ", out)
    print(f"\nfirst release, a step of the deploy that fails: rc {rc}; {last_failure(flat)}")
    assert rc != 0 and "did not pass its health check" not in flat
    assert 'the deploy\'s step "Switch | Start the health check\'s clock" failed, before the app\'s health check' in flat
    assert "There was no release to go back to: the service and its socket are stopped." in flat
    # The timeout as a user types it on the command line: a string, for an int input.
    host.check_output("rm /opt/fastapi-app/current")
    broken = app_copy(tmp_path, "first", lambda t: "from database import get_no_such_session  # noqa\n" + t)
    start = time.monotonic()
    rc, out = playbook("-e", json.dumps(dict(LAST_VARS, fastapi_app_source=str(broken))),
                       "-e", "fastapi_app_health_timeout=5", "--limit", "fastpg-resilience", site=DEPLOY)
    flat = re.sub(r"\s+", " ", out)
    print(f"\nfirst release that fails: run {time.monotonic() - start:.1f} s, rc {rc}; {last_failure(flat)}")
    assert rc != 0
    assert "did not pass its health check" in flat and "/health did not answer 200 within 5 s" in flat
    assert "There was no release to go back to: the service and its socket are stopped." in flat
    # The message ends with the exception and what the service printed after it, however long
    # the traceback; not inside the next one the crash loop was writing.
    lines = message_lines(out)
    error = max(i for i, line in enumerate(lines)
                if line.startswith("ImportError: cannot import name 'get_no_such_session' from 'database'"))
    last_traceback = max(i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)"))
    assert last_traceback < error >= len(lines) - 12, lines[-15:]
    assert "TASK [fastpg.stack.fastapi_app : Trial |" not in out
    assert host.run("systemctl is-active --quiet fastapi-app.socket").rc != 0
    assert host.run("systemctl is-active --quiet fastapi-app.service").rc != 0
