"""The one decorator every exported method wears: authorization, then named errors (bus/errors.py): a
QuiltError by its class, any other exception by its kind, logged with its traceback.

Secure by default: @guarded() without an action asks for the strictest one
(manage). Calls that anyone may make say so with action=PUBLIC (and decide themselves what the caller may see,
with Authority.may_read); a method that authorizes a whole plan itself (a create: bus/manager.py) says
action=BY_METHOD.

What a call is about (polkit's details, the AccessDenied text) is a Target (bus/access.py), resolved before
polkit is asked: an object's methods are about the object (GuardedInterface.subject); a Manager method names
its kind, @guarded(MANAGE, "remove", subject="image"), and the argument that names it, the first unless
subject_arg says which, and GuardedInterface.resolve finds the object by whatever alias the caller sent.
"""
import asyncio
import functools
import inspect
import logging
from dataclasses import replace
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from dbus_fast import DBusError
from dbus_fast import introspection as intr
from dbus_fast.service import ServiceInterface

from quilt_agent import errors, lifecycle
from quilt_agent.bus import caller
from quilt_agent.errors import AccessDenied
from quilt_agent.model import Container
from quilt_agent.bus.errors import to_dbus_error
from quilt_agent.bus.names import ERROR_PREFIX
from quilt_agent.bus import access
from quilt_agent.bus.access import Target, absent
from quilt_agent.bus.polkit import KINDS, MANAGE, READ, Authority

log = logging.getLogger("quilt.bus")

PUBLIC = ""
BY_METHOD = "authorized by the method"
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
T = TypeVar("T")


def readable(getter: Callable[[Any], Any]) -> Callable[[Any], Awaitable[Any]]:
    """Under @dbus_property: the property is answered only to callers who may see its object (check_visible).
    dbus-fast awaits an async getter, in a task that keeps the caller of the Get (bus/caller.py)."""
    @functools.wraps(getter)
    async def checked(self: GuardedInterface) -> Any:
        await self.check_visible()
        try:
            return getter(self)
        except errors.QuiltError as err:
            raise to_dbus_error(err) from err
    return checked


async def visible(authority: Authority, items: Iterable[T], describe: Callable[[T], Target]) -> list[T]:
    """The items the current caller may see (Authority.may_read), in order: what a list answers it. The agent's
    own reads (for a signal: bus/caller.agent) keep them all."""
    items = list(items)
    if caller.CALLER.get() is None or await authority.is_root():
        return items
    shown = await asyncio.gather(*(authority.may_read(describe(item)) for item in items))
    return [item for item, ok in zip(items, shown) if ok]


async def cascade(authority: Authority, containers: list[Container]) -> list[str]:
    """Authorize each container a removal with force would take with it, as removing it directly is, before
    anything is removed (one refusal refuses the whole removal); their ids, the only ones the removal may remove."""
    for c in containers:
        await authority.check(MANAGE, "remove", access.container(c))
    return [c.id for c in containers]


async def removable_by_caller(authority: Authority, items: Iterable[T], describe: Callable[[T], Target]) -> list[T]:
    """The items the current caller may remove, asked without a password (once the prune itself is authorized,
    polkit keeps an administrator's authentication): a prune removes only these."""
    items = list(items)
    if await authority.is_root():
        return items
    return [item for item in items if await authority.allows(MANAGE, "remove", describe(item))]


async def reveal(authority: Authority, target: Target) -> None:
    """AccessDenied unless the current caller may see `target`, which need not exist: a name that finds nothing
    is reported missing only to callers who could see it if it were there, so names cannot be probed."""
    if not await authority.may_read(target):
        raise AccessDenied(f"Not authorized to see {target} (polkit action {READ})")


