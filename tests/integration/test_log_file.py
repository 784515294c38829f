"""The log drivers with a file (Podman's k8s-file, and journald+file, Quilt's lossless mode): the container's monitor
writes its lines to ctr.log in its directory, never rate-limited; GetLogs, FollowLogs and `quiltctl logs` read
them as they read the journal; the file is rotated by size (log_max_size, log_max_files); the lines of a
container that wrote while the agent was restarted are all there."""
from __future__ import annotations

import asyncio
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.test_events import events_of
from tests.integration.test_log_driver import journal_of
from tests.integration.test_logs_follow import FollowedLog, read_all
from tests.integration.test_recovery import restart_agent

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
ERR = "org.quilt.Runtime.Error."
STATE = Path("/var/lib/quilt/containers")
FLOOD = 150_000  # more than journald's burst (10,000 scaled up by the free space: 35,000-45,000 here)


def quiltctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUILTCTL, *args], capture_output=True, text=True, timeout=timeout)


async def run_k8s_file(client: Client, image: Path, name: str, command: list[str]) -> str:
    return await client.run_container(name, str(image), command, {"networks": ["none"], "log_driver": "k8s-file"})


async def test_k8s_file_keeps_the_lines_out_of_the_journal_and_logs_read_them(client: Client, busybox_tar: Path,
                                                                             name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["sh", "-c", "echo out; echo err >&2; exit 3"],
                                      {"networks": ["none"], "log_driver": "file"})
    assert await client.wait(path) == 3
    props = await client.properties(path)
    assert (props["LogDriver"], props["LogMaxSize"], props["LogMaxFiles"]) == ("k8s-file", 0, 1)
    lines = await client.get_logs(path, {})
    assert sorted((line.stream, line.text) for line in lines) == [("stderr", "err"), ("stdout", "out")]
    assert (STATE / props["Id"] / "ctr.log").read_text().count(" F ") == 2
    assert not [line for line in journal_of(props["Unit"]) if line in ("out", "err")]
    shown = quiltctl("logs", "-n", "1", name)
    assert shown.returncode == 0 and (shown.stdout + shown.stderr).count("\n") == 1
    await client.remove(path)
    assert not (STATE / props["Id"]).exists()


def test_run_prints_the_lines_of_a_k8s_file_container(busybox_tar: Path, name: str) -> None:
    result = quiltctl("run", "--rm", "--network", "none", "--log-driver", "k8s-file", "--name", name,
                      str(busybox_tar), "sh", "-c", "echo hi; echo oops >&2; exit 5")
    assert (result.returncode, result.stdout, result.stderr) == (5, "hi\n", "oops\n")


async def test_journald_plus_file_keeps_every_line_that_journald_drops(client: Client, busybox_tar: Path,
                                                                       name: str) -> None:
    # journald's default rate limit (10,000 messages per 30 s a unit, scaled up by the free space) drops most of
    # a burst this size.
    path = await client.run_container(name, str(busybox_tar), ["seq", "1", str(FLOOD)],
                                      {"networks": ["none"], "log_driver": "journald+file"})
    assert await client.wait(path) == 0
    props = await client.properties(path)
    assert (props["LogDriver"], props["LogMaxSize"], props["LogMaxFiles"]) == ("journald+file", 10 << 20, 2)
    # Read through FollowLogs' pipe: one GetLogs reply this size would hold the agent's loop while it is marshalled.
    every = await read_all(await client.follow_logs(path, {"follow": False}))
    assert [line["text"] for line in every] == [str(n) for n in range(1, FLOOD + 1)]
    assert [line.text for line in await client.get_logs(path, {"lines": 2})] == [str(FLOOD - 1), str(FLOOD)]
    # The journal got them under the container's scope, as far as its limit let it.
    in_journal = [line for line in journal_of(props["Unit"]) if line.isdigit()]
    assert 0 < len(in_journal) < FLOOD
    assert in_journal[:100] == [str(n) for n in range(1, 101)]
    await client.remove(path)


async def test_rotation_keeps_the_newest_lines_in_order(client: Client, busybox_tar: Path, name: str) -> None:
    result = quiltctl("run", "--network", "none", "--log-driver", "k8s-file", "--log-opt", "max-size=4k",
                      "--log-opt", "max-files=2", "--name", name, str(busybox_tar), "seq", "1", "5000")
    assert result.returncode == 0
    path = await client.get_container(name)
    props = await client.properties(path)
    assert (props["LogMaxSize"], props["LogMaxFiles"]) == (4096, 2)
    assert sorted(p.name for p in (STATE / props["Id"]).glob("ctr.log*")) == ["ctr.log", "ctr.log.1"]
    numbers = [int(line.text) for line in await client.get_logs(path, {})]
    assert numbers == list(range(numbers[0], 5001)) and numbers[0] > 4000
    assert [int(line.text) for line in await client.get_logs(path, {"lines": 3})] == [4998, 4999, 5000]
    await client.remove(path)


