"""Health-check rules (quilt_agent/health.py): the verdict after each check, the create options, an image's
HEALTHCHECK, and the timer that runs the checks."""
from __future__ import annotations

import asyncio

import pytest

from quilt_agent import health
from quilt_agent.errors import InvalidArgument
from quilt_agent.model import parse_options


def test_a_passing_check_makes_it_healthy_and_clears_the_streak() -> None:
    assert health.judge("starting", 0, True, False, 3) == ("healthy", 0)
    assert health.judge("unhealthy", 5, True, False, 3) == ("healthy", 0)


def test_failures_in_a_row_up_to_retries_make_it_unhealthy() -> None:
    status, streak = "healthy", 0
    seen = []
    for _ in range(3):
        status, streak = health.judge(status, streak, False, False, 3)
        seen.append((status, streak))
    assert seen == [("healthy", 1), ("healthy", 2), ("unhealthy", 3)]


def test_failures_in_the_start_period_count_only_once_it_was_healthy() -> None:
    assert health.judge("starting", 0, False, True, 1) == ("starting", 0)
    assert health.judge("healthy", 0, False, True, 1) == ("unhealthy", 1)
    assert health.judge("starting", 0, False, False, 1) == ("unhealthy", 1)


def test_output_is_kept_up_to_its_bound_and_bad_bytes_do_not_break_it() -> None:
    text = health.output_text(b"x" * health.MAX_OUTPUT, b"more")
    assert len(text) == health.MAX_OUTPUT
    assert health.output_text(b"\xff ok", b"") == "\ufffd ok"


def test_the_options_become_spec_fields() -> None:
    fields = parse_options({"health_cmd": ["/bin/check", "-q"], "health_interval": 2, "health_timeout": 0.5,
                            "health_start_period": 0, "health_retries": 1, "health_on_failure": "kill"})
    assert {k: v for k, v in fields.items() if k.startswith("health_")} == {
        "health_cmd": ("/bin/check", "-q"), "health_interval": 2.0, "health_timeout": 0.5,
        "health_start_period": 0.0, "health_retries": 1, "health_on_failure": "kill"}
    assert parse_options({"health_cmd": []})["health_cmd"] == ()


@pytest.mark.parametrize("options, message", [
    ({"health_cmd": "true"}, "must be a list of strings"),
    ({"health_cmd": [""]}, "the program to run is empty"),
    ({"health_cmd": ["a\0b"]}, "NUL"),
    ({"health_interval": 0}, "Invalid health_interval 0"),
    ({"health_interval": -1}, "Invalid health_interval"),
    ({"health_interval": 0.01}, "at least 0.1"),
    ({"health_interval": float("nan")}, "Invalid health_interval"),
    ({"health_timeout": 0}, "Invalid health_timeout"),
    ({"health_start_period": -0.5}, "Invalid health_start_period"),
    ({"health_interval": True}, "Invalid health_interval"),
    ({"health_retries": 0}, "Invalid health_retries"),
    ({"health_retries": 1.5}, "Invalid health_retries"),
    ({"health_on_failure": "reboot"}, "choose among none, kill, restart, stop"),
    ({"health_on_failure": "restart", "restart_policy": "always"}, "contradict"),
])
def test_bad_health_options_are_refused(options: dict, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_options(options)


def test_an_image_healthcheck_becomes_spec_fields() -> None:
    assert health.from_image({"Test": ["CMD-SHELL", "curl -f localhost"], "Interval": 5_000_000_000,
                              "Timeout": 0, "StartPeriod": 1_500_000_000, "Retries": 2}, "image") == {
        "health_cmd": ("/bin/sh", "-c", "curl -f localhost"), "health_interval": 5.0, "health_start_period": 1.5,
        "health_retries": 2}
    assert health.from_image({"Test": ["CMD", "/bin/check", "x"]}, "image") == {"health_cmd": ("/bin/check", "x")}
    assert health.from_image({"Test": ["NONE"]}, "image") == {"health_cmd": ()}
    assert health.from_image(None, "image") == {}


@pytest.mark.parametrize("healthcheck, message", [
    ("curl", "not an object"),
    ({"Test": "CMD true"}, "not a list of strings"),
    ({"Test": ["CMD"]}, "is not"),
    ({"Test": ["CMD-SHELL", "a", "b"]}, "is not"),
    ({"Test": ["RUN", "x"]}, "is not"),
    ({"Test": ["CMD", "x"], "Interval": -5}, "Interval is not"),
    ({"Test": ["CMD", "x"], "Interval": 1000}, "Invalid health_interval"),  # 1 µs
])
def test_a_bad_image_healthcheck_is_refused(healthcheck: object, message: str) -> None:
    with pytest.raises((ValueError, InvalidArgument), match=message):
        health.from_image(healthcheck, "image")


async def test_the_schedule_runs_checks_an_interval_apart_until_forgotten() -> None:
    ran: list[float] = []
    third = asyncio.Event()

    async def check(container_id: str) -> None:
        ran.append(asyncio.get_running_loop().time())
        if len(ran) == 3:
            third.set()

    schedule = health.Schedule(check)
    schedule.watch("c1", 0.05)
    await asyncio.wait_for(third.wait(), 5)
    schedule.forget("c1")
    assert len(schedule) == 0
    gaps = [b - a for a, b in zip(ran, ran[1:])]
    assert all(gap >= 0.045 for gap in gaps)
    count = len(ran)
    await asyncio.sleep(0.15)  # nothing may run once forgotten: the only way to see that is to let time pass
    assert len(ran) == count


async def test_a_check_that_raises_is_logged_and_the_next_still_runs() -> None:
    calls = 0
    second = asyncio.Event()

    async def check(container_id: str) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            second.set()
        raise RuntimeError("broken")

    schedule = health.Schedule(check)
    schedule.watch("c1", 0.01)
    await asyncio.wait_for(second.wait(), 5)
    schedule.drop("c1")
    assert "c1" not in schedule.logs


async def test_watching_again_clears_the_failing_streak_and_keeps_the_results() -> None:
    async def check(container_id: str) -> None:
        pass

    schedule = health.Schedule(check)
    schedule.watch("c1", 60)
    schedule.logs["c1"].failing_streak = 2
    schedule.logs["c1"].results.append(health.Result(1, 2, 1, "bad"))
    schedule.watch("c1", 60)
    assert schedule.logs["c1"].failing_streak == 0 and len(schedule.logs["c1"].results) == 1
    schedule.drop("c1")


@pytest.mark.parametrize("text, argv", [
    ("none", []), ("NONE", []), ('["NONE"]', []),
    ('["CMD", "curl", "-f"]', ["curl", "-f"]),
    ('["CMD-SHELL", "test -e /x"]', ["/bin/sh", "-c", "test -e /x"]),
    ('["wget", "x"]', ["wget", "x"]),
    ("test -e /up", ["/bin/sh", "-c", "test -e /up"]),
])
def test_a_command_line_is_read_as_podman_reads_health_cmd(text: str, argv: list[str]) -> None:
    assert health.parse_command_line(text) == argv


@pytest.mark.parametrize("text", ["[1, 2]", "[", "[]", "  "])
def test_a_bad_command_line_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        health.parse_command_line(text)
