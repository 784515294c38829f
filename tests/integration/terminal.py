"""An exec on a terminal of the test's own: what `quiltctl exec -t` passes the agent."""
from __future__ import annotations

import asyncio
import os

from quilt_agent.client import Client


async def exec_on_a_terminal(client: Client, path: str, script: str) -> tuple[int, str]:
    """Run script with a new pty's slave as its stdin, stdout and stderr; its exit code and all it wrote."""
    master, slave = os.openpty()
    try:
        code = await client.exec_with_fds(path, ["/bin/sh", "-c", script], {"tty": True}, slave, slave, slave)
        os.close(slave)
        slave = -1
        out = ""
        while True:  # to EIO: every slave is closed once the command has ended and ours is
            try:
                out += (await asyncio.to_thread(os.read, master, 65536)).decode()
            except OSError:
                break
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return code, out
