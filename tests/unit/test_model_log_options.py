"""The create options of where a container's output goes: the log driver (Podman's names, "file" taken for
k8s-file) and its log file's rotation, refused with the known values and for the drivers without a file."""
from __future__ import annotations

import pytest

from quilt_agent.errors import InvalidArgument, NotSupported
from quilt_agent.model import BOUNDED_LOG_FILES, BOUNDED_LOG_SIZE, parse_options


@pytest.mark.parametrize("given, driver", [("journald", "journald"), ("k8s-file", "k8s-file"), ("file", "k8s-file"),
                                           ("journald+file", "journald+file"), ("none", "none")])
def test_a_driver_is_taken_by_its_podman_name(given: str, driver: str) -> None:
    assert parse_options({"log_driver": given})["log_driver"] == driver


def logging(options: dict) -> dict:
    return {k: v for k, v in parse_options(options).items() if k.startswith("log_")}


def test_a_file_is_rotated_only_when_asked_but_journald_plus_file_is_bounded() -> None:
    assert logging({"log_driver": "k8s-file"}) == {"log_driver": "k8s-file"}
    assert logging({"log_driver": "journald+file"}) == {
        "log_driver": "journald+file", "log_max_size": BOUNDED_LOG_SIZE, "log_max_files": BOUNDED_LOG_FILES}
    assert logging({"log_driver": "journald+file", "log_max_size": 8192}) == {
        "log_driver": "journald+file", "log_max_size": 8192}
    assert logging({"log_driver": "file", "log_max_size": 1 << 20, "log_max_files": 5}) == {
        "log_driver": "k8s-file", "log_max_size": 1 << 20, "log_max_files": 5}


@pytest.mark.parametrize("options, words", [
    ({"log_driver": "json-file"}, "Invalid log_driver 'json-file': choose among journald, k8s-file, journald+file, "
                                  "none"),
    ({"log_driver": 3}, "log_driver"),
    ({"log_driver": "k8s-file", "log_max_size": 100}, "Invalid log_max_size 100 bytes: must be between 4096"),
    ({"log_driver": "k8s-file", "log_max_size": -1}, "log_max_size"),
    ({"log_driver": "k8s-file", "log_max_size": "10m"}, "log_max_size"),
    ({"log_driver": "k8s-file", "log_max_size": 8192, "log_max_files": 0}, "Invalid log_max_files 0"),
    ({"log_driver": "k8s-file", "log_max_size": 8192, "log_max_files": 101}, "between 1 and 100"),
    ({"log_driver": "k8s-file", "log_max_files": 3}, "Option 'log_max_files' needs log_max_size"),
    ({"log_max_size": 8192}, "Option 'log_max_size' needs log_driver k8s-file or journald+file, not 'journald'"),
    ({"log_driver": "none", "log_max_files": 2}, "not 'none'"),
])
def test_bad_log_options_are_invalid_argument_naming_them(options: dict, words: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_options(options)
    assert words in str(caught.value)


@pytest.mark.parametrize("options", [{"log_rate_limit_burst": 500}, {"log_rate_limit_interval": 30_000_000},
                                     {"log_driver": "journald+file", "log_rate_limit_burst": 1}])
def test_log_rate_limits_are_not_supported_saying_why_and_what_keeps_every_line(options: dict) -> None:
    with pytest.raises(NotSupported) as caught:
        parse_options(options)
    assert "systemd accepts LogRateLimitIntervalSec= and LogRateLimitBurst= for services only" in str(caught.value)
    assert "journald+file keeps every line" in str(caught.value)


@pytest.mark.parametrize("options", [{"log_rate_limit_burst": "many"}, {"log_rate_limit_interval": 1.5}])
def test_a_log_rate_limit_of_the_wrong_type_is_invalid_first(options: dict) -> None:
    with pytest.raises(InvalidArgument):
        parse_options(options)
