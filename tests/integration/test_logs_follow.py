"""Following a container's log: FollowLogs through the real bus and journal, and `quiltctl logs -f/--until/-t`.

The containers wait for a file that the test makes with Exec, so the lines a follow must see are written only
after it has started.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests.integration.waiting import log_line, until

ERR = "org.quilt.Runtime.Error."
QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
# Prints "before", waits for /go, then writes to both streams and exits.
GATED = ("echo before; while [ ! -e /go ]; do sleep 0.02; done;"
         " echo after1; echo after2 >&2; sleep 0.2; echo last")


def agent_pid() -> int:
    return int(subprocess.run(["systemctl", "show", "-P", "MainPID", "quilt-agent"], capture_output=True,
                              text=True, check=True).stdout)


class FollowedLog:
    """FollowLogs' pipe, read as its JSON lines come."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.ReadTransport) -> None:
        self.reader, self.transport = reader, transport
        self.lines: list[dict] = []

    @classmethod
    async def open(cls, fd: int) -> FollowedLog:
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
        return cls(reader, transport)

    async def _next(self, timeout: float) -> dict | None:
        raw = await asyncio.wait_for(self.reader.readline(), timeout)
        if not raw:
            return None
        self.lines.append(json.loads(raw))
        return self.lines[-1]

    async def until(self, text: str, timeout: float = 10.0) -> None:
        """Read until the line text has come (the follower has sent the log up to it and has not ended)."""
        async with asyncio.timeout(timeout):
            while (line := await self._next(timeout)) is None or line["text"] != text:
                assert line is not None, f"the log ended before {text!r}: {self.lines}"

    async def rest(self, timeout: float = 20.0) -> list[dict]:
        """Every line read, once the pipe is at its end (which must come within timeout)."""
        async with asyncio.timeout(timeout):
            while await self._next(timeout) is not None:
                pass
        return self.lines

    def close(self) -> None:
        self.transport.close()


async def read_all(fd: int, timeout: float = 20.0) -> list[dict]:
    """Every JSON line of a FollowLogs pipe up to its end (which must come within timeout)."""
    log = await FollowedLog.open(fd)
    try:
        return await log.rest(timeout)
    finally:
        log.close()


async def gated_container(client: Client, image: Path, name: str) -> str:
    path = await client.run_container(name, str(image), ["/bin/sh", "-c", GATED], {})
    await log_line(client, path, "before")
    return path


async def open_gate(client: Client, path: str) -> None:
    assert (await client.exec(path, ["/bin/touch", "/go"], {})).exit_code == 0


async def test_follow_sees_lines_written_after_it_started_and_ends_with_the_container(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await gated_container(client, busybox_tar, name)
    log = await FollowedLog.open(await client.follow_logs(path, {}))
    try:
        await log.until("before")  # what was there: and the pipe stays open, the container runs
        await open_gate(client, path)
        lines = await log.rest()
    finally:
        log.close()
    assert [(line["stream"], line["text"]) for line in lines] == [
        ("stdout", "before"), ("stdout", "after1"), ("stderr", "after2"), ("stdout", "last")]
    assert (await client.properties(path))["State"] == "exited"
    usecs = [line["usec"] for line in lines]
    assert usecs == sorted(usecs) and usecs[0] >= (await client.properties(path))["CreatedAt"]


async def test_follow_of_an_exited_container_gives_its_log_and_ends(client: Client, busybox_tar: Path,
                                                                    name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "seq 1 3000"], {})
    await client.wait(path)
    started = time.monotonic()
    lines = await read_all(await client.follow_logs(path, {}))
    assert [line["text"] for line in lines] == [str(i) for i in range(1, 3001)]
    assert time.monotonic() - started < 5


async def test_follow_options_lines_since_until_and_no_follow(client: Client, busybox_tar: Path, name: str) -> None:
    script = "echo one; sleep 0.3; echo two; sleep 0.3; echo three; sleep 0.3; echo four; sleep 300"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script], {})
    await log_line(client, path, "four")
    all_lines = await client.get_logs(path, {})
    two, three = all_lines[1].usec, all_lines[2].usec

    async def texts(options: dict) -> list[str]:
        return [line["text"] for line in await read_all(await client.follow_logs(path, options))]

    assert await texts({"follow": False}) == ["one", "two", "three", "four"]
    assert await texts({"follow": False, "lines": 2}) == ["three", "four"]
    assert await texts({"follow": False, "since": two, "until": three}) == ["two", "three"]
    # Following, but only until a time that has passed: what is there up to it, then the end.
    assert await texts({"until": three}) == ["one", "two", "three"]
    # Following with the last line first: ends when the container does.
    log = await FollowedLog.open(await client.follow_logs(path, {"lines": 1}))
    try:
        await log.until("four")  # and then it follows, until the kill
        await client.kill(path, 9)
        assert [line["text"] for line in await log.rest()] == ["four"]
    finally:
        log.close()


