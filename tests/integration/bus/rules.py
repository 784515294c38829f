"""polkit rules installed for one test: written to /etc/polkit-1/rules.d, waited for until polkitd has read them
(it reads the directory again on inotify), removed after."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.integration.waiting import until

BUS_NAME = "org.quilt.Runtime"
MANAGER_PATH = "/org/quilt/Runtime"
MANAGER = "org.quilt.Runtime.Manager"
RULES = Path("/etc/polkit-1/rules.d")


async def run_as(user: tuple[int, int] | None, *cmd: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    prefix = [] if user is None else ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"]
    proc = await asyncio.create_subprocess_exec(*prefix, *cmd, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, "HOME": "/"}, cwd="/")
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(errors="replace"), err.decode())


@asynccontextmanager
async def installed(name: str, body: str, user: tuple[int, int]) -> AsyncIterator[None]:
    """A rule file whose body is the inside of a polkit.addRule function(action, subject). Besides what the body
    decides, the file lets `user` see a container named NAME-loaded, so that a lookup of that name turns from
    AccessDenied to NoSuchContainer once polkitd has the file."""
    probe = f"{name}-loaded"
    path = RULES / f"10-quilt-test-{name}.rules"
    path.write_text(
        "polkit.addRule(function(action, subject) {\n"
        f"    if (action.id == 'org.quilt.runtime.read' && action.lookup('container') == {json.dumps(probe)})\n"
        "        return polkit.Result.YES;\n"
        "});\n"
        f"polkit.addRule(function(action, subject) {{\n{body}\n}});\n")
    path.chmod(0o644)
    try:
        probes: list[str] = []

        async def loaded() -> bool:
            r = await run_as(user, "busctl", "call", BUS_NAME, MANAGER_PATH, MANAGER, "GetContainer", "s", probe)
            probes.append(r.stderr)
            return "NoSuchContainer" in r.stderr or "No container" in r.stderr

        await until(loaded, lambda: f"polkitd did not load {path}: {probes[-1]}", interval=0.05)
        yield
    finally:
        path.unlink()
