"""quiltctl's health-check flags and `healthcheck run` against the real agent, as a script sees them: the exit
status, ps, status and inspect, and bad flags as one line."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.cli.test_quiltctl import QUILT_ERROR, USAGE_ERROR, assert_one_error_line, inspect, ok, quiltctl
from tests.integration.cli.test_quiltctl import clean  # noqa: F401 - the autouse fixture: agent up, nothing left


@pytest.fixture
def image(busybox_tar: Path) -> str:
    return str(busybox_tar)


def test_healthcheck_run_says_the_status_and_exits_0_or_1_and_ps_shows_it(image: str, name: str) -> None:
    ok("run", "-d", "--name", name, "--health-cmd", "test -e /tmp/ok", "--health-interval", "1h", image,
       "sleep", "600")
    failed = quiltctl("healthcheck", "run", name)
    assert (failed.returncode, failed.stdout) == (1, "starting\n")  # one failure of 3: not yet unhealthy
    ok("exec", name, "touch", "/tmp/ok")
    assert ok("healthcheck", "run", name) == "healthy\n"
    row = next(line for line in ok("ps").splitlines() if name in line)
    assert "running (healthy)" in row
    assert "Health:     healthy: /bin/sh -c 'test -e /tmp/ok' every 3600 s" in ok("status", name).splitlines()
    props = inspect(name)
    assert props["HealthCommand"] == ["/bin/sh", "-c", "test -e /tmp/ok"]
    log = props["HealthLog"]
    assert (log["Status"], log["FailingStreak"]) == ("healthy", 0)
    assert [check["ExitCode"] for check in log["Log"]] == [1, 0]
    ok("rm", "-f", name)


def test_health_flags_take_durations_and_a_json_command(image: str, name: str) -> None:
    ok("create", "--name", name, "--health-cmd", '["CMD", "/bin/true", "x"]', "--health-interval", "1m30s",
       "--health-timeout", "500ms", "--health-start-period", "2", "--health-retries", "5",
       "--health-on-failure", "kill", image, "sleep", "600")
    props = inspect(name)
    assert props["HealthCommand"] == ["/bin/true", "x"]
    assert (props["HealthInterval"], props["HealthTimeout"], props["HealthStartPeriod"]) == (90_000_000, 500_000,
                                                                                               2_000_000)
    assert (props["HealthRetries"], props["HealthOnFailure"]) == (5, "kill")


@pytest.mark.parametrize("flags, code, fragment", [
    (["--health-cmd", "true", "--no-healthcheck"], USAGE_ERROR, "contradict"),
    (["--health-cmd", "true", "--health-interval", "soon"], USAGE_ERROR, "'soon' is not a duration"),
    (["--health-cmd", "[\"CMD\""], USAGE_ERROR, "not a JSON array"),
    (["--health-cmd", "true", "--health-interval", "0s"], QUILT_ERROR, "Invalid health_interval 0"),
    (["--health-cmd", "true", "--health-on-failure", "explode"], QUILT_ERROR, "Invalid health_on_failure"),
    (["--health-retries", "2"], QUILT_ERROR, "needs a health check"),
], ids=["contradiction", "bad-duration", "bad-json", "zero-interval", "bad-action", "no-check"])
def test_bad_health_flags_are_one_line_and_create_nothing(image: str, name: str, flags: list[str], code: int,
                                                          fragment: str) -> None:
    assert_one_error_line(quiltctl("create", "--name", name, *flags, image, "sleep", "1"), code, fragment)
    assert name not in ok("ps", "-a")


def test_healthcheck_run_of_a_missing_or_unchecked_container_is_one_line(image: str, name: str) -> None:
    assert_one_error_line(quiltctl("healthcheck", "run", "no-such-container"), QUILT_ERROR, "no-such-container")
    ok("run", "-d", "--name", name, image, "sleep", "600")
    assert_one_error_line(quiltctl("healthcheck", "run", name), QUILT_ERROR, "has no health check")
    ok("rm", "-f", name)
