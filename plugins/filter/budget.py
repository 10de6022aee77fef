"""The connection budget across app hosts and their database hosts (preflight)."""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.fastpg.stack.plugins.filter.apps import app_entries

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Under Patroni (fastpg_patroni) the apps reach whichever member is the primary: each member's
# budget holds every app, plus Patroni's own connections (its loop's and its REST API's).
PATRONI_CONNECTIONS = 2


def _value(name, hv, defaults, key):
    try:
        return hv[key] if key in hv else defaults[key]
    except Exception as exc:  # a template that needs the host's own run context
        raise AnsibleFilterError(
            f"{key} of {name} cannot be read outside a run on {name} ({exc}); "
            f"include {name} in the run or give {key} a plain value"
        ) from exc


def _whole(name, key, value):
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise AnsibleFilterError(f"{key} is {value!r} on {name}; accepted: a whole number")
    return number


def pool_rows(hosts, hostvars, defaults, dbservers):
    """Each app's pool values on each app host: the default app's (the host's own, its groups',
    else the role defaults), then those of its fastpg_apps entries.

    Read from the inventory for every app host, so a --limit run still adds up all of them.
    """
    rows = []
    for name in hosts:
        hv = hostvars[name]
        host = {"host": name, "db_host": str(_value(name, hv, defaults, "fastpg_db_host")),
                "in_dbservers": name in dbservers, "pgbouncer": None}
        if boolean(_value(name, hv, defaults, "fastpg_pgbouncer"), strict=False):
            host["pgbouncer"] = {short: _whole(name, key, _value(name, hv, defaults, key)) for short, key in (
                ("pool_size", "pgbouncer_default_pool_size"),
                ("reserve", "pgbouncer_reserve_pool_size"),
                ("max_client_conn", "pgbouncer_max_client_conn"))}
        rows.append({
            **host, "app": str(_value(name, hv, defaults, "fastapi_app_name")),
            "login": (str(hv["fastpg_db_name"] if "fastpg_db_name" in hv else "fastpg"),
                      str(hv["fastpg_db_user"] if "fastpg_db_user" in hv else "fastpg")),
            **{short: _whole(name, key, _value(name, hv, defaults, key)) for short, key in (
                ("workers", "fastapi_app_workers"),
                ("pool_size", "fastapi_app_pool_size"),
                ("max_overflow", "fastapi_app_max_overflow"))},
        })
        for app in app_entries(hv["fastpg_apps"] if "fastpg_apps" in hv else [], hv, defaults):
            label = f"fastpg_apps entry {app.get('name')!r} of {name}"
            rows.append({**host, "app": str(app.get("name")), "login": (str(app["db_name"]), str(app["db_user"])),
                         **{key: _whole(label, key, app[key]) for key in ("workers", "pool_size", "max_overflow")}})
    return rows


def db_rows(hosts, hostvars, defaults):
    """Each database host's limits; cores only when known without touching it."""
    rows = []
    for name in hosts:
        hv = hostvars[name]
        facts = hv["ansible_facts"] if "ansible_facts" in hv else {}
        cpus = hv["postgresql_cpus"] if "postgresql_cpus" in hv else facts.get("processor_vcpus")
        rows.append({
            "host": name,
            "address": str(hv["ansible_host"]) if "ansible_host" in hv else name,
            "max_connections": _whole(name, "postgresql_max_connections",
                                      _value(name, hv, defaults, "postgresql_max_connections")),
            "superuser_reserved": _whole(name, "postgresql_superuser_reserved_connections",
                                         _value(name, hv, defaults, "postgresql_superuser_reserved_connections")),
            "cpus": int(cpus) if str(cpus or "").isdigit() else None,
            "patroni": boolean(hv["fastpg_patroni"] if "fastpg_patroni" in hv else False, strict=False),
            "max_wal_senders": _whole(name, "postgresql_settings.max_wal_senders", (
                hv["postgresql_settings"] if "postgresql_settings" in hv else {}).get("max_wal_senders", 10)),
        })
    return rows


