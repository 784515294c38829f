"""Pausing a container: the cgroup v2 freezer of its cgroup (`cgroup.freeze`), on a unified or a hybrid host.

systemd's FreezeUnit/ThawUnit would be the citizen's way, but systemd 252 offers them only when every hierarchy is
unified (cg_freezer_supported): on a hybrid host it answers "Unit ... does not support freezing". The kernel's v2
freezer needs no controller and works in the unified hierarchy a hybrid host mounts beside its v1 ones, so the
agent writes the container's `cgroup.freeze` itself, on either kind of host. Unlike the v1 freezer controller (which
would need every process moved into a freezer cgroup of the agent's, racing with forks), it holds every process of
the cgroup, the ones forked or joined later too, and a frozen process still dies of SIGKILL. The state is the
kernel's: an agent that restarts reads it back (is_frozen), nothing is stored.
"""
from __future__ import annotations

import time
from pathlib import Path

from quilt_agent import cgroups
from quilt_agent.errors import NotSupported

# Freezing waits for every task to reach the signal-delivery point: a task in an uninterruptible sleep (a slow disk
# read) gets there only when the sleep ends.
SETTLE_TIMEOUT = 5.0
_POLL = 0.01


def cgroup_dir(pid: int) -> Path:
    """The v2 cgroup directory of pid (its container's scope). NotSupported when the host mounts no cgroup2
    hierarchy (a legacy v1-only host), where the only freezer is the v1 controller."""
    try:
        dirs = cgroups.process_cgroups(pid)
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    for d in dirs:
        if d.hierarchy.version == 2:
            path = Path(d.path)
            if not (path / "cgroup.freeze").exists():
                # Only the root cgroup has none: what an exiting process's entry may show once it left its own.
                raise ProcessLookupError(pid)
            return path
    raise NotSupported("Pausing needs the cgroup v2 freezer (cgroup.freeze), and this host mounts no cgroup2 "
                       "hierarchy (a legacy cgroup v1 host): boot with systemd.unified_cgroup_hierarchy=1, "
                       "or the hybrid layout")


def is_frozen(pid: int) -> bool:
    """Whether pid's v2 cgroup is asked to be frozen (false when there is none, or pid is gone)."""
    try:
        return Path(cgroup_dir(pid), "cgroup.freeze").read_text().strip() == "1"
    except (OSError, ProcessLookupError, NotSupported):
        return False


def set_frozen(pid: int, frozen: bool) -> None:
    """Freeze or thaw pid's cgroup and wait until the kernel says every task got there. Blocking (a worker
    thread). ProcessLookupError when pid has ended."""
    try:
        path = cgroup_dir(pid)
        (path / "cgroup.freeze").write_text("1" if frozen else "0")
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    deadline = time.monotonic() + SETTLE_TIMEOUT
    want = f"frozen {1 if frozen else 0}"
    while time.monotonic() < deadline:
        try:
            events = (path / "cgroup.events").read_text().splitlines()
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        if want in events or "populated 0" in events:
            return
        time.sleep(_POLL)
    # The write took: the cgroup stays asked to be frozen (or thawed), and the kernel finishes it when the last
    # task reaches the point; saying so is more useful than failing the call.
