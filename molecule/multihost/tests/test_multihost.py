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


def test_pg_hba_admits_the_app_hosts_only(host):
    hba = host.file("/etc/postgresql/17/main/pg_hba.conf").content_string
    rules = [line.split() for line in hba.splitlines() if line.startswith("host")]
    assert sorted(rule[3] for rule in rules) == sorted(f"{address_of(a)}/32" for a in APPS)
    assert all(rule[0] == "hostssl" and rule[1:3] == ["fastpg", "fastpg"] and rule[4] == "scram-sha-256"
               for rule in rules)


def test_apps_connect_over_tls_only(host):
    q = ("SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl) FROM pg_stat_ssl s "
         "JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'fastpg'")
    with_tls, without = host.check_output("runuser -u postgres -- psql -XAtq -c %s", q).split("|")
    assert int(with_tls) > 0 and int(without) == 0


def test_app_env_asks_for_verify_full():
    env = remote("fastpg-app1").file("/opt/fastapi-app/app.env").content_string
    assert "PGSSLMODE=verify-full" in env
    assert "PGSSLROOTCERT=/opt/fastapi-app/db-ca.pem" in env


def test_plain_connection_from_an_app_host_is_refused():
    out = remote("fastpg-app1").run(
        "/opt/fastapi-app/venv/bin/python -c %s",
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
        "/opt/fastapi-app/venv/bin/python -c %s",
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
    content = node.file("/opt/fastapi-app/app/database.py").content_string
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
