"""Health checks: a command run inside a running container now and then, whose exit says whether it is well.

The rules are Docker's and Podman's (`--health-cmd`, `--health-interval`, ...; an image's HEALTHCHECK unless
the create overrides it): a container with a check is "starting" when it starts; the first check runs one
interval after the start and each next one an interval after the one before ended; an exit of 0 makes it
"healthy", any other exit, a check that outlives its timeout or one that cannot run at all is a failure, and
`retries` failures in a row make it "unhealthy". Failures within the start period do not count until it has
once been healthy. On becoming unhealthy the container is left alone, killed, stopped or restarted, as
`health_on_failure` says (kill and stop are not a user's stop: a restart policy then decides).

The checks run in the agent's own loop (a timer per container, nothing when a container has none), through
the exec path (execs.py): in the container's namespaces and scope, as its user, with its seccomp filter. The
last MAX_LOG results are kept in memory; the status is stored with the container.
"""
from __future__ import annotations

import collections
import json
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from quilt_agent.errors import InvalidArgument

if TYPE_CHECKING:
    import asyncio  # imported where the schedule runs: the generator and quiltctl check options without a loop

log = logging.getLogger("quilt.health")

STATUSES = ("", "starting", "healthy", "unhealthy")  # "": no check
ACTIONS = ("none", "kill", "restart", "stop")
MAX_LOG = 5
MAX_OUTPUT = 4096  # bytes of a check's output kept, as Docker keeps
# Docker's and Podman's defaults.
DEFAULT_INTERVAL = 30.0
DEFAULT_TIMEOUT = 30.0
DEFAULT_RETRIES = 3
MIN_INTERVAL = 0.1
MAX_SECONDS = 86400.0 * 365
MAX_RETRIES = 1_000_000


@dataclass(frozen=True)
class Result:
    """One check: when it ran (usec), how it ended (-1: it did not run to an exit) and what it printed."""

    start: int
    end: int
    exit_code: int
    output: str


@dataclass
class Log:
    """What the agent keeps of a container's checks since the agent started."""

    failing_streak: int = 0
    results: collections.deque[Result] = field(default_factory=lambda: collections.deque(maxlen=MAX_LOG))


def judge(status: str, streak: int, healthy: bool, in_start_period: bool, retries: int) -> tuple[str, int]:
    """The status and failing streak after one check."""
    if healthy:
        return "healthy", 0
    if in_start_period and status == "starting":
        return status, streak  # still starting up: not counted
    streak += 1
    return ("unhealthy" if streak >= retries else status), streak


def output_text(stdout: bytes, stderr: bytes) -> str:
    return (stdout + stderr)[:MAX_OUTPUT].decode("utf-8", "replace")


# --- create options ------------------------------------------------------------------------------------------


