"""The one decorator every exported method wears: authorization, then named errors.

Secure by default: @guarded() without an action asks for the strictest one
(manage). Reads that anyone may do say so with action=PUBLIC.

What a call is about (polkit's details, the AccessDenied text) is a Subject, kind and name: an object's
methods are about the object (GuardedInterface.subject); a Manager method names its kind,
@guarded(MANAGE, "remove", subject="image"), and the argument that names it, the first unless
subject_arg says which.
"""
import functools
import inspect
import logging
from typing import Any, Awaitable, Callable, TypeVar

from dbus_fast import DBusError
from dbus_fast import introspection as intr
from dbus_fast.service import ServiceInterface

from quilt_agent import errors, lifecycle
from quilt_agent.bus.errors import to_dbus_error
from quilt_agent.bus.polkit import KINDS, MANAGE, Authority, Subject

log = logging.getLogger("quilt.bus")

PUBLIC = ""
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class GuardedInterface(ServiceInterface):
    """A ServiceInterface whose methods are checked by `authority`."""

    def __init__(self, name: str, authority: Authority) -> None:
        super().__init__(name)
        self.authority = authority

    def subject(self) -> Subject | None:
        """What the object's methods are about (the container, network, volume it is); None for none."""
        return None

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

        def about(self: GuardedInterface, args: tuple[Any, ...]) -> Subject | None:
            if index < 0:
                return self.subject()
            return Subject(subject, args[index]) if isinstance(args[index], str) else None

        @functools.wraps(fn)
        async def wrapper(self: GuardedInterface, *args: Any) -> Any:
            try:
                with lifecycle.CALLS.call():  # an import, a copy, an exec under way keeps the agent from exiting
                    if action != PUBLIC:
                        await self.authority.check(action, what, about(self, args))
                    return await fn(self, *args)
            except errors.QuiltError as err:
                raise to_dbus_error(err) from err
            except DBusError:
                raise
            except Exception:
                log.exception("%s failed", fn.__name__)
                raise

        wrapper.__dict__["quilt_action"] = action
        return wrapper  # type: ignore[return-value]

    return decorate
