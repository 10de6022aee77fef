"""Backups with pgBackRest to a backup host: the timer, a point-in-time restore, a named restore
point, a restore that fails, a lost data directory, refusals. test_upgrade.py runs after it."""

import json
import os
import re
import time

import testinfra
from conftest import playbook

testinfra_hosts = ["ansible://fastpg-backups"]

HOST = "fastpg-backups"
REPO_HOST = "fastpg-backups-repo"
APP_HOST = "fastpg-backups-app"
RESTORE = "fastpg.stack.restore"
DATA = "/var/lib/postgresql/17/main"


def sql(host, query):
    return host.check_output("runuser -u postgres -- psql -XAtq -d fastpg -c %s", query)


def info(host):
    return json.loads(host.check_output("runuser -u postgres -- pgbackrest --stanza=main info --output=json"))[0]


def remote(name):
    return testinfra.get_host(f"ansible://{name}", ansible_inventory=os.environ["MOLECULE_INVENTORY_FILE"])


def health(host):
    """The app's /health, asked on the app host (host: the database host, unused)."""
    return remote(APP_HOST).check_output("python3 -c %s", "import urllib.request;print(urllib.request.urlopen("
                                         "'http://127.0.0.1:8000/health', timeout=10).read().decode())")


def app_state():
    return remote(APP_HOST).check_output("systemctl is-active fastapi-app")


def repo_host():
    return remote(REPO_HOST)


def test_the_pgdg_source_is_deb822_with_its_own_key(host):
    text = host.file("/etc/apt/sources.list.d/pgdg.sources").content_string
    assert "URIs: http://fastpg-backups-mirror:8080" in text
    assert "Suites: forky-pgdg" in text and "Components: main" in text
    signed_by = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Signed-By:")]
    assert signed_by and host.file(signed_by[0]).exists


