"""Restart policies: whether a container that ended is started again, and after how long.

The policies are Docker's and Podman's: "no"; "on-failure" (a non-zero exit, at most restart_max times when
that is set); "always"; "unless-stopped" (as always, and a container a user stopped stays stopped across agent
restarts and boots). A stop or kill by a user, through Quilt or through systemd (`systemctl stop` of the
scope), is never a failure: the container stays stopped until it is started again.

The wait between restarts grows as systemd's RestartSec=/RestartSteps=/RestartMaxDelaySec= make it grow: the
first after `delay` seconds, then exponentially up to `max_delay` over `steps` restarts; a run of `reset_after`
seconds or more starts again from the first. Set in /etc/quilt/quilt.conf:

    [restart]
    delay = 0.1          # seconds before the first restart
    max_delay = 60       # the longest wait
    steps = 9            # restarts from the first wait to the longest
    reset_after = 10     # seconds of running that count as a good run
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quilt_agent.config import read_table
from quilt_agent.model import Container, State

log = logging.getLogger("quilt.restart")


@dataclass(frozen=True)
class Backoff:
    delay: float = 0.1
    max_delay: float = 60.0
    steps: int = 9
    reset_after: float = 10.0

    def wait(self, streak: int) -> float:
        """Seconds before the restart after `streak` short runs in a row (1 = the first)."""
        n = min(max(streak - 1, 0), self.steps)
        if not self.steps or self.max_delay <= self.delay:
            return self.delay
        return self.delay * (self.max_delay / self.delay) ** (n / self.steps)

    def streak(self, c: Container) -> int:
        """The count of short runs in a row that c's last run makes."""
        ran = (c.finished_at - c.started_at) / 1e6 if c.started_at and c.finished_at else 0.0
        return 1 if ran >= self.reset_after else c.restart_streak + 1


def wanted(c: Container) -> bool:
    """Whether c, which just ended, is to be started again by its policy."""
    policy = c.spec.restart_policy
    if policy == "no" or c.user_stopped:
        return False
    if policy == "on-failure":
        if c.exit_code == 0 and c.state is not State.FAILED:
            return False
        if c.spec.restart_max and c.restart_count >= c.spec.restart_max:
            return False
    return True


def at_boot(c: Container) -> bool:
    """Whether c is started when the host has booted: always, and unless-stopped that no user stopped."""
    return c.spec.restart_policy == "always" or (c.spec.restart_policy == "unless-stopped" and not c.user_stopped)


def _seconds(table: dict[str, Any], key: str, default: float, minimum: float) -> float:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            not minimum <= value <= 86400:
        log.error("ignoring [restart] %s = %r: not a number of seconds between %g and 86400; using %g", key, value,
                  minimum, default)
        return default
    return float(value)


def load_backoff(path: Path) -> Backoff:
    """The [restart] table of the agent's configuration file; a bad value is logged and its default used."""
    table = read_table(path, "restart")
    default = Backoff()
    steps = table.get("steps", default.steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 1000:
        log.error("ignoring [restart] steps = %r: not a whole number between 0 and 1000; using %d", steps,
                  default.steps)
        steps = default.steps
    delay = _seconds(table, "delay", default.delay, 0.0)
    return Backoff(delay=delay, max_delay=max(delay, _seconds(table, "max_delay", default.max_delay, 0.0)),
                   steps=steps, reset_after=_seconds(table, "reset_after", default.reset_after, 0.0))