def resolve_db_hosts(apps, dbs):
    """Map each app host to the dbservers host its fastpg_db_host names.

    apps: [{host, db_host, in_dbservers}]; dbs: [{host, address}]
    Returns ({app: db}, [error, ...]); under Patroni every app maps to the cluster, a tuple of its
    members' names.
    """
    cluster = tuple(d["host"] for d in dbs if d.get("patroni"))
    if cluster:
        return {app["host"]: cluster for app in apps}, []
    by_name = {}
    for db in dbs:
        by_name[db["host"]] = db["host"]
        if db.get("address"):
            by_name[str(db["address"])] = db["host"]
    resolved, errors = {}, []
    known = ", ".join(
        f"{d['host']} ({d['address']})" if d.get("address") and d["address"] != d["host"] else d["host"]
        for d in dbs
    ) or "none: the dbservers group is empty"
    for app in apps:
        target = str(app.get("db_host") or "")
        if target in LOOPBACK and app.get("in_dbservers"):
            resolved[app["host"]] = app["host"]
        elif target in by_name:
            resolved[app["host"]] = by_name[target]
        else:
            why = "is not set" if not target else f"is '{target}', which is no dbservers host"
            if target in LOOPBACK:
                why = f"is '{target}', but {app['host']} is not in dbservers"
            if any(e.startswith(f"{app['host']}: ") for e in errors):
                continue  # the host's other apps
            errors.append(
                f"{app['host']}: fastpg_db_host {why}. Accepted: the inventory name or "
                f"ansible_host of a dbservers host [{known}], or 127.0.0.1/localhost when the "
                f"app host is itself in dbservers."
            )
    return resolved, errors


def connection_budget(apps, dbs, allowance=10, active_factor=4):
    """Peak connections of every app host against max_connections of its database host.

    apps: [{host, app, db_host, in_dbservers, workers, pool_size, max_overflow, login, pgbouncer}],
          a row per app; pgbouncer is None or {pool_size, reserve, max_client_conn} for its host
    dbs:  [{host, address, max_connections, superuser_reserved, cpus (or None)}]
    An app connects directly (its pools count against max_connections) or through its host's
    PgBouncer: its pools then count against PgBouncer's max_client_conn, and PgBouncer's server
    pools, (default_pool_size + reserve_pool_size) per database and login role, against
    max_connections. App hosts that resolve to no database host are left out.
    """
    resolved, _ = resolve_db_hosts(apps, dbs)
    apps = [{**a, "db": resolved[a["host"]]} for a in apps if a["host"] in resolved]
    rows = []
    for a in sorted(apps, key=lambda a: (str(a["db"]), a["host"])):
        workers, size, over = int(a["workers"]), int(a["pool_size"]), int(a["max_overflow"])
        # Under Patroni a direct app has a second pool, for its reads on the replicas' route, which
        # falls back to the primary: both can land on one member.
        pools = 2 if isinstance(a["db"], tuple) and not a.get("pgbouncer") else 1
        rows.append({"host": a["host"], "app": a.get("app", ""), "db": a["db"],
                     "db_label": " or ".join(a["db"]) if isinstance(a["db"], tuple) else a["db"],
                     "workers": workers, "pool_size": size, "max_overflow": over, "pools": pools,
                     "peak": pools * workers * (size + over), "steady": pools * workers * size,
                     "via": "PgBouncer" if a.get("pgbouncer") else "direct"})
    poolers = {}
    for a in apps:
        if a.get("pgbouncer"):
            p = poolers.setdefault(a["host"], {"host": a["host"], "db": a["db"], **a["pgbouncer"],
                                               "logins": set(), "clients": 0})
            p["logins"].add(tuple(a.get("login") or (a.get("app", ""), a.get("app", ""))))
    for r in rows:
        if r["via"] == "PgBouncer":
            poolers[r["host"]]["clients"] += r["peak"]
    poolers = [{**p, "pools": len(p["logins"]), "server": len(p["logins"]) * (p["pool_size"] + p["reserve"]),
                "steady": len(p["logins"]) * p["pool_size"], "ok": p["clients"] <= p["max_client_conn"]}
               for p in sorted(poolers.values(), key=lambda p: p["host"])]
    for p in poolers:
        p.pop("logins")
    databases, warnings = [], []
    members = [d["host"] for d in dbs if d.get("patroni")]
    for d in sorted(dbs, key=lambda d: d["host"]):
        serves = (lambda db: db == tuple(members)) if d.get("patroni") else (lambda db: db == d["host"])
        direct = [r for r in rows if serves(r["db"]) and r["via"] == "direct"]
        pooled = [p for p in poolers if serves(p["db"])]
        peak = sum(r["peak"] for r in direct)
        server = sum(p["server"] for p in pooled)
        steady = sum(r["steady"] for r in direct) + sum(p["steady"] for p in pooled)
        patroni = PATRONI_CONNECTIONS if d.get("patroni") else 0
        reserved = int(d["superuser_reserved"]) + int(allowance) + patroni
        limit = int(d["max_connections"])
        total = peak + server + reserved
        # Streaming replicas and one base backup at a time use WAL senders, a limit of their own.
        senders = len(members) if d.get("patroni") else 0
        senders_ok = senders <= int(d.get("max_wal_senders", 10))
        databases.append({"host": d["host"], "peak": peak, "pgbouncer": server, "steady": steady,
                          "reserved": reserved, "superuser_reserved": int(d["superuser_reserved"]),
                          "allowance": int(allowance), "patroni": patroni, "total": total, "limit": limit,
                          "senders": senders, "max_wal_senders": int(d.get("max_wal_senders", 10)),
                          "ok": total <= limit and senders_ok,
                          "apps": len([r for r in rows if serves(r["db"])])})
        if d.get("cpus") and (direct or pooled):
            active = 2 * int(d["cpus"]) + 1
            if steady > active_factor * active:
                warnings.append(
                    f"{d['host']}: the pools keep {steady} connections open at steady state, over "
                    f"{active_factor}x the {active} that {d['cpus']} cores serve actively "
                    f"(2 x cores + 1 spindle). Most will wait on locks and CPU; smaller pools or "
                    f"PgBouncer serve more requests per second."
                )
    ok = all(db["ok"] for db in databases) and all(p["ok"] for p in poolers)
    return {"ok": ok, "rows": rows, "poolers": poolers, "databases": databases, "warnings": warnings,
            "report": report(rows, poolers, databases, ok)}


