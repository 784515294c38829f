"""Every exported method of every bus object answers every failure of the services below it with a declared error
name (org.quilt.Runtime.Error.*, or AccessDenied) and a message: none reaches a caller as dbus-fast's generic
"The service interface raised an error". The methods are found by introspection, as the bus finds them, so a new
method is covered without being listed here."""
from __future__ import annotations

import errno
import importlib
import inspect
import logging
import os
import pkgutil
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dbus_fast import DBusError
from dbus_fast.service import ServiceInterface
from dbus_fast.signature import SignatureType, get_signature_tree

import quilt_agent.bus
from quilt_agent import errors
from quilt_agent.bus import caller
from quilt_agent.bus.errors import ACCESS_DENIED, DECLARED_NAMES, ERROR_NAMES, to_dbus_error
from quilt_agent.bus.polkit import Credentials
from quilt_agent.bus.guard import GuardedInterface
from quilt_agent.bus.names import ERROR_PREFIX

PROJECT = Path(__file__).resolve().parents[3]

# Every module of the bus package, so that every interface (and every QuiltError a module below it defines) exists.
for _module in pkgutil.iter_modules(quilt_agent.bus.__path__):
    importlib.import_module(f"quilt_agent.bus.{_module.name}")
importlib.import_module("quilt_agent.scopes")  # its SystemdError reaches callers through the manager


# --- what the services raise ------------------------------------------------------------------------------------

def _all_subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _all_subclasses(sub)


def _instance(cls: type[errors.QuiltError]) -> errors.QuiltError:
    """One of cls, every required argument a word (the error's own text is made of them)."""
    required = [p for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
                if p.default is inspect.Parameter.empty and p.kind is not p.VAR_POSITIONAL
                and p.kind is not p.VAR_KEYWORD]
    return cls(*["web"] * len(required)) if required else cls("what was wrong")


@dataclass(frozen=True)
class Failure:
    """An exception a service raises, and the error name its caller must get (None: any declared one)."""

    label: str
    error: BaseException
    expected: str | None


def failures() -> list[Failure]:
    quilt = [Failure(cls.__name__, _instance(cls), None)
             for cls in sorted({errors.QuiltError, *_all_subclasses(errors.QuiltError)}, key=lambda c: c.__name__)]
    foreign = [
        Failure("ENOSPC", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/var/lib/quilt/images/tmp/1-x"),
                ERROR_PREFIX + "NoSpace"),
        Failure("EDQUOT", OSError(errno.EDQUOT, os.strerror(errno.EDQUOT)), ERROR_PREFIX + "NoSpace"),
        Failure("EMFILE", OSError(errno.EMFILE, os.strerror(errno.EMFILE)), ERROR_PREFIX + "ResourceExhausted"),
        Failure("ENFILE", OSError(errno.ENFILE, os.strerror(errno.ENFILE)), ERROR_PREFIX + "ResourceExhausted"),
        Failure("E2BIG", OSError(errno.E2BIG, os.strerror(errno.E2BIG)), ERROR_PREFIX + "InvalidArgument"),
        Failure("EMSGSIZE", OSError(errno.EMSGSIZE, os.strerror(errno.EMSGSIZE)), ERROR_PREFIX + "InvalidArgument"),
        Failure("TimeoutError", TimeoutError(), ERROR_PREFIX + "TimedOut"),
        Failure("sqlite-full", sqlite3.OperationalError("database or disk is full"), ERROR_PREFIX + "NoSpace"),
        Failure("sqlite-locked", sqlite3.OperationalError("database is locked"), ERROR_PREFIX + "Failed"),
        Failure("EIO", OSError(errno.EIO, os.strerror(errno.EIO)), ERROR_PREFIX + "Failed"),
        Failure("RuntimeError", RuntimeError("the unexpected"), ERROR_PREFIX + "Failed"),
        Failure("KeyError", KeyError("gone"), ERROR_PREFIX + "Failed"),
        Failure("bare Exception", Exception(), ERROR_PREFIX + "Failed"),
    ]
    return quilt + foreign


# --- the fakes ---------------------------------------------------------------------------------------------------

class Injection:
    """The exception every service call raises once armed; None while the objects are being built."""

    error: BaseException | None = None


