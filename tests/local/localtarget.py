"""Helpers for the tests that run against new local containers (scripts/lib.sh's local_container)."""

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_PLAYBOOK = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "ansible-playbook"


def recap_changed(out):
    """The changed count summed over the hosts of a run's PLAY RECAP."""
    return sum(int(n) for n in re.findall(r"changed=(\d+)", out.split("PLAY RECAP")[-1]))


def new_container(name, port, image=None):
    """A new systemd container, as scripts/up.sh makes fastpg-local: from the test image, or the
    image given (FASTPG_BAKED_IMAGE for a test that is not about installing)."""
    remove_container(name)
    env = dict(os.environ, FASTPG_IMAGE=image) if image else None
    subprocess.run(["bash", "-c", f'source scripts/lib.sh && local_container "{name}" {port}'],
                   cwd=ROOT, check=True, capture_output=True, env=env)


def remove_container(name):
    subprocess.run(["docker", "rm", "-f", name], capture_output=True)
