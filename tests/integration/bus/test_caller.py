"""Per-caller identity survives concurrent dispatch (design.md, "dbus-fast: what it does not do for you").

dbus-fast does not tell a method who called it: quilt_agent.bus.caller records the sender in a ContextVar from
a message handler, and each method, started as a task in that same call stack, sees its own caller. Should a
dbus-fast upgrade dispatch differently (tasks created later, or outside the handler's context), calls arriving
together from different connections would be checked as someone else's: these tests have root and
unprivileged callers in flight at the same time, and each must get the answer for itself.
"""
from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from quilt_agent.client import Client, ClientError
from tests.integration.waiting import log_line, reached_agent

BUS_NAME = "org.quilt.Runtime"
MANAGER = (BUS_NAME, "/org/quilt/Runtime", "org.quilt.Runtime.Manager")
CONTAINER = "org.quilt.Runtime.Container"
NOBODY = 65534


async def busctl_as(uid: int | None, *args: str) -> tuple[int, str, str]:
    """busctl as uid (None: as root, but still a separate process and connection)."""
    prefix = [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    proc = await asyncio.create_subprocess_exec(*prefix, "busctl", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def denied(result: tuple[int, str, str]) -> bool:
    # busctl words org.freedesktop.DBus.Error.AccessDenied as "Access denied", whatever the message.
    code, _, err = result
    return code != 0 and "Access denied" in err


async def connected(n: int) -> list[Client]:
    clients = [Client() for _ in range(n)]
    for c in clients:
        await c.connect()
    return clients


async def test_concurrent_creates_from_root_and_unprivileged_callers_each_get_their_own_answer(
        client: Client, busybox_tar: Path, name: str) -> None:
    image = str(busybox_tar)
    warm = await client.create_container("", image, ["/bin/true"], {})  # the image is imported: creates are quick
    await client.remove(warm)
    roots = await connected(6)
    try:
        calls = []
        for i in range(6):
            calls.append(roots[i].create_container(f"{name}-root{i}", image, ["/bin/true"], {}))
            calls.append(busctl_as(NOBODY, "call", *MANAGER, "CreateContainer", "ssasa{sv}", f"{name}-nobody{i}",
                                   image, "1", "/bin/true", "0"))
            calls.append(busctl_as(None, "call", *MANAGER, "CreateContainer", "ssasa{sv}", f"{name}-rootctl{i}",
                                   image, "1", "/bin/true", "0"))
        results = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        for c in roots:
            c.close()
    for i in range(6):
        by_client, by_nobody, by_root_busctl = results[3 * i:3 * i + 3]
        assert isinstance(by_client, str), by_client
        assert denied(by_nobody), by_nobody  # type: ignore[arg-type]
        assert by_root_busctl[0] == 0 and by_root_busctl[1].startswith("o "), by_root_busctl  # type: ignore[index]
    names = sorted(e.name for e in await client.list_containers())
    assert names == sorted([f"{name}-root{i}" for i in range(6)] + [f"{name}-rootctl{i}" for i in range(6)])


async def test_waits_in_flight_and_unprivileged_calls_meanwhile_each_get_their_own_answer(
        client: Client, busybox_tar: Path, name: str) -> None:
    paths = []
    for i in range(3):
        script = f"trap 'exit {20 + i}' USR1; echo trapped; while :; do sleep 0.05; done"
        paths.append(await client.run_container(f"{name}-{i}", str(busybox_tar), ["/bin/sh", "-c", script], {}))
    for path in paths:
        await log_line(client, path, "trapped")  # SIGUSR1 now ends it with its own code
    roots = await connected(6)
    # Root callers, each on its own connection, wait on the containers: calls that stay in flight.
    waits = [asyncio.ensure_future(roots[i].wait(paths[i])) for i in range(3)]
    try:
        for i in range(3):
            await reached_agent(roots[i], paths[i])
        assert not any(w.done() for w in waits)
        # Meanwhile unprivileged callers call the same methods (and others) on the same objects, while root
        # callers on other connections keep calling a method that needs authorization too.
        unprivileged = asyncio.ensure_future(asyncio.gather(*(
            busctl_as(NOBODY, "call", BUS_NAME, path, CONTAINER, *call)
            for path in paths for call in (("Wait",), ("GetEnvironment",), ("Stop", "u", "1"), ("Kill", "i", "9"))
        )))
        environments = 0
        while not unprivileged.done():
            for i, path in enumerate(paths):
                env = await roots[3 + i].get_environment(path)
                assert f"HOSTNAME={name}-{i}" in env
                environments += 1
        assert environments > 0
        assert all(denied(r) for r in unprivileged.result()), unprivileged.result()
        assert not any(w.done() for w in waits), "a wait ended early: its container was stopped or killed"
        assert [(await client.properties(p))["State"] for p in paths] == ["running"] * 3
        for path in paths:
            await client.kill(path, signal.SIGUSR1)
        assert await asyncio.wait_for(asyncio.gather(*waits), 10) == [20, 21, 22]
    finally:
        for w in waits:
            w.cancel()
        for c in roots:
            c.close()


async def test_an_unprivileged_caller_between_root_calls_on_one_object_is_refused_every_time(
        client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["/bin/true"], {"env": ["SECRET=s3cr3t"]})
    roots = await connected(4)
    try:
        for _ in range(3):
            results = await asyncio.gather(
                *(c.get_environment(path) for c in roots[:2]),
                *(busctl_as(NOBODY, "call", BUS_NAME, path, CONTAINER, "GetEnvironment") for _ in range(3)),
                *(c.get_environment(path) for c in roots[2:]),
                return_exceptions=True)
            for env in (*results[:2], *results[5:]):
                assert not isinstance(env, BaseException), env
                assert "SECRET=s3cr3t" in env
            for r in results[2:5]:
                assert not isinstance(r, BaseException) and denied(r), r
                assert "s3cr3t" not in r[1]
    finally:
        for c in roots:
            c.close()
    # And the refusals did not leave a root caller refused afterwards.
    assert "SECRET=s3cr3t" in await client.get_environment(path)
    try:
        await client.remove(path)
    except ClientError as err:  # pragma: no cover - reported by the assertion
        raise AssertionError(f"root's remove was refused: {err}") from err
