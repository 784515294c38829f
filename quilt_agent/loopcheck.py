"""Watching the agent's event loop for blocking: QUILT_LOOP_CHECK=<milliseconds> runs it in asyncio's debug mode.

Everything the agent serves shares one event loop: a callback that blocks it (a file read, an fsync, a lock held
by a worker thread) stalls every caller at once. In debug mode asyncio logs each callback that ran longer than the
threshold ("Executing <Task ...> took 0.120 seconds", naming the callback and where it was created), a coroutine
never awaited, a call into the loop from another thread (then an error), and callbacks' unretrieved exceptions;
warnings go to the log as well (logger py.warnings), files and sockets dropped unclosed included. All of it reaches the
journal through the agent's logging. Debug mode slows every callback: it is for tests (tests/testhost.py turns it
on for the integration suite) and for finding what stalls an agent, not for production.
"""
from __future__ import annotations

import asyncio
import logging
import os
import warnings
from collections.abc import Coroutine, Mapping
from typing import Any

ENV = "QUILT_LOOP_CHECK"
MAX_MS = 60_000
# Until the agent serves (serving() below), a callback is reported only over this: start-up (recovery, one bus
# object per container, image, network and volume) answers no call while it runs, and in debug mode each of its
# many coroutines records where it was created, which on a loaded host made single steps of it take 50 ms.
STARTING_SECONDS = 0.25
_serving_threshold: float | None = None  # the check's threshold, for serving(); None when it is off

log = logging.getLogger("quilt")


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
    global _serving_threshold
    if seconds is None:
        _serving_threshold = None
        return asyncio.run(main)
    logging.captureWarnings(True)
    # Ignored by default: a file or socket dropped unclosed while the agent serves is a leak to report. What is
    # still open when it exits is the kernel's to close: ignored again then.
    warnings.simplefilter("default", ResourceWarning)
    try:
        return asyncio.run(_watched(main, seconds), debug=True)
    finally:
        warnings.simplefilter("ignore", ResourceWarning)


async def _watched(main: Coroutine[Any, Any, int], seconds: float) -> int:
    global _serving_threshold
    loop = asyncio.get_running_loop()
    _serving_threshold = seconds
    loop.slow_callback_duration = max(seconds, STARTING_SECONDS)
    log.info("Event loop check on: callbacks over %d ms are reported once the agent serves, over %d ms before "
             "(%s)", round(seconds * 1000), round(loop.slow_callback_duration * 1000), ENV)
    return await main


def serving() -> None:
    """The agent owns its name and answers calls: from now on the check's own threshold applies."""
    if _serving_threshold is not None:
        asyncio.get_running_loop().slow_callback_duration = _serving_threshold
