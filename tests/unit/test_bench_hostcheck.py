"""bench/hostcheck.py: a benchmark refuses an agent in asyncio's debug mode, and measures one without it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import hostcheck  # noqa: E402


def _unit_environment(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    def show(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        assert argv[:3] == ["systemctl", "show", "quilt-agent.service"]
        return subprocess.CompletedProcess(argv, 0, stdout=value + "\n", stderr="")

    monkeypatch.setattr(hostcheck.subprocess, "run", show)


@pytest.mark.parametrize("environment", ["", "QUILT_IDLE_EXIT_SEC=60", "QUILT_IDLE_EXIT_SEC=60 QUILT_LOOP_CHECK=0"])
def test_an_agent_as_users_run_it_is_measured(monkeypatch: pytest.MonkeyPatch, environment: str) -> None:
    _unit_environment(monkeypatch, environment)
    hostcheck.refuse_debug_agent("bench/x.py")


def test_an_agent_in_debug_mode_is_refused_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    _unit_environment(monkeypatch, "QUILT_IDLE_EXIT_SEC=60 QUILT_LOOP_CHECK=100")
    with pytest.raises(SystemExit) as refused:
        hostcheck.refuse_debug_agent("bench/x.py")
    assert "QUILT_LOOP_CHECK=100" in str(refused.value.code) and "--loop-check 0" in str(refused.value.code)
