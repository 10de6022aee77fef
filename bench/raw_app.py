"""The ceiling: the reference app's read endpoints on a bare asyncpg pool, no ORM, no framework.

Served by uvicorn from the deployed venv, beside the app, for the benchmark only.
"""

import json
import os

import asyncpg

POOL = None


async def app(scope, receive, send):
    global POOL
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                url = os.environ["FASTPG_DATABASE_URL"].replace("postgresql+asyncpg", "postgresql")
                POOL = await asyncpg.create_pool(url, password=os.environ["FASTPG_DATABASE_PASSWORD"],
                                                 min_size=7, max_size=18)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await POOL.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    if path == "/health":
        total = await POOL.fetchval("SELECT count(*) FROM users")
        body = {"status": "healthy", "database": "connected", "total_users": total}
    elif path == "/users/":
        rows = await POOL.fetch("SELECT id, username, email, is_active FROM users ORDER BY id LIMIT 10")
        body = [dict(r) for r in rows]
    elif path == "/pool-stats":
        body = {"pool_size": POOL.get_size(), "idle": POOL.get_idle_size()}
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
