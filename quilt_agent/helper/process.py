"""The container's process: user, capabilities, no_new_privs, environment, exec."""
from __future__ import annotations

import os
import stat
import resource
import socket
from collections.abc import Callable, Collection
from dataclasses import dataclass

from quilt_agent import capabilities
from quilt_agent.filetree import open_in_root
from quilt_agent.helper import syscalls

# Podman's default capability set (containers.conf default_capabilities): quilt_agent/capabilities.py.
DEFAULT_CAPABILITIES = {name: capabilities.CAPABILITIES[name] for name in capabilities.DEFAULT}
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"
_SET_IDS = 1 << capabilities.CAPABILITIES["SETUID"] | 1 << capabilities.CAPABILITIES["SETGID"]
MAX_DB_BYTES = 4 << 20


class SetupError(Exception):
    """Something the container asked for cannot be done; exit_code follows the shell's habit. exhausted: the
    limit of the host's that ran out, when that is why, as one word ("" when not: it crosses the status pipe as
    "CODE@LIMIT reason")."""

    def __init__(self, reason: str, exit_code: int = 125, exhausted: str = "") -> None:
        super().__init__(reason)
        self.exit_code = exit_code
        self.exhausted = exhausted


@dataclass(frozen=True)
class Gated:
    """A child forked to set itself up and wait: one byte on go_write lets it go on; err_read gives what it
    reports, and its end (EOF) comes at the child's exec (close-on-exec) or at its death."""

    pid: int
    go_write: int
    err_read: int


def fork_gated(agent: socket.socket, child: Callable[[int, int], None]) -> Gated:
    """Fork child(go_read, err_write), which never returns (it execs or exits), without the agent's socket.
    The container's init (monitor.py) starts this way; an exec'd command (enter.py) is forked by an
    intermediate process with the same two pipes (gate_pipes)."""
    go_read, go_write, err_read, err_write = gate_pipes()
    pid = os.fork()
    if pid == 0:
        agent.close()
        os.close(go_write)
        os.close(err_read)
        child(go_read, err_write)
        os._exit(125)  # not reached: child execs or exits
    os.close(go_read)
    os.close(err_write)
    return Gated(pid, go_write, err_read)


def gate_pipes() -> tuple[int, int, int, int]:
    """go_read, go_write, err_read, err_write: the go pipe survives the child's exec (the child closes it),
    the status pipe does not, so its reader sees EOF at the exec."""
    go_read, go_write = os.pipe()
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
    return go_read, go_write, err_read, err_write


def make_undumpable() -> None:
    """No ptrace, pidfd_getfd or /proc/PID/fd for anyone without CAP_SYS_PTRACE, until the next execve, which
    makes a process dumpable again. A process that enters a container holds what the container must not get
    (pipes to its parent, the host's fds) and is visible there before its exec: a root process of the container
    would otherwise pass the ptrace check as soon as the capabilities are down to the container's. Inherited by
    fork; a change of uid resets it to fs.suid_dumpable, so switch_user sets it again."""
    syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)


