"""The agent's event loop never blocks: a test fails when, while it ran, the agent reported a callback that held its
loop longer than the test host's threshold, or another of asyncio's debug-mode complaints.

The test host (tests/testhost.py) runs quilt-agent.service with QUILT_LOOP_CHECK=MS (quilt_agent/loopcheck.py) and
tells the tests MS in QUILT_TESTHOST_LOOP_CHECK (0: no check). The agent's reports are in the journal, under its
unit; after each test (its fixtures' teardown included) they are read from where the last check stopped. A report
logged after its test's check, by a callback that outlived it, fails the next test, or the session at its end.
Registered by tests/integration/conftest.py. A test marked starves_cpu is not held to the threshold.
"""
from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemd import journal

AGENT = "quilt-agent.service"
THRESHOLD_ENV = "QUILT_TESTHOST_LOOP_CHECK"
# asyncio's reports (slow callbacks, exceptions never retrieved, tasks destroyed pending) and Python's warnings
# (coroutines never awaited, unclosed files and sockets), as the agent's logging passes them to the journal.
REPORTING_LOGGERS = ("asyncio", "py.warnings")
WARNING = 4  # syslog priority: asyncio's INFO lines (a poll that waited over a second) are no complaint
# The same on the agent's stderr: an uncaught exception in a thread (a loop call from the wrong thread raises).
STDERR_REPORTS = re.compile(r"Non-thread-safe operation|was never awaited|Executing <.*> took [0-9.]+ seconds")
SLOW_CALLBACK = re.compile(r"Executing <.*> took [0-9.]+ seconds")
# A test that keeps every core busy on purpose (to slow the agent's children down) slows the agent as well. The agent
# does not report a callback that was only preempted (quilt_agent/loopcheck.py), but one that waited for the GIL
# while a preempted worker thread held it counts as a sleep. Such a test's slow-callback reports are no finding;
# the others still are.
STARVES_CPU = "starves_cpu"
SHOWN = 30


def is_report(entry: dict) -> bool:
    if entry.get("LOGGER") in REPORTING_LOGGERS:
        return int(entry.get("PRIORITY", WARNING)) <= WARNING
    return bool(STDERR_REPORTS.search(str(entry.get("MESSAGE", ""))))


class AgentJournal:
    """The agent's journal entries, read on from where the last read stopped."""

    def __init__(self, threshold_ms: int) -> None:
        self.threshold_ms = threshold_ms
        self._reader = journal.Reader()
        self._reader.add_match(_SYSTEMD_UNIT=AGENT)
        self._reader.seek_tail()
        self._reader.get_previous()  # on the last entry: iterating gives only what comes after
        self._environment_seen = False

    def reports(self) -> list[str]:
        # What the agent logged so far is stored once --sync returns; wait(0) notices journal files made since.
        subprocess.run(["journalctl", "--sync"], check=True, capture_output=True)
        self._reader.wait(0)
        found = []
        for entry in self._reader:
            if is_report(entry):
                pid = entry.get("_PID", "?")
                found.append(f"[agent pid {pid}] {entry.get('MESSAGE', '')}")
        return found

    def check_environment(self) -> None:
        """Once: the agent that runs has the threshold, whether it came from the checkout or from the package."""
        if self._environment_seen:
            return
        pid = subprocess.run(["systemctl", "show", "-P", "MainPID", AGENT], capture_output=True, text=True,
                             check=True).stdout.strip()
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if pid not in ("", "0") else None
        except OSError:
            environ = None  # it exited meanwhile: the next test looks again
        if environ is None:
            return
        want = f"QUILT_LOOP_CHECK={self.threshold_ms}".encode()
        assert want in environ, f"quilt-agent (pid {pid}) runs without {want.decode()}: the test host's drop-in " \
                                "for quilt-agent.service is not in force"
        self._environment_seen = True


def failure(reports: list[str], threshold_ms: int) -> str:
    shown = "\n".join(f"  {line}" for line in reports[:SHOWN])
    more = f"\n  ... and {len(reports) - SHOWN} more" if len(reports) > SHOWN else ""
    return (f"quilt-agent's event loop was blocked or misused ({len(reports)} report(s); slow means over "
            f"{threshold_ms} ms, QUILT_LOOP_CHECK):\n{shown}{more}")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{STARVES_CPU}: the test keeps every core busy on purpose; the agent's "
                                       "slow callbacks meanwhile are no finding (tests/integration/loopcheck.py)")


@pytest.fixture(scope="session")
def agent_journal() -> Iterator[AgentJournal | None]:
    text = os.environ.get(THRESHOLD_ENV, "0")
    if not text.isdigit() or int(text) == 0:
        yield None
        return
    reader = AgentJournal(int(text))
    yield reader
    late = reader.reports()
    if late:
        pytest.fail("after the last test's check: " + failure(late, reader.threshold_ms), pytrace=False)


@pytest.fixture(autouse=True)
def loop_check(agent_journal: AgentJournal | None, request: pytest.FixtureRequest) -> Iterator[None]:
    """Set up before the test's other fixtures, so torn down after them: their teardown is checked too."""
    yield
    if agent_journal is None:
        return
    agent_journal.check_environment()
    reports = agent_journal.reports()
    if request.node.get_closest_marker(STARVES_CPU):
        reports = [r for r in reports if not SLOW_CALLBACK.search(r)]
    if reports:
        pytest.fail(failure(reports, agent_journal.threshold_ms), pytrace=False)
