"""Preflight against the shipped production example inventory."""

import re

EXAMPLE = "inventories/production.example"


def test_example_refuses_its_placeholder_password(run_site):
    rc, out = run_site(EXAMPLE)
    assert rc != 0
    assert "is the example placeholder" in out
    assert re.findall(r"PLAY \[([^|\]]+)", out) == ["Preflight "], "a play after preflight started"


def test_example_budget_summary_once_the_password_is_set(run_site):
    rc, out = run_site(EXAMPLE, playbook="fastpg.stack.preflight",
                       extra=["-e", "vault_fastpg_db_password=an-example-long-password"])
    assert rc == 0, out
    out = re.sub(r"\s+", " ", out)
    assert re.search(r"app1 fastapi-app db1 direct 2 20 30 100 40", out)
    assert re.search(r"app2 fastapi-app db1 direct 2 20 30 100 40", out)
    assert ("db1: 200 app peak + 3 superuser_reserved_connections + 10 fastpg_reserved_connections"
            " = 213 of postgresql_max_connections 300: ok") in out
