"""Setup output goes to the container's journal under its scope, in a stream of its own (identifier NAME/setup)
that GetLogs/FollowLogs option `setup` and `quiltctl logs --setup` select."""
from __future__ import annotations

import subprocess

from quilt_agent.client import Client
from tests.integration.setup.conftest import quiltctl, run
from tests.integration.test_logs_follow import read_all

STEPS = ["sh: echo setup-out-1; echo setup-err-1 >&2", "sh: echo setup-out-2"]
HEADERS = ["quilt: setup step 1/2: sh: echo setup-out-1; echo setup-err-1 >&2",
           "quilt: setup step 2/2: sh: echo setup-out-2"]


async def test_getlogs_setup_selects_the_setup_lines_only(sclient: Client, name: str, busybox: str) -> None:
    out = await run(sclient, name, busybox, "echo main-out; echo main-err >&2", STEPS,
                    {"setup_cache": False})
    assert out.exit_code == 0
    setup = await sclient.get_logs(out.path, {"setup": True})
    texts = [line.text for line in setup]
    assert [t for t in texts if t.startswith("quilt:")] == HEADERS
    assert {"setup-out-1", "setup-err-1", "setup-out-2"} <= set(texts)
    assert not {"main-out", "main-err"} & set(texts)
    assert next(line.stream for line in setup if line.text == "setup-err-1") == "stderr"
    assert next(line.stream for line in setup if line.text == "setup-out-1") == "stdout"
    # In order: each header before its step's output.
    assert texts.index(HEADERS[0]) < texts.index("setup-out-1") < texts.index(HEADERS[1]) < texts.index(
        "setup-out-2")
    everything = [line.text for line in await sclient.get_logs(out.path, {})]
    assert "main-out" in everything and "main-err" in everything


async def test_the_setup_stream_is_in_the_journal_under_the_scope(sclient: Client, name: str,
                                                                  busybox: str) -> None:
    out = await run(sclient, name, busybox, "echo main-out", STEPS, {"setup_cache": False})
    assert out.exit_code == 0
    unit = out.props["Unit"]
    tagged = subprocess.run(["journalctl", "-u", unit, "-t", f"{name}/setup", "-o", "cat", "--no-pager"],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert tagged[:1] == HEADERS[:1] and "setup-out-2" in tagged and "main-out" not in tagged, tagged
    main = subprocess.run(["journalctl", "-u", unit, "-t", name, "-o", "cat", "--no-pager"],
                          capture_output=True, text=True, check=True).stdout.splitlines()
    assert "main-out" in main and "setup-out-1" not in main, main


async def test_quiltctl_logs_setup(sclient: Client, name: str, busybox: str) -> None:
    out = await run(sclient, name, busybox, "echo main-out", STEPS, {"setup_cache": False})
    assert out.exit_code == 0
    result = quiltctl("logs", "--setup", name)
    assert result.returncode == 0, result
    printed = (result.stdout + result.stderr).splitlines()
    assert [line for line in printed if line.startswith("quilt:")] == HEADERS, printed
    assert "setup-out-1" in printed and "setup-err-1" in printed and "main-out" not in printed
    result = quiltctl("logs", name)
    assert result.returncode == 0 and "main-out" in result.stdout.splitlines(), result


async def test_quiltctl_run_with_setup_prints_the_commands_output(sclient: Client, name: str, busybox: str) -> None:
    result = quiltctl("run", "--rm", "--name", name, "--setup", "sh: echo from-setup > /f", "--setup",
                      "sh: echo noisy-setup", busybox, "--", "cat", "/f")
    assert result.returncode == 0, result
    assert result.stdout.splitlines() == ["from-setup"], result
    failed = quiltctl("run", "--rm", "--name", name, "--setup", "sh: echo why-it-failed; exit 5",
                      busybox, "--", "echo", "never")
    assert failed.returncode == 5, failed
    assert "never" not in failed.stdout
    assert "why-it-failed" in failed.stderr and "setup step 1 (sh: echo why-it-failed; exit 5) exited with code 5" \
        in failed.stderr, failed


async def test_followlogs_setup_follows_the_steps_while_they_run(sclient: Client, name: str, busybox: str) -> None:
    """FollowLogs with setup=true, asked while a step still runs: the steps' lines as they come, to the
    container's end, and none of the command's."""
    step = "sh: echo s1; sleep 1; echo s2"
    path = await sclient.run_container(name, busybox, ["/bin/sh", "-c", "echo main-out"],
                                       {"setup": [step], "setup_cache": False})
    fd = await sclient.follow_logs(path, {"setup": True, "follow": True})
    lines = await read_all(fd)
    assert [line["text"] for line in lines] == [f"quilt: setup step 1/1: {step}", "s1", "s2"], lines
    assert await sclient.wait(path) == 0
