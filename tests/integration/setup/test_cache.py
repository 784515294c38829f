"""The setup cache: the first container with an image, user and setup list records what the steps changed as an
image; the next one starts from it and runs no manager (the package server's access log and the setup stream show
it, not a clock); setup_cache false runs them again; the cache images are listed and pruned."""
from __future__ import annotations

import time

import pytest

from quilt_agent.client import Client, ClientError
from tests import packageindex as pkg
from tests.integration.setup.conftest import CACHED, ERR, SetupImage, headers, quiltctl, run, setup_lines
from tests.integration.waiting import until

SCRIPT = f"python3 -c 'import {pkg.PIP_MODULE}; print({pkg.PIP_MODULE}.hello())' && {pkg.NPM_BIN}"
GREETINGS = [f"{pkg.GREETING} via pip", f"{pkg.GREETING} via npm"]


def cached_only(setup: list[str], image_id: str) -> bool:
    """The setup stream of a start from the cache: one line naming the image (the agent adds how many steps it
    skipped: "(2 steps not run)"), no step's header or output."""
    return len(setup) == 1 and setup[0].startswith(f"{CACHED}{image_id[:12]}")


async def new_images(client: Client, before: set[str]) -> list:
    return [e for e in await client.list_images() if e.id not in before]


async def the_cache_image(client: Client, before: set[str]):
    """The one image made since `before`: the cache entry, there once Wait has returned (a container started
    right after the first one ended must find it)."""
    new = await new_images(client, before)
    assert len(new) == 1, f"expected one new (cache) image right after the first container ended, found {new}"
    return new[0]


async def test_the_second_container_starts_from_the_cache_without_running_a_manager(
        sclient: Client, name: str, setup_image: SetupImage, packages: pkg.PackageServer) -> None:
    steps = [f"pip: {pkg.PIP_NAME}", f"npm: {pkg.NPM_NAME}"]
    env = {"env": packages.env()}
    base = await sclient.image_properties(await sclient.get_image(setup_image.name))
    before = {e.id for e in await sclient.list_images()}

    asked = len(packages.requests())
    started = time.monotonic()
    first = await run(sclient, f"{name}-1", setup_image.name, SCRIPT, steps, env)
    first_seconds = time.monotonic() - started
    assert first.exit_code == 0, first
    assert first.stdout[-2:] == GREETINGS
    made = packages.requests()[asked:]
    assert f"GET /simple/{pkg.PIP_NAME}/" in made and f"GET /npm/{pkg.NPM_NAME}" in made, made
    assert first.props["SetupImage"] == ""  # it made the cache; it did not start from one
    cache = await the_cache_image(sclient, before)
    props = await sclient.image_properties(cache.path)
    assert cache.name == "" and props["Names"] == []
    assert props["SetupBase"] == base["Id"] and props["SetupSteps"] == steps
    assert props["Layers"][:-1] == base["Layers"] and len(props["Layers"]) == len(base["Layers"]) + 1
    assert base["SetupBase"] == "" and base["SetupSteps"] == []

    asked = len(packages.requests())
    started = time.monotonic()
    second = await run(sclient, f"{name}-2", setup_image.name, SCRIPT, steps, env)
    second_seconds = time.monotonic() - started
    assert second.exit_code == 0, second
    assert second.stdout[-2:] == GREETINGS
    assert packages.requests()[asked:] == []  # neither pip nor npm asked their index
    assert cached_only(second.setup, cache.id), second.setup
    assert second.props["SetupImage"] == cache.id
    assert second.props["Setup"] == steps
    assert await new_images(sclient, before) == [cache]  # one cache entry, not two
    print(f"\nfirst start with pip+npm setup to exit: {first_seconds:.2f} s, cached: {second_seconds:.2f} s")

    # setup_cache false: the managers run again, and nothing new is cached.
    asked = len(packages.requests())
    third = await run(sclient, f"{name}-3", setup_image.name, SCRIPT, steps, {**env, "setup_cache": False})
    assert third.exit_code == 0, third
    assert third.stdout[-2:] == GREETINGS
    again = packages.requests()[asked:]
    assert f"GET /simple/{pkg.PIP_NAME}/" in again and f"GET /npm/{pkg.NPM_NAME}" in again, again
    assert headers(third.setup) == [f"quilt: setup step {i}/2: {s}" for i, s in enumerate(steps, 1)], third.setup
    assert not any(line.startswith(CACHED) for line in third.setup)
    assert third.props["SetupImage"] == ""
    assert await new_images(sclient, before) == [cache]


