"""Helpers for the default scenario's testinfra checks."""

import json

import pytest

HTTP_CLIENT = r"""
import json, sys, urllib.error, urllib.request
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, method=method, data=body.encode() or None,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        status, headers, text = r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
except urllib.error.HTTPError as e:
    status, headers, text = e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode()
print(json.dumps({"status": status, "headers": headers, "body": json.loads(text or "null")}))
"""


@pytest.fixture(scope="module")
def hostvars(host):
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def http(host, hostvars):
    """Real HTTP requests to the deployed app, sent from inside the container over loopback."""
    port = hostvars.get("fastapi_app_port", 8000)

    def request(method, path, body=None):
        out = host.check_output(
            "python3 -c %s %s %s %s",
            HTTP_CLIENT, method, f"http://127.0.0.1:{port}{path}", json.dumps(body) if body else "",
        )
        return json.loads(out)

    return request


@pytest.fixture(scope="module")
def sql(host):
    """Runs SQL as the postgres superuser over the local socket (peer auth); returns text."""

    def run(query, database="postgres"):
        return host.check_output("runuser -u postgres -- psql -XAtq -d %s -c %s", database, query)

    return run


@pytest.fixture(scope="module")
def layout(host):
    """Where PostgreSQL 17 lives on this platform: Debian's postgresql-common, PGDG's RHEL layout
    (one directory a major), or the one-major layout of Fedora's and Amazon Linux's own packages."""
    for data, service in (("/var/lib/pgsql/17/data", "postgresql-17"), ("/var/lib/pgsql/data", "postgresql")):
        if host.file(f"{data}/PG_VERSION").exists:
            return {"service": service, "conf_dir": data, "include_dir": f"{data}/conf.d",
                    "main_conf": f"{data}/postgresql.conf", "family": "redhat"}
    conf = "/etc/postgresql/17/main"
    return {"service": "postgresql@17-main", "conf_dir": conf, "include_dir": f"{conf}/conf.d",
            "main_conf": f"{conf}/postgresql.conf", "family": "debian"}
