"""Setup steps with the shell manager on the busybox image: order, environment, failure, the journal
stream, the cache. The package managers themselves are tested with the Debian image (test_managers.py)."""
from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from tests.integration.waiting import until

ERR = "org.quilt.Runtime.Error."


async def _finish(client: Client, name: str, image: Path, script: str, options: dict) -> tuple[str, dict]:
    path = await client.run_container(name, str(image), ["/bin/sh", "-c", script], options)
    await asyncio.wait_for(client.wait(path), 60)
    return path, await client.properties(path)


async def test_steps_run_in_order_as_the_container_before_its_command(client: Client, name: str,
                                                                     busybox_tar: Path) -> None:
    steps = ["sh: echo one > /tmp/order", "sh: echo two-$GREETING-$(id -u)-$(pwd) >> /tmp/order"]
    path, props = await _finish(client, name, busybox_tar, "cat /tmp/order",
                                {"setup": steps, "env": ["GREETING=hi"], "user": "1000", "workdir": "/tmp",
                                 "setup_cache": False})
    assert props["State"] == "exited" and props["ExitCode"] == 0, props["FailureReason"]
    assert props["Setup"] == steps and props["SetupImage"] == ""
    main = [line.text for line in await client.get_logs(path, {})
            if not line.text.startswith("quilt: setup")]
    assert main == ["one", "two-hi-1000-/tmp"]
    setup = [line.text for line in await client.get_logs(path, {"setup": True})]
    assert setup == ["quilt: setup step 1/2: sh: echo one > /tmp/order",
                     "quilt: setup step 2/2: sh: echo two-$GREETING-$(id -u)-$(pwd) >> /tmp/order"]


async def test_a_failing_step_fails_the_container_and_the_command_never_runs(client: Client, name: str,
                                                                             busybox_tar: Path) -> None:
    steps = ["sh: echo first", "sh: echo broken >&2; exit 7", "sh: echo never"]
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "echo MAIN"], {"setup": steps})
    assert await asyncio.wait_for(client.wait(path), 60) == 7
    props = await client.properties(path)
    assert props["State"] == "failed" and props["ExitCode"] == 7, props
    assert props["FailureReason"] == "setup step 2 (sh: echo broken >&2; exit 7) exited with code 7"
    lines = [(line.stream, line.text) for line in await client.get_logs(path, {})]
    assert ("stdout", "MAIN") not in lines and ("stdout", "never") not in lines
    assert ("stdout", "first") in lines and ("stderr", "broken") in lines
    # Nothing half-made for the cache: a failed setup is never cached.
    assert not [i for i in await client.list_images() if (await client.image_properties(i.path))["SetupBase"]]


async def test_a_missing_manager_is_exit_code_127(client: Client, name: str, busybox_tar: Path) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/true"], {"setup": ["pip: flask"]})
    assert await asyncio.wait_for(client.wait(path), 60) == 127
    props = await client.properties(path)
    assert props["State"] == "failed" and props["FailureReason"] == "setup step 1 (pip: flask) exited with code 127"
    assert any("'python3' not found" in line.text for line in await client.get_logs(path, {"setup": True}))