class Failing:
    """Every service the bus layer is given: any attribute is another Failing, any call raises the injected
    exception (or, unarmed, returns another Failing, for the subscriptions and exports of the constructors)."""

    def __init__(self, injection: Injection) -> None:
        self._injection = injection

    def __getattr__(self, name: str) -> Failing:
        return Failing(self._injection)

    def __call__(self, *args: Any, **kwargs: Any) -> Failing:
        if self._injection.error is not None:
            raise self._injection.error
        return Failing(self._injection)


class AllowAll:
    """Authority's answers for root: everything allowed."""

    async def check(self, action: str, verb: str, subject: object = None) -> None:
        return None

    async def allows(self, action: str, verb: str, subject: object = None, interactive: bool = False) -> bool:
        return True

    async def credentials(self) -> Credentials:
        return Credentials(0, 1)

    async def is_root(self) -> bool:
        return True

    async def may_read(self, target: object) -> bool:
        return True


OBJECT_ID = "0" * 64


def build(cls: type[GuardedInterface], injection: Injection) -> GuardedInterface:
    """An object of cls over failing services. Built from its constructor's parameters, so a constructor that
    takes other services needs no change here: authority -> AllowAll, an id or text -> a string, anything else (a
    service, the bus, a record) -> Failing."""
    params = list(inspect.signature(cls.__init__, eval_str=True).parameters.values())[1:]
    args = [AllowAll() if p.name == "authority" else OBJECT_ID if p.annotation is str else Failing(injection)
            for p in params]
    return cls(*args)


def interface_classes() -> list[type[GuardedInterface]]:
    """The bus objects: every concrete GuardedInterface of the bus package."""
    found = {cls for cls in _all_subclasses(GuardedInterface) if cls.__module__.startswith("quilt_agent.bus.")}
    # A class that others extend with the same interface (none today) would be built through them.
    return sorted(found, key=lambda c: c.__name__)


def methods(cls: type[GuardedInterface]) -> list[str]:
    """The D-Bus names of the methods cls exports: what dbus-fast dispatches to."""
    return sorted(m.name for m in ServiceInterface._get_methods(build(cls, Injection())))


CASES = [(cls, name) for cls in interface_classes() for name in methods(cls)]


# --- calling a method as the bus does ----------------------------------------------------------------------------

def _argument(t: SignatureType, fd: int) -> Any:
    """A well-formed value of type t: the call gets past its own argument checks to the service."""
    code = t.token
    if code in "sg":
        return "web"
    if code == "o":
        return "/org/quilt/Runtime/x"
    if code == "h":
        return fd
    if code == "b":
        return False
    if code == "d":
        return 1.0
    if code in "ynqiuxt":
        return 1
    if code == "a":
        return {} if t.children[0].token == "{" else []
    if code == "(":
        return [_argument(c, fd) for c in t.children]
    if code == "v":
        raise AssertionError("no method takes a bare variant: add a value for it here")
    raise AssertionError(f"unknown signature {t.signature}")


async def call(obj: GuardedInterface, member: str) -> Exception | None:
    """Call member as dispatch does (the function dbus-fast holds, with every wrapper), with a caller that sent a
    pipe's fds; what it raised (dbus-fast sends a DBusError as it is, anything else as its generic ServiceError),
    or None."""
    method = next(m for m in ServiceInterface._get_methods(obj) if m.name == member)
    read, write = os.pipe()
    token = caller.CALLER.set(caller.Caller(":1.42", False, (read, write)))
    try:
        args = [_argument(t, read) for t in get_signature_tree(method.in_signature).types]
        await method.fn(obj, *args)
    except Exception as err:  # noqa: BLE001 - what dbus-fast would catch
        return err
    finally:
        caller.CALLER.reset(token)
        for fd in (read, write):  # closing_fds closes them for the methods that take fds
            try:
                os.close(fd)
            except OSError:
                pass
    return None


def _declared(name: str) -> bool:
    return name in DECLARED_NAMES and (name.startswith(ERROR_PREFIX) or name == ACCESS_DENIED)


# --- the tests ---------------------------------------------------------------------------------------------------

def test_the_objects_and_their_methods_are_found() -> None:
    names = {cls.__name__ for cls in interface_classes()}
    assert {"ManagerInterface", "ContainerInterface", "NetworkInterface", "VolumeInterface"} <= names, names
    found = {(cls.__name__, member) for cls, member in CASES}
    assert {("ManagerInterface", "CreateContainer"), ("ContainerInterface", "Start"),
            ("ContainerInterface", "CopyFromWithFd"), ("NetworkInterface", "Remove"),
            ("VolumeInterface", "Remove"), ("ManagerInterface", "ImportImageWithFd")} <= found, found