def _table(head, body):
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)] if body else [len(h) for h in head]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return [fmt.format(*head).rstrip()] + [fmt.format(*map(str, b)).rstrip() for b in body]


def report(rows, poolers, databases, ok):
    lines = ["Connection budget: peak = workers x (pool_size + max_overflow) per app and app host"
             + (", x 2 under Patroni (a pool for the primary, one for the replicas' route, which falls back "
                "to the primary)" if any(r.get("pools", 1) == 2 for r in rows) else "")]
    lines += _table(["app host", "app", "database", "via", "workers", "pool_size", "max_overflow", "peak", "steady"],
                    [[r["host"], r["app"], r.get("db_label", r["db"]), r["via"], r["workers"], r["pool_size"], r["max_overflow"],
                      r["peak"], r["steady"]] for r in rows])
    if poolers:
        lines.append("PgBouncer: the apps' peak against pgbouncer_max_client_conn; server = pools (database and "
                     "login role pairs) x (pgbouncer_default_pool_size + pgbouncer_reserve_pool_size)")
        lines += _table(["app host", "database", "clients peak", "max_client_conn", "pools", "pool_size", "reserve",
                         "server", ""],
                        [[p["host"], " or ".join(p["db"]) if isinstance(p["db"], tuple) else p["db"], p["clients"], p["max_client_conn"], p["pools"], p["pool_size"],
                          p["reserve"], p["server"], "ok" if p["ok"] else f"OVER by {p['clients'] - p['max_client_conn']}"]
                         for p in poolers])
    for db in databases:
        verdict = "ok" if db["total"] <= db["limit"] else f"OVER by {db['total'] - db['limit']}"
        through = f"{db['pgbouncer']} PgBouncer server + " if db["pgbouncer"] else ""
        patroni = f"{db['patroni']} Patroni + " if db["patroni"] else ""
        lines.append(
            f"{db['host']}: {db['peak']} app peak + {through}{patroni}{db['superuser_reserved']} "
            f"superuser_reserved_connections + {db['allowance']} fastpg_reserved_connections = {db['total']} of "
            f"postgresql_max_connections {db['limit']}: {verdict}"
        )
        if db["senders"]:
            fits = db["senders"] <= db["max_wal_senders"]
            lines.append(
                f"{db['host']} as primary: {db['senders'] - 1} streaming replicas + 1 base backup = {db['senders']} "
                f"WAL senders of max_wal_senders {db['max_wal_senders']}: "
                + ("ok" if fits else f"OVER by {db['senders'] - db['max_wal_senders']}")
            )
    if not ok:
        lines += [
            "Ways out:",
            "  - lower fastapi_app_pool_size and/or fastapi_app_max_overflow (per group or host)",
            "  - lower fastapi_app_workers on the app hosts",
            "  - raise postgresql_max_connections on the database host (a restart; memory per connection)",
            "  - fastpg_pgbouncer: true on the app hosts: PgBouncer (transaction pooling) then holds "
            "pgbouncer_default_pool_size + pgbouncer_reserve_pool_size server connections per app, "
            "whatever the apps' pools",
            "  - behind PgBouncer: lower pgbouncer_default_pool_size or pgbouncer_reserve_pool_size; "
            "raise pgbouncer_max_client_conn for the apps' pools",
        ]
        if any(db["senders"] for db in databases):
            lines.append("  - under Patroni, every member must hold all the apps (any can become the primary); raise "
                         "max_wal_senders in postgresql_settings for more members")
    return lines


class FilterModule:
    def filters(self):
        return {
            "resolve_db_hosts": resolve_db_hosts,
            "connection_budget": connection_budget,
            "pool_rows": pool_rows,
            "db_rows": db_rows,
        }
