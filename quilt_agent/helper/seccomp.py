"""The container's seccomp filter: the system calls Docker's and Podman's default profiles refuse to a container
without CAP_SYS_ADMIN and friends, refused here too (EPERM), everything else allowed.

The filter is compiled once, by libseccomp (loaded with ctypes: its Python binding is not on PyPI), in the fork
server before it serves; each container's init and each exec only hand the ready BPF program to the kernel
(prctl PR_SET_SECCOMP, after no_new_privs), just before the first program of the container runs. Quilt's own
setup (mounts, pivot_root, setns) happens before, so it needs none of what is refused.

A deny list rather than Podman's allow list of ~400 calls: the capabilities already stop most of what the allow
list leaves out (mount, reboot, module loading, clock setting...); these calls are refused for what capabilities do
not cover: new namespaces (user namespaces need no capability), the kernel keyring, BPF and perf, userfaultfd,
io_uring, open_by_handle_at (the "shocker" escape), and the same for the 32-bit ABIs of the machine.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform

from quilt_agent.helper import syscalls

DENIED = (
    # namespaces and mounts: the container's are made by Quilt before the filter
    "unshare", "setns", "mount", "umount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig",
    "fsmount", "fspick", "mount_setattr",
    # the kernel: modules, kexec, reboot, swap, clocks, quotas, accounting, I/O ports, the log
    "init_module", "finit_module", "delete_module", "create_module", "kexec_load", "kexec_file_load", "reboot",
    "swapon", "swapoff", "settimeofday", "stime", "clock_settime", "clock_adjtime", "quotactl", "quotactl_fd",
    "acct", "iopl", "ioperm", "syslog", "nfsservctl", "sysfs", "_sysctl", "uselib", "ustat", "vm86", "vm86old",
    "lookup_dcookie", "get_kernel_syms", "query_module",
    # what capabilities do not cover
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd", "name_to_handle_at",
    "open_by_handle_at", "fanotify_init", "kcmp", "io_uring_setup", "io_uring_enter", "io_uring_register",
)
# clone with any of these flags is refused as unshare is (clone3 says ENOSYS: libc then falls back to clone,
# whose flags a filter can read; clone3's are behind a pointer).
CLONE_NAMESPACES = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x00000080)
# The machine's other ABIs, filtered too (a 32-bit call would otherwise bypass the filter).
EXTRA_ARCHES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",)}

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_MASKED_EQ = 7
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def _errno(code: int) -> int:
    return 0x00050000 | code  # SCMP_ACT_ERRNO(code)


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _library() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _check(result: int, what: str) -> None:
    if result < 0:
        raise OSError(-result, f"seccomp: {what}: {os.strerror(-result)}")


def compile_default() -> bytes:
    """The default filter as a raw BPF program (struct sock_filter[]). OSError if libseccomp fails."""
    try:
        lib = _library()
    except OSError as e:
        raise OSError(errno.ENOENT, f"seccomp: libseccomp.so.2 cannot be loaded: {e}") from None
    ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp: seccomp_init failed")
    try:
        for arch in EXTRA_ARCHES.get(platform.machine(), ()):
            token = lib.seccomp_arch_resolve_name(arch.encode())
            if token:
                result = lib.seccomp_arch_add(ctx, token)
                if result != -errno.EEXIST:
                    _check(result, f"adding the {arch} ABI")
        for name in DENIED:
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0:
                continue  # not a call of this machine
            _check(lib.seccomp_rule_add_array(ctx, _errno(errno.EPERM), number, 0, None), f"refusing {name}")
        clone = lib.seccomp_syscall_resolve_name(b"clone")
        for flag in CLONE_NAMESPACES:
            # On s390 clone's flags are its second argument; everywhere else its first.
            cmp = _ArgCmp(1 if platform.machine().startswith("s390") else 0, SCMP_CMP_MASKED_EQ, flag, flag)
            _check(lib.seccomp_rule_add_array(ctx, _errno(errno.EPERM), clone, 1, ctypes.byref(cmp)),
                   "refusing clone with namespace flags")
        clone3 = lib.seccomp_syscall_resolve_name(b"clone3")
        if clone3 >= 0:
            _check(lib.seccomp_rule_add_array(ctx, _errno(errno.ENOSYS), clone3, 0, None), "refusing clone3")
        fd = os.memfd_create("quilt-seccomp", os.MFD_CLOEXEC)
        try:
            _check(lib.seccomp_export_bpf(ctx, fd), "exporting the filter")
            return os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


_prepared: bytes | OSError | None = None


def prepare() -> None:
    """Compile the default filter now (the fork server, before it serves): its children inherit the program and
    only install it. A failure is kept, for the containers that ask for the filter to report."""
    global _prepared
    try:
        _prepared = compile_default()
    except OSError as e:
        _prepared = e


def apply_default() -> None:
    """Install the default filter (compiled by prepare(), or now); OSError if it cannot be had."""
    if _prepared is None:
        prepare()
    if isinstance(_prepared, OSError):
        raise _prepared
    install(_prepared)  # type: ignore[arg-type]


def install(program: bytes) -> None:
    """Load a compiled filter into this process (it needs no_new_privs, or CAP_SYS_ADMIN); it is inherited by
    every child and kept across exec."""
    buffer = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    syscalls.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))
