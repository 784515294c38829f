"""Bad setup options: each a named error at create (CreateContainer and RunContainer alike, and quiltctl's 125
with one line), and nothing created."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests.integration.setup.conftest import ERR, quiltctl

CONTAINERS = Path("/var/lib/quilt/containers")

BAD = [
    (Variant("as", ["brew: wget"]), "brew: wget"),  # unknown manager
    (Variant("as", ["pip flask"]), "pip flask"),  # no colon
    (Variant("as", ["PIP: flask"]), "PIP: flask"),  # managers are lower case
    (Variant("as", ["pip:"]), "pip:"),  # nothing to install
    (Variant("as", ["npm:    "]), "npm:"),
    (Variant("as", ["sh:"]), "sh:"),
    (Variant("as", ["sh: true", ""]), "''"),  # an empty entry
    (Variant("as", ["pip: 'unclosed"]), "'unclosed"),  # shlex cannot split it
    (Variant("s", "pip: flask"), "setup"),  # not a list
    (Variant("ai", [1, 2]), "setup"),
    (Variant("b", True), "setup"),
]
BAD_CACHE = [Variant("s", "yes"), Variant("i", 1), Variant("as", ["true"])]


async def refused(client: Client, name: str, image: str, options: dict, needle: str) -> None:
    for call in (client.create_container, client.run_container):
        with pytest.raises(ClientError) as info:
            await call(name, image, ["true"], options)
        assert info.value.name == ERR + "InvalidArgument", info.value
        assert needle in info.value.message, info.value.message
        assert await client.list_containers() == []
    assert not CONTAINERS.exists() or os.listdir(CONTAINERS) == []


@pytest.mark.parametrize("value, needle", BAD, ids=[str(i) for i in range(len(BAD))])
async def test_bad_setup_is_invalid_argument(sclient: Client, name: str, busybox: str, value: Variant,
                                             needle: str) -> None:
    await refused(sclient, name, busybox, {"setup": value}, needle)


@pytest.mark.parametrize("value", BAD_CACHE, ids=["s", "i", "as"])
async def test_bad_setup_cache_is_invalid_argument(sclient: Client, name: str, busybox: str,
                                                   value: Variant) -> None:
    await refused(sclient, name, busybox, {"setup": Variant("as", ["sh: true"]), "setup_cache": value},
                  "setup_cache")


async def test_setup_properties_of_a_container_without_setup(sclient: Client, name: str, busybox: str) -> None:
    path = await sclient.create_container(name, busybox, ["true"], {})
    props = await sclient.properties(path)
    assert props["Setup"] == [] and props["SetupImage"] == ""
    path2 = await sclient.create_container(f"{name}-e", busybox, ["true"], {"setup": Variant("as", [])})
    assert (await sclient.properties(path2))["Setup"] == []


async def test_quiltctl_refuses_a_bad_step_with_one_line(sclient: Client, name: str, busybox: str) -> None:
    for step in ("brew: wget", "pip: x; touch /pwned", "pip:"):
        result = quiltctl("create", "--name", name, "--setup", step, busybox, "true")
        assert result.returncode == 125, result
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == ""
    assert await sclient.list_containers() == []
    assert not os.path.exists("/pwned")
