"""Addresses app hosts connect to PostgreSQL from (for pg_hba.conf), and the database host an
app host uses."""

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.fastpg.stack.plugins.filter.budget import resolve_db_hosts


def client_addresses(hosts, hostvars):
    """fastpg_address when set, else the address of the host's default IPv4 route (facts)."""
    out = []
    for name in hosts:
        hv = hostvars[name]
        address = hv["fastpg_address"] if "fastpg_address" in hv else None
        if not address:
            facts = hv["ansible_facts"] if "ansible_facts" in hv else {}
            address = (facts.get("default_ipv4") or {}).get("address")
        if not address:
            raise AnsibleFilterError(
                f"{name}: no address to admit in pg_hba.conf; set fastpg_address for it, "
                "or let its facts be gathered (default_ipv4)"
            )
        out.append(str(address))
    return out


def db_host_of(app_host, hostvars, dbservers):
    """The inventory name of the dbservers host that app_host's fastpg_db_host names; under Patroni
    (fastpg_patroni), the first member, as any member has the cluster's roles."""
    members = [d for d in dbservers
               if boolean(hostvars[d]["fastpg_patroni"] if "fastpg_patroni" in hostvars[d] else False, strict=False)]
    if members:
        return members[0]
    hv = hostvars[app_host]
    app = {"host": app_host, "db_host": str(hv["fastpg_db_host"] if "fastpg_db_host" in hv else "127.0.0.1"),
           "in_dbservers": app_host in dbservers}
    dbs = [{"host": d, "address": str(hostvars[d]["ansible_host"]) if "ansible_host" in hostvars[d] else d}
           for d in dbservers]
    resolved, errors = resolve_db_hosts([app], dbs)
    if errors:
        raise AnsibleFilterError(" ".join(errors))
    return resolved[app_host]


def scrape_targets(hosts, hostvars, scraper, port, port_var=None, bound_var=None):
    """[{host, address: "ip:port"}] for Prometheus on `scraper`: loopback for the scraper itself,
    else the host's address (client_addresses). port_var names a per-host port (else `port`);
    with bound_var, hosts whose value of it is a loopback address are left out (unreachable), but
    for the scraper itself, which reaches its own loopback."""
    targets = []
    for name in hosts:
        hv = hostvars[name]
        bound = str(hv[bound_var] if bound_var in hv else "127.0.0.1") if bound_var else None
        if bound in ("127.0.0.1", "localhost", "::1") and name != scraper:
            continue
        own = ("::1" if bound == "::1" else "127.0.0.1") if name == scraper else client_addresses([name], hostvars)[0]
        number = hv[port_var] if port_var and port_var in hv else port
        targets.append({"host": name, "address": f"[{own}]:{number}" if ":" in own else f"{own}:{number}"})
    return targets


class FilterModule:
    def filters(self):
        return {"client_addresses": client_addresses, "db_host_of": db_host_of, "scrape_targets": scrape_targets}