async def test_the_second_container_starts_from_the_cached_result(client: Client, name: str, busybox_tar: Path,
                                                                  tmp_path: Path) -> None:
    # Each run of the step leaves a line in a host directory (a bind mount is never part of the cache), and a
    # file in the container's own tree, which the cache must carry.
    tmp_path.chmod(0o777)
    steps = ["sh: echo ran >> /h/count && echo installed > /usr/local-tool && rm /bin/vi"]
    options = {"setup": steps, "volumes": [f"{tmp_path}:/h"]}
    script = "cat /usr/local-tool; test -e /bin/vi && echo vi-present || echo vi-gone"
    first, props = await _finish(client, name, busybox_tar, script, options)
    assert props["State"] == "exited" and props["SetupImage"] == "", props
    assert [line.text for line in await client.get_logs(first, {}) if not line.text.startswith("quilt:")] == [
        "installed", "vi-gone"]
    async def cached() -> list:
        return [i for i in await client.list_images() if (await client.image_properties(i.path))["SetupSteps"] == steps]

    # The cache image is committed after the command started.
    (image,) = await until(cached, "the setup's result was never cached", interval=0.1)
    image_props = await client.image_properties(image.path)
    assert image_props["SetupSteps"] == steps and image_props["Names"] == []
    second, props = await _finish(client, name + "b", busybox_tar, script, options)
    assert props["State"] == "exited" and props["SetupImage"] == image_props["Id"], props
    assert (tmp_path / "count").read_text() == "ran\n"  # the step did not run again
    assert [line.text for line in await client.get_logs(second, {}) if not line.text.startswith("quilt:")] == [
        "installed", "vi-gone"]
    assert [line.text for line in await client.get_logs(second, {"setup": True})] == [
        f"quilt: setup: using cached result {image_props['Id'][:12]} (1 step not run)"]
    # setup_cache false runs the steps again.
    _, props = await _finish(client, name + "c", busybox_tar, script, {**options, "setup_cache": False})
    assert props["SetupImage"] == "" and (tmp_path / "count").read_text() == "ran\nran\n"
    # In use: prune keeps it; once its containers are gone, prune removes it.
    await client.prune_images()
    assert image.path in [i.path for i in await client.list_images()]
    for entry in await client.list_containers():
        await client.remove(entry.path, force=True)
    await client.prune_images()
    assert image.path not in [i.path for i in await client.list_images()]


@pytest.mark.parametrize("setup, message", [
    (["pip: x; touch /pwned"], "'x;' is not a package name"),
    (["pip:"], "nothing to install"),
    (["brew: wget"], "expected 'MANAGER: ARGS'"),
    (["no colon"], "expected 'MANAGER: ARGS'"),
    (["npm: 'unclosed"], "No closing quotation"),
    (Variant("s", "pip: flask"), "must be a list of strings"),
    (Variant("ai", [1]), "must be a list of strings"),
])
async def test_bad_setup_is_refused_and_nothing_is_created(client: Client, name: str, busybox_tar: Path,
                                                           setup: object, message: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["/bin/true"], {"setup": setup})
    assert err.value.name == ERR + "InvalidArgument" and message in str(err.value)
    assert await client.list_containers() == []
    assert not Path("/pwned").exists()


async def test_setup_cache_must_be_a_boolean(client: Client, name: str, busybox_tar: Path) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["/bin/true"], {"setup": ["sh: true"],
                                                                                "setup_cache": Variant("s", "yes")})
    assert err.value.name == ERR + "InvalidArgument"
    assert await client.list_containers() == []


async def test_stop_during_setup_reaches_the_running_step(client: Client, name: str, busybox_tar: Path) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sh", "-c", "echo MAIN"],
                                      {"setup": ["sh: echo started; exec sleep 60"], "stop_timeout": 30})
    async def started() -> bool:
        return [line.text for line in await client.get_logs(path, {"setup": True})][-1:] == ["started"]

    await until(started, "the setup step never started")
    assert (await client.properties(path))["State"] == "running"
    await client.stop(path)
    props = await client.properties(path)
    # SIGTERM reached the step (143), not the SIGKILL after the 30 s grace (137).
    assert (props["State"], props["ExitCode"]) == ("failed", 143), props["FailureReason"]
    assert props["FailureReason"] == "setup step 1 (sh: echo started; exec sleep 60) exited with code 143"
    assert "MAIN" not in [line.text for line in await client.get_logs(path, {})]


async def test_a_restarted_container_runs_on_the_cached_result(client: Client, name: str, busybox_tar: Path) -> None:
    path, props = await _finish(client, name, busybox_tar, "cat /etc/tool", {"setup": ["sh: echo v1 > /etc/tool"]})
    assert props["State"] == "exited" and props["SetupImage"] == ""
    async def cached() -> bool:
        return any([(await client.image_properties(i.path))["SetupBase"] for i in await client.list_images()])

    await until(cached, "the setup's result was never cached", interval=0.1)
    await client.start(path)
    assert await asyncio.wait_for(client.wait(path), 60) == 0
    props = await client.properties(path)
    assert props["State"] == "exited" and props["SetupImage"] != ""
    assert [line.text for line in await client.get_logs(path, {}) if not line.text.startswith("quilt:")] == [
        "v1", "v1"]
    await client.remove(path, force=True)
    await client.prune_images()  # the cache image goes with its last user: later tests start without it
