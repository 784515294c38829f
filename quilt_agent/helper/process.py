"""The container's process: user, capabilities, no_new_privs, environment, exec."""
from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from quilt_agent.helper import syscalls

# Podman's default capability set (containers.conf default_capabilities).
DEFAULT_CAPABILITIES = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6, "SETUID": 7,
    "SETPCAP": 8, "NET_BIND_SERVICE": 10, "SYS_CHROOT": 18, "SETFCAP": 31,
}
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"


class SetupError(Exception):
    """Something the container asked for cannot be done; exit_code follows the shell's habit."""

    def __init__(self, reason: str, exit_code: int = 125) -> None:
        super().__init__(reason)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Gated:
    """A child forked to set itself up and wait: one byte on go_write lets it go on; err_read gives what it
    reports, and its end (EOF) comes at the child's exec (close-on-exec) or at its death."""

    pid: int
    go_write: int
    err_read: int


def fork_gated(agent: socket.socket, child: Callable[[int, int], None]) -> Gated:
    """Fork child(go_read, err_write), which never returns (it execs or exits), without the agent's socket.
    The container's init (monitor.py) and an exec'd command (enter.py) start this way."""
    go_read, go_write = os.pipe()
    err_read, err_write = os.pipe2(os.O_CLOEXEC)
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


@dataclass(frozen=True)
class User:
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [line.rstrip("\n").split(":") for line in f if line.strip() and not line.startswith("#")]
    except OSError:
        return []


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
    """Bounding set to the default set, no_new_privs, then become the user."""
    try:
        with open(CAP_LAST_CAP_FILE) as f:
            last = int(f.read())
    except OSError:
        last = 40
    keep = set(DEFAULT_CAPABILITIES.values())
    for cap in range(last + 1):
        if cap not in keep:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    mask = sum(1 << c for c in keep)
    effective, permitted, _inheritable = syscalls.capabilities()
    # Nothing inheritable (the CVE-2022-29162 lesson); exec recomputes the rest from the bounding set.
    syscalls.set_capabilities(effective & permitted, permitted, 0)
    syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    os.setgroups(list(user.groups))
    os.setgid(user.gid)
    os.setuid(user.uid)
    if user.uid == 0:
        syscalls.set_capabilities(mask & permitted, mask & permitted, 0)


def environment(env: tuple[str, ...], user: User) -> dict[str, str]:
    result = dict(e.split("=", 1) for e in env)
    result.setdefault("HOME", user.home)
    return result


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