class GuardedInterface(ServiceInterface):
    """A ServiceInterface whose methods are checked by `authority`."""

    def __init__(self, name: str, authority: Authority) -> None:
        super().__init__(name)
        self.authority = authority

    def subject(self) -> Target | None:
        """What the object's methods are about (the container, network, volume it is); None for none."""
        return None

    async def check_visible(self) -> None:
        """AccessDenied unless the current caller may see the object (its properties are read through this);
        the agent's own reads, for a signal, pass."""
        if caller.CALLER.get() is None:
            return
        try:
            target = self.subject()
            if target is not None:
                await reveal(self.authority, target)
        except errors.QuiltError as err:  # removed meanwhile, or refused: answered as a method would be
            raise to_dbus_error(err) from err

    def resolve(self, kind: str, text: str) -> Target:
        """What a method's argument names, found by any alias (the Manager's methods)."""
        return absent(kind, text)

    # dbus-fast names a method's in-args after its parameters but leaves out-args and signal args unnamed;
    # the contract (dbus/org.quilt.Runtime.xml) names them. Member -> those names, in order.
    ARG_NAMES: dict[str, tuple[str, ...]] = {}

    def introspect(self) -> intr.Interface:
        interface = super().introspect()
        for member in (*interface.methods, *interface.signals):
            args = member.out_args if isinstance(member, intr.Method) else member.args
            for arg, name in zip(args, self.ARG_NAMES.get(member.name, ())):
                arg.name = name
        return interface


# Calls being answered, and whether the agent is stopping: end_calls() answers each before the bus goes, so that
# no reply is written to a closed connection and each caller learns why its call ended.
_in_flight: set[asyncio.Task[Any]] = set()
_stopping = asyncio.Event()
STOPPING_ERROR = ERROR_PREFIX + "Failed"


async def end_calls() -> None:
    """At the agent's stop: end the calls still under way (a Wait, a log follow's setup) with a named error."""
    _stopping.set()
    calls = [t for t in _in_flight if not t.done()]
    for task in calls:
        task.cancel()
    if calls:
        await asyncio.wait(calls)
        await asyncio.sleep(0)  # their replies are handed to the bus in their done callbacks


def guarded(action: str = MANAGE, verb: str = "", subject: str = "", subject_arg: str = "") -> Callable[[F], F]:
    """subject: the kind (polkit.KINDS) of what the method's argument subject_arg (default: the first) names;
    "" for the object's own subject (GuardedInterface.subject), or none on the Manager."""
    if subject and subject not in KINDS:
        raise ValueError(f"Unknown subject kind {subject!r}: one of {', '.join(KINDS)}")

    def decorate(fn: F) -> F:
        what = verb or fn.__name__
        index = -1
        if subject:
            params = list(inspect.signature(fn).parameters)[1:]  # after self
            named_by = subject_arg or (params[0] if params else "")
            if named_by not in params:
                raise ValueError(f"{fn.__name__} has no argument {named_by!r} naming its {subject}")
            index = params.index(named_by)

        def about(self: GuardedInterface, args: tuple[Any, ...]) -> Target | None:
            if index < 0:
                return self.subject()
            return self.resolve(subject, args[index]) if isinstance(args[index], str) else None

        @functools.wraps(fn)
        async def wrapper(self: GuardedInterface, *args: Any) -> Any:
            task = asyncio.current_task()
            if task is not None:
                _in_flight.add(task)
            try:
                with lifecycle.CALLS.call():  # an import, a copy, an exec under way keeps the agent from exiting
                    if action not in (PUBLIC, BY_METHOD):
                        target = about(self, args)
                        if what == "create" and target is not None and not target.exists:
                            # What the call would make is the caller's: a rule on owners reads it so.
                            target = replace(target, owner_uid=(await self.authority.credentials()).uid)
                        await self.authority.check(action, what, target)
                    return await fn(self, *args)
            except asyncio.CancelledError:
                if _stopping.is_set():
                    raise DBusError(STOPPING_ERROR, "The agent stopped before the call finished (systemd stopped "
                                                    "or restarted it): call again") from None
                raise
            except errors.QuiltError as err:
                raise to_dbus_error(err) from err
            except Exception as err:  # noqa: BLE001 - every failure reaches the caller under a declared name
                named = to_dbus_error(err)
                if named is not err:
                    log.exception("%s failed: %s: %s", fn.__name__, named.type, named.text)
                    raise named from err
                raise
            finally:
                _in_flight.discard(task)  # type: ignore[arg-type]

        wrapper.__dict__["quilt_action"] = action
        return wrapper  # type: ignore[return-value]

    return decorate
