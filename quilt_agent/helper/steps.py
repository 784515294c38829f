"""The setup steps, run by the container's init before it execs the command.

Each step's commands are forked and executed one by one, as the container's user, in its working directory
and environment, with stdout and stderr on journal streams of their own (identifier NAME/setup). The init waits
for each; a signal that would stop the container (Stop, Kill, Ctrl-C) is passed on to the running step, since
the init itself, as the pid namespace's first process, would otherwise not even see it.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable

from quilt_agent import journal
from quilt_agent import setup as setup_commands
from quilt_agent.helper.process import SetupError

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def open_streams(name: str, unit: str) -> tuple[int, int]:
    """The steps' stdout and stderr: journal streams, opened while the host's /run is still in reach."""
    identifier = setup_commands.identifier(name)
    return (journal.open_stream(identifier, unit, journal.PRIORITY_STDOUT),
            journal.open_stream(identifier, unit, journal.PRIORITY_STDERR))


def run(streams: tuple[int, int], entries: tuple[str, ...], env: dict[str, str], cached: str,
        snapshot: Callable[[], None] | None) -> None:
    """Run the entries in order, output to streams (open_streams; closed here); SetupError naming the step
    that failed and its exit code. cached: the id of the cached setup image in use instead (nothing runs).
    snapshot: called once every step succeeded."""
    out, err = streams
    try:
        if cached:
            steps = f"{len(entries)} step{'s' if len(entries) != 1 else ''}"
            _say(out, f"quilt: setup: using cached result {cached[:12]} ({steps} not run)")
            return
        for n, entry in enumerate(entries, 1):
            step = setup_commands.parse(entry)
            _say(out, f"quilt: setup step {n}/{len(entries)}: {entry}")
            for argv in step.argvs:
                code = _run_one(argv, step.environment(env), out, err)
                if code:
                    _say(err, f"quilt: setup step {n}/{len(entries)} failed: '{' '.join(argv)}' exited with code {code}")
                    raise SetupError(f"setup step {n} ({entry}) exited with code {code}", code)
        if snapshot is not None:
            snapshot()
    finally:
        os.close(out)
        os.close(err)


def _say(fd: int, text: str) -> None:
    try:
        os.write(fd, f"{text}\n".encode())
    except OSError:
        pass  # journald went away: the step still runs


def _run_one(argv: tuple[str, ...], env: dict[str, str], out: int, err: int) -> int:
    """Fork, exec argv, wait; the exit code (128+N for signal N, 127 when it cannot be found)."""
    pid = os.fork()
    if pid == 0:
        try:
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.closerange(3, 65536)
            os.execvpe(argv[0], list(argv), env)
        except FileNotFoundError:
            os.write(2, f"quilt: setup: '{argv[0]}' not found in $PATH or the image\n".encode())
            os._exit(127)
        except BaseException as e:  # noqa: BLE001 - reported as the step's exit code
            os.write(2, f"quilt: setup: '{argv[0]}' could not be executed: {e}\n".encode())
            os._exit(126)
    previous = {sig: signal.signal(sig, lambda s, _f: _forward(pid, s)) for sig in FORWARDED}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
