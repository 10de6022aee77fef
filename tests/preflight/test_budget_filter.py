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
