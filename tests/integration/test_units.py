"""Container files as systemd units, in the test host's real systemd: the generator run by `daemon-reload`, a
network and two containers ordered by their [Unit] sections, a stop, a crash restarted by the service's own
Restart=, `systemctl status` showing the container's processes, and a bad file failing only its own unit."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.client import Client
from tests.integration.conftest import systemctl
from tests.integration.waiting import until

UNIT_DIR = Path("/etc/quilt/containers")
# Each file has RunInit=true: as PID 1 of its own namespace, sleep or httpd would ignore the stop's SIGTERM and
# every stop would take the whole TimeoutStopSec=; catatonit forwards it.
IMAGE = "quilt-test/units-busybox"


def show(unit: str, prop: str) -> str:
    return systemctl("show", "-P", prop, unit, check=False).stdout.strip()


def journal(unit: str) -> str:
    return subprocess.run(["journalctl", "-u", unit, "-o", "cat", "--no-pager"], capture_output=True,
                          text=True).stdout


@pytest.fixture
async def files(client: Client, busybox_tar: Path, name: str) -> AsyncIterator[dict[str, str]]:
    """Writes container files named after the test (name -> text), reloads systemd; stops and removes it all
    afterwards."""
    await client.import_image(str(busybox_tar), IMAGE)
    UNIT_DIR.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    yield written
    services = [f"{Path(f).stem}{'-network' if f.endswith('.network') else '-volume' if f.endswith('.volume') else ''}"
                ".service" for f in written]
    systemctl("stop", *services, check=False)
    systemctl("reset-failed", *services, check=False)
    for f in written:
        (UNIT_DIR / f).unlink(missing_ok=True)
    systemctl("daemon-reload")
    for entry in await client.list_containers():
        if entry.name.startswith(name):
            await client.remove(entry.path, True)
    # What the .network and .volume files made outlives their oneshot units, as Quadlet's does: removed here.
    for f in written:
        if f.endswith(".volume"):
            await client.remove_volume(Path(f).stem, True)
        elif f.endswith(".network"):
            await client.remove_network(Path(f).stem, True)


def write(files: dict[str, str], filename: str, text: str) -> None:
    files[filename] = text
    (UNIT_DIR / filename).write_text(text)


async def test_a_network_and_two_ordered_containers_start_and_reach_each_other(client: Client, files: dict,
                                                                              name: str) -> None:
    write(files, f"{name}-net.network", "[Network]\n")
    write(files, f"{name}-srv.container", f"""[Container]
Image={IMAGE}
RunInit=true
Network={name}-net.network
Exec=/bin/sh -c "echo served > /index.html; exec httpd -f -p 80 -h /"
""")
    write(files, f"{name}-cli.container", f"""[Unit]
Requires={name}-srv.service
After={name}-srv.service

[Container]
Image={IMAGE}
RunInit=true
Network={name}-net.network
Exec=/bin/sh -c "until wget -q -O /tmp/got http://{name}-srv/index.html; do sleep 0.1; done; cat /tmp/got; exec sleep 600"
""")
    systemctl("daemon-reload")
    systemctl("start", f"{name}-cli.service")  # pulls in the server and the network through the dependencies
    assert show(f"{name}-srv.service", "ActiveState") == "active"
    assert show(f"{name}-net-network.service", "ActiveState") == "active"
    cli = await client.get_container(f"{name}-cli")
    await until(lambda: "served" in journal(f"{name}-cli.service"), "the client's fetched page in its journal")
    props = await client.properties(cli)
    assert (props["State"], props["Unit"]) == ("running", f"{name}-cli.service")
    # The container's processes are the service's: systemctl status lists them under its cgroup.
    status = systemctl("status", "--no-pager", "-l", f"{name}-srv.service", check=False).stdout
    assert "httpd -f -p 80 -h /" in status
    assert str((await client.properties(await client.get_container(f"{name}-srv")))["MainPID"]) in status
    # A stop of the service stops the container, by the unit's stop signal.
    systemctl("stop", f"{name}-cli.service")
    assert (await client.properties(cli))["State"] == "exited"
    assert show(f"{name}-cli.service", "ActiveState") == "inactive", journal(f"{name}-cli.service")[-3000:]  # SuccessExitStatus: a stop is no failure


async def test_a_crash_is_restarted_by_the_services_own_restart(client: Client, files: dict, name: str) -> None:
    write(files, f"{name}-data.volume", "[Volume]\n")
    write(files, f"{name}.container", f"""[Container]
