"""quilt-monitor (monitor/quilt-monitor.c), the program a container's monitor execs once the container runs, on this
machine: it must reap the process it was the parent of, record its end as the agent reads it, and note OOM kills
as helper/oom.py does. The container side (the agent's records after real exits and OOM kills, across agent
restarts) is the integration suite's; here the program alone, with a child of its own and stand-in cgroup files.
"""
from __future__ import annotations

import errno
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quilt_agent.journal import LOG_DROPPED_ID, LOG_FAILED_ID
from quilt_agent.logfile import read_lines

PROJECT = Path(__file__).resolve().parents[2]

# What the Python monitor does before its exec: it forked the init, holds the OOM watch's fds, and execs the
# program with them. Here the "init" is `sh -c CODE`.
PARENT = """
import os, sys
monitor, exit_file, counter_file, kind, code = sys.argv[1:6]
counter = event = -1
if counter_file:
    counter = os.open(counter_file, os.O_RDONLY)
    event = counter
if kind == "in":
    event = os.eventfd(1)  # v1: one notification already sent
for fd in {counter, event} - {-1}:
    os.set_inheritable(fd, True)  # as OomWatch.handed_over leaves them
pid = os.fork()
if pid == 0:
    os.execvp("sh", ["sh", "-c", code])
os.execv(monitor, ["quilt-mon", "web", str(pid), exit_file, str(counter), str(event), kind])
"""


@pytest.fixture(scope="module")
def monitor() -> Path:
    subprocess.run(["make", "-s", "-C", str(PROJECT), "build/quilt-monitor"], check=True)
    return PROJECT / "build/quilt-monitor"