@pytest.mark.parametrize("cls,member", CASES, ids=[f"{cls.__name__.removesuffix('Interface')}.{m}" for cls, m in CASES])
async def test_every_failure_of_a_method_reaches_its_caller_named(cls: type[GuardedInterface], member: str,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="quilt.bus")
    wrong = []
    for failure in failures():
        injection = Injection()
        obj = build(cls, injection)
        injection.error = failure.error
        caplog.clear()
        err = await call(obj, member)
        if err is None:
            wrong.append(f"{failure.label}: no error reached the caller")
            continue
        if not isinstance(err, DBusError):
            wrong.append(f"{failure.label}: reached the caller unnamed, as dbus-fast's ServiceError: {err!r}")
            continue
        if err.__cause__ is not failure.error and err is not failure.error:
            wrong.append(f"{failure.label}: the call failed before reaching its service: {err.type}: {err.text}")
            continue
        if not _declared(err.type) or (failure.expected and err.type != failure.expected):
            wrong.append(f"{failure.label}: named {err.type}, expected {failure.expected or 'a declared name'}")
        if not err.text.strip() or "\0" in err.text:
            wrong.append(f"{failure.label}: message {err.text!r}")
        if not isinstance(failure.error, errors.QuiltError) and not any(
                r.exc_info and r.exc_info[1] is failure.error for r in caplog.records):
            wrong.append(f"{failure.label}: not logged with its traceback")
    assert not wrong, f"{cls.__name__}.{member}:\n" + "\n".join(wrong)


def test_every_quilt_error_has_a_declared_name() -> None:
    for failure in failures():
        if isinstance(failure.error, errors.QuiltError):
            named = to_dbus_error(failure.error)
            assert _declared(named.type), (failure.label, named.type)
            assert named.text == str(failure.error) or not str(failure.error)


@pytest.mark.parametrize("failure", [f for f in failures() if f.expected], ids=lambda f: f.label)
def test_a_foreign_failure_says_what_ran_out_or_went_wrong(failure: Failure) -> None:
    named = to_dbus_error(failure.error)
    assert named.type == failure.expected
    words = {"NoSpace": "Free space", "ResourceExhausted": "limit", "TimedOut": "in time",
             "InvalidArgument": "too long", "Failed": "journalctl -u quilt-agent"}
    assert words[named.type.removeprefix(ERROR_PREFIX)] in named.text, named.text


def test_the_agents_fd_limit_is_named_with_what_to_raise() -> None:
    text = to_dbus_error(OSError(errno.EMFILE, os.strerror(errno.EMFILE))).text
    assert "LimitNOFILE" in text and "systemctl edit quilt-agent" in text, text


def test_a_full_disk_names_the_file_and_its_filesystem(tmp_path: Path) -> None:
    text = to_dbus_error(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "new" / "layer"))).text
    assert f"'{tmp_path / 'new' / 'layer'}'" in text and "the filesystem mounted on /" in text, text


def test_a_declared_dbus_error_passes_unchanged_and_another_is_failed() -> None:
    own = DBusError(ERROR_PREFIX + "NotRunning", "Container 'web' is not running (state exited)")
    assert to_dbus_error(own) is own
    foreign = to_dbus_error(DBusError("org.freedesktop.systemd1.NoSuchUnit", "Unit x.scope not loaded."))
    assert foreign.type == ERROR_PREFIX + "Failed" and "Unit x.scope not loaded." in foreign.text


def _listed(text: str) -> set[str]:
    """The names of an `org.quilt.Runtime.Error.{A, B, ...}` list, and AccessDenied when it is mentioned."""
    match = re.search(r"org\.quilt\.Runtime\.Error\.\{([^}]*)\}", text)
    assert match, "no error list"
    names = {ERROR_PREFIX + n.strip() for n in match.group(1).replace("\n", " ").split(",")}
    return names | ({ACCESS_DENIED} if ACCESS_DENIED in text else set())


@pytest.mark.parametrize("document", ["dbus/org.quilt.Runtime.xml", "README.md"])
def test_the_declared_errors_are_the_documented_ones(document: str) -> None:
    assert _listed((PROJECT / document).read_text()) == set(ERROR_NAMES.values())
