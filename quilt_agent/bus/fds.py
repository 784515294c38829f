"""File descriptors that arrive in a call: checked to be the call's own, and closed once it is done."""
import functools
import os
from typing import Any, Awaitable, Callable, TypeVar

from quilt_agent.bus import caller
from quilt_agent.errors import InvalidArgument

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def closing_fds(fn: F) -> F:
    """Close the fds that came with the call when it is done, refused or not."""

    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any) -> Any:
        received = caller.current().unix_fds
        try:
            return await fn(self, *args)
        finally:
            for fd in received:
                try:
                    os.close(fd)
                except OSError:
                    pass

    return wrapper  # type: ignore[return-value]


def received_fd(value: Any, what: str) -> int:
    # Without fds in the message, dbus-fast passes the body's index as it is: never take that for an fd of ours.
    if not isinstance(value, int) or value not in caller.current().unix_fds:
        raise InvalidArgument(f"No file descriptor for {what}: the call must carry one (UNIX_FD) per 'h' argument")
    return value
