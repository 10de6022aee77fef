"""The budget arithmetic of the collection's filter plugin (plugins/filter/budget.py): the
installed copy when ANSIBLE_COLLECTIONS_PATH names it (scripts/test.sh), else the checkout's."""

import os
import sys
from pathlib import Path

COLLECTIONS = os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(":")[0]
PLUGINS = (Path(COLLECTIONS) / "ansible_collections" / "fastpg" / "stack" if COLLECTIONS
           else Path(__file__).resolve().parents[2]) / "plugins" / "filter"
sys.path.insert(0, str(PLUGINS))
# budget.py imports its sibling apps.py as the collection's module.
sys.path.insert(0, COLLECTIONS or str(Path(__file__).resolve().parents[2] / "collections"))

import budget as fb  # noqa: E402


def app(host, db_host="db1", workers=2, size=20, over=30, in_db=False):
    return {"host": host, "db_host": db_host, "in_dbservers": in_db,
            "workers": workers, "pool_size": size, "max_overflow": over}


DB1 = {"host": "db1", "address": "10.0.0.5", "max_connections": 213, "superuser_reserved": 3, "cpus": None}


def test_exactly_at_the_limit_fits():
    result = fb.connection_budget([app("a1"), app("a2")], [DB1], allowance=10)
    assert result["ok"]
    assert result["databases"][0]["total"] == 213


def test_one_over_the_limit_fails():
    result = fb.connection_budget([app("a1"), app("a2", over=31)], [DB1], allowance=10)
    assert not result["ok"]
    assert "OVER by 2" in "\n".join(result["report"])
    assert any("PgBouncer" in line for line in result["report"])


def test_each_database_host_has_its_own_budget():
    db2 = {**DB1, "host": "db2", "address": "10.0.0.6", "max_connections": 50}
    result = fb.connection_budget([app("a1"), app("a2", db_host="10.0.0.6", workers=1, size=10, over=10)],
                                  [DB1, db2], allowance=10)
    by_host = {d["host"]: d for d in result["databases"]}
    assert by_host["db1"]["peak"] == 100 and by_host["db1"]["ok"]
    assert by_host["db2"]["peak"] == 20 and by_host["db2"]["total"] == 33 and by_host["db2"]["ok"]


def test_loopback_resolves_to_the_app_host_itself_only_when_it_runs_postgresql():
    resolved, errors = fb.resolve_db_hosts([app("db1", db_host="localhost", in_db=True)], [DB1])
    assert resolved == {"db1": "db1"} and not errors
    resolved, errors = fb.resolve_db_hosts([app("a1", db_host="localhost")], [DB1])
    assert not resolved and "a1 is not in dbservers" in errors[0]


def test_warns_when_steady_pools_dwarf_the_cores():
    small = {**DB1, "max_connections": 1000, "cpus": 2}
    result = fb.connection_budget([app("a1", workers=4, size=20)], [small])
    assert result["ok"] and result["warnings"] and "80 connections" in result["warnings"][0]
    result = fb.connection_budget([app("a1", workers=1, size=5, over=0)], [small])
    assert not result["warnings"]


def pooled(host, pool_size=20, reserve=5, max_client_conn=1000, login=("fastpg", "fastpg"), **kw):
    return {**app(host, **kw), "login": login,
            "pgbouncer": {"pool_size": pool_size, "reserve": reserve, "max_client_conn": max_client_conn}}


def test_through_pgbouncer_the_server_pools_count_not_the_apps():
    # 4 workers x 100 slots per host would need 800 connections directly; through PgBouncer each
    # host holds (20 + 5) per database and login role.
    small = {**DB1, "max_connections": 100}
    direct = fb.connection_budget([app("a1", workers=4, size=50, over=50), app("a2", workers=4, size=50, over=50)],
                                  [small])
    assert not direct["ok"] and direct["databases"][0]["total"] == 813
    result = fb.connection_budget([pooled("a1", workers=4, size=50, over=50),
                                   pooled("a2", workers=4, size=50, over=50)], [small])
    assert result["ok"], result["report"]
    db = result["databases"][0]
    assert (db["peak"], db["pgbouncer"], db["total"]) == (0, 50, 63)
    assert [(p["host"], p["clients"], p["server"]) for p in result["poolers"]] == [("a1", 400, 25), ("a2", 400, 25)]
    text = "\n".join(result["report"])
    assert "PgBouncer: the apps' peak against pgbouncer_max_client_conn" in text
    assert "50 PgBouncer server" in text


def test_pgbouncer_pools_per_login_and_its_client_limit():
    rows = [pooled("a1", workers=2, size=10, over=0), pooled("a1", workers=2, size=10, over=0, login=("b", "b")),
            app("a2", workers=1, size=5, over=0)]
    result = fb.connection_budget(rows, [DB1])
    assert result["poolers"][0]["pools"] == 2 and result["poolers"][0]["server"] == 50
    assert result["databases"][0]["peak"] == 5 and result["databases"][0]["total"] == 5 + 50 + 13
    over = fb.connection_budget([pooled("a1", workers=4, size=50, over=50, max_client_conn=300)], [DB1])
    assert not over["ok"]
    text = "\n".join(over["report"])
    assert "OVER by 100" in text and "raise pgbouncer_max_client_conn" in text


def members(max_connections=120, max_wal_senders=10):
    return [{**DB1, "host": h, "address": f"10.0.0.{i}", "max_connections": max_connections, "patroni": True,
             "max_wal_senders": max_wal_senders} for i, h in enumerate(("pg1", "pg2", "pg3"), start=5)]


def test_under_patroni_every_member_holds_every_app_and_patroni_itself():
    result = fb.connection_budget([app("a1", db_host="127.0.0.1"), app("a2", db_host="anything")], members(),
                                  allowance=10)
    assert [d["host"] for d in result["databases"]] == ["pg1", "pg2", "pg3"]
    for d in result["databases"]:
        # 2 app hosts x 2 pools (primary, replicas' route) x 2 workers x (20 + 30) app peak
        # + 2 Patroni + 3 superuser + 10 allowance
        assert (d["peak"], d["patroni"], d["total"], d["senders"]) == (400, 2, 415, 3)
        assert not d["ok"]
    text = "\n".join(result["report"])
    assert "a1  fastapi-app" not in text and "pg1 or pg2 or pg3" in text
    assert "pg1: 400 app peak + 2 Patroni + 3 superuser_reserved_connections" in text
    assert "x 2 under Patroni" in text
    assert "pg1 as primary: 2 streaming replicas + 1 base backup = 3 WAL senders of max_wal_senders 10: ok" in text
    assert "any can become the primary" in text


def test_under_patroni_the_wal_senders_are_a_limit_of_their_own():
    result = fb.connection_budget([app("a1", workers=1, size=5, over=5)], members(max_wal_senders=2))
    assert not result["ok"] and all(d["total"] <= d["limit"] for d in result["databases"])
    assert "3 WAL senders of max_wal_senders 2: OVER by 1" in "\n".join(result["report"])
