"""Watching the agent's event loop for blocking: QUILT_LOOP_CHECK=<milliseconds> runs it in asyncio's debug mode.

Everything the agent serves shares one event loop: a callback that blocks it (a file read, an fsync, a lock held
by a worker thread) stalls every caller at once. In debug mode asyncio logs a coroutine never awaited, a call into
the loop from another thread (then an error), and callbacks' unretrieved exceptions; warnings go to the log as well
(logger py.warnings), files and sockets dropped unclosed included. Each callback that held the loop longer than
the threshold is logged too ("Executing <Task ...> took 0.120 seconds: ...", naming the callback and where it was
created, as asyncio's own report does), by _CallbackTimer below. All of it reaches the journal through the agent's
logging. Debug mode slows every callback: it is for tests (tests/testhost.py turns it on for the integration
suite) and for finding what stalls an agent, not for production.

asyncio's own report measures a callback by the wall clock alone, so a loop that merely waited for a CPU (every
core busy with other processes) looks blocked. _CallbackTimer reports a slow callback when its thread spent the
threshold on the CPU, or slept at least once (a read, an fsync, a lock, a child waited for, the GIL held by a
worker thread); one that was only preempted is logged as such at INFO, which the tests do not count. Time the
host takes from a VM's vCPU counts as the thread's CPU time unless the guest accounts steal time. The run-queue
delay itself (/proc/thread-self/schedstat) would be the finer measure, but kernels without schedstats (this
project's test machines) report it as 0: hence the context switches (getrusage).
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import resource
import time
import warnings
from asyncio import events
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

ENV = "QUILT_LOOP_CHECK"
MAX_MS = 60_000
# Until the agent serves (serving() below), a callback is reported only over this: start-up (recovery, one bus
# object per container, image, network and volume) answers no call while it runs, and in debug mode each of its
# many coroutines records where it was created, which on a loaded host made single steps of it take 50 ms.
STARTING_SECONDS = 0.25

log = logging.getLogger("quilt")
# asyncio's own logger: its debug-mode reports and these are read from the journal alike (tests/integration).
asyncio_log = logging.getLogger("asyncio")


@dataclass(frozen=True)
class CallbackTime:
    """How one callback held the loop's thread."""
    wall: float  # seconds by the monotonic clock
    cpu: float  # seconds the thread ran
    sleeps: int  # voluntary context switches: the thread waited for something
    preemptions: int  # involuntary ones: the scheduler gave its CPU to another thread

    def blocked(self, threshold: float) -> bool:
        """The callback held the loop for over `threshold` seconds itself, rather than waiting for a CPU."""
        return self.wall >= threshold and (self.cpu >= threshold or self.sleeps > 0)


def _thread_counters() -> tuple[float, int, int]:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return time.thread_time(), usage.ru_nvcsw, usage.ru_nivcsw


class _CallbackTimer:
    """Times every callback the loop runs (asyncio.Handle._run, which its Tasks' steps go through too) and reports
    the slow ones, by what held them (CallbackTime)."""

    def __init__(self, serving_seconds: float) -> None:
        self.serving_seconds = serving_seconds
        self.seconds = max(serving_seconds, STARTING_SECONDS)  # until serve()
        self._run = events.Handle._run
        self._timed_run: Callable[[events.Handle], None] | None = None

    def install(self) -> None:
        if getattr(events.Handle._run, "_quilt_timed", False):
            raise RuntimeError("the event loop's callbacks are timed already")
        timer = self

        def timed_run(handle: events.Handle) -> None:
            wall0 = time.monotonic()
            cpu0, sleeps0, preempted0 = _thread_counters()
            timer._run(handle)
            wall = time.monotonic() - wall0
            if wall >= timer.seconds:
                cpu, sleeps, preempted = _thread_counters()
                timer.report(handle, CallbackTime(wall, cpu - cpu0, sleeps - sleeps0, preempted - preempted0))

        timed_run._quilt_timed = True  # type: ignore[attr-defined]
        self._timed_run = timed_run
        events.Handle._run = timed_run  # type: ignore[method-assign]

    def serve(self) -> None:
        self.seconds = self.serving_seconds

    def uninstall(self) -> None:
        if self._timed_run is not None and events.Handle._run is self._timed_run:
            events.Handle._run = self._run  # type: ignore[method-assign]
        self._timed_run = None

    def report(self, handle: events.Handle, took: CallbackTime) -> None:
        how = (f"{took.cpu:.3f} of them on the CPU, {took.sleeps} sleep(s), {took.preemptions} preemption(s)")
        if took.blocked(self.seconds):
            asyncio_log.warning("Executing %s took %.3f seconds: %s", _describe(handle), took.wall, how)
        else:
            asyncio_log.info("Executing %s waited %.3f seconds for a CPU, not blocked: %s", _describe(handle),
                             took.wall, how)


def _describe(handle: events.Handle) -> str:
    """The callback as asyncio's own report names it: a Task's step by its Task."""
    callback: Callable[..., Any] = handle._callback  # type: ignore[attr-defined]
    owner = getattr(callback, "__self__", None)
    return repr(owner) if isinstance(owner, asyncio.Task) else str(handle)


_timer: _CallbackTimer | None = None


def threshold(environ: Mapping[str, str] = os.environ) -> float | None:
    """The slow-callback threshold in seconds, or None when the check is off (unset or empty). A value that is no
    whole number of milliseconds from 1 to MAX_MS is refused: a check that silently did not run would pass."""
    text = environ.get(ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_MS:
        raise ValueError(f"{ENV}={text!r} is not a number of milliseconds from 1 to {MAX_MS}")
    return int(text) / 1000


def run(main: Coroutine[Any, Any, int], seconds: float | None) -> int:
    """asyncio.run(main), in debug mode reporting callbacks slower than seconds unless it is None."""
    if seconds is None:
        return asyncio.run(main)
    logging.captureWarnings(True)
    # Ignored by default: a file or socket dropped unclosed while the agent serves is a leak to report. What is
    # still open when it exits is the kernel's to close: ignored again then.
    warnings.simplefilter("default", ResourceWarning)
    global _timer
    timer = _CallbackTimer(seconds)
    timer.install()
    _timer = timer
    try:
        return asyncio.run(_watched(main, timer), debug=True)
    finally:
        timer.uninstall()
        _timer = None
        warnings.simplefilter("ignore", ResourceWarning)


async def _watched(main: Coroutine[Any, Any, int], timer: _CallbackTimer) -> int:
    asyncio.get_running_loop().slow_callback_duration = math.inf  # _CallbackTimer reports instead, by what held it
    log.info("Event loop check on: callbacks over %d ms are reported once the agent serves, over %d ms before "
             "(%s)", round(timer.serving_seconds * 1000), round(timer.seconds * 1000), ENV)
    return await main


def serving() -> None:
    """The agent owns its name and answers calls: from now on the check's own threshold applies."""
    if _timer is not None:
        _timer.serve()
