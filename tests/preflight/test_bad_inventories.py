"""The bad-inventory table: each one fails in preflight, with its own message, touching no host."""

import re
from pathlib import Path

import pytest

from conftest import inventory

# What the docker connection says when a task reaches for one of these hosts.
TOUCHED = "No such container"


def app(host, **values):
    def change(a):
        a["children"]["appservers"]["hosts"][host].update(values)
    return change


def apps(**values):
    def change(a):
        a["children"]["appservers"]["vars"].update(values)
    return change


def everyone(**values):
    def change(a):
        a["vars"].update(values)
    return change


def db(**values):
    def change(a):
        a["children"]["dbservers"]["hosts"]["db1"].update(values)
    return change


def drop(name):
    def change(a):
        del a["vars"][name]
    return change


def no_dbservers(a):
    a["children"]["dbservers"]["hosts"] = {}
    a["children"]["dbservers"]["hosts"] = None


def monitoring_hosts(*names):
    def change(a):
        a["children"]["monitoring"] = {"hosts": {n: {"ansible_host": f"fastpg-absent-{n}"} for n in names}}
    return change


def backup_hosts(*names, **db_values):
    def change(a):
        a["children"]["backupservers"] = {"hosts": {n: {"ansible_host": f"fastpg-absent-{n}"} for n in names}}
        a["children"]["dbservers"]["hosts"]["db1"].update(db_values)
    return change


def load_balancer(**values):
    def change(a):
        a["children"]["loadbalancers"] = {"hosts": {"lb1": {"ansible_host": "fastpg-absent-lb1", **values}}}
    return change


OLD_UVICORN = str(Path(__file__).resolve().parent / "apps" / "old-uvicorn")
TRUSTED_HOST = str(Path(__file__).resolve().parent / "apps" / "trusted-host")