async def test_a_follow_reads_the_file_as_it_grows_and_resumes_at_a_cursor(client: Client, busybox_tar: Path,
                                                                           name: str) -> None:
    code = "echo before; while [ ! -e /go ]; do sleep 0.02; done; for i in 1 2 3; do echo after$i; done"
    path = await run_k8s_file(client, busybox_tar, name, ["sh", "-c", code])
    log = await FollowedLog.open(await client.follow_logs(path, {}))
    try:
        await log.until("before")
        assert (await client.exec(path, ["touch", "/go"], {})).exit_code == 0
        lines = await log.rest()
    finally:
        log.close()
    assert [line["text"] for line in lines] == ["before", "after1", "after2", "after3"]
    resumed = await read_all(await client.follow_logs(path, {"after_cursor": lines[1]["cursor"]}))
    assert [line["text"] for line in resumed] == ["after2", "after3"]
    shown = quiltctl("logs", "-f", name)
    assert shown.stdout == "before\nafter1\nafter2\nafter3\n"
    await client.remove(path)


async def test_lines_written_while_the_agent_restarts_are_all_kept(client: Client, busybox_tar: Path,
                                                                    name: str) -> None:
    code = "i=0; while [ $i -lt 60 ]; do echo line$i; i=$((i+1)); sleep 0.05; done"
    path = await run_k8s_file(client, busybox_tar, name, ["sh", "-c", code])
    await asyncio.to_thread(restart_agent)
    assert await client.wait(path) == 0
    assert [line.text for line in await client.get_logs(path, {})] == [f"line{i}" for i in range(60)]
    await client.remove(path)


async def test_a_restarted_container_adds_to_its_file(client: Client, busybox_tar: Path, name: str) -> None:
    path = await run_k8s_file(client, busybox_tar, name, ["echo", "again"])
    assert await client.wait(path) == 0
    await client.start(path)
    assert await client.wait(path) == 0
    assert [line.text for line in await client.get_logs(path, {})] == ["again", "again"]
    await client.remove(path)


@pytest.mark.parametrize("flags, code, message", [
    (["--log-opt", "max-size=10m"], 125, "quiltctl: Option 'log_max_size' needs log_driver k8s-file or "
                                         "journald+file, not 'journald': only a log file is rotated\n"),
    (["--log-driver", "k8s-file", "--log-opt", "max-size=1k"], 125,
     "quiltctl: Invalid log_max_size 1024 bytes: must be between 4096 and 4611686018427387904\n"),
    (["--log-driver", "k8s-file", "--log-opt", "max-files=3"], 125, "Option 'log_max_files' needs log_max_size"),
    # A value quiltctl cannot even read is a usage error, as every flag's (exit 2).
    (["--log-driver", "k8s-file", "--log-opt", "tag=x"], 2,
     "the known log options are max-size=SIZE, max-files=N, rate-limit-burst=N"),
    # Podman's rate limits: systemd takes them for services only, and a container is a scope
    (["--log-opt", "rate-limit-burst=100", "--log-opt", "rate-limit-interval=10s"], 125,
     "quiltctl: Option 'log_rate_limit_burst': per-container log rate limits cannot be set: systemd accepts "
     "LogRateLimitIntervalSec= and LogRateLimitBurst= for services only"),
])
def test_bad_log_options_are_refused_in_one_line_and_nothing_is_made(busybox_tar: Path, name: str, flags: list[str],
                                                                     code: int, message: str) -> None:
    result = quiltctl("run", "--rm", "--network", "none", *flags, "--name", name, str(busybox_tar), "true")
    assert result.returncode == code and result.stdout == "" and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert quiltctl("ps", "-a", "-q", "--filter", f"name={name}").stdout == ""


async def test_bad_log_options_over_the_bus_are_named_errors(client: Client, busybox_tar: Path,
                                                                 name: str) -> None:
    for options in ({"log_driver": "k8s-file", "log_max_files": 0}, {"log_max_size": 8192}):
        with pytest.raises(ClientError) as caught:
            await client.create_container(name, str(busybox_tar), ["true"], {"networks": ["none"], **options})
        assert caught.value.name == ERR + "InvalidArgument"
    with pytest.raises(ClientError) as caught:
        await client.create_container(name, str(busybox_tar), ["true"],
                                      {"networks": ["none"], "log_rate_limit_interval": 30_000_000})
    assert caught.value.name == ERR + "NotSupported" and "journald+file keeps every line" in str(caught.value)
    assert await client.list_containers() == []


