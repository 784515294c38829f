"""graceperiod.py: which cgroup.procs it writes, that it writes the agent's own pid there in a thread of its own,
and that a file it cannot write turns it off with one line in the log. The kernel's side (systemd's moves then
finding the grace period passed) is measured by bench/profile.py and the bench's run rows, not tested."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from quilt_agent import cgroups
from quilt_agent.graceperiod import GracePeriod, procs_file
from tests.unit.test_cgroups import HYBRID_MOUNTINFO, HYBRID_PROC_CGROUP, SCOPE, fake_proc, write

DEADLINE = 10.0


def until(done: Callable[[], object]) -> bool:
    deadline = time.monotonic() + DEADLINE
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_the_unified_hierarchy_is_written_on_a_hybrid_host(tmp_path: Path) -> None:
    write(tmp_path / "mountinfo", HYBRID_MOUNTINFO)
    dirs = cgroups.process_cgroups(42, cgroups.hierarchies(str(tmp_path / "mountinfo")),
                                   fake_proc(tmp_path, HYBRID_PROC_CGROUP))
    assert procs_file(dirs) == f"/sys/fs/cgroup/unified{SCOPE}/cgroup.procs"


def test_systemds_named_hierarchy_is_written_on_a_v1_host(tmp_path: Path) -> None:
    v1_only = "".join(line + "\n" for line in HYBRID_MOUNTINFO.splitlines() if " cgroup2 " not in line)
    write(tmp_path / "mountinfo", v1_only)
    dirs = cgroups.process_cgroups(42, cgroups.hierarchies(str(tmp_path / "mountinfo")),
                                   fake_proc(tmp_path, HYBRID_PROC_CGROUP))
    assert procs_file(dirs) == f"/sys/fs/cgroup/systemd{SCOPE}/cgroup.procs"


def test_no_hierarchy_mounted_is_no_file() -> None:
    assert procs_file([]) is None


def test_begin_writes_the_agents_own_pid_without_waiting(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    grace = GracePeriod(lambda: str(procs))
    grace.begin()
    assert until(lambda: procs.read_text() == str(os.getpid()))
    procs.write_text("")
    grace.begin()  # the same thread writes again
    assert until(lambda: procs.read_text() == str(os.getpid()))


def test_a_file_that_cannot_be_written_turns_it_off_with_one_line(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    procs = tmp_path / "gone" / "cgroup.procs"
    grace = GracePeriod(lambda: str(procs))
    with caplog.at_level(logging.INFO, logger="quilt.graceperiod"):
        grace.begin()
        assert until(lambda: caplog.records)
        (tmp_path / "gone").mkdir()
        procs.write_text("")
        assert grace._thread is not None and until(lambda: not grace._thread.is_alive())  # its thread ended
        grace.begin()  # so nothing is written, now or later
    assert not procs.read_text()
    assert [r.getMessage() for r in caplog.records] == [
        f"the kernel's grace period is not begun ahead of starts and execs: cannot write {procs}: No such file or "
        "directory"]


def test_a_symlink_in_place_of_the_file_is_not_followed(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "cgroup.procs").symlink_to(target)
    with caplog.at_level(logging.INFO, logger="quilt.graceperiod"):
        GracePeriod(lambda: str(tmp_path / "cgroup.procs")).begin()
        assert until(lambda: caplog.records)
    assert not target.read_text()


def test_none_is_never_written_and_starts_no_thread() -> None:
    grace = GracePeriod(None)
    grace.begin()
    assert grace._thread is None


def test_the_file_is_found_again_at_each_move(tmp_path: Path) -> None:
    # An agent moved to another cgroup meanwhile writes its new one: the former would move it back.
    first, second = tmp_path / "a.procs", tmp_path / "b.procs"
    first.write_text("")
    second.write_text("")
    current = [first]
    grace = GracePeriod(lambda: str(current[0]))
    grace.begin()
    assert until(lambda: first.read_text() == str(os.getpid()))
    current[0] = second
    grace.begin()
    assert until(lambda: second.read_text() == str(os.getpid()))
    grace.close()


def test_no_cgroup_mounted_turns_it_off_with_one_line(caplog: pytest.LogCaptureFixture) -> None:
    grace = GracePeriod(lambda: None)
    with caplog.at_level(logging.INFO, logger="quilt.graceperiod"):
        grace.begin()
        assert grace._thread is not None and until(lambda: not grace._thread.is_alive())
    assert [r.getMessage() for r in caplog.records] == [
        "the kernel's grace period is not begun ahead of starts and execs: no cgroup hierarchy is mounted"]


def test_close_ends_its_thread(tmp_path: Path) -> None:
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    grace = GracePeriod(lambda: str(procs))
    grace.begin()
    assert until(lambda: procs.read_text())
    grace.close()
    assert grace._thread is not None and until(lambda: not grace._thread.is_alive())
    procs.write_text("")
    grace.begin()  # closed: nothing more is written
    assert not procs.read_text()
