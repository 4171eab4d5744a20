"""Which lease owners on this machine are dead processes: their jobs can be taken over at once.

Imported by the worker's parent process (the sweeper) as well as by its pool process, so it stays
free of torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from styleq.shared.service import leases


def process_alive(pid: int) -> bool:
    """Tell whether a process with this id runs on this machine (one of another user counts as alive; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it runs, as another user
    try:
        # A killed process whose parent died too waits as a zombie until something reaps it.
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def dead_local_owners(owners: Sequence[str], host: str) -> list[str]:
    """Return those of `owners` (`name@host/pid`) that name this `host` and a process that no longer runs."""
    dead = []
    for owner in owners:
        pid = owner.rpartition("/")[2]
        if leases.lease_owner_host(owner) == host and pid.isdigit() and not process_alive(int(pid)):
            dead.append(owner)
    return dead