Image={IMAGE}
RunInit=true
Volume={name}-data.volume:/data
Exec=/bin/sh -c "n=$(cat /data/n 2>/dev/null || echo 0); echo $((n+1)) > /data/n; [ $n -ge 1 ] && exec sleep 600; exit 3"

[Service]
Restart=on-failure
RestartSec=100ms
""")
    systemctl("daemon-reload")
    systemctl("start", "--no-block", f"{name}.service")
    await until(lambda: show(f"{name}.service", "NRestarts") == "1" and show(f"{name}.service", "ActiveState")
                == "active", "a restart by Restart=on-failure", timeout=30)
    props = await client.properties(await client.get_container(name))
    assert (props["State"], props["Unit"]) == ("running", f"{name}.service")
    assert "exited, status=3" in journal(f"{name}.service") or "status=3/" in journal(f"{name}.service")


async def test_a_bad_file_fails_only_its_own_unit_and_says_why(client: Client, files: dict, name: str) -> None:
    write(files, f"{name}-bad.container", f"[Container]\nImage={IMAGE}\nFrobnicate=yes\n")
    write(files, f"{name}-good.container", f"[Container]\nImage={IMAGE}\nRunInit=true\nExec=sleep 600\n")
    systemctl("daemon-reload")
    bad = systemctl("start", f"{name}-bad.service", check=False)
    assert bad.returncode != 0
    assert "Frobnicate" in journal(f"{name}-bad.service")
    systemctl("start", f"{name}-good.service")
    assert show(f"{name}-good.service", "ActiveState") == "active"


async def test_a_unit_of_a_container_that_is_ready_later_starts_when_it_is_ready(client: Client, files: dict,
                                                                                 name: str) -> None:
    write(files, f"{name}.container", f"""[Container]
Image={IMAGE}
RunInit=true
HealthCmd=test -e /tmp/up
HealthInterval=200ms
Notify=healthy
Exec=/bin/sh -c "sleep 1; touch /tmp/up; exec sleep 600"
""")
    systemctl("daemon-reload")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.to_thread(systemctl, "start", f"{name}.service")  # returns once READY=1 came
    assert loop.time() - started >= 1.0
    props = await client.properties(await client.get_container(name))
    assert (props["Ready"], props["Health"]) == (True, "healthy")
    assert "is ready" in show(f"{name}.service", "StatusText")


def test_the_generator_is_installed_where_systemd_runs_it() -> None:
    generator = Path("/usr/lib/systemd/system-generators/quilt-generator")
    assert generator.exists() and shutil.which(str(generator))


async def test_the_service_rides_an_agent_restart_and_ends_with_the_container(client: Client, files: dict,
                                                                             name: str) -> None:
    write(files, f"{name}.container", f"[Container]\nImage={IMAGE}\nRunInit=true\nExec=sleep 600\n")
    systemctl("daemon-reload")
    systemctl("start", f"{name}.service")
    pid = show(f"{name}.service", "MainPID")
    systemctl("restart", "quilt-agent")
    async with Client() as again:
        path = await again.get_container(name)
        props = await again.properties(path)
        assert props["State"] == "running", journal(f"{name}.service")
        assert show(f"{name}.service", "ActiveState") == "active" and show(f"{name}.service", "MainPID") == pid
        await again.kill(path, 9)  # a crash: the service's main process ends with the container's exit code
        await until(lambda: show(f"{name}.service", "ActiveState") == "failed", "the service failed with it")
    assert show(f"{name}.service", "ExecMainStatus") == "137"