CASES = {
    "negative pool_size": (apps(fastapi_app_pool_size=-1),
                           r"fastapi_app_pool_size is -1 on app1; accepted: a whole number from 1 to 1000"),
    "zero pool_size": (app("app2", fastapi_app_pool_size=0),
                       r"fastapi_app_pool_size is 0 on app2; accepted: a whole number from 1 to 1000"),
    "string pool_size": (apps(fastapi_app_pool_size="twenty"),
                         r"fastapi_app_pool_size.*(type str|not a valid integer|convert to int)"),
    "non-integer pool_size": (apps(fastapi_app_pool_size=2.5),
                              r"fastapi_app_pool_size.*(float|convert to int|not a valid integer)"),
    "negative max_overflow": (apps(fastapi_app_max_overflow=-3),
                              r"fastapi_app_max_overflow is -3 on app1; accepted: a whole number from 0 to 1000"),
    "pool_timeout 0": (apps(fastapi_app_pool_timeout=0),
                       r"fastapi_app_pool_timeout is 0 on app1; accepted: seconds, a whole number from 1"),
    "pool_recycle 0": (apps(fastapi_app_pool_recycle=0),
                       r"fastapi_app_pool_recycle is 0 on app1; accepted: .*-1 to never recycle"),
    "connect_timeout 0": (apps(fastapi_app_db_connect_timeout=0),
                          r"fastapi_app_db_connect_timeout is 0 on app1; accepted: seconds, a whole number from 1 to 3600"),
    "zero workers": (app("app1", fastapi_app_workers=0),
                     r"fastapi_app_workers is 0 on app1; accepted: a whole number from 1 to 64"),
    "pre_ping not a boolean": (apps(fastapi_app_pool_pre_ping="sometimes"),
                               r"fastapi_app_pool_pre_ping.*(bool|boolean)"),
    "port out of range": (apps(fastapi_app_port=70000),
                          r"fastapi_app_port is 70000 on app1; accepted: a TCP port, 1 to 65535"),
    "over budget on one host": (app("app1", fastapi_app_workers=4),
                                r"db1: 300 app peak .* = 313 of postgresql_max_connections 300: OVER by 13"),
    "over budget only across two hosts": (
        apps(fastapi_app_pool_size=40, fastapi_app_max_overflow=50),
        r"db1: 360 app peak .* = 373 of postgresql_max_connections 300: OVER by 73"),
    "max_connections lowered below the pools": (
        db(postgresql_max_connections=150),
        r"= 213 of postgresql_max_connections 150: OVER by 63"),
    "missing password": (drop("fastpg_db_password"),
                         r"(app1|db1): missing required arguments: fastpg_db_password"),
    "placeholder password": (everyone(fastpg_db_password="CHANGE_ME_BEFORE_USE"),
                             r"fastpg_db_password on (app1|db1) is the example placeholder"),
    "short password": (everyone(fastpg_db_password="short"),
                       r"fastpg_db_password on (app1|db1) is shorter than 12 characters"),
    "unsupported PostgreSQL version": (db(postgresql_version=15),
                                       r"postgresql_version.*(choices|one of).*16.*17.*18"),
    "max_connections not a number": (db(postgresql_max_connections="lots"),
                                     r"postgresql_max_connections.*(type str|convert to int|not a valid integer)"),
    "app host with no database host": (app("app2", fastpg_db_host="db9"),
                                       r"app2: fastpg_db_host is 'db9', which is no dbservers host"),
    "loopback database on a host without PostgreSQL": (
        app("app1", fastpg_db_host="127.0.0.1"),
        r"app1: fastpg_db_host is '127.0.0.1', but app1 is not in dbservers"),
    "a renamed variable": (everyone(fastapi_app_db_name="shop"),
                           r"(app1|db1): fastapi_app_db_name is set, but site.yml no longer reads it. "
                           r"Set instead: fastpg_db_name\."),
    "a removed role variable": (db(postgresql_app_client_addresses=["10.0.0.0/8"]),
                                r"db1: postgresql_app_client_addresses is set, .*Set instead: fastpg_db_client_addresses"),
    "postgresql_port beside the stack's port": (db(postgresql_port=5433),
                                                r"db1: postgresql_port is set, .*Set instead: fastpg_db_port "),
    "stack port out of range": (everyone(fastpg_db_port=0),
                                r"fastpg_db_port is 0 on (app1|db1); accepted: a TCP port, 1 to 65535"),
    "database name that is no identifier": (everyone(fastpg_db_name="my-db; drop"),
                                            r"fastpg_db_name is 'my-db; drop' on (app1|db1); accepted: letters"),
    "unbounded NullPool": (apps(fastapi_app_pool_class="null"),
                           r"fastapi_app_pool_class is null on app1: .*no bound"),
    "hba entry with a method the role does not offer": (
        db(postgresql_hba_entries=[{"type": "host", "database": "all", "user": "all",
                                    "address": "10.0.0.0/8", "method": "trust"}]),
        r"db1: .*method.*(one of|choices).*scram-sha-256"),
    "user entry without a name": (db(postgresql_users=[{"password": "another-long-secret"}]),
                                  r"db1: .*missing required arguments: name.*postgresql_users"),
    "an app that pins a uvicorn too old for zero-downtime restarts": (
        apps(fastapi_app_source=OLD_UVICORN),
        r"app1: requirements.txt pins 'uvicorn==0.20.0': fastpg's zero-downtime restarts need uvicorn 0.22.0"),
    "an app that turns TLS verification off for its index": (
        apps(fastapi_app_source=TRUSTED_HOST),
        r"app1: requirements.txt: '--trusted-host pypi.internal.example' turns TLS verification off"),
    "an app source that is not there": (apps(fastapi_app_source="/nonexistent/app"),
                                        r"fastapi_app_source on app1: /nonexistent/app is not a directory"),
    "an environment variable name a shell refuses": (
        apps(fastapi_app_environment={"APP-MODE": "x"}),
        r"fastapi_app_environment on app1 has the name 'APP-MODE'; accepted: letters, digits and _"),
    "a secret with a line break": (
        apps(fastapi_app_secret_environment={"TOKEN": "line1\nline2"}),
        r"fastapi_app_secret_environment on app1 gives TOKEN a value that is not one line"),
    "a variable set from two places": (
        apps(fastapi_app_environment={"DATABASE_URL": "sqlite://"}),
        r"DATABASE_URL is set by fastapi_app_environment and fastapi_app_database_url_env on app1"),
    "an unknown database part": (apps(fastapi_app_database_env={"hostname": "DB_HOST"}),
                                 r"fastapi_app_database_env on app1 has the key 'hostname'; accepted: host, port"),
    "the removed fastapi_app_migrate": (apps(fastapi_app_migrate=False),
                                        r"fastapi_app_migrate is set, but site.yml no longer reads it. "
                                        r"Set instead: fastapi_app_pre_start"),
    "an app beside the default one without its password": (
        apps(fastpg_apps=[{"name": "notes", "port": 8001}]),
        r"fastpg_apps\[notes\] on app1 lacks db_password; accepted: name, port, db_password are required"),
    "an app beside the default one on its port": (
        apps(fastpg_apps=[{"name": "notes", "port": 8000, "db_password": "notes-long-secret"}]),
        r"fastpg_apps\[notes\] on app1 has the port 8000 of the default app"),
    "two apps beside the default one under one name": (
        apps(fastpg_apps=[{"name": "notes", "port": 8001, "db_password": "notes-long-secret"},
                          {"name": "notes", "port": 8002, "db_password": "notes-long-secret"}]),
        r"fastpg_apps\[notes\] on app1 has the name notes of fastpg_apps\[notes\]"),
    "an app beside the default one setting a host-wide value": (
        apps(fastpg_apps=[{"name": "notes", "port": 8001, "db_password": "notes-long-secret",
                           "pip_index_url": "https://pypi.example/simple"}]),
        r"fastpg_apps\[notes\] on app1 sets pip_index_url, which an app of fastpg_apps does not set"),
    "an app beside the default one with a pool out of range": (
        apps(fastpg_apps=[{"name": "notes", "port": 8001, "db_password": "notes-long-secret", "pool_size": 0}]),
        r"fastpg_apps\[notes\].pool_size is 0 on app1; accepted: a whole number from 1 to 1000"),
    "an app beside the default one with a name no service can have": (
        apps(fastpg_apps=[{"name": "Notes App", "port": 8001, "db_password": "notes-long-secret"}]),
        r"fastpg_apps\[Notes App\] on app1: the name 'Notes App' is no service and user name"),
    "an app beside the default one in the default app's database": (
        apps(fastpg_apps=[{"name": "notes", "port": 8001, "db_password": "notes-long-secret", "db_name": "fastpg"}]),
        r"fastpg_apps\[notes\] on app1: the database fastpg belongs to the login role fastpg of another app"),
    "apps beside the default one over the budget": (
        apps(fastpg_apps=[{"name": "notes", "port": 8001, "db_password": "notes-long-secret"}]),
        r"app1\s+notes\s+db1\s+direct\s+2\s+20\s+30\s+100\s+40 .*db1: 400 app peak .* OVER by 113"),
    "PgBouncer that would not track asyncpg's prepared statements": (
        apps(fastpg_pgbouncer=True, pgbouncer_max_prepared_statements=0),
        r"pgbouncer_max_prepared_statements is 0 on app1; accepted: a whole number from 1 to 100000: the apps' "
        r"asyncpg prepares every statement"),
    "apps' pools over PgBouncer's client limit": (
        apps(fastpg_pgbouncer=True, pgbouncer_max_client_conn=80),
        r"app1\s+db1\s+100\s+80\s+1\s+20\s+5\s+25\s+OVER by 20.*db1: 0 app peak \+ 50 PgBouncer server .*: ok.*"
        r"raise pgbouncer_max_client_conn"),
    "two monitoring hosts": (monitoring_hosts("mon1", "mon2"),
                             r"monitoring has 2 hosts \(mon1, mon2\); accepted: one monitoring host"),
    "two backup hosts": (backup_hosts("backup1", "backup2", fastpg_backups=True),
                         r"backupservers has 2 hosts \(backup1, backup2\); accepted: one backup host"),
    "a backup host for a database host without backups": (
        backup_hosts("backup1"),
        r"fastpg_backups is false on db1, but backupservers has backup1; accepted: fastpg_backups: true"),
    "a backup host without its TLS certificate": (
        backup_hosts("backup1", fastpg_backups=True),
        r"pgbackrest_tls_ca_file is '' on backup1; accepted: the path on the controller of a PEM file"),
    "the repository host set by hand": (
        db(pgbackrest_repo_host="backup.example"),
        r"db1: pgbackrest_repo_host is set, but site.yml no longer reads it. Set instead: the backupservers group"),
    "Patroni on one database host": (
        db(fastpg_patroni=True, fastpg_replication_password="ha-replication-secret",
           fastpg_rewind_password="ha-rewind-secret-0", fastpg_patroni_api_password="ha-api-secret-01"),
        r"fastpg_patroni is true, and dbservers has 1 hosts; accepted: 3 or 5 database hosts"),
    "Patroni's leader key shorter than it accepts": (
        db(postgresql_patroni_ttl=15),
        r"postgresql_patroni_ttl is 15 on db1; accepted: seconds, 20 \(Patroni's minimum\) or more"),
    "Patroni without its passwords": (
        db(fastpg_patroni=True),
        r"fastpg_replication_password is not set on db1; accepted: a password of 12 or more characters"),
    # As `-e name=value` gives them: strings. "true" is true and 16 is a number to preflight too.
    "Patroni typed on the command line, on one database host": (
        everyone(fastpg_patroni="true", fastpg_replication_password="ha-replication-secret",
                 fastpg_rewind_password="ha-rewind-secret-0", fastpg_patroni_api_password="ha-api-secret-01",
                 postgresql_patroni_ttl="20", postgresql_patroni_retry_timeout="9"),
        r"fastpg_patroni is true, and dbservers has 1 hosts; accepted: 3 or 5 database hosts.*"
        r"postgresql_patroni_ttl is 20 on db1; accepted: at least postgresql_patroni_loop_wait"),
    "PgBouncer turned off on the command line, over the budget": (
        apps(fastpg_pgbouncer="false", fastapi_app_pool_size=40, fastapi_app_max_overflow=50),
        r"app1\s+fastapi-app\s+db1\s+direct\s.*db1: 360 app peak .* = 373 of postgresql_max_connections 300: OVER"),
    "Patroni's backups without a backup host": (
        db(fastpg_patroni=True, fastpg_backups=True),
        r"fastpg_backups is true on db1, which is in a Patroni cluster \(fastpg_patroni\), and there is no backup "
        r"host; accepted: one host in backupservers"),
    "a front door without its certificate": (
        load_balancer(),
        r"haproxy_front_door_certificate is '' on lb1; accepted: the path on the controller of a PEM file"),
    "a front door before apps that listen on loopback only": (
        load_balancer(haproxy_front_door_certificate=__file__, haproxy_front_door_key=__file__),
        r"fastapi_app_bind_address is '127.0.0.1' on app1, behind the load balancers \(lb1\); accepted: an address "
        r"they reach"),
    "no database hosts at all": (no_dbservers, r"fastpg_db_host is 'db1', which is no dbservers host.*"
                                               r"none: the dbservers group is empty"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_inventory_fails_in_preflight(run_site, case):
    change, message = CASES[case]
    rc, out = run_site(inventory(change))
    assert rc != 0, out
    flat = re.sub(r"\s+", " ", out)
    assert re.search(message, flat), f"{case}: expected /{message}/ in:\n{out[-3000:]}"
    assert TOUCHED not in out, f"{case}: a task reached for a host:\n{out[-3000:]}"
    assert re.findall(r"PLAY \[([^|\]]+)", out) == ["Preflight "], "a play after preflight started"
    assert "Gathering Facts" not in out


def test_private_role_vars_fails_in_preflight(run_site, monkeypatch):
    """The wiring role's vars, hidden from the other roles, would leave them on their defaults."""
    monkeypatch.setenv("ANSIBLE_PRIVATE_ROLE_VARS", "true")
    rc, out = run_site(inventory())
    assert rc != 0
    assert "private_role_vars (ANSIBLE_PRIVATE_ROLE_VARS) is true" in out, out[-2000:]
    assert "UNREACHABLE" not in out


def test_messages_are_distinct():
    assert len({m for _, m in CASES.values()}) == len(CASES)


def test_good_inventory_passes_preflight_and_prints_the_budget(run_site):
    rc, out = run_site(inventory(), playbook="fastpg.stack.preflight")
    assert rc == 0, out
    out = re.sub(r"\s+", " ", out)
    assert re.search(r"app1\s+fastapi-app\s+db1\s+direct\s+2\s+20\s+30\s+100\s+40", out)
    assert re.search(r"app2\s+fastapi-app\s+db1\s+direct\s+2\s+20\s+30\s+100\s+40", out)
    assert ("db1: 200 app peak + 3 superuser_reserved_connections + 10 fastpg_reserved_connections"
            " = 213 of postgresql_max_connections 300: ok") in out
    assert TOUCHED not in out
    assert "changed=0" in out


def test_preflight_is_the_first_play_of_site_yml(run_site):
    """A good inventory gets past preflight; the first host contact is the next play's."""
    rc, out = run_site(inventory())
    assert rc != 0
    out = re.sub(r"\s+", " ", out)
    pre = out.index("PLAY [Preflight")
    first_after = out.index("PLAY [", pre + 1)
    assert "= 213 of postgresql_max_connections 300: ok" in out[pre:first_after]
    assert TOUCHED not in out[:first_after]
    rest = out[first_after:]
    # The first contact: python3-apt for the apt module, on every host of the stack.
    assert rest.startswith("PLAY [Hosts | python3-apt, which the apt module imports]")
    assert TOUCHED in rest


def test_apps_beside_the_default_one_have_a_line_each_in_the_budget(run_site):
    entry = {"name": "notes", "port": 8001, "db_password": "notes-long-secret", "workers": 1, "pool_size": 5}
    rc, out = run_site(inventory(apps(fastpg_apps=[entry])), playbook="fastpg.stack.preflight")
    assert rc == 0, out
    out = re.sub(r"\s+", " ", out)
    # workers and pool_size its own, max_overflow the host's (30).
    assert re.search(r"app1\s+notes\s+db1\s+direct\s+1\s+5\s+30\s+35\s+5", out), out
    assert re.search(r"app2\s+notes\s+db1\s+direct\s+1\s+5\s+30\s+35\s+5", out), out
    assert "db1: 270 app peak" in out


def test_host_var_beats_group_var_beats_role_default(run_site):
    def change(a):
        a["children"]["appservers"]["vars"] = {"fastapi_app_pool_size": 6}  # max_overflow: role default 30
        a["children"]["appservers"]["hosts"]["app2"]["fastapi_app_pool_size"] = 9

    rc, out = run_site(inventory(change), playbook="fastpg.stack.preflight")
    assert rc == 0, out
    out = re.sub(r"\s+", " ", out)
    assert re.search(r"app1\s+fastapi-app\s+db1\s+direct\s+2\s+6\s+30\s+72\s+12", out), out
    assert re.search(r"app2\s+fastapi-app\s+db1\s+direct\s+2\s+9\s+30\s+78\s+18", out), out
    assert "150 app peak" in out


def test_a_limited_run_still_counts_every_app_host(run_site):
    """--limit app1 must not hide app2's connections from the budget."""
    rc, out = run_site(inventory(apps(fastapi_app_pool_size=40, fastapi_app_max_overflow=50)),
                       extra=["--limit", "app1"])
    assert rc != 0
    out = re.sub(r"\s+", " ", out)
    assert "db1: 360 app peak" in out and "OVER by 73" in out
    assert TOUCHED not in out
