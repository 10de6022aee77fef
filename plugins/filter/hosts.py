"""Addresses app hosts connect to PostgreSQL from (for pg_hba.conf)."""

from ansible.errors import AnsibleFilterError


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


class FilterModule:
    def filters(self):
        return {"client_addresses": client_addresses}
