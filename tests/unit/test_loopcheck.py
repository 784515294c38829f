"""QUILT_LOOP_CHECK: its value, and asyncio's debug mode reporting a callback that blocks the loop."""
import asyncio
import logging
import time

import pytest

from quilt_agent import loopcheck


@pytest.mark.parametrize("value, seconds", [(None, None), ("", None), ("50", 0.05), (" 1 ", 0.001),
                                            ("60000", 60.0)])
def test_the_threshold_is_whole_milliseconds_and_unset_means_off(value: str | None, seconds: float | None) -> None:
    environ = {} if value is None else {loopcheck.ENV: value}
    assert loopcheck.threshold(environ) == seconds


@pytest.mark.parametrize("value", ["0", "-5", "0.5", "fifty", "60001"])
def test_a_threshold_that_is_no_number_of_milliseconds_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match=f"^QUILT_LOOP_CHECK='{value}' is not a number of milliseconds"):
        loopcheck.threshold({loopcheck.ENV: value})


def blocking_callback() -> None:
    time.sleep(0.05)


async def schedule_a_blocking_callback(serving: bool = True) -> int:
    if serving:
        loopcheck.serving()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.call_soon(lambda: (blocking_callback(), done.set_result(7)))
    return await done


def test_a_callback_over_the_threshold_is_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    try:
        assert loopcheck.run(schedule_a_blocking_callback(), 0.02) == 7
    finally:
        logging.captureWarnings(False)
    slow = [r.getMessage() for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert len(slow) == 1 and slow[0].startswith("Executing <Handle schedule_a_blocking_callback.<locals>.<lambda>()")


def test_before_the_agent_serves_only_a_callback_over_the_start_up_bound_is_reported(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    try:
        assert loopcheck.run(schedule_a_blocking_callback(serving=False), 0.02) == 7
    finally:
        logging.captureWarnings(False)
    assert not [r for r in caplog.records if r.name == "asyncio" and "took" in r.getMessage()]
    assert loopcheck.STARTING_SECONDS > 0.05


def test_without_a_threshold_nothing_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    assert loopcheck.run(schedule_a_blocking_callback(), None) == 7
    assert not [r for r in caplog.records if r.name == "asyncio"]
