"""quiltctl's setup-command flags against the real agent: --setup (in order), --no-setup-cache, logs --setup (and
through FollowLogs with -f), image ls --all, and how a failing step or a bad entry looks to a script.

The busybox image and `sh:` steps keep these fast; the package managers are tests/integration/setup/'s. Each test's
steps carry its container's name, so no two tests share a setup cache key.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from tests.integration.cli.test_exec_tty import QUILTCTL, Tmux
from tests.integration.cli.test_exec_tty import tmux  # noqa: F401 - the fixture
from tests.integration.cli.test_quiltctl import QUILT_ERROR, assert_one_error_line, inspect, ok, ps_json, quiltctl
from tests.integration.cli.test_quiltctl import clean  # noqa: F401 - the autouse fixture: agent up, nothing left


@pytest.fixture
def image(busybox_tar: Path) -> Iterator[str]:
    yield str(busybox_tar)
    # After `clean` (which removes the containers, being set up first): the cached setup results go too.
    quiltctl("rm", "-f", *[c for c in ps_json("-a")])
    quiltctl("image", "prune")


def both(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines() + result.stderr.splitlines()


def setup_images() -> list[dict]:
    return [p for p in json.loads(ok("image", "ls", "--all", "--json")) if p.get("SetupBase")]


def test_setup_steps_run_in_order_before_the_command_which_alone_prints(image: str, name: str) -> None:
    steps = [f"sh: echo one-{name} >> /order", f"sh: echo two-{name} >> /order", "sh: echo step-output"]
    result = quiltctl("run", "--name", name, *[a for s in steps for a in ("--setup", s)], image, "--", "cat", "/order")
    # In the foreground: the command's output only (the steps' is in `logs --setup`).
    assert (result.returncode, result.stdout, result.stderr) == (0, f"one-{name}\ntwo-{name}\n", "")
    props = inspect(name)
    assert props["Setup"] == steps
    assert props["State"] == "exited" and props["SetupImage"] == ""
    assert any(line.startswith("Setup:") and f"one-{name}" in line for line in ok("status", name).splitlines())


def test_logs_setup_shows_only_the_steps_lines_also_when_following(image: str, name: str) -> None:
    ok("run", "--name", name, "--setup", f"sh: echo set-{name}", image, "--", "echo", f"main-{name}")
    for flags in ([], ["-f"], ["-n", "10"]):
        result = quiltctl("logs", "--setup", *flags, name)
        assert result.returncode == 0, result.stderr
        lines = both(result)
        assert f"set-{name}" in lines, (flags, lines)
        assert any(line.startswith("quilt: setup step 1/1: ") for line in lines), (flags, lines)
        assert f"main-{name}" not in lines, (flags, lines)
    # Without --setup: everything, the steps first.
    lines = both(quiltctl("logs", name))
    assert lines.index(f"set-{name}") < lines.index(f"main-{name}")


def test_a_bad_entry_is_one_error_line_and_125_and_creates_nothing(image: str, name: str) -> None:
    for verb in ("run", "create"):
        assert_one_error_line(quiltctl(verb, "--name", name, "--setup", "brew: wget", image, "true"),
                              QUILT_ERROR, "brew: wget")
        line = assert_one_error_line(quiltctl(verb, "--name", name, "--setup", "pip: x; touch /pwned", image, "true"),
                                     QUILT_ERROR)
        assert "sh:" in line, line
    assert name not in ps_json("-a")


def test_a_failing_step_ends_run_with_its_code_its_output_and_reason_on_stderr(image: str, name: str) -> None:
    entry = f"sh: echo before-{name}; exit 7"
    result = quiltctl("run", "--name", name, "--setup", entry, "--setup", "sh: echo never", image, "echo", "main-ran")
    assert result.returncode == 7, result.stderr
    assert result.stdout == ""
    errors = result.stderr.splitlines()
    assert f"before-{name}" in errors
    assert errors[-1] == f"quiltctl: setup step 1 ({entry}) exited with code 7"
    props = inspect(name)
    assert (props["State"], props["ExitCode"]) == ("failed", 7)
    assert props["FailureReason"] == f"setup step 1 ({entry}) exited with code 7"
    assert "main-ran" not in both(quiltctl("logs", name)) and "never" not in both(quiltctl("logs", name))


def test_the_second_run_uses_the_cached_result_which_image_ls_all_lists_and_prune_clears(
        image: str, name: str) -> None:
    step = f"sh: echo made-{name} > /made"
    assert ok("run", "--name", f"{name}-1", "--setup", step, image, "--", "cat", "/made") == f"made-{name}\n"
    (cached,) = [p for p in setup_images() if p["SetupSteps"] == [step]]
    assert ok("run", "--name", f"{name}-2", "--setup", step, image, "--", "cat", "/made") == f"made-{name}\n"
    second = inspect(f"{name}-2")
    assert second["SetupImage"] == cached["Id"]
    # No step ran: the setup stream says which result it used, and nothing else.
    (line,) = both(quiltctl("logs", "--setup", f"{name}-2"))
    assert line.startswith(f"quilt: setup: using cached result {cached['Id'][:12]}"), line

    plain = ok("image", "ls")
    assert cached["Id"][:12] not in plain and "<setup>" not in plain
    assert cached["Id"][:12] not in ok("image", "ls", "-q")
    rows = ok("image", "ls", "--all").splitlines()
    assert rows[0].split() == ["NAME", "ID", "SIZE", "CREATED", "SETUP"]
    (row,) = [r for r in rows if cached["Id"][:12] in r]
    assert row.split()[0] == "<setup>" and row.endswith(f"{cached['SetupBase'][:12]} + {step}")

    # --no-setup-cache: the step runs again, and no cached result is used.
    ok("run", "--name", f"{name}-3", "--no-setup-cache", "--setup", step, image, "--", "cat", "/made")
    assert inspect(f"{name}-3")["SetupImage"] == ""
    assert f"made-{name}" not in both(quiltctl("logs", "--setup", f"{name}-3"))  # it wrote to a file, not out
    assert any(line.startswith("quilt: setup step 1/1: ") for line in both(quiltctl("logs", "--setup", f"{name}-3")))

    ok("rm", f"{name}-1", f"{name}-2", f"{name}-3")
    ok("image", "prune")
    assert cached["Id"] not in [p["Id"] for p in setup_images()]


def test_on_a_terminal_run_shows_the_steps_lines_as_they_come(image: str, name: str, tmux: Tmux) -> None:
    tmux.start(f"{QUILTCTL} run --name {name} --setup 'sh: echo live-{name}; sleep 3' --setup 'sh: exit 4' "
               f"{image} echo main-{name}; echo QUILTCTL-EXIT=$?; sleep 600", width=160)
    screen = tmux.wait_for(f"live-{name}")
    assert "QUILTCTL-EXIT" not in screen  # shown while the step still runs
    screen = tmux.wait_for("QUILTCTL-EXIT=4")
    lines = [line.rstrip() for line in screen.splitlines()]
    assert lines.count(f"live-{name}") == 1 and f"main-{name}" not in screen  # not shown a second time at the end
    assert lines.count("quilt: setup step 2/2: sh: exit 4") == 1
    assert "quiltctl: setup step 2 (sh: exit 4) exited with code 4" in lines
