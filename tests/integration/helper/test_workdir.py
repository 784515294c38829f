"""The working directory is resolved inside the container's root: never through a /proc magic link such as
/proc/1/root, which in a container sharing the host's pid namespace leads to the host's tree."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError

NO_PID = ["mount", "uts", "ipc", "net", "cgroup"]  # the host's pid namespace (needs the host action, root has it)


async def test_a_workdir_through_proc_1_root_is_not_made_on_the_host(client: Client, busybox_tar: Path,
                                                                     name: str) -> None:
    target = Path("/etc/quilt-test-workdir-escape")
    with pytest.raises(ClientError) as failed:
        await client.run_container(name, str(busybox_tar), ["/bin/true"],
                                   {"namespaces": NO_PID, "user": "1000", "workdir": f"/proc/1/root{target}"})
    assert failed.value.name == "org.quilt.Runtime.Error.ContainerFailed"
    assert "cannot create the working directory" in failed.value.message
    assert not target.exists()


async def test_exec_cannot_enter_the_hosts_root_through_proc_1_root(client: Client, busybox_tar: Path,
                                                                    name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["/bin/sleep", "300"], {"namespaces": NO_PID})
    with pytest.raises(ClientError) as refused:
        await client.exec(path, ["/bin/sh", "-c", "echo x > quilt-test-escaped"], {"workdir": "/proc/1/root/etc"})
    assert refused.value.name == "org.quilt.Runtime.Error.InvalidArgument"
    assert "cannot enter the working directory /proc/1/root/etc" in refused.value.message
    assert not os.path.exists("/etc/quilt-test-escaped")
    # A workdir of the container's own, through its own symlink, still works.
    made = await client.exec(path, ["/bin/sh", "-c", "mkdir -p /srv/real && ln -s /srv/real /srv/link"])
    assert made.exit_code == 0
    pwd = await client.exec(path, ["/bin/pwd"], {"workdir": "/srv/link"})
    assert pwd.exit_code == 0 and pwd.stdout.strip() in (b"/srv/link", b"/srv/real"), pwd