async def test_follow_ends_when_the_reader_goes_away_and_leaves_nothing_behind(client: Client, busybox_tar: Path,
                                                                               name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {})
    agent = agent_pid()
    threads = len(os.listdir(f"/proc/{agent}/task"))
    fds = len(os.listdir(f"/proc/{agent}/fd"))
    followers = [await client.follow_logs(path, {}) for _ in range(5)]
    await until(lambda: len(os.listdir(f"/proc/{agent}/task")) >= threads + 5, "the followers' threads never ran")
    assert len(os.listdir(f"/proc/{agent}/task")) == threads + 5  # one thread each, none of asyncio's pool
    for fd in followers:
        os.close(fd)
    def ended() -> bool:
        return len(os.listdir(f"/proc/{agent}/task")) <= threads and len(os.listdir(f"/proc/{agent}/fd")) <= fds

    await until(ended, "the followers did not end with their readers")
    assert (await client.properties(path))["State"] == "running"


async def test_follow_ends_when_the_container_is_removed(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "echo hi; sleep 300"], {})
    await log_line(client, path, "hi")
    reading = asyncio.ensure_future(read_all(await client.follow_logs(path, {})))
    await client.remove(path, True)
    assert [line["text"] for line in await reading] == ["hi"]


@pytest.mark.parametrize("options, words", [
    ({"bogus": Variant("u", 1)}, "Unknown log option 'bogus'"),
    ({"lines": Variant("s", "3")}, "Log option 'lines' must be an unsigned integer"),
    ({"follow": Variant("u", 1)}, "Log option 'follow' must be a boolean"),
    ({"after_cursor": Variant("u", 1)}, "Log option 'after_cursor' must be a journal cursor"),
    ({"after_cursor": Variant("s", "")}, "Log option 'after_cursor' must be a journal cursor"),
    ({"end_marker": Variant("s", "yes")}, "Log option 'end_marker' must be a boolean"),
])
async def test_bad_follow_options_are_invalid_argument(client: Client, busybox_tar: Path, name: str,
                                                       options: dict, words: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {})
    with pytest.raises(ClientError) as err:
        await client.follow_logs(path, options)
    assert err.value.name == ERR + "InvalidArgument" and words in err.value.message


async def test_a_follow_resumes_after_a_lines_cursor_and_says_when_it_ended_on_its_own(
        client: Client, busybox_tar: Path, name: str) -> None:
    # What a reader cut off by a restart of the agent does: the lines after the last it got, each once, and the
    # end marker only for a follow that ended on its own (a pipe cut by the agent's exit has none).
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "for i in 1 2 3 4 5; do echo $i; done"],
                                      {})
    await client.wait(path)
    whole = await read_all(await client.follow_logs(path, {"end_marker": True}))
    assert [line.get("text") for line in whole] == ["1", "2", "3", "4", "5", None]
    assert whole[-1] == {"end": True}
    assert all(line["cursor"] for line in whole[:-1])
    rest = await read_all(await client.follow_logs(path, {"after_cursor": whole[1]["cursor"], "lines": 1}))
    assert [line["text"] for line in rest] == ["3", "4", "5"]  # lines is ignored: from the cursor on
    assert await read_all(await client.follow_logs(path, {"after_cursor": whole[4]["cursor"]})) == []


# --- quiltctl logs -f ----------------------------------------------------------------------------------------


async def test_quiltctl_logs_follow_prints_new_lines_stdout_and_stderr_apart(client: Client, busybox_tar: Path,
                                                                           name: str) -> None:
    path = await gated_container(client, busybox_tar, name)
    proc = await asyncio.create_subprocess_exec(QUILTCTL, "logs", "-f", name, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = await asyncio.wait_for(proc.stdout.readline(), 20)  # the log so far: it follows from there
    assert first == b"before\n" and proc.returncode is None
    await open_gate(client, path)
    out, err = await asyncio.wait_for(proc.communicate(), 20)  # ends by itself: the container exited
    assert proc.returncode == 0
    assert (first + out).decode() == "before\nafter1\nlast\n" and err.decode() == "after2\n"


async def test_quiltctl_logs_tail_timestamps_and_until(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "echo a; echo b; echo c"], {})
    await client.wait(path)
    await log_line(client, path, "c")
    result = subprocess.run([QUILTCTL, "logs", "-f", "-n", "2", "--timestamps", name], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["b", "c"]
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d"
    assert all(re.fullmatch(stamp, line.split(" ", 1)[0]) for line in lines), lines
    # --until a time before the container was made: nothing; a later one: everything, and no waiting.
    result = subprocess.run([QUILTCTL, "logs", "--until", "1h", name], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "")
    result = subprocess.run([QUILTCTL, "logs", "--until", str(time.time() + 3600), name], capture_output=True,
                            text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "a\nb\nc\n")
    result = subprocess.run([QUILTCTL, "logs", "--until", "yesterday-ish", name], capture_output=True, text=True)
    assert result.returncode == 2 and "'--until'" in result.stderr
