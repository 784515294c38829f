"""The seccomp filter (quilt_agent/helper/seccomp.py): what it refuses in the command, its setup steps and an exec,
and that "unconfined" lifts it. A user namespace needs no capability, so only the filter stops `unshare -U`."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests.integration.helper.test_isolation import run_script

ERR = "org.quilt.Runtime.Error."
PROBE = "unshare -U true; echo userns=$?; unshare -n true; echo netns=$?; grep ^Seccomp: /proc/self/status"


async def test_default_filter_refuses_new_namespaces(client: Client, busybox_tar: Path, name: str) -> None:
    out = await run_script(client, name, busybox_tar, PROBE)
    assert out.value("userns") == "1" and out.value("netns") == "1", out
    assert "Seccomp:\t2" in out.stdout  # mode 2: a filter
    assert any("unshare(0x10000000): Operation not permitted" in line for line in out.stderr), out.stderr


async def test_unconfined_lifts_the_filter(client: Client, busybox_tar: Path, name: str) -> None:
    out = await run_script(client, name, busybox_tar, PROBE, {"seccomp": "unconfined"})
    # A user namespace needs no capability: without the filter it is made. A network namespace needs
    # CAP_SYS_ADMIN, which the container lacks either way.
    assert out.value("userns") == "0" and out.value("netns") == "1", out
    assert "Seccomp:\t0" in out.stdout
    path = await client.get_container(name)
    assert (await client.properties(path))["Seccomp"] == "unconfined"


async def test_an_exec_and_a_setup_step_get_the_containers_filter(client: Client, busybox_tar: Path,
                                                                  name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "sleep 300"], {})
    result = await client.exec(path, ["/bin/sh", "-c", "unshare -U true"])
    assert result.exit_code == 1 and b"Operation not permitted" in result.stderr
    assert (await client.properties(path))["Seccomp"] == "default"
    await client.remove(path, force=True)
    path = await client.run_container(name, str(busybox_tar), ["true"], {"setup": ["sh: unshare -U true"]})
    assert await asyncio.wait_for(client.wait(path), 30) == 1
    assert (await client.properties(path))["State"] == "failed"


@pytest.mark.parametrize("value", [Variant("s", "strict"), Variant("s", ""), Variant("b", True)])
async def test_bad_seccomp_option_is_refused(client: Client, busybox_tar: Path, name: str, value: Variant) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["true"], {"seccomp": value})
    assert err.value.name == ERR + "InvalidArgument"
    assert await client.list_containers() == []
