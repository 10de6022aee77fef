"""Fixtures for the reference app's tests: a real PostgreSQL and the app as fastpg deploys it.

FASTPG_TEST_DATABASE_URL (postgresql+asyncpg://user:pw@host:port/db) points at an existing
server; without it a throwaway cluster is started from the host's PostgreSQL binaries.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jinja2
import pytest

ROOT = Path(__file__).resolve().parents[2]
APP_SRC = ROOT / "roles" / "fastapi_app" / "files" / "reference_app"
DB_TEMPLATE = ROOT / "roles" / "fastapi_app" / "templates" / "database.py.j2"

# Pool values the tests assert against; small so the pool-use warning is easy to reach.
POOL = {
    "fastapi_app_pool_size": 3,
    "fastapi_app_max_overflow": 2,
    "fastapi_app_pool_timeout": 5,
    "fastapi_app_pool_recycle": 600,
    "fastapi_app_pool_pre_ping": False,  # the role default: _drop_closed covers a restart
    "fastapi_app_echo": False,
    "fastapi_app_pool_class": "queue",
    "fastapi_app_pgbouncer": False,
    "fastapi_app_db_connect_timeout": 2,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stdout}{done.stderr}")


def _pg_bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("no PostgreSQL server binaries (initdb) found; install postgresql")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory):
    url = os.environ.get("FASTPG_TEST_DATABASE_URL")
    if url:
        yield url
        return
    bindir = _pg_bindir()
    base = Path(tempfile.mkdtemp(prefix="fastpg-test-pg-"))
    data = base / "data"
    port = _free_port()
    # initdb refuses to run as root: run the cluster as the postgres system user then.
    run_as = []
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        os.chown(base, pg.pw_uid, pg.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    _run(run_as + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                   "--encoding=UTF8", "--locale=C.UTF-8"])
    _run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "log"),
                   "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start"])
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def app_dir(tmp_path_factory):
    """The reference app with database.py rendered from the role's template."""
    target = tmp_path_factory.mktemp("app")
    shutil.copytree(APP_SRC, target, dirs_exist_ok=True)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    # The two Ansible filters the template uses.
    env.filters["comment"] = lambda text: "\n".join("# " + line for line in text.splitlines())
    env.filters["bool"] = bool
    template = env.from_string(DB_TEMPLATE.read_text())
    (target / "database.py").write_text(template.render(ansible_managed="test render", **POOL))
    return target


@pytest.fixture(scope="session")
def migrated(app_dir, database_url):
    """Runs the migration the way the role does (alembic upgrade head), twice."""
    env = dict(os.environ, FASTPG_DATABASE_URL=database_url, PYTHONDONTWRITEBYTECODE="1")
    runs = []
    for _ in range(2):
        runs.append(subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            cwd=app_dir, env=env, capture_output=True, text=True, check=True,
        ))
    return runs


@pytest.fixture(scope="session")
def app_module(app_dir, database_url, migrated):
    os.environ["FASTPG_DATABASE_URL"] = database_url
    sys.path.insert(0, str(app_dir))
    sys.dont_write_bytecode = True
    import main  # noqa: PLC0415  (imported once the environment is ready)

    return main


@pytest.fixture
async def client(app_module):
    import httpx  # noqa: PLC0415

    transport = httpx.ASGITransport(app=app_module.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app.test") as c:
        yield c


@pytest.fixture(scope="session")
def unique():
    """A fresh suffix per call so tests don't collide on unique columns."""
    counter = iter(range(1, 1_000_000))
    stamp = int(time.time() * 1000) % 1_000_000
    return lambda: f"{stamp}_{next(counter)}"
