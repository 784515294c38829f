"""quiltctl generate unit and unit-check against the real agent and systemd: a container tried by hand becomes a
service that makes the same container, and a bad file is one line naming its line and key."""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.cli.test_quiltctl import assert_one_error_line, inspect, ok, quiltctl
from tests.integration.cli.test_quiltctl import clean  # noqa: F401 - the autouse fixture: agent up, nothing left
from tests.integration.conftest import systemctl

UNIT_DIR = Path("/etc/quilt/containers")
SAME = ("Image", "Command", "MemoryMax", "PidsMax", "Labels", "HealthCommand", "HealthInterval", "Init", "Volumes",
        "Tmpfs", "ReadOnly", "Networks", "NetworkAliases", "StopTimeout")


@pytest.fixture
def unit_file(name: str) -> Iterator[Path]:
    UNIT_DIR.mkdir(parents=True, exist_ok=True)
    path = UNIT_DIR / f"{name}.container"
    yield path
    systemctl("stop", f"{name}.service", check=False)
    path.unlink(missing_ok=True)
    systemctl("daemon-reload")


def test_a_container_tried_by_hand_becomes_a_service_making_the_same_container(busybox_tar: Path, name: str,
                                                                              unit_file: Path) -> None:
    ok("create", "--name", name, "-m", "64m", "--pids-limit", "40", "-l", "team=a b", "-e", "GREETING=hello world",
       "--health-cmd", "true", "--health-interval", "2s", "--init", "-v", "/cache", "--tmpfs", "/scratch",
       "--read-only", "--network-alias", "www", "--stop-timeout", "3", str(busybox_tar), "sleep", "600")
    before = inspect(name)
    text = ok("generate", "unit", name)
    assert "Environment=\"GREETING=hello world\"" in text
    unit_file.write_text(text)
    assert "ExecStart=/usr/bin/quiltctl unit-run" in ok("unit-check", str(unit_file))
    systemctl("daemon-reload")
    systemctl("start", f"{name}.service")  # replaces the stopped one it was made from
    after = inspect(name)
    assert after["Id"] != before["Id"] and (after["State"], after["Unit"]) == ("running", f"{name}.service")
    assert {k: after[k] for k in SAME if k != "Volumes"} == {k: before[k] for k in SAME if k != "Volumes"}
    # The anonymous volume is a new one, at the same place.
    assert [v.split(":", 1)[1] for v in after["Volumes"]] == [v.split(":", 1)[1] for v in before["Volumes"]]
    assert "GREETING=hello world" in after["Environment"]


def test_unit_check_of_a_bad_file_is_one_line_with_its_line_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "web.container"
    bad.write_text("[Container]\nImage=busybox\nMemory=lots\n")
    result = quiltctl("unit-check", str(bad))
    assert_one_error_line(result, 1, f"{bad}:3", "Memory")


def test_the_service_of_a_bad_file_fails_and_its_journal_says_why(name: str, unit_file: Path) -> None:
    unit_file.write_text("[Container]\nExec=sleep 1\n")  # no Image=
    systemctl("daemon-reload")
    assert systemctl("start", f"{name}.service", check=False).returncode != 0
    journal = subprocess.run(["journalctl", "-u", f"{name}.service", "-o", "cat"], capture_output=True,
                             text=True).stdout
    assert "Image" in journal
