"""Waiting for a container while passing quiltctl's own signals on to it, as Podman's --sig-proxy does.

Both `run` in the foreground (cli/containers.py) and `run -i` (cli/interactive.py) wait this way, so it lives
apart from either of them.
"""
from __future__ import annotations

# The C module's handlers and numbers: `signal` itself imports enum for its Signals class (milliseconds of a
# foreground `run`'s start-up, on cli/quick.py's path), and plain numbers are all that is passed on here.
from _signal import SIGHUP, SIGINT, SIGTERM
from _signal import signal as set_handler

from quilt_agent.api import ClientError
from quilt_agent.cli.context import Client, in_event_loop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import FrameType
    from typing import Awaitable, Callable


async def wait_forwarding_signals(client: Client, path: str,
                                  wait: Callable[[], Awaitable[int]] | None = None) -> int:
    """Wait for the container, passing ^C and friends on to it; return its exit code. wait: how to wait (default
    Wait itself; cli/reconnect.py's wait_for_exit rides out a restart of the agent).

    The container then decides how to end, and quiltctl still collects its logs and its real exit code.
    """
    if wait is None:
        wait = lambda: client.wait(path)  # noqa: E731
    if not in_event_loop():
        return await _wait_blocking(client, path, wait)
    import asyncio

    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def forward(signum: int) -> None:
        try:
            await client.kill(path, signum)
        except ClientError:
            pass  # it has already exited, or we may not signal it: Wait will tell

    def on_signal(signum: int) -> None:
        task = loop.create_task(forward(signum))
        pending.add(task)
        task.add_done_callback(pending.discard)

    forwarded: list[int] = []
    for signum in (SIGINT, SIGTERM, SIGHUP):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (ValueError, RuntimeError):
            break  # not the main thread (quiltctl called from a test's thread): wait without forwarding
        forwarded.append(signum)
    try:
        return await wait()
    finally:
        for signum in forwarded:
            loop.remove_signal_handler(signum)


async def _wait_blocking(client: Client, path: str, wait: Callable[[], Awaitable[int]]) -> int:
    """The same on the blocking transport: the connection is busy waiting for Wait's reply, so a signal's Kill
    goes on a connection of its own, opened in the handler (a few milliseconds, once per ^C)."""
    from quilt_agent.wire import BlockingClient, drive

    async def kill(signum: int) -> None:
        other = client.sibling() if isinstance(client, BlockingClient) else client
        try:
            async with other:
                await other.kill(path, signum)
        except ClientError:
            pass  # it has already exited, or we may not signal it: Wait will tell

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        drive(kill(signum))

    previous = {}
    for signum in (SIGINT, SIGTERM, SIGHUP):
        try:
            previous[signum] = set_handler(signum, on_signal)
        except ValueError:
            break  # not the main thread (quiltctl called from a test's thread): wait without forwarding
    try:
        return await wait()
    finally:
        for signum, handler in previous.items():
            set_handler(signum, handler)
