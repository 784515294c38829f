"""What every benchmark of the agent checks first: that the agent runs as users get it.

The test host runs quilt-agent with QUILT_LOOP_CHECK (asyncio's debug mode, for the integration suite's check of
the event loop: tests/testhost.py, quilt_agent/loopcheck.py). Debug mode records where every callback was made,
which slows every call: RunContainer to the exit of /bin/true took 53 ms with it and 36 ms without, in one test
host. A figure measured so is not Quilt's; `make bench` boots the test host with --loop-check 0.
"""
from __future__ import annotations

import subprocess
import sys


def loop_check() -> str:
    """The agent unit's QUILT_LOOP_CHECK, "" when it has none."""
    out = subprocess.run(["systemctl", "show", "quilt-agent.service", "--property=Environment", "--value"],
                         capture_output=True, text=True, check=False).stdout
    return next((word.split("=", 1)[1] for word in out.split() if word.startswith("QUILT_LOOP_CHECK=")), "")


def refuse_debug_agent(program: str) -> None:
    """Exit with one line when the agent would run in asyncio's debug mode."""
    value = loop_check()
    if value not in ("", "0"):
        sys.exit(f"{program}: quilt-agent runs with QUILT_LOOP_CHECK={value} (asyncio's debug mode), which slows "
                 "every call: measure it as users run it, in a test host booted with --loop-check 0 "
                 "(`python3 tests/testhost.py run --loop-check 0 -- ...`; make's bench targets do)")
