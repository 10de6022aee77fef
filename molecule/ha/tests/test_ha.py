"""The Patroni cluster, and the drills: each under a steady load of reads and writes from the
controller through both app hosts, with every failed request counted and printed."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "resources"))
from steady_load import SteadyLoad, SteadyWrites, container_address  # noqa: E402

testinfra_hosts = ["ansible://fastpg-pg1"]

ROOT = Path(__file__).resolve().parents[3]
MEMBERS = ("fastpg-pg1", "fastpg-pg2", "fastpg-pg3")
APPS = ("fastpg-ha-app1", "fastpg-ha-app2")
SCENARIO = yaml.safe_load((ROOT / "molecule" / "ha" / "molecule.yml").read_text())
GROUP_VARS = SCENARIO["provisioner"]["inventory"]["group_vars"]
API_AUTH = "Basic " + base64.b64encode(
    f"patroni:{GROUP_VARS['all']['fastpg_patroni_api_password']}".encode()).decode()
# Patroni's timings (the role's defaults): a lost primary is replaced within ttl + loop_wait.
TTL, LOOP_WAIT = 20, 5


def api(member, path, method="GET", body=None, auth=True, timeout=10):
    """(status, JSON or text) of Patroni's REST API on a member, from the controller."""
    req = urllib.request.Request(f"http://{container_address(member)}:8008{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", API_AUTH)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read().decode()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def cluster(via=None):
    """GET /cluster from the first member that answers."""
    for member in ([via] if via else []) + list(MEMBERS):
        try:
            status, body = api(member, "/cluster", timeout=3)
        except OSError:
            continue
        if status == 200:
            return body
    raise AssertionError("no member's REST API answers")


def leader(via=None):
    return next((m["name"] for m in cluster(via)["members"] if m["role"] == "leader"), None)


def wait_for(what, check, timeout=90, step=0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, AssertionError, subprocess.CalledProcessError):
            result = None
        if result:
            return result
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def healthy_cluster(size=3):
    """A leader and size - 1 replicas streaming from it."""
    members = cluster()["members"]
    return (len(members) == size and sum(m["role"] == "leader" and m["state"] == "running" for m in members) == 1
            and sum(m["role"] in ("replica", "sync_standby") and m["state"] == "streaming"
                    for m in members) == size - 1)


def docker(*args, check=True):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check).stdout.strip()


def psql(member, query, db="fastpg"):
    return docker("exec", member, "runuser", "-u", "postgres", "--", "psql", "-XAtq", "-d", db, "-c", query)


