"""Waiting for a container while passing quiltctl's own signals on to it, as Podman's --sig-proxy does.

Both `run` in the foreground (cli/containers.py) and `run -i` (cli/interactive.py) wait this way, so it lives
apart from either of them.
"""
from __future__ import annotations

import asyncio
import signal

from quilt_agent.client import Client, ClientError


async def wait_forwarding_signals(client: Client, path: str) -> int:
    """Wait for the container, passing ^C and friends on to it; return its exit code.

    The container then decides how to end, and quiltctl still collects its logs and its real exit code.
    """
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
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            loop.add_signal_handler(signum, on_signal, signum)
        except (ValueError, RuntimeError):
            break  # not the main thread (quiltctl called from a test's thread): wait without forwarding
        forwarded.append(signum)
    try:
        return await client.wait(path)
    finally:
        for signum in forwarded:
            loop.remove_signal_handler(signum)
