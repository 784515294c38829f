"""What a forked helper keeps of its fds (close_fds_except) and the capability and dumpable steps, each run in a
forked child so the test process keeps its own."""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
from collections.abc import Callable

import pytest

from quilt_agent.helper import process

PR_GET_DUMPABLE = 3


def in_child(body: Callable[[int], object]) -> object:
    """body(report_fd) in a forked child; what it returns, through a pipe (JSON)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            result = body(write)
            os.write(write, json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write)
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.close(read)
    os.waitpid(pid, 0)
    return json.loads(data)


def is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


@pytest.mark.parametrize("keep", [(), (0, 1, 2), (1,), (0, 2), "consecutive", "gaps", "high"])
def test_close_fds_except_keeps_exactly_those(keep: tuple[int, ...] | str) -> None:
    def body(report: int) -> list[int]:
        opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(6)]
        high = os.dup2(opened[0], 300)
        wanted = {"consecutive": opened[1:4], "gaps": [opened[0], opened[2], opened[5]], "high": [opened[3], high]}
        kept = set(wanted.get(keep, keep) if isinstance(keep, str) else keep)
        process.close_fds_except((*kept, *kept, report))  # duplicates and any order are fine
        return [[fd for fd in range(400) if is_open(fd)], sorted(kept | {report})]

    fds, expected = in_child(body)  # type: ignore[misc]
    assert fds == expected


def test_switch_user_leaves_the_process_undumpable_and_drop_capabilities_keeps_the_default_set() -> None:
    # As root (make test runs so): it drops capabilities and changes uid.
    def body(report: int) -> dict[str, str]:
        process.drop_capabilities()
        process.switch_user(process.User(65534, 65534, (), "/"))
        with open("/proc/self/status") as f:
            status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
        dumpable = ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
        return {"uid": status["Uid"], "bnd": status["CapBnd"], "eff": status["CapEff"], "nnp": status["NoNewPrivs"],
                "dumpable": str(dumpable)}

    got = in_child(body)
    assert got == {"uid": "65534\t65534\t65534\t65534", "bnd": "00000000800405fb", "eff": "0000000000000000",
                   "nnp": "1", "dumpable": "0"}


# --- find_program: the command's path, looked up as execvp would ------------------------------------


def test_find_program_searches_path_in_order(tmp_path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for d in (first, second):
        d.mkdir()
        (d / "tool").write_text("#!/bin/sh\n")
        (d / "tool").chmod(0o755)
    assert process.find_program("tool", {"PATH": f"{tmp_path}/none:{first}:{second}"}) == f"{first}/tool"


def test_find_program_takes_a_path_as_it_is(tmp_path) -> None:
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "tool").chmod(0o755)
    assert process.find_program(str(tmp_path / "tool"), {"PATH": "/nowhere"}) == str(tmp_path / "tool")


def test_find_program_of_a_missing_command_is_127(tmp_path) -> None:
    with pytest.raises(process.SetupError, match="not found") as err:
        process.find_program("tool", {"PATH": str(tmp_path)})
    assert err.value.exit_code == 127


def test_find_program_of_a_file_that_is_not_executable_is_126(tmp_path) -> None:
    (tmp_path / "tool").write_text("data\n")
    (tmp_path / "tool").chmod(0o644)
    with pytest.raises(process.SetupError, match="permission denied") as err:
        process.find_program("tool", {"PATH": str(tmp_path)})
    assert err.value.exit_code == 126


def test_find_program_skips_directories(tmp_path) -> None:
    (tmp_path / "a" / "tool").mkdir(parents=True)
    with pytest.raises(process.SetupError, match="not found"):
        process.find_program("tool", {"PATH": str(tmp_path / "a")})
