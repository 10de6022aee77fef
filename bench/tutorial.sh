#!/usr/bin/env bash
# The baseline: the tutorial's install steps as a plain shell script, run inside a fresh
# container from the same image as fastpg's converge. Run twice, it is also the re-run baseline.
# (Its one deliberate difference from the tutorial: SQL goes to psql on stdin, so the
# benchmark itself puts no password on a command line.)
set -euo pipefail
PASSWORD=$(cat /root/db_password)
export DEBIAN_FRONTEND=noninteractive

apt-get update -qq
apt-get install -y -qq --no-install-recommends postgresql-17 python3-venv >/dev/null
systemctl start postgresql

cat >> /etc/postgresql/17/main/postgresql.conf <<CONF
shared_buffers = 256MB
effective_cache_size = 768MB
work_mem = 4MB
max_connections = 200
CONF
systemctl restart postgresql

runuser -u postgres -- psql -q <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fastpg') THEN
    CREATE ROLE fastpg LOGIN PASSWORD '$PASSWORD';
  END IF;
END \$\$;
SQL
runuser -u postgres -- psql -qtAc "SELECT 1 FROM pg_database WHERE datname = 'fastpg'" | grep -q 1 \
  || runuser -u postgres -- createdb -O fastpg fastpg
runuser -u postgres -- psql -q -d fastpg -c "ALTER SCHEMA public OWNER TO fastpg"

id fastapi >/dev/null 2>&1 || useradd --system --shell /usr/sbin/nologin fastapi
mkdir -p /opt/app
cp -r /root/app/. /opt/app/
python3 -m venv /opt/app/venv
/opt/app/venv/bin/pip install -q --cert /root/ca.pem -r /root/requirements.txt

# database.py as the tutorial writes it, plus the names the reference app imports from it
# (main.py: engine, read_engine, SessionLocal, MAX_OVERFLOW): one server, so reads go to the engine.
cat > /opt/app/database.py <<PY
import os
from sqlalchemy.ext.asyncio import create_async_engine, async_sessionmaker
POOL_SIZE, MAX_OVERFLOW = 7, 11
engine = create_async_engine("postgresql+asyncpg://fastpg:$PASSWORD@127.0.0.1/fastpg",
                             pool_size=7, max_overflow=11, pool_timeout=12, pool_recycle=900, pool_pre_ping=True)
read_engine = engine
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)
async def get_session():
    async with SessionLocal() as session:
        yield session
PY
(cd /opt/app && venv/bin/alembic upgrade head)

cat > /etc/systemd/system/app.service <<UNIT
[Service]
User=fastapi
WorkingDirectory=/opt/app
ExecStart=/opt/app/venv/bin/uvicorn main:app --host 127.0.0.1 --port 8000 --workers 2
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable -q app
systemctl restart app
for _ in $(seq 1 60); do
  python3 -c 'import urllib.request; urllib.request.urlopen("http://127.0.0.1:8000/health")' 2>/dev/null && exit 0
  sleep 0.5
done
exit 1
