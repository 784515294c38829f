"""The seccomp filter as compiled by libseccomp and loaded by the kernel (quilt_agent/helper/seccomp.py), tried in
a forked child: the parent and the test run stay unfiltered."""
from __future__ import annotations

import ctypes
import errno
import os

from quilt_agent.helper import seccomp, syscalls

PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWUSER = 0x10000000
_libc = ctypes.CDLL(None, use_errno=True)


def _in_filtered_child(probe) -> int:  # type: ignore[no-untyped-def]
    program = seccomp.compile_default()
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            syscalls.prctl(PR_SET_NO_NEW_PRIVS, 1)
            seccomp.install(program)
            code = probe()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status)


def _unshare_user() -> int:
    return 0 if _libc.unshare(CLONE_NEWUSER) == 0 else ctypes.get_errno()


def _clone3() -> int:
    # clone3(NULL, 0): the filter answers before the kernel would look at the (missing) arguments.
    return 0 if _libc.syscall(435, None, 0) == 0 else ctypes.get_errno()


def _allowed() -> int:
    os.getpid()
    with open("/proc/self/status") as f:
        return 0 if "Seccomp:\t2" in f.read() else 1


def test_the_program_is_whole_bpf_instructions() -> None:
    program = seccomp.compile_default()
    assert len(program) % 8 == 0 and len(program) // 8 > len(seccomp.DENIED)


def test_new_namespaces_are_refused_with_eperm() -> None:
    assert _in_filtered_child(_unshare_user) == errno.EPERM


def test_clone3_says_enosys_so_libc_falls_back_to_clone() -> None:
    assert _in_filtered_child(_clone3) == errno.ENOSYS


def test_everything_else_is_allowed_and_the_filter_is_in_place() -> None:
    assert _in_filtered_child(_allowed) == 0
