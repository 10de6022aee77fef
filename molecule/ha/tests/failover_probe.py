"""Seconds without a write during a failover, for two ways an app can find the primary, side by
side: HAProxy's primary route on the app host (127.0.0.1:5000) and libpq-style multi-host
(asyncpg given every member, target_session_attrs=read-write).

Run on an app host with the app's environment (its database password, TLS settings):
    failover_probe.py SECONDS MEMBER_ADDRESS... > result.json
Each way has one writer: an INSERT every 50 ms on its connection, a new connection (3 s at
most) when it fails. The result is each way's longest time between two committed INSERTs.
"""

import asyncio
import json
import os
import sys
import time

import asyncpg

AUTH = {"user": "fastpg", "database": "fastpg", "password": os.environ["FASTPG_DATABASE_PASSWORD"]}


async def writer(way, connect, until):
    conn, last, longest, failures = None, None, 0.0, 0
    while time.monotonic() < until:
        try:
            if conn is None:
                conn = await asyncio.wait_for(connect(), 3)
            await asyncio.wait_for(conn.execute("INSERT INTO failover_probe (way) VALUES ($1)", way), 3)
            now = time.monotonic()
            longest = max(longest, now - last) if last else 0.0
            last = now
        # InternalClientError: a connection whose statement a timeout cancelled is still busy.
        except (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
                asyncpg.exceptions.InternalClientError):
            failures += 1
            if conn is not None:
                conn.terminate()
                conn = None
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.05)
    return way, {"longest_gap_s": round(longest, 2), "failed_attempts": failures}


async def main(seconds, members):
    first = await asyncpg.connect(host="127.0.0.1", port=5000, **AUTH)
    await first.execute("CREATE TABLE IF NOT EXISTS failover_probe (id bigserial PRIMARY KEY, way text, "
                        "at timestamptz DEFAULT now())")
    await first.close()
    until = time.monotonic() + seconds
    ways = await asyncio.gather(
        writer("haproxy", lambda: asyncpg.connect(host="127.0.0.1", port=5000, timeout=2, **AUTH), until),
        writer("multihost", lambda: asyncpg.connect(host=members, port=[5432] * len(members), timeout=2,
                                                    target_session_attrs="read-write", **AUTH), until))
    print(json.dumps(dict(ways)))


asyncio.run(main(float(sys.argv[1]), sys.argv[2:]))