def playbook(*args, site="fastpg.stack.site"):
    exe = Path(sys.executable).parent / "ansible-playbook"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    eph = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if eph and (Path(eph) / "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(Path(eph) / "ansible.cfg")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(ROOT / "collections"))
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    done = subprocess.run([str(exe if exe.exists() else shutil.which("ansible-playbook")), "-i",
                           os.environ["MOLECULE_INVENTORY_FILE"], site, *args], env=env, capture_output=True,
                          text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr


class Drill:
    """Reads through fastpg-ha-app1 and writes through fastpg-ha-app2, from before the change
    until after it; the figures are printed."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.reads = SteadyLoad(container_address(APPS[0]), clients=8, paths=("/health", "/users/?limit=5"))
        self.writes = SteadyWrites(container_address(APPS[1]), clients=4, prefix=f"{self.name}-")
        self.reads.__enter__()
        self.writes.__enter__()
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc):
        self.writes.__exit__(*exc)
        self.reads.__exit__(*exc)
        print(f"\n{self.name}: reads: {self.reads.summary()}; longest gap {self.reads.longest_gap():.1f} s")
        print(f"{self.name}: writes: {self.writes.summary()}; {len(self.writes.acked)} acknowledged; "
              f"longest time without a write {self.writes.longest_gap():.1f} s")

    def missing_writes(self):
        """The acknowledged writes the current primary does not have."""
        names = psql(leader(), "SELECT username FROM users WHERE username LIKE '%s-%%'" % self.name).split()
        return sorted(set(self.writes.acked) - set(names))


def test_one_primary_and_two_streaming_replicas_with_the_computed_settings():
    assert wait_for("a healthy cluster", healthy_cluster)
    for member in MEMBERS:
        # 512 MB / 4 (postgresql_memory_mb), the same on every member: from etcd, not from each host.
        assert psql(member, "SHOW shared_buffers") == "128MB"
        assert psql(member, "SHOW max_connections") == "100"
        assert psql(member, "SHOW ssl") == "on"
        # The replicas stream over TLS.
    primary = leader()
    assert psql(primary, "SELECT count(*) FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) WHERE ssl") == "2"
    # No leader change since the cluster was created: none outside the drills below.
    status, history = api(primary, "/history")
    assert status == 200 and history == [], history


def test_patroni_files_keep_their_secrets(host):
    config = host.file("/etc/patroni/17-main.yml")
    assert (config.user, config.mode) == ("postgres", 0o600)
    assert host.file("/etc/patroni/17-main.settings.conf").contains("shared_buffers = '128MB'")


def test_the_rest_api_writes_need_the_password():
    primary = leader()
    replica = next(m for m in MEMBERS if m != primary)
    status, _ = api(primary, "/switchover", "POST", {"leader": primary, "candidate": replica}, auth=False)
    assert status == 401
    status, _ = api(primary, "/config", "PATCH", {"ttl": 99}, auth=False)
    assert status == 401
    assert api(primary, "/config")[1]["ttl"] == TTL
    # Reads stay open: HAProxy checks them.
    assert api(primary, "/primary", auth=False)[0] == 200
    assert api(replica, "/replica", auth=False)[0] == 200


def test_the_apps_reach_the_primary_through_haproxy():
    for app in APPS:
        status = docker("exec", app, "python3", "-c",
                        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/health').read())")
        assert '"database":"connected"' in status
    primary = leader()
    # The app's sessions are on the primary (HAProxy's primary route), none on a replica.
    for member in MEMBERS:
        count = int(psql(member, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'fastpg'"))
        assert (count > 0) == (member == primary), (member, count)


def test_a_setting_the_server_refuses_never_reaches_etcd():
    before = api(MEMBERS[0], "/config")[1]
    rc, out = playbook("-e", json.dumps({"postgresql_settings": {"shared_buffers": "64XB"}}),
                       site="fastpg.stack.database")
    flat = re.sub(r"\s+", " ", out)
    assert rc != 0
    assert "refuses these settings" in flat and "Patroni's dynamic configuration was left as it was" in flat
    assert 'invalid value for parameter "shared_buffers": "64XB"' in flat
    assert api(MEMBERS[0], "/config")[1] == before


def test_a_setting_that_needs_a_restart_rolls_through_the_replicas_first():
    primary = leader()
    started = {m: psql(m, "SELECT pg_postmaster_start_time()") for m in MEMBERS}
    with Drill("rolling") as drill:
        rc, out = playbook("-e", json.dumps({"postgresql_settings": {"shared_buffers": "96MB"}}),
                           site="fastpg.stack.database")
    assert rc == 0, out[-3000:]
    assert not drill.missing_writes()
    restarted = {m: psql(m, "SELECT pg_postmaster_start_time()") for m in MEMBERS}
    for member in MEMBERS:
        assert psql(member, "SHOW shared_buffers") == "96MB"
        assert restarted[member] > started[member]
    # Replicas first, the primary last; the primary stays the primary.
    assert max(restarted[m] for m in MEMBERS if m != primary) < restarted[primary]
    assert leader() == primary
    rc, out = playbook("-e", json.dumps({"postgresql_settings": {"shared_buffers": "96MB"}}),
                       site="fastpg.stack.database")
    assert rc == 0 and re.search(r"fastpg-pg1\s*:.*changed=0", out), out[-2000:]


def test_the_primarys_postmaster_killed_restarts_in_place():
    primary = leader()
    with Drill("sigkill") as drill:
        time.sleep(2)
        pid = docker("exec", primary, "head", "-1", "/var/lib/postgresql/17/main/postmaster.pid")
        docker("exec", primary, "kill", "-KILL", pid)
        wait_for("writes after the kill", lambda: len(drill.writes.acked) > 0 and
                 drill.writes.ok_times[-1] > time.monotonic() - 1, timeout=60)
        time.sleep(2)
    # primary_start_timeout (30 s): Patroni restarted it in place, crash recovery kept every commit.
    assert leader() == primary
    assert not drill.missing_writes()
    assert drill.writes.longest_gap() < 30


def test_the_primarys_host_stopped_a_replica_takes_over_within_30_s():
    old = leader()
    try:
        with Drill("hoststop") as drill:
            time.sleep(2)
            docker("stop", "--time", "0", old)
            new = wait_for("a new primary", lambda: (lambda name: name if name not in (None, old) else None)(
                leader()), timeout=60)
            wait_for("writes on the new primary", lambda: drill.writes.ok_times[-1] > time.monotonic() - 1,
                     timeout=60)
            time.sleep(2)
        gap = drill.writes.longest_gap()
        print(f"hoststop: {old} stopped, {new} took over; {gap:.1f} s without a write")
        assert gap < 30
        missing = drill.missing_writes()
        print(f"hoststop: {len(missing)} acknowledged writes missing on the new primary (asynchronous replication)")
        # The app was not restarted.
        for app in APPS:
            assert docker("exec", app, "systemctl", "show", "-P", "NRestarts", "fastapi-app") == "0"
    finally:
        docker("start", old, check=False)
    # The old primary rejoins as a replica (pg_rewind if it was ahead).
    assert wait_for("the old primary back as a replica", healthy_cluster, timeout=180)
    assert leader() != old


def test_a_replica_stopped_and_started_rejoins_and_catches_up():
    primary = leader()
    replica = next(m for m in MEMBERS if m != primary)
    with Drill("replica") as drill:
        docker("exec", replica, "systemctl", "stop", "patroni@17-main")
        time.sleep(3)
        docker("exec", replica, "systemctl", "start", "patroni@17-main")
        wait_for("the replica streaming again", healthy_cluster, timeout=120)
    assert drill.reads.failed == 0 and drill.writes.failed == 0
    # Caught up: it has every acknowledged write.
    wanted = len(drill.writes.acked)
    wait_for("the replica to catch up", lambda: int(psql(
        replica, "SELECT count(*) FROM users WHERE username LIKE 'replica-%'")) >= wanted, timeout=30)
    assert leader() == primary


def test_one_etcd_member_lost_changes_nothing():
    primary = leader()
    other = next(m for m in MEMBERS if m != primary)
    with Drill("etcd") as drill:
        docker("exec", other, "systemctl", "stop", "etcd")
        time.sleep(TTL + LOOP_WAIT)
        docker("exec", other, "systemctl", "start", "etcd")
        time.sleep(3)
    assert leader() == primary
    assert drill.reads.failed == 0 and drill.writes.failed == 0
    assert wait_for("a healthy cluster", healthy_cluster)


def test_the_whole_cluster_restarted_keeps_the_data():
    before = psql(leader(), "SELECT count(*), max(id) FROM users")
    for member in MEMBERS:
        docker("restart", "--time", "30", member)
    # The members' keys outlive them in etcd for up to ttl: ask the primary itself.
    assert wait_for("a primary that takes writes, and its replicas streaming", lambda: psql(
        leader(), "SELECT NOT pg_is_in_recovery()") == "t" and healthy_cluster(), timeout=180)
    assert psql(leader(), "SELECT count(*), max(id) FROM users") == before


@pytest.mark.parametrize("name", ["restore", "upgrade"])
def test_restore_and_upgrade_refuse_a_patroni_cluster_by_name(name):
    rc, out = playbook("-e", f"fastpg_{name}_confirm=fastpg-pg1", site=f"fastpg.stack.{name}")
    flat = re.sub(r"\s+", " ", out)
    assert rc != 0
    assert (f"fastpg-pg1 is a member of a Patroni cluster (fastpg_patroni), which playbooks/{name}.yml does not "
            f"{name}") in flat
    assert "Nothing was changed" in flat and "changed=0" in flat
