"""Core errors -> D-Bus error names, in one table; and every other exception -> one of those names.

A caller sees only the names in ERROR_NAMES (and AccessDenied). What the core raises as a QuiltError is named
by its class; anything else (an OSError from a full disk, SQLite's "database or disk is full", a timeout) is
named here by its kind, with a message that says what ran out or what was wrong and what to do, so that no
failure reaches a caller as dbus-fast's "The service interface raised an error: OSError".
"""
from __future__ import annotations

import errno
import os
import resource
import sys

from dbus_fast import DBusError

from quilt_agent import errors
# The table itself is bus/error_names.py's (quiltctl reads it without dbus-fast); the agent's modules import it here.
from quilt_agent.bus.error_names import (  # noqa: F401
    ACCESS_DENIED, DECLARED_NAMES, ERROR_NAMES, NO_SUCH_CONTAINER, NOT_RUNNING,
)
from quilt_agent.config import default_paths

JOURNAL_HINT = "its traceback is in the agent's journal: journalctl -u quilt-agent"
_FREE_SPACE = ("Free space there (`quiltctl image prune`, `quiltctl volume prune`, remove stopped containers; "
               "`df -h` shows what is left) and try again.")


def _name_of(err: errors.QuiltError) -> str:
    for kind in type(err).__mro__:
        if kind in ERROR_NAMES:
            return ERROR_NAMES[kind]
    return ERROR_NAMES[errors.Failed]


def _clean(text: str) -> str:
    # A message may quote what came from outside (a registry's answer, a file name): a NUL or a lone surrogate
    # would make it an invalid D-Bus string, and dbus-daemon disconnects whoever sends one.
    return text.replace("\0", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")


def to_dbus_error(err: BaseException) -> DBusError:
    """The error a caller gets for err: a QuiltError by its class, any other exception by its kind."""
    if isinstance(err, DBusError) and err.type in DECLARED_NAMES:
        return err
    quilt = err if isinstance(err, errors.QuiltError) else as_quilt_error(err)
    text = _clean(str(quilt)) or f"{type(quilt).__name__} (no detail given; {JOURNAL_HINT})"
    return DBusError(_name_of(quilt), text)


def as_quilt_error(err: BaseException) -> errors.QuiltError:
    """What an exception that is not a QuiltError means to a caller, as the QuiltError that says so."""
    if isinstance(err, errors.QuiltError):
        return err
    if isinstance(err, BaseExceptionGroup) and err.exceptions:
        return as_quilt_error(err.exceptions[0])  # the first failure of a task group is the one to tell
    if isinstance(err, TimeoutError):  # asyncio's too; an OSError, so before the errno table
        detail = f": {err}" if str(err) else ""
        return errors.TimedOut(f"An operation of the agent did not finish in time{detail} (what it waited for "
                               f"is in the agent's journal: journalctl -u quilt-agent)")
    if isinstance(err, OSError) and err.errno is not None:
        mapped = _from_errno(err)
        if mapped is not None:
            return mapped
    if _database_full(err):
        database = default_paths().database
        return errors.NoSpace(f"The agent's state database ({database}) could not be written: "
                              f"{_filesystem_of(str(database))} is full. {_FREE_SPACE}")
    if isinstance(err, MemoryError):
        return errors.ResourceExhausted("The agent ran out of memory: free memory on the host (or raise the "
                                        "agent's MemoryMax= with `systemctl edit quilt-agent`) and try again")
    text = str(err)
    return errors.Failed(f"Internal error in the agent: {type(err).__name__}{': ' + text if text else ''} "
                         f"({JOURNAL_HINT})")



def _from_errno(err: OSError) -> errors.QuiltError | None:
    code = err.errno
    where = f" '{err.filename}'" if err.filename else ""
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "No space left" if code == errno.ENOSPC else "Disk quota exceeded"
        if err.filename:
            place = f" writing{where}: {_filesystem_of(str(err.filename))} is full."
        else:
            place = (f" on a filesystem the agent writes to (its state is under {default_paths().root}, and "
                     f"containers' files are written in their own filesystems).")
        return errors.NoSpace(what + place + " " + _FREE_SPACE)
    if code == errno.EMFILE:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        return errors.ResourceExhausted(
            f"The agent has no file descriptor left{' to open' + where if where else ''}: it reached its limit of "
            f"{_limit_text(soft)} open files (LimitNOFILE= of quilt-agent.service, hard limit {_limit_text(hard)}; "
            "every running container, exec and log stream holds some). Raise it with `systemctl edit quilt-agent`: "
            "[Service] LimitNOFILE=524288, then restart the agent")
    if code == errno.ENFILE:
        return errors.ResourceExhausted(
            "The system's limit of open files is reached (fs.file-max, /proc/sys/fs/file-nr shows it): close "
            "files elsewhere or raise it with `sysctl fs.file-max=...`")
    if code == errno.ENOMEM:
        return errors.ResourceExhausted(f"The kernel is out of memory{' for' + where if where else ''}: free "
                                        "memory on the host and try again")
    if code == errno.E2BIG:
        arg_max = os.sysconf("SC_ARG_MAX")
        return errors.InvalidArgument(
            f"Argument list too long{where}: a command's arguments and environment together may take at most "
            f"{arg_max} bytes (the kernel's ARG_MAX), one string at most 131072: pass big data in a file or volume")
    if code == errno.EMSGSIZE:
        # A request the agent hands to its helper in one message (a container's spec, an exec's) that does not fit.
        return errors.InvalidArgument(
            "Message too long: what the call asked for is too large to hand to the agent's helper (a container's or "
            "an exec's command, environment and options together must fit in about 200 KB): pass big data in a "
            "file or volume")
    if code == errno.ENAMETOOLONG:
        return errors.InvalidArgument(f"File name too long{where}: a path may have at most 4095 bytes, "
                                      "a name in it 255")
    return None


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _database_full(err: BaseException) -> bool:
    # Looked up, not imported: the store has loaded sqlite3 whenever one of its errors can exist, and quiltctl,
    # which imports this module for ERROR_NAMES, starts faster without it.
    sqlite3 = sys.modules.get("sqlite3")
    return sqlite3 is not None and isinstance(err, sqlite3.Error) and (
        getattr(err, "sqlite_errorname", "") == "SQLITE_FULL" or "database or disk is full" in str(err))


def _filesystem_of(path: str) -> str:
    """'the filesystem mounted on /x', that of path (or of its nearest existing parent)."""
    try:
        at = os.path.abspath(path)
        while not os.path.lexists(at) and at != "/":
            at = os.path.dirname(at)
        while not os.path.ismount(at):
            at = os.path.dirname(at)
    except OSError:
        return "its filesystem"
    return f"the filesystem mounted on {at}"