def _command(value: Any) -> tuple[str, ...]:
    """The check's argv; an empty list means no check at all, not even the image's (Podman's --no-healthcheck)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"Option 'health_cmd' must be a list of strings, not {value!r}")
    if value and not value[0]:
        raise InvalidArgument("Option 'health_cmd': the program to run is empty")
    if any("\0" in v for v in value):
        raise InvalidArgument("Option 'health_cmd': an argument contains a NUL byte")
    return tuple(value)


def parse_command_line(text: str) -> list[str]:
    """A check as Podman's --health-cmd and Quadlet's HealthCmd= spell it: a JSON array is the argv (Docker's
    ["CMD", ...] and ["CMD-SHELL", "..."] too), 'none' is no check (not even the image's), anything else a line
    for /bin/sh -c. ValueError when it is none of these."""
    if text.strip().lower() == "none":
        return []
    if text.lstrip().startswith("["):
        try:
            argv = json.loads(text)
        except ValueError as e:
            raise ValueError(f"'{text}' is not a JSON array of strings: {e}") from None
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ValueError(f"'{text}' is not a JSON array of strings")
        if argv[0] == "CMD-SHELL" and len(argv) == 2:
            return ["/bin/sh", "-c", argv[1]]
        if argv[0] == "NONE":
            return []
        return argv[1:] if argv[0] == "CMD" else argv
    if not text.strip():
        raise ValueError("the health command is empty")
    return ["/bin/sh", "-c", text]


def _seconds(key: str, minimum: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not minimum <= value <= MAX_SECONDS:
            low = f"above 0 (at least {minimum:g})" if minimum else "0 or more"
            raise InvalidArgument(f"Invalid {key} {value!r}: must be a number of seconds, {low}, at most "
                                  f"{MAX_SECONDS:g}")
        return float(value)
    return parse


def _retries(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RETRIES:
        raise InvalidArgument(f"Invalid health_retries {value!r}: must be a whole number from 1 to {MAX_RETRIES}")
    return value


def _action(value: Any) -> str:
    if not isinstance(value, str) or value not in ACTIONS:
        raise InvalidArgument(f"Invalid health_on_failure {value!r}: choose among {', '.join(ACTIONS)}")
    return value


# Option key -> (spec field, parser), merged into model.OPTION_PARSERS.
CONTAINER_OPTIONS = {
    "health_cmd": ("health_cmd", _command),
    "health_interval": ("health_interval", _seconds("health_interval", MIN_INTERVAL)),
    "health_timeout": ("health_timeout", _seconds("health_timeout", 0.001)),
    "health_start_period": ("health_start_period", _seconds("health_start_period", 0.0)),
    "health_retries": ("health_retries", _retries),
    "health_on_failure": ("health_on_failure", _action),
}
TIMING_FIELDS = ("health_interval", "health_timeout", "health_start_period", "health_retries")


def settle(fields: dict[str, Any]) -> None:
    """Refuse what contradicts itself, once every option is parsed."""
    policy = fields.get("restart_policy", "no")
    if fields.get("health_on_failure") == "restart" and policy != "no":
        # Two restarters of one container would race: as Podman advises, one or the other.
        raise InvalidArgument(f"Option health_on_failure 'restart' and restart_policy '{policy}' contradict each "
                              "other: use health_on_failure 'kill' or 'stop' to leave restarts to the policy")


def from_image(healthcheck: Any, what: str) -> dict[str, Any]:
    """An image config's Healthcheck (Docker's: Test ["CMD", ...] / ["CMD-SHELL", "..."] / ["NONE"], durations in
    nanoseconds, 0 = the default) as spec fields; {} when it has none."""
    if not healthcheck:
        return {}
    if not isinstance(healthcheck, dict):
        raise ValueError(f"{what}: Healthcheck is not an object")
    test = healthcheck.get("Test") or []
    if not isinstance(test, list) or not all(isinstance(t, str) for t in test):
        raise ValueError(f"{what}: Healthcheck.Test is not a list of strings")
    if not test or test[0] == "NONE":
        return {"health_cmd": ()}
    if test[0] == "CMD" and len(test) > 1:
        command: tuple[str, ...] = tuple(test[1:])
    elif test[0] == "CMD-SHELL" and len(test) == 2:
        command = ("/bin/sh", "-c", test[1])
    else:
        raise ValueError(f"{what}: Healthcheck.Test {test!r} is not [\"CMD\", ...], [\"CMD-SHELL\", CMD] or "
                         "[\"NONE\"]")
    out: dict[str, Any] = {"health_cmd": command}
    for key, name in (("Interval", "health_interval"), ("Timeout", "health_timeout"),
                      ("StartPeriod", "health_start_period")):
        value = healthcheck.get(key) or 0
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{what}: Healthcheck.{key} is not a number of nanoseconds")
        if value:
            out[name] = CONTAINER_OPTIONS[name][1](value / 1e9)
    retries = healthcheck.get("Retries") or 0
    if retries:
        out["health_retries"] = _retries(retries)
    return out


# --- the schedule ---------------------------------------------------------------------------------------------


class Schedule:
    """A timer per watched container: run_check(id) an interval after it starts and after each check ends.
    Nothing runs for a container that is not watched."""

    def __init__(self, run_check: Callable[[str], Awaitable[None]]) -> None:
        import asyncio

        self._run_check = run_check
        self._loop = asyncio.get_running_loop()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self.logs: dict[str, Log] = {}

    def watch(self, container_id: str, interval: float) -> None:
        self.forget(container_id)
        self.logs.setdefault(container_id, Log()).failing_streak = 0  # a new run: its failures count afresh
        self._timers[container_id] = self._loop.call_later(interval, self._due, container_id, interval)

    def forget(self, container_id: str) -> None:
        """No more checks (the container ended); its log stays for inspect until drop()."""
        timer = self._timers.pop(container_id, None)
        if timer is not None:
            timer.cancel()
        task = self._running.pop(container_id, None)
        if task is not None and task is not _current_task():
            task.cancel()

    def drop(self, container_id: str) -> None:
        self.forget(container_id)
        self.logs.pop(container_id, None)

    def _due(self, container_id: str, interval: float) -> None:
        self._timers.pop(container_id, None)
        task = self._loop.create_task(self._run_check(container_id))
        self._running[container_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._running.get(container_id) is not t:
                return  # forgotten meanwhile (and maybe watched again): that run's timer is not this one's
            del self._running[container_id]
            if not t.cancelled() and t.exception() is not None:
                log.error("health check of container %s failed", container_id[:12], exc_info=t.exception())
            self._timers[container_id] = self._loop.call_later(interval, self._due, container_id, interval)
        task.add_done_callback(done)

    def __len__(self) -> int:
        return len(self._timers) + len(self._running)


def _current_task() -> asyncio.Task[Any] | None:
    import asyncio

    return asyncio.current_task()