def test_postgresql_17_came_from_the_mirror_utf8_with_checksums(host):
    for package in ("postgresql-17", "postgresql-client-17"):
        version = host.check_output("dpkg-query -W -f='${Version}' %s", package)
        assert version.endswith(".pgdg13+1"), f"{package} {version} is not the mirror's build"
    installed = host.check_output("apt-cache policy postgresql-17").split("***", 1)[1].split("\n")
    assert "fastpg-backups-mirror:8080 forky-pgdg/main" in "\n".join(installed[:3])
    assert host.service("postgresql@17-main").is_running
    assert sql(host, "SHOW server_encoding") == "UTF8" and sql(host, "SHOW data_checksums") == "on"
    assert sql(host, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'fastpg'") == "fastpg"


def test_the_repository_is_on_the_backup_host_encrypted_and_its_key_kept_from_others(host):
    repo = repo_host()
    for side in (host, repo):
        conf, key = side.file("/etc/pgbackrest/pgbackrest.conf"), side.file("/etc/pgbackrest/tls/host.key")
        assert (conf.user, conf.group, conf.mode) == ("root", "postgres", 0o640)
        assert (key.user, key.group, key.mode) == ("root", "postgres", 0o640)
        assert side.service("pgbackrest").is_running
    # The key is on the backup host only; the database host reaches the repository over TLS.
    assert "repo1-cipher-pass" in repo.file("/etc/pgbackrest/pgbackrest.conf").content_string
    assert "repo1-cipher-pass" not in host.file("/etc/pgbackrest/pgbackrest.conf").content_string
    assert not host.file("/var/lib/pgbackrest/archive").exists
    assert repo.file("/var/lib/pgbackrest/archive/main").is_directory
    assert info(host)["cipher"] == "aes-256-cbc"
    # Archiving from the database host reaches the backup host.
    host.check_output("runuser -u postgres -- pgbackrest --stanza=main check")


def test_a_timer_takes_a_backup_on_its_schedule(host):
    # The diff timer, on the backup host, fires every minute here: wait for a run it started.
    repo = repo_host()
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        triggered = repo.check_output("systemctl show -P LastTriggerUSecMonotonic fastpg-backup-diff.timer")
        if triggered not in ("", "0"):
            break
        time.sleep(3)
    assert triggered not in ("", "0"), "the diff timer never fired"
    while repo.check_output("systemctl show -P ActiveState fastpg-backup@diff.service") == "activating":
        time.sleep(1)
    assert repo.check_output("systemctl show -P Result fastpg-backup@diff.service") == "success"
    kinds = [b["type"] for b in info(host)["backup"]]
    print(f"backups after the timer fired: {kinds}")
    assert kinds[0] == "full" and "diff" in kinds


def test_settings_given_with_e_leave_the_archiving_on(host):
    """An extra var postgresql_settings replaces the inventory's (Ansible's precedence), never the
    archiving fastpg_backups adds: here it equals the inventory's, so the run changes nothing."""
    rc, out, _ = playbook("fastpg.stack.database", "-e", json.dumps({"postgresql_settings": {}}))
    assert rc == 0, out[-3000:]
    assert re.findall(r"changed=(\d+)", out) and set(re.findall(r"changed=(\d+)", out)) == {"0"}, out[-2000:]
    assert sql(host, "SHOW archive_mode") == "on"
    assert "archive-push" in sql(host, "SHOW archive_command")


def test_refusals_change_nothing(host):
    before = (host.check_output(f"stat -c %i {DATA}"), app_state())
    cases = {
        "no confirmation": (RESTORE, [], "Confirm with -e fastpg_restore_confirm=fastpg-backups"),
        "a target before the first backup": (RESTORE, ["-e", f"fastpg_restore_confirm={HOST}",
                                                       "-e", "pgbackrest_restore_target='2020-01-01 00:00:00+00:00'"],
                                             "is not covered: the backups cover"),
        "a target in no accepted form": (RESTORE, ["-e", f"fastpg_restore_confirm={HOST}",
                                                   "-e", "pgbackrest_restore_target=yesterday"], "accepted: empty"),
    }
    for name, (site, args, message) in cases.items():
        rc, out, _ = playbook(site, *args)
        flat = re.sub(r"\s+", " ", out)
        print(f"refused ({name}): {flat[flat.find('msg:'):][:200]}")
        assert rc != 0 and message in flat and "Nothing was changed" in flat
        assert (host.check_output(f"stat -c %i {DATA}"), app_state()) == before


def test_a_primary_whose_wal_does_not_reach_the_repository_is_not_restored(host):
    # archive_command changed by hand (the server's own override, postgresql.auto.conf): no WAL
    # reaches the repository any more, and a restore would end before the latest transactions.
    before = (host.check_output(f"stat -c %i {DATA}"), app_state())
    sql(host, "ALTER SYSTEM SET archive_command = '/bin/false'")
    sql(host, "SELECT pg_reload_conf()")
    try:
        rc, out, took = playbook(RESTORE, "-e", f"fastpg_restore_confirm={HOST}")
    finally:
        sql(host, "ALTER SYSTEM RESET archive_command")
        sql(host, "SELECT pg_reload_conf()")
    flat = re.sub(r"\s+", " ", out)
    print(f"refused (WAL not archived): rc {rc} in {took:.1f} s; {flat[flat.find('msg:'):][:300]}")
    assert rc != 0 and f"{HOST} runs as the primary but its WAL does not reach the repository" in flat
    assert "archive_command '/bin/false' must contain pgbackrest" in flat and "The database was not touched" in flat
    # Refused in the checks, before the apps stop.
    assert "PLAY [Apps | Stop the apps]" not in out
    assert (host.check_output(f"stat -c %i {DATA}"), app_state()) == before
    host.check_output("runuser -u postgres -- pgbackrest --stanza=main check")


def test_point_in_time_restore_brings_back_every_row_before_the_target_and_none_after(host):
    sql(host, "CREATE TABLE drill (n int, at timestamptz DEFAULT clock_timestamp())")
    sql(host, "INSERT INTO drill (n) SELECT generate_series(1, 1000)")
    repo_host().check_output("systemctl start fastpg-backup@diff.service")
    sql(host, "INSERT INTO drill (n) SELECT generate_series(1001, 1500)")
    time.sleep(1.1)
    target = sql(host, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') || '+00:00'")
    time.sleep(1.1)
    sql(host, "INSERT INTO drill (n) SELECT generate_series(1501, 1750)")
    before_target = int(sql(host, f"SELECT count(*) FROM drill WHERE at <= '{target}'"))
    sql(host, "DROP TABLE drill")
    rc, out, took = playbook(RESTORE, "-e", f"fastpg_restore_confirm={HOST}",
                             "-e", f"pgbackrest_restore_target='{target}'")
    assert rc == 0, out[-3000:]
    count, last = sql(host, "SELECT count(*), max(n) FROM drill").split("|")
    print(f"point in time: {before_target} rows before the target, {count} back (last n={last}), 250 after it "
          f"not back; restore {took:.1f} s")
    assert int(count) == before_target == 1500 and int(last) == 1500
    assert '"database":"connected"' in health(host)
    assert re.search(r"The data directory it replaced is at /var/lib/postgresql/before-restore/\S+/17-main",
                     re.sub(r"\s+", " ", out))


def test_a_named_restore_point_older_than_the_latest_backup(host):
    sql(host, "CREATE TABLE named (n int)")
    sql(host, "INSERT INTO named SELECT generate_series(1, 300)")
    sql(host, "SELECT pg_create_restore_point('before_the_purge')")
    # A backup after the point: restoring from the latest backup could not go back to it.
    repo_host().check_output("systemctl start fastpg-backup@diff.service")
    sql(host, "DELETE FROM named WHERE n > 100")
    rc, out, took = playbook(RESTORE, "-e", f"fastpg_restore_confirm={HOST}",
                             "-e", "pgbackrest_restore_target=before_the_purge",
                             "-e", "pgbackrest_restore_type=name")
    assert rc == 0, out[-3000:]
    count = int(sql(host, "SELECT count(*) FROM named"))
    print(f"named restore point: {count} of 300 rows back (200 deleted after the point and a backup); "
          f"restore {took:.1f} s")
    assert count == 300
    assert '"database":"connected"' in health(host)


def test_a_restore_that_fails_puts_the_data_back(host):
    users = int(sql(host, "SELECT count(*) FROM users"))
    # No such restore point: the recovery ends before its target and the server refuses to start.
    rc, out, took = playbook(RESTORE, "-e", f"fastpg_restore_confirm={HOST}",
                             "-e", "pgbackrest_restore_target=no_such_point",
                             "-e", "pgbackrest_restore_type=name")
    flat = re.sub(r"\s+", " ", out)
    print(f"failed restore: rc {rc} in {took:.1f} s; {flat[flat.rfind('msg:'):][:400]}")
    assert rc != 0 and "Its data directory was put back and PostgreSQL runs on it again" in flat
    assert "The apps were started again" in flat
    failed = re.search(r"The failed attempt is in (\S+-failed)", flat).group(1)
    assert host.file(failed).is_directory
    assert int(sql(host, "SELECT count(*) FROM users")) == users
    assert json.loads(health(host))["database"] == "connected"
    assert repo_host().service("fastpg-backup-diff.timer").is_running
    host.check_output("runuser -u postgres -- pgbackrest --stanza=main check")


def test_a_lost_data_directory_is_restored_with_its_users(host):
    sql(host, "INSERT INTO users (username, email, hashed_password) "
              "SELECT 'drill' || g, 'drill' || g || '@example.com', 'x' FROM generate_series(1, 7) g")
    users = int(sql(host, "SELECT count(*) FROM users"))
    # Committed and archived (archive_timeout bounds what a lost disk costs; the drill does not wait it out).
    sql(host, "SELECT pg_switch_wal()")
    time.sleep(3)
    host.check_output(f"rm -rf {DATA}")
    rc, out, took = playbook(RESTORE, "-e", f"fastpg_restore_confirm={HOST}")
    assert rc == 0, out[-3000:]
    answer = json.loads(health(host))
    print(f"lost data directory: {users} users before, {answer['total_users']} after; restore {took:.1f} s")
    assert answer["database"] == "connected" and answer["total_users"] == users
    host.check_output("runuser -u postgres -- pgbackrest --stanza=main check")
    # The backup host's timers were paused for the restore and run again.
    assert repo_host().service("fastpg-backup-diff.timer").is_running