async def test_each_start_of_a_cached_container_uses_the_cache(sclient: Client, name: str,
                                                               busybox: str) -> None:
    steps = ["sh: echo step-ran; echo made > /made-by-setup"]
    before = {e.id for e in await sclient.list_images()}
    first = await run(sclient, f"{name}-1", busybox, "cat /made-by-setup", steps)
    assert first.exit_code == 0 and first.stdout[-1] == "made", first
    assert "step-ran" in first.setup
    cache = await the_cache_image(sclient, before)
    second = await run(sclient, f"{name}-2", busybox, "cat /made-by-setup", steps)
    assert second.exit_code == 0 and second.stdout[-1] == "made", second
    assert cached_only(second.setup, cache.id), second.setup
    await sclient.start(second.path)
    assert await sclient.wait(second.path) == 0
    lines: list[str] = []

    async def both() -> bool:
        lines[:] = await setup_lines(sclient, second.path)
        return len(lines) >= 2

    await until(both, lambda: f"the setup stream has {lines}", interval=0.05)
    assert len(lines) == 2 and cached_only(lines[:1], cache.id) and cached_only(lines[1:], cache.id), lines


async def test_another_list_or_user_misses_the_cache(sclient: Client, name: str, busybox: str) -> None:
    steps = ["sh: echo step-ran; id -u > /tmp/by"]
    before = {e.id for e in await sclient.list_images()}
    first = await run(sclient, f"{name}-1", busybox, "cat /tmp/by", steps)
    assert first.exit_code == 0 and first.stdout[-1] == "0"
    other_list = await run(sclient, f"{name}-2", busybox, "cat /tmp/by", [*steps, "sh: true"])
    assert "step-ran" in other_list.setup and not any(line.startswith(CACHED) for line in other_list.setup)
    other_user = await run(sclient, f"{name}-3", busybox, "cat /tmp/by", steps, {"user": "1000"})
    assert other_user.exit_code == 0 and other_user.stdout[-1] == "1000", other_user
    assert "step-ran" in other_user.setup and not any(line.startswith(CACHED) for line in other_user.setup)
    assert len(await new_images(sclient, before)) == 3


async def test_cache_images_are_listed_with_all_and_pruned_once_unused(sclient: Client, name: str,
                                                                        busybox: str) -> None:
    steps = ["sh: echo made > /made-by-setup"]
    before = {e.id for e in await sclient.list_images()}
    first = await run(sclient, f"{name}-1", busybox, "cat /made-by-setup", steps)
    assert first.exit_code == 0, first
    cache = await the_cache_image(sclient, before)
    second = await run(sclient, f"{name}-2", busybox, "cat /made-by-setup", steps)
    assert second.props["SetupImage"] == cache.id

    listed = quiltctl("image", "ls")
    assert listed.returncode == 0 and cache.id[:12] not in listed.stdout, listed
    listed = quiltctl("image", "ls", "--all")
    assert listed.returncode == 0, listed
    (row,) = [line for line in listed.stdout.splitlines() if cache.id[:12] in line]
    assert row.split()[0] == "<setup>" and steps[0] in row, row

    # In use by the second container: prune keeps it, and a plain remove is refused.
    await sclient.prune_images()
    assert cache.id in {e.id for e in await sclient.list_images()}
    with pytest.raises(ClientError) as info:
        await sclient.remove_image(cache.id, False)
    assert info.value.name == ERR + "ImageInUse", info.value

    await sclient.remove(second.path, True)
    await sclient.remove(first.path, True)
    assert await sclient.prune_images() > 0
    assert cache.id not in {e.id for e in await sclient.list_images()}
    with pytest.raises(ClientError) as info:
        await sclient.get_image(cache.id)
    assert info.value.name == ERR + "NoSuchImage"


async def test_a_container_started_as_soon_as_the_first_ended_finds_its_cache(sclient: Client, name: str,
                                                                              busybox: str) -> None:
    """`quiltctl run A && quiltctl run B`: once Wait has returned for the first, the cache entry is there. Three
    rounds with a command that ends at once, so that a cache committed after Wait returns shows up here."""
    for round_ in range(3):
        steps = [f"sh: echo {round_} > /round"]
        first = await sclient.run_container(f"{name}-{round_}a", busybox, ["true"], {"setup": steps})
        assert await sclient.wait(first) == 0
        second = await sclient.run_container(f"{name}-{round_}b", busybox, ["cat", "/round"], {"setup": steps})
        assert await sclient.wait(second) == 0
        props = await sclient.properties(second)
        assert props["SetupImage"] != "", f"round {round_}: the second container ran the steps again"
