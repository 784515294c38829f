"""quilt_agent/freezer.py over a fake cgroup directory: what it writes, what it waits for, and the hosts and
processes it refuses. The real kernel freezes in tests/integration/cli/test_podman_commands.py."""
from __future__ import annotations

from pathlib import Path

import pytest

from quilt_agent import freezer
from quilt_agent.cgroups import CgroupDir, Hierarchy
from quilt_agent.errors import NotSupported

V2 = Hierarchy(2, frozenset(), "/sys/fs/cgroup/unified", "/")
V1_FREEZER = Hierarchy(1, frozenset({"freezer"}), "/sys/fs/cgroup/freezer", "/")


def scope(tmp_path: Path, freeze: str = "0", events: str = "populated 1\nfrozen 0\n") -> Path:
    (tmp_path / "cgroup.freeze").write_text(freeze)
    (tmp_path / "cgroup.events").write_text(events)
    return tmp_path


def test_freezing_writes_cgroup_freeze_and_returns_once_the_kernel_says_frozen(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = scope(tmp_path, events="populated 1\nfrozen 1\n")
    monkeypatch.setattr(freezer.cgroups, "process_cgroups", lambda pid: [CgroupDir(V2, str(path))])
    freezer.set_frozen(42, True)
    assert (path / "cgroup.freeze").read_text() == "1"
    assert freezer.is_frozen(42)


def test_a_host_without_a_cgroup2_hierarchy_cannot_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(freezer.cgroups, "process_cgroups",
                        lambda pid: [CgroupDir(V1_FREEZER, "/sys/fs/cgroup/freezer")])
    with pytest.raises(NotSupported, match="cgroup v2 freezer"):
        freezer.set_frozen(42, True)
    assert freezer.is_frozen(42) is False


def test_a_process_that_left_its_cgroup_or_ended_is_no_process(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(freezer.cgroups, "process_cgroups", lambda pid: [CgroupDir(V2, str(tmp_path))])  # the root
    with pytest.raises(ProcessLookupError):
        freezer.set_frozen(42, False)

    def gone(pid: int) -> list[CgroupDir]:
        raise FileNotFoundError(f"/proc/{pid}/cgroup")
    monkeypatch.setattr(freezer.cgroups, "process_cgroups", gone)
    with pytest.raises(ProcessLookupError):
        freezer.set_frozen(42, False)
    assert freezer.is_frozen(42) is False
