"""Linux capabilities by name, the container's default set, and what cap_add/cap_drop make of it.

Pure (no kernel calls): the agent checks the names at create, the helper (helper/process.py) applies the set it
is given. Names are taken as Podman takes them: with or without CAP_, in any case, and ALL.
"""
from __future__ import annotations

from typing import Any

from quilt_agent.errors import InvalidArgument

# linux/capability.h, up to CAP_CHECKPOINT_RESTORE (Linux 5.9). A kernel with fewer leaves the rest out of the
# bounding set by itself (helper/process.py drops up to /proc/sys/kernel/cap_last_cap).
CAPABILITIES: dict[str, int] = {
    "CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5, "SETGID": 6,
    "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10, "NET_BROADCAST": 11, "NET_ADMIN": 12,
    "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15, "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18,
    "SYS_PTRACE": 19, "SYS_PACCT": 20, "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24,
    "SYS_TIME": 25, "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
    "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35, "BLOCK_SUSPEND": 36,
    "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40,
}
ALL = "ALL"
# Podman's default set (containers.conf default_capabilities).
DEFAULT = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP",
           "SETUID", "SYS_CHROOT")
DEFAULT_MASK = sum(1 << CAPABILITIES[name] for name in DEFAULT)


def normalise(key: str, value: Any) -> tuple[str, ...]:
    """A cap_add or cap_drop option: names upper-cased, without CAP_, each once, in the order given."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise InvalidArgument(f"Option '{key}' must be a list of strings, not {value!r}")
    names = []
    for given in value:
        name = given.strip().upper().removeprefix("CAP_")
        if name != ALL and name not in CAPABILITIES:
            raise InvalidArgument(f"Invalid {key} capability '{given}': not a capability (CAP_NET_RAW, NET_RAW, "
                                  "... or ALL)")
        names.append(name)
    return tuple(dict.fromkeys(names))


def check(add: tuple[str, ...], drop: tuple[str, ...]) -> None:
    """What Podman refuses too: one capability both added and dropped, ALL both added and dropped."""
    both = sorted(set(add) & set(drop))
    if both:
        what = "all capabilities" if both == [ALL] else f"capability '{both[0]}'"
        raise InvalidArgument(f"Options 'cap_add' and 'cap_drop' contradict each other: {what} cannot be both "
                              "added and dropped")


def effective(add: tuple[str, ...], drop: tuple[str, ...]) -> tuple[str, ...]:
    """The container's set, sorted by number: with drop ALL, what add names; with add ALL, every capability but
    those dropped; otherwise the default set, plus add, less drop."""
    if ALL in drop:
        names = set(add)
    elif ALL in add:
        names = set(CAPABILITIES) - set(drop)
    else:
        names = (set(DEFAULT) | set(add)) - set(drop)
    return tuple(sorted(names, key=CAPABILITIES.__getitem__))


def mask(names: tuple[str, ...]) -> int:
    return sum(1 << CAPABILITIES[name] for name in names)


def beyond_default(add: tuple[str, ...], drop: tuple[str, ...]) -> tuple[str, ...]:
    """The capabilities of the container's set that the default set does not have: what makes it privileged."""
    return tuple(name for name in effective(add, drop) if name not in DEFAULT)