def close_fds_except(keep: Collection[int]) -> None:
    """Close every fd but keep (0, 1 and 2 too, unless kept): what a forked helper inherited from the fork
    server and its parent is not the container's business."""
    try:
        limit = max(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    except (OSError, ValueError):
        limit = 65536
    low = 0
    for fd in sorted(set(keep)):
        if fd > low:  # never an empty range: closerange(n, n) would be close_range(n, UINT_MAX), all of them
            os.closerange(low, fd)
        low = max(low, fd + 1)
    os.closerange(low, limit)


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _read_db(path: str) -> list[list[str]]:
    """The container's passwd or group file: a FIFO it made there would hang the start or exec, /dev/zero would
    grow without end; only a regular file is read, and only its first MAX_DB_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return []
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return []
        text = os.read(fd, MAX_DB_BYTES).decode("utf-8", "replace")
    except OSError:
        return []
    finally:
        os.close(fd)
    return [line.split(":") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def open_workdir(path: str, owner: User | None = None) -> int:
    """An fd of the working directory, resolved inside the container's root ("/" by now): its symlinks followed
    as its own, never a /proc magic link such as /proc/1/root, which would lead out of it. With owner, missing
    components are made (0755) one at a time below their parent's fd, the last one owned by owner."""
    root = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return open_in_root(root, path, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            if owner is None:
                raise
        parts = [p for p in path.split("/") if p and p != "."]
        for i, name in enumerate(parts):
            parent = open_in_root(root, "/".join(parts[:i]), os.O_PATH | os.O_DIRECTORY)
            try:
                try:
                    os.mkdir(name, 0o755, dir_fd=parent)
                except FileExistsError:
                    continue
                if i == len(parts) - 1:
                    made = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                    try:
                        os.fchown(made, owner.uid, owner.gid)
                    finally:
                        os.close(made)
            finally:
                os.close(parent)
        return open_in_root(root, path, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        os.close(root)


def resolve_user(spec: str) -> User:
    """uid[:gid] or name[:group], looked up in the container's own /etc/passwd and /etc/group."""
    user, _, group = (spec or "0").partition(":")
    passwd = _read_db("/etc/passwd")
    groups = _read_db("/etc/group")
    entry = next((p for p in passwd if len(p) >= 6 and (p[0] == user or p[2] == user)), None)
    if user.isdigit():
        uid = int(user)
    elif entry:
        uid = int(entry[2])
    else:
        raise SetupError(f"unable to find user {user}: no matching entries in the container's /etc/passwd")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            g = next((g for g in groups if len(g) >= 3 and g[0] == group), None)
            if g is None:
                raise SetupError(f"unable to find group {group}: no matching entries in the container's /etc/group")
            gid = int(g[2])
    else:
        gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    name = entry[0] if entry else None
    extra = tuple(int(g[2]) for g in groups if len(g) >= 4 and name and name in g[3].split(",") and g[2].isdigit())
    home = entry[5] if entry and entry[5] else ("/root" if uid == 0 else "/")
    return User(uid, gid, extra, home)


def drop_privileges(user: User) -> None:
    """drop_capabilities, then switch_user."""
    drop_capabilities()
    switch_user(user)


def drop_capabilities(keep_mask: int = capabilities.DEFAULT_MASK) -> None:
    """Bounding, permitted and effective sets to the container's set (keep_mask, a bit per capability: the
    default set unless cap_add/cap_drop changed it), nothing inheritable or ambient, no_new_privs: as root of the
    container, before reading anything of the container's (its /etc/passwd)."""
    limit_bounding_set(keep_mask)
    drop_held_capabilities(keep_mask)


def limit_bounding_set(keep_mask: int = capabilities.DEFAULT_MASK) -> None:
    """The bounding set to keep_mask: what no exec can give back. Needs CAP_SETPCAP; leaves what is held, so it
    may come early (a container's init does it before it waits for Go, in its user namespace, whose joining
    filled the set)."""
    try:
        with open(CAP_LAST_CAP_FILE) as f:
            last = int(f.read())
    except OSError:
        last = 40
    for cap in range(last + 1):
        if not keep_mask >> cap & 1:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)


def drop_held_capabilities(keep_mask: int = capabilities.DEFAULT_MASK) -> None:
    """The rest of drop_capabilities, once limit_bounding_set(keep_mask) was done."""
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    # SETUID and SETGID stay for switch_user even when the container's set lacks them (cap_drop): its root's
    # exec recomputes the permitted and effective sets from the bounding set alone, a user's loses them all.
    mask = (keep_mask & ((1 << 64) - 1)) | _SET_IDS
    _effective, permitted, _inheritable = syscalls.capabilities()
    # Nothing inheritable (the CVE-2022-29162 lesson).
    syscalls.set_capabilities(mask & permitted, mask & permitted, 0)
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)


def switch_user(user: User) -> None:
    """Become the user (capabilities already dropped: a uid other than 0 loses them all here)."""
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)
    make_undumpable()


def environment(env: tuple[str, ...], user: User) -> dict[str, str]:
    result = dict(e.split("=", 1) for e in env)
    result.setdefault("HOME", user.home)
    return result


def find_program(name: str, env: dict[str, str]) -> str:
    """Where exec would find name, searching the container's PATH as execvp does; the errors execute raises."""
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in env.get("PATH", os.defpath).split(":")]
    denied = False
    for path in candidates:
        if os.path.isfile(path):
            if os.access(path, os.X_OK):
                return path
            denied = True
        elif "/" in name and os.path.isdir(path):
            denied = True  # as execve: a directory named as the program is EACCES, not "not found"
    if denied:
        raise SetupError(f"'{name}': permission denied (not executable)", 126)
    raise SetupError(f"executable file '{name}' not found in $PATH or the image", 127)


def execute(command: tuple[str, ...], env: dict[str, str]) -> None:
    """exec the command, searching the container's PATH; never returns."""
    try:
        os.execvpe(command[0], list(command), env)
    except FileNotFoundError:
        raise SetupError(f"executable file '{command[0]}' not found in $PATH or the image", 127) from None
    except PermissionError:
        raise SetupError(f"'{command[0]}': permission denied (not executable)", 126) from None
    except OSError as err:
        raise SetupError(f"'{command[0]}' could not be executed: {err.strerror}", 126) from None
