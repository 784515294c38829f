"""Restart policies (quilt_agent/restart.py): which ended containers come back, when, and at boot."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from quilt_agent.model import Container, ContainerSpec, State
from quilt_agent.restart import Backoff, at_boot, load_backoff, wanted


def ended(policy: str, exit_code: int, state: State = State.EXITED, restart_max: int = 0, count: int = 0,
          user_stopped: bool = False) -> Container:
    spec = ContainerSpec(name="c", image="i", image_id="x", command=("true",), restart_policy=policy,
                         restart_max=restart_max)
    return Container(id="1" * 64, spec=spec, state=state, exit_code=exit_code, restart_count=count,
                     user_stopped=user_stopped)


@pytest.mark.parametrize("policy, code, state, expected", [
    ("no", 1, State.EXITED, False),
    ("on-failure", 0, State.EXITED, False),
    ("on-failure", 1, State.EXITED, True),
    ("on-failure", 137, State.EXITED, True),  # killed, by the OOM killer say
    ("on-failure", 127, State.FAILED, True),  # the command could not be run
    ("always", 0, State.EXITED, True),
    ("always", 3, State.EXITED, True),
    ("unless-stopped", 0, State.EXITED, True),
])
def test_each_policy_answers_an_exit(policy: str, code: int, state: State, expected: bool) -> None:
    assert wanted(ended(policy, code, state)) is expected


@pytest.mark.parametrize("policy", ["on-failure", "always", "unless-stopped"])
def test_a_user_stop_is_never_undone(policy: str) -> None:
    assert not wanted(ended(policy, 143, user_stopped=True))


def test_on_failure_stops_after_its_maximum() -> None:
    assert wanted(ended("on-failure", 1, restart_max=3, count=2))
    assert not wanted(ended("on-failure", 1, restart_max=3, count=3))
    assert wanted(ended("on-failure", 1, restart_max=0, count=1000))  # 0: no limit


@pytest.mark.parametrize("policy, user_stopped, expected", [
    ("always", False, True), ("always", True, True), ("unless-stopped", False, True),
    ("unless-stopped", True, False), ("on-failure", False, False), ("no", False, False),
])
def test_at_boot_brings_back_always_and_unless_stopped_that_no_user_stopped(policy: str, user_stopped: bool,
                                                                            expected: bool) -> None:
    assert at_boot(ended(policy, 0, user_stopped=user_stopped)) is expected


def test_the_wait_grows_from_the_first_to_the_longest_over_the_steps() -> None:
    b = Backoff(delay=0.1, max_delay=60, steps=9)
    waits = [b.wait(n) for n in range(1, 13)]
    assert waits[0] == pytest.approx(0.1)
    assert all(a < b for a, b in zip(waits[:9], waits[1:10]))
    assert waits[9] == pytest.approx(60) and waits[10] == waits[11] == pytest.approx(60)


def test_without_steps_the_wait_is_always_the_first() -> None:
    assert Backoff(delay=2, max_delay=60, steps=0).wait(5) == 2


def test_a_long_run_starts_the_streak_again() -> None:
    b = Backoff(reset_after=10)
    short = ended("always", 1).with_(started_at=1_000_000, finished_at=2_000_000, restart_streak=4)
    long = short.with_(finished_at=12_000_000)
    assert b.streak(short) == 5 and b.streak(long) == 1


def test_settings_come_from_the_restart_table(tmp_path: Path) -> None:
    conf = tmp_path / "quilt.conf"
    conf.write_text("[restart]\ndelay = 1\nmax_delay = 30\nsteps = 4\nreset_after = 5\n")
    assert load_backoff(conf) == Backoff(delay=1.0, max_delay=30.0, steps=4, reset_after=5.0)
    assert load_backoff(tmp_path / "none.conf") == Backoff()


@pytest.mark.parametrize("text", ["delay = -1", "delay = 'soon'", "max_delay = 1e9", "steps = -2", "steps = 1.5",
                                  "reset_after = true"])
def test_a_bad_setting_is_logged_and_its_default_used(tmp_path: Path, text: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    conf = tmp_path / "quilt.conf"
    conf.write_text(f"[restart]\n{text}\n")
    with caplog.at_level(logging.ERROR):
        assert load_backoff(conf) == Backoff()
    assert "ignoring [restart]" in caplog.text


def test_a_longest_wait_below_the_first_is_the_first(tmp_path: Path) -> None:
    conf = tmp_path / "quilt.conf"
    conf.write_text("[restart]\ndelay = 5\nmax_delay = 1\n")
    assert load_backoff(conf).wait(9) == 5
