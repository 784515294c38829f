"""The one decorator every exported method wears: authorization, then named errors.

Secure by default: @guarded() without an action asks for the strictest one
(manage). Reads that anyone may do say so with action=PUBLIC.
"""
import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

from dbus_fast import DBusError
from dbus_fast import introspection as intr
from dbus_fast.service import ServiceInterface

from quilt_agent import errors
from quilt_agent.bus.errors import to_dbus_error
from quilt_agent.bus.polkit import MANAGE, Authority

log = logging.getLogger("quilt.bus")

PUBLIC = ""
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


class GuardedInterface(ServiceInterface):
    """A ServiceInterface whose methods are checked by `authority`."""

    def __init__(self, name: str, authority: Authority) -> None:
        super().__init__(name)
        self.authority = authority

    def subject(self, args: tuple[Any, ...]) -> str:
        """The container a call is about, for polkit's details; '' when none."""
        return ""

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


def guarded(action: str = MANAGE, verb: str = "") -> Callable[[F], F]:
    def decorate(fn: F) -> F:
        what = verb or fn.__name__

        @functools.wraps(fn)
        async def wrapper(self: GuardedInterface, *args: Any) -> Any:
            try:
                if action != PUBLIC:
                    await self.authority.check(action, what, self.subject(args))
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