async def test_a_full_disk_is_told_as_it_begins_and_the_lines_it_cost_counted_in_place(
        client: Client, busybox_tar: Path, name: str, tmp_path: Path) -> None:
    queue = await client.watch_events()
    # The last line comes when the test says (SIGUSR1), once the disk has room again.
    command = 'trap "echo after; exit 0" USR1; seq 1 3000; while :; do sleep 0.1; done'
    path = await client.create_container(name, str(busybox_tar), ["sh", "-c", command],
                                         {"networks": ["none"], "log_driver": "k8s-file"})
    props = await client.properties(path)
    directory = STATE / props["Id"]
    # The container's directory on a 64 KiB tmpfs, with what create put there and filled but for room for start's
    # files and a few hundred lines.
    shutil.copytree(directory, tmp_path / "made")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(directory)], check=True)
    try:
        shutil.copytree(tmp_path / "made", directory, dirs_exist_ok=True)
        (directory / "filler").write_bytes(bytes(40 << 10))
        await client.start(path)
        failed = (await events_of(queue, props["Id"], "log_write_failed", timeout=30))[-1]
        assert failed.details["reason"] == ("cannot write ctr.log (No space left on device): dropping lines, and "
                                            "counting them, until it can be written")
        (directory / "filler").unlink()  # room again: the next line ends the gap
        await client.kill(path, signal.SIGUSR1)
        told = (await events_of(queue, props["Id"], "logs_dropped", timeout=30))[-1]
        assert await client.wait(path) == 0
        lines = await client.get_logs(path, {"dropped": True})
        kept = [line.text for line in lines if line.stream == "stdout"]
        marks = [int(line.text) for line in lines if line.stream == "dropped"]
        assert marks == [told.details["count"]] and lines[-2].stream == "dropped" and kept[-1] == "after"
        assert len(kept) - 1 + marks[0] == 3000 and kept[:-1] == [str(n) for n in range(1, len(kept))]
        assert (await client.properties(path))["LogLinesDropped"] == marks[0]
        # FollowLogs streams the same, the mark in its place, when asked for it
        streamed = await read_all(await client.follow_logs(path, {"follow": False, "dropped": True}))
        assert [(line["stream"], line["text"]) for line in streamed] == [(line.stream, line.text) for line in lines]
        shown = quiltctl("logs", "-n", "2", name)
        assert shown.stderr == (f"quiltctl: {marks[0]} lines could not be written to the log file here (a full "
                                "disk, or a failing one)\n")
        # The monitor's own entries in the journal, for an administrator
        entries = subprocess.run(["journalctl", "-o", "cat", f"QUILT_CONTAINER={name}"], capture_output=True,
                                 text=True, timeout=30).stdout.splitlines()
        assert entries == [failed.details["reason"], f"ctr.log written again, after {marks[0]} lines that could not be"]
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)
        await client.remove(path)


@pytest.mark.parametrize("driver", ["k8s-file", "journald+file"])
async def test_the_options_of_logs_select_lines_of_the_file_as_of_the_journal(client: Client, busybox_tar: Path,
                                                                              name: str, driver: str) -> None:
    script = "echo one; sleep 0.3; echo two; sleep 0.3; echo three; sleep 0.3; echo four"
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", script],
                                      {"networks": ["none"], "log_driver": driver})
    assert await client.wait(path) == 0
    every = await client.get_logs(path, {})
    assert [line.text for line in every] == ["one", "two", "three", "four"]
    two, three = every[1].usec, every[2].usec
    assert [line.text for line in await client.get_logs(path, {"since": two})] == ["two", "three", "four"]

    async def texts(options: dict) -> list[str]:
        return [line["text"] for line in await read_all(await client.follow_logs(path, options))]

    assert await texts({"follow": False, "lines": 2}) == ["three", "four"]
    assert await texts({"follow": False, "since": two, "until": three}) == ["two", "three"]
    shown = quiltctl("logs", "-n", "2", "--timestamps", name)
    assert shown.returncode == 0, shown.stderr
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}[+-]\d\d:\d\d"
    assert [line.split(" ", 1)[1] for line in shown.stdout.splitlines()] == ["three", "four"]
    assert all(re.fullmatch(stamp, line.split(" ", 1)[0]) for line in shown.stdout.splitlines())
    assert quiltctl("logs", "--since", f"{two / 1e6:.6f}", name).stdout == "two\nthree\nfour\n"
    assert quiltctl("logs", "--until", f"{three / 1e6:.6f}", name).stdout == "one\ntwo\nthree\n"
    await client.remove(path)