def run_monitor(monitor: Path, tmp_path: Path, code: str, counter: str = "", kind: str = "-",
                exit_file: Path | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    exit_file = exit_file or tmp_path / "exit.json"
    result = subprocess.run([sys.executable, "-c", PARENT, str(monitor), str(exit_file), counter, kind, code],
                            capture_output=True, text=True, timeout=30)
    recorded = json.loads(exit_file.read_text()) if exit_file.exists() else {}
    return result, recorded


def test_an_exit_code_is_recorded_as_the_agent_reads_it(monitor: Path, tmp_path: Path) -> None:
    before = time.time_ns() // 1000
    result, recorded = run_monitor(monitor, tmp_path, "sleep 0.1; exit 3")
    assert (result.returncode, result.stderr) == (0, "")
    assert recorded.pop("finished_at") >= before + 100_000
    assert recorded == {"exit_code": 3, "exit_signal": 0, "oom_killed": False, "reason": "", "failed": False}
    assert not (tmp_path / "exit.json.tmp").exists()


def test_a_kill_is_recorded_as_128_plus_its_signal(monitor: Path, tmp_path: Path) -> None:
    _, recorded = run_monitor(monitor, tmp_path, "kill -9 $$")
    assert (recorded["exit_code"], recorded["exit_signal"]) == (137, 9)


def test_an_oom_kill_counted_in_memory_events_is_recorded(monitor: Path, tmp_path: Path) -> None:
    """cgroup v2: the last count, read after the reaping, says an OOM kill happened."""
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n")
    _, recorded = run_monitor(monitor, tmp_path, "exit 137", counter=str(events), kind="pri")
    assert recorded["oom_killed"] is True


def test_no_oom_kill_counted_is_none_recorded(monitor: Path, tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
    _, recorded = run_monitor(monitor, tmp_path, "exit 0", counter=str(events), kind="pri")
    assert recorded["oom_killed"] is False


def test_a_v1_oom_notification_is_an_oom_kill_before_it_is_counted(monitor: Path, tmp_path: Path) -> None:
    """cgroup v1: the eventfd fires before oom_control counts the kill; with the cgroup still there it was one."""
    control = tmp_path / "memory.oom_control"
    control.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    _, recorded = run_monitor(monitor, tmp_path, "sleep 0.2", counter=str(control), kind="in")
    assert recorded["oom_killed"] is True


def test_it_shows_as_the_containers_monitor(monitor: Path, tmp_path: Path) -> None:
    """ps shows `quilt-mon web`, as it did before the exec; the exit file's path is not on show."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(monitor), str(tmp_path / "exit.json"), "", "-",
                               "sleep 5"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{parent.pid}/comm").read_text() != "quilt-mon web\n":
            assert time.monotonic() < deadline, "the monitor never named itself"
            time.sleep(0.01)
        assert Path(f"/proc/{parent.pid}/cmdline").read_bytes().rstrip(b"\0") == b"quilt-mon\0web"
        fds = {os.readlink(f"/proc/{parent.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{parent.pid}/fd")}
        assert any(fd.startswith("anon_inode:[pidfd]") for fd in fds)
    finally:
        for child in Path(f"/proc/{parent.pid}/task/{parent.pid}/children").read_text().split():
            os.kill(int(child), 9)
        parent.wait(timeout=10)
    assert json.loads((tmp_path / "exit.json").read_text())["exit_signal"] == 9


def test_an_exit_file_it_cannot_write_is_a_failure_it_names(monitor: Path, tmp_path: Path) -> None:
    exit_file = tmp_path / "gone" / "exit.json"
    result, recorded = run_monitor(monitor, tmp_path, "exit 0", exit_file=exit_file)
    assert result.returncode == 1 and recorded == {}
    assert result.stderr == f"quilt-monitor: {exit_file}.tmp: No such file or directory\n"


def test_a_symlink_in_place_of_the_temporary_file_is_not_followed(monitor: Path, tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    (tmp_path / "exit.json.tmp").symlink_to(target)
    result, _ = run_monitor(monitor, tmp_path, "exit 0")
    assert result.returncode == 1 and not target.exists()


@pytest.mark.parametrize("args", [
    [], ["web", "1", "/x", "-1", "-1"], ["web", "0", "/x", "-1", "-1", "-"], ["web", "abc", "/x", "-1", "-1", "-"],
    ["web", "1", "/x", "-2", "-1", "-"], ["web", "1", "/x", "3x", "-1", "-"],
    ["web", "1", "/x", "-1", "-1", "-", "3", "0", "1", "4", "5", "-1"],  # one log argument short
    ["web", "1", "/x", "-1", "-1", "-", "3", "0", "0", "4", "5", "-1", "-1"],  # max-files 0
    ["web", "1", "/x", "-1", "-1", "-", "3", "-5", "1", "4", "5", "-1", "-1"],  # a negative size
])
def test_bad_arguments_are_refused_with_the_usage(monitor: Path, args: list[str]) -> None:
    result = subprocess.run([str(monitor), *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert result.stderr.startswith("usage: quilt-monitor NAME INIT_PID EXIT_FILE")


# The log drivers k8s-file and journald+file: the "init" writes to pipes whose read ends the monitor relays to
# ctr.log in DIRECTORY, and to FORWARD (a stand-in for the journald streams: a file) if given.
LOGGED_PARENT = """
import os, sys
monitor, exit_file, directory, max_size, max_files, forward, code = sys.argv[1:8]
dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
out_r, out_w = os.pipe()
err_r, err_w = os.pipe()
fwd = os.open(forward, os.O_WRONLY | os.O_CREAT | os.O_APPEND) if forward else -1
pid = os.fork()
if pid == 0:
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.execvp("sh", ["sh", "-c", code])
os.close(out_w)
os.close(err_w)
for fd in {dir_fd, out_r, err_r, fwd} - {-1}:
    os.set_inheritable(fd, True)
os.execv(monitor, ["quilt-mon", "web", str(pid), exit_file, "-1", "-1", "-", str(dir_fd), max_size, max_files,
                   str(out_r), str(err_r), str(fwd), str(fwd)])
"""


def run_logged(monitor: Path, directory: Path, code: str, max_size: int = 0, max_files: int = 1,
               forward: Path | None = None, wrap: list[str] | None = None,
               exit_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    directory.mkdir(exist_ok=True)
    argv = [sys.executable, "-c", LOGGED_PARENT, str(monitor), str(exit_file or directory / "exit.json"), str(directory),
            str(max_size), str(max_files), str(forward or ""), code]
    return subprocess.run([*(wrap or []), *argv], capture_output=True, text=True, timeout=60)


def test_each_line_is_logged_with_its_stream_and_the_last_one_without_its_newline(monitor: Path,
                                                                                   tmp_path: Path) -> None:
    before = time.time_ns() // 1000
    result = run_logged(monitor, tmp_path / "c", "echo one; echo two >&2; printf 'a\\nb\\n\\n'; printf last; exit 4")
    assert (result.returncode, result.stderr) == (0, "")
    lines = read_lines(str(tmp_path / "c"))
    # In order within a stream; two pipes read as they turn readable need not keep the order between them.
    assert [line.text for line in lines if line.stream == "stdout"] == ["one", "a", "b", "", "last"]
    assert [line.text for line in lines if line.stream == "stderr"] == ["two"]
    assert all(before <= line.usec <= time.time_ns() // 1000 for line in lines)
    assert json.loads((tmp_path / "c" / "exit.json").read_text())["exit_code"] == 4
    record = (tmp_path / "c" / "ctr.log").read_text().splitlines()[0]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z stdout F one", record)


def test_a_long_line_is_written_in_pieces_and_read_back_whole(monitor: Path, tmp_path: Path) -> None:
    result = run_logged(monitor, tmp_path / "c", "head -c 40000 /dev/zero | tr '\\0' x; echo; echo short")
    assert result.returncode == 0
    flags = [record.split(" ")[2] for record in (tmp_path / "c" / "ctr.log").read_text().splitlines()]
    assert flags == ["P", "P", "F", "F"]
    assert [line.text for line in read_lines(str(tmp_path / "c"))] == ["x" * 40000, "short"]


def test_the_file_is_rotated_by_size_keeping_the_newest_files(monitor: Path, tmp_path: Path) -> None:
    result = run_logged(monitor, tmp_path / "c", "seq 1 2000", max_size=4096, max_files=3)
    assert result.returncode == 0
    names = sorted(p.name for p in (tmp_path / "c").glob("ctr.log*"))
    assert names == ["ctr.log", "ctr.log.1", "ctr.log.2"]
    assert all(p.stat().st_size < 4096 + 64 for p in (tmp_path / "c").glob("ctr.log*"))
    numbers = [int(line.text) for line in read_lines(str(tmp_path / "c"))]
    assert numbers == list(range(numbers[0], 2001)) and numbers[0] > 1  # the newest, in order, none missing


def test_with_one_file_a_full_one_is_begun_again(monitor: Path, tmp_path: Path) -> None:
    result = run_logged(monitor, tmp_path / "c", "seq 1 2000", max_size=4096, max_files=1)
    assert result.returncode == 0
    assert [p.name for p in (tmp_path / "c").glob("ctr.log*")] == ["ctr.log"]
    numbers = [int(line.text) for line in read_lines(str(tmp_path / "c"))]
    assert numbers == list(range(numbers[0], 2001))


def test_with_journald_plus_file_each_chunk_is_also_forwarded_as_written(monitor: Path, tmp_path: Path) -> None:
    result = run_logged(monitor, tmp_path / "c", "echo one; printf 'two\\nthr'; echo ee", forward=tmp_path / "fwd")
    assert result.returncode == 0
    assert (tmp_path / "fwd").read_text() == "one\ntwo\nthree\n"
    assert [line.text for line in read_lines(str(tmp_path / "c"))] == ["one", "two", "three"]


def test_a_symlink_in_place_of_the_log_file_is_not_followed(monitor: Path, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ctr.log").symlink_to(tmp_path / "elsewhere")
    result = run_logged(monitor, tmp_path / "c", "echo secret")
    assert result.returncode == 0  # the container's end is still recorded
    assert not (tmp_path / "elsewhere").exists()
    assert "cannot open ctr.log" in result.stderr
    assert json.loads((tmp_path / "c" / "exit.json").read_text())["exit_code"] == 0


class Journal:
    """journald's native socket as the monitor finds it, in a mount namespace of the test's own: a datagram socket
    the test reads, bound at /run/systemd/journal/socket over a private /run (or no socket there, for a host
    without journald)."""

    def __init__(self, tmp_path: Path, present: bool = True) -> None:
        directory = tmp_path / "journal"
        directory.mkdir()
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(directory / "socket"))
        self.socket.setblocking(False)
        self.mounts = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal"
        if present:
            self.mounts += f" && mount --bind {directory} /run/systemd/journal"

    def entries(self) -> list[dict[str, str]]:
        got = []
        while True:
            try:
                data = self.socket.recv(65536)
            except BlockingIOError:
                return got
            got.append(dict(line.split("=", 1) for line in data.decode().splitlines()))


def run_on_a_full_disk(monitor: Path, tmp_path: Path, code: str, journal: Journal) -> tuple[
        subprocess.CompletedProcess[str], Path]:
    """Run CODE as the container, its directory a 64 KiB tmpfs filled but for a few KiB (in a mount namespace of the
    test's own); what the directory held is copied out before the namespace goes. The exit file is kept out of it:
    it could not be written while the disk is full."""
    out = tmp_path / "out"
    out.mkdir()
    directory = tmp_path / "c"
    directory.mkdir()
    script = (f"mount -t tmpfs -o size=64k tmpfs {directory} && head -c 57344 /dev/zero > {directory}/filler && "
              f'{journal.mounts} && "$@"; cp -a {directory}/. {out}/')
    result = run_logged(monitor, directory, code.format(directory=directory),
                        wrap=["unshare", "-m", "sh", "-c", script, "sh"], exit_file=out / "exit.json")
    return result, out


def test_lines_that_a_full_disk_refuses_are_counted_into_the_file_once_it_has_room(monitor: Path,
                                                                                  tmp_path: Path) -> None:
    # The "container" writes 2,000 lines, frees the room once the monitor has taken every line (when the file has
    # stopped growing for a while) and writes one more.
    settle = ("last=-1; while size=$(stat -c %s {directory}/ctr.log) && [ $size != $last ]; do last=$size; "
              "sleep 0.3; done")
    journal = Journal(tmp_path)
    result, out = run_on_a_full_disk(monitor, tmp_path, f"seq 1 2000; {settle}; rm {{directory}}/filler; echo after",
                                     journal)
    assert (result.returncode, result.stderr) == (0, "")
    lines = read_lines(str(out), dropped=True)
    assert lines[-1].text == "after" and lines[-2].stream == "dropped"  # the lines lost while it was full
    # Every line is there or counted, in its place: a tmpfs may take a short line now and then while full.
    expected, kept, counted = 1, 0, 0
    for line in lines[:-1]:
        if line.stream == "dropped":
            expected, counted = expected + int(line.text), counted + int(line.text)
        else:
            assert int(line.text) == expected
            expected, kept = expected + 1, kept + 1
    assert expected == 2001 and 0 < kept < 2000
    # The gaps' edges, in the journal, as the agent reads them: at most one report a second, the counts added up
    entries = journal.entries()
    ids = [e["MESSAGE_ID"] for e in entries]
    assert ids[0] == LOG_FAILED_ID and ids[-1] == LOG_DROPPED_ID and set(ids) == {LOG_FAILED_ID, LOG_DROPPED_ID}
    assert all(e["QUILT_CONTAINER"] == "web" and e["SYSLOG_IDENTIFIER"] == "quilt-monitor" for e in entries)
    assert entries[0]["ERRNO"] == str(errno.ENOSPC)
    assert entries[0]["MESSAGE"] == ("cannot write ctr.log (No space left on device): dropping lines, and counting "
                                     "them, until it can be written")
    assert sum(int(e["N_DROPPED"]) for e in entries) == counted
    assert entries[-1]["MESSAGE"] == f"ctr.log written again, after {entries[-1]['N_DROPPED']} lines that could not be"
    assert json.loads((out / "exit.json").read_text())["exit_code"] == 0


def test_lines_lost_to_a_disk_full_until_the_end_are_counted_in_the_journal(monitor: Path, tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    result, out = run_on_a_full_disk(monitor, tmp_path, "seq 1 2000", journal)
    assert (result.returncode, result.stderr) == (0, "")
    kept = [line for line in read_lines(str(out), dropped=True)]
    assert all(line.stream == "stdout" for line in kept) and 0 < len(kept) < 2000  # no room for a count
    failed, dropped = journal.entries()
    assert failed["MESSAGE_ID"] == LOG_FAILED_ID
    assert dropped["MESSAGE_ID"] == LOG_DROPPED_ID and int(dropped["N_DROPPED"]) == 2000 - len(kept)
    assert dropped["MESSAGE"] == f"the container ended with {2000 - len(kept)} lines not written to ctr.log"
    assert json.loads((out / "exit.json").read_text())["exit_code"] == 0


def test_without_journald_a_full_disk_is_said_on_stderr(monitor: Path, tmp_path: Path) -> None:
    journal = Journal(tmp_path, present=False)
    result, _ = run_on_a_full_disk(monitor, tmp_path, "seq 1 2000", journal)
    assert result.returncode == 0
    assert result.stderr.splitlines()[0] == ("quilt-monitor: cannot write ctr.log (No space left on device): dropping "
                                             "lines, and counting them, until it can be written")
    assert re.fullmatch(r"quilt-monitor: the container ended with \d+ lines not written to ctr.log",
                        result.stderr.splitlines()[1])
