"""quiltctl exec as people use it: in a terminal (tmux, driven with send-keys and read with capture-pane) for
`exec -it`, and from scripts for the rest. The command's exit code becomes quiltctl's."""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from quilt_agent.client import Client
from tests.integration.waiting import in_foreground, until_now

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
QUILT_ERROR = 125


class Tmux:
    """A tmux server of the test's own (its own socket), one session running a command in a terminal."""

    def __init__(self, name: str) -> None:
        self.socket = f"quilt-{name}"

    def tmux(self, *args: str, check: bool = True) -> str:
        return subprocess.run(["tmux", "-L", self.socket, "-f", "/dev/null", *args], capture_output=True,
                              text=True, check=check, timeout=30).stdout

    def start(self, command: str, width: int = 100, height: int = 30) -> None:
        self.tmux("new-session", "-d", "-s", "t", "-x", str(width), "-y", str(height), command)

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, text: str, timeout: float = 10.0) -> str:
        def showing() -> str | None:
            screen = self.screen()
            return screen if text in screen else None

        return until_now(showing, lambda: f"{text!r} never showed up; the screen:\n{self.screen()!r}", timeout,
                         interval=0.05)

    def close(self) -> None:
        self.tmux("kill-server", check=False)


@pytest.fixture
def tmux(name: str) -> Iterator[Tmux]:
    t = Tmux(name)
    yield t
    t.close()


@pytest.fixture
async def running(client: Client, busybox_tar: Path, name: str) -> str:
    await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {"env": ["GREETING=hello"]})
    return name


def quiltctl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUILTCTL, *args], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


# --- exec -it in a terminal ----------------------------------------------------------------------------------


async def test_exec_it_gives_a_working_interactive_shell(running: str, tmux: Tmux) -> None:
    tmux.start(f"{QUILTCTL} exec -it {running} sh; echo QUILTCTL-EXIT=$?; sleep 600")
    tmux.wait_for("/ #")
    tmux.keys("echo $GREETING from $(hostname) on $TERM; stty size", "Enter")
    tmux.wait_for(f"hello from {running} on xterm")
    tmux.wait_for("30 100")  # the terminal's size, from the start
    # Line editing is the container shell's: a typed-over word is erased before Enter.
    tmux.keys("echo typo", "BSpace", "BSpace", "BSpace", "BSpace", "fixed", "Enter")
    assert "fixed" in tmux.wait_for("fixed\n") and "typo\n" not in tmux.screen()
    tmux.keys("exit 5", "Enter")
    tmux.wait_for("QUILTCTL-EXIT=5")


async def test_exec_it_window_size_follows_the_terminal(running: str, tmux: Tmux) -> None:
    tmux.start(f"{QUILTCTL} exec -it {running} sh")
    tmux.wait_for("/ #")
    for width, height in ((120, 40), (70, 20)):
        tmux.tmux("resize-window", "-t", "t", "-x", str(width), "-y", str(height))
        # quiltctl learns of the resize by its own SIGWINCH, a moment after tmux returns: ask until it shows.
        def resized(height: int = height, width: int = width) -> bool:
            if f"{height} {width}" in tmux.screen():
                return True
            tmux.keys("clear; stty size", "Enter")
            return False

        until_now(resized, tmux.screen, interval=0.2)


async def test_exec_it_ctrl_c_and_ctrl_z_reach_the_foreground_job(running: str, tmux: Tmux) -> None:
    tmux.start(f"{QUILTCTL} exec -it {running} sh; echo QUILTCTL-EXIT=$?; sleep 600")
    tmux.wait_for("/ #")
    tmux.keys("sleep 100", "Enter")
    await in_foreground(["sleep", "100"])
    started = time.monotonic()
    tmux.keys("C-c")
    tmux.keys("echo status=$?", "Enter")
    tmux.wait_for("status=130")  # the sleep got SIGINT from its terminal; the shell and quiltctl did not
    assert time.monotonic() - started < 5
    tmux.keys("sleep 101", "Enter")
    await in_foreground(["sleep", "101"])
    tmux.keys("C-z")
    tmux.wait_for("Stopped")  # job control: the terminal stopped the foreground job
    tmux.keys("fg", "Enter")  # back in the foreground, where ^C reaches it again
    await in_foreground(["sleep", "101"])
    tmux.keys("C-c")
    tmux.keys("echo status=$?", "Enter")
    tmux.wait_for("status=130\n/ #\n")  # 130 twice on the screen now, once per interrupted sleep
    assert tmux.screen().count("status=130") == 2
    tmux.keys("exit 0", "Enter")
    tmux.wait_for("QUILTCTL-EXIT=0")


