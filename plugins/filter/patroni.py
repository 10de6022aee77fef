"""What the postgresql role changes in Patroni's dynamic configuration (postgresql_patroni)."""

# The role owns every server setting in postgresql.parameters: one it no longer sets is reset
# (null removes a key in a PATCH /config). Elsewhere keys it does not set are left alone.
OWNED = ("postgresql", "parameters")


def patroni_config_patch(current, desired, path=()):
    """The PATCH /config body that turns `current` into `desired` ({} when nothing differs)."""
    current = current if isinstance(current, dict) else {}
    patch = {}
    for key, want in desired.items():
        have = current.get(key)
        if isinstance(want, dict):
            sub = patroni_config_patch(have, want, path + (key,))
            if sub:
                patch[key] = sub
        elif have != want:
            patch[key] = want
    if path == OWNED:
        patch.update({key: None for key in current if key not in desired})
    return patch


class FilterModule:
    def filters(self):
        return {"patroni_config_patch": patroni_config_patch}
