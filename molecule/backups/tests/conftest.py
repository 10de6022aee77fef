"""Shared by the backups scenario's tests (test_backups.py, then test_upgrade.py)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


def playbook(site, *args, inventories=()):
    """Runs a playbook of the collection against the scenario's inventory (and any more inventory
    sources): (return code, output, seconds)."""
    exe = Path(sys.executable).parent / "ansible-playbook"
    env = dict(os.environ, ANSIBLE_NOCOLOR="1")
    eph = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if eph and (Path(eph) / "ansible.cfg").exists():
        env["ANSIBLE_CONFIG"] = str(Path(eph) / "ansible.cfg")
    env.pop("ANSIBLE_CALLBACKS_ENABLED", None)
    sources = [a for inv in (os.environ["MOLECULE_INVENTORY_FILE"], *inventories) for a in ("-i", str(inv))]
    start = time.monotonic()
    done = subprocess.run([str(exe if exe.exists() else shutil.which("ansible-playbook")), *sources, site, *args],
                          env=env, capture_output=True, text=True, timeout=900)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start