async def test_exec_t_without_i_gives_a_terminal_but_no_input(running: str, tmux: Tmux) -> None:
    tmux.start(f"{QUILTCTL} exec -t {running} sh -c 'test -t 1 && echo has-a-tty; exit 4'; "
               "echo QUILTCTL-EXIT=$?; sleep 600")
    screen = tmux.wait_for("QUILTCTL-EXIT=4")
    assert "has-a-tty" in screen


async def test_run_it_gives_an_interactive_container(busybox_tar: Path, name: str, tmux: Tmux,
                                                     client: Client) -> None:
    tmux.start(f"{QUILTCTL} run -it --rm --name {name} {busybox_tar} sh; echo QUILTCTL-EXIT=$?; sleep 600")
    tmux.wait_for("/ #")
    tmux.keys("echo pid=$$ on $TERM; stty size", "Enter")
    tmux.wait_for("pid=1 on xterm")  # the shell is the container's init, on its terminal
    tmux.wait_for("30 100")
    tmux.keys("sleep 102", "Enter")
    await in_foreground(["sleep", "102"])
    tmux.keys("C-c")
    tmux.keys("echo status=$?; exit 6", "Enter")
    screen = tmux.wait_for("QUILTCTL-EXIT=6")
    assert "status=130" in screen
    assert name not in [e.name for e in await client.list_containers()]  # --rm


async def test_run_i_passes_stdin_and_the_exit_code(busybox_tar: Path, name: str, client: Client) -> None:
    result = quiltctl("run", "-i", "--name", name, str(busybox_tar), "sh", "-c", "tr a-z A-Z; exit 3", stdin="up\n")
    assert (result.returncode, result.stdout, result.stderr) == (3, "UP\n", "")
    path = await client.get_container(name)
    assert (await client.properties(path))["ExitCode"] == 3
    assert await client.get_logs(path, {}) == []  # this run's output was quiltctl's, not the journal's
    result = quiltctl("run", "-d", "-i", str(busybox_tar), "true")
    assert result.returncode == 2 and "-d cannot be combined with -i or -t" in result.stderr


# --- exec from scripts ---------------------------------------------------------------------------------------


async def test_exec_exit_code_and_streams_become_quiltctls(running: str) -> None:
    result = quiltctl("exec", running, "sh", "-c", "echo out; echo err >&2; exit 42")
    assert (result.returncode, result.stdout, result.stderr) == (42, "out\n", "err\n")
    result = quiltctl("exec", running, "--", "ls", "-d", "/etc")  # the command's own flags are its own
    assert (result.returncode, result.stdout) == (0, "/etc\n")


async def test_exec_i_passes_stdin_and_without_i_stdin_is_empty(running: str) -> None:
    result = quiltctl("exec", "-i", running, "tr", "a-z", "A-Z", stdin="shout\n")
    assert (result.returncode, result.stdout) == (0, "SHOUT\n")
    result = quiltctl("exec", running, "cat", stdin="not for the command\n")
    assert (result.returncode, result.stdout) == (0, "")


async def test_exec_flags_env_workdir_user(running: str) -> None:
    result = quiltctl("exec", "-e", "A=1", "-e", "GREETING=bye", "-w", "/tmp", "-u", "user", running,
                      "sh", "-c", "echo $A $GREETING $(pwd) $(id -u)")
    assert (result.returncode, result.stdout) == (0, "1 bye /tmp 1000\n")


async def test_exec_of_a_missing_command_exits_127(running: str) -> None:
    result = quiltctl("exec", running, "no-such-command")
    assert result.returncode == 127
    assert result.stderr == "quilt exec: executable file 'no-such-command' not found in $PATH or the image\n"


async def test_exec_errors_are_one_line_and_125(client: Client, running: str, busybox_tar: Path) -> None:
    await client.stop(await client.get_container(running), 1)
    for args, words in (((running, "true"), f"Container '{running}' is not running (state exited)"),
                        (("no-such-container", "true"), "No container 'no-such-container' known"),
                        (("-u", "nosuchuser", running, "true"), "not running")):
        result = quiltctl("exec", *args)
        assert result.returncode == QUILT_ERROR, result
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("quiltctl: ") and words in result.stderr
    result = quiltctl("exec", running)
    assert result.returncode == 2 and "Missing argument" in result.stderr
