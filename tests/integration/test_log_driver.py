"""The log_driver create option (Podman's --log-driver): journald, the default, and none, which keeps nothing of
the command's output; any other name is refused with the list. The drivers with a file: test_log_file.py."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError

QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
ERR = "org.quilt.Runtime.Error."


def journal_of(unit: str) -> list[str]:
    subprocess.run(["journalctl", "--sync"], check=True)
    return subprocess.run(["journalctl", "-q", "-o", "cat", "-u", unit], capture_output=True, text=True,
                          check=True).stdout.splitlines()


async def test_none_keeps_nothing_and_logs_say_why(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["sh", "-c", "echo out; echo err >&2; exit 3"],
                                      {"networks": ["none"], "log_driver": "none"})
    assert await client.wait(path) == 3
    props = await client.properties(path)
    assert props["LogDriver"] == "none"
    assert not [line for line in journal_of(props["Unit"]) if line in ("out", "err")]
    for call in (lambda: client.get_logs(path, {}), lambda: client.follow_logs(path, {})):
        with pytest.raises(ClientError) as caught:
            await call()
        assert caught.value.name == ERR + "NotSupported" and "log driver none" in str(caught.value)
    assert await client.get_logs(path, {"setup": True}) == []  # Quilt's own steps' lines stay readable
    shown = subprocess.run([QUILTCTL, "logs", name], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 125 and shown.stderr.count("\n") == 1 and "log driver none" in shown.stderr
    await client.remove(path)


async def test_journald_is_the_default(client: Client, busybox_tar: Path, name: str) -> None:
    path = await client.run_container(name, str(busybox_tar), ["echo", "hi"], {"networks": ["none"]})
    assert await client.wait(path) == 0
    assert (await client.properties(path))["LogDriver"] == "journald"
    assert [line.text for line in await client.get_logs(path, {})] == ["hi"]
    await client.remove(path)


def test_run_with_none_prints_nothing_and_keeps_the_exit_code(busybox_tar: Path, name: str) -> None:
    result = subprocess.run([QUILTCTL, "run", "--rm", "--network", "none", "--log-driver", "none", "--name", name,
                             str(busybox_tar), "sh", "-c", "echo hidden; exit 4"], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (4, "", "")


@pytest.mark.parametrize("driver", ["json-file", "", "JOURNALD"])
def test_an_unknown_driver_is_refused_with_the_list(busybox_tar: Path, name: str, driver: str) -> None:
    result = subprocess.run([QUILTCTL, "run", "--rm", "--network", "none", "--log-driver", driver, "--name", name,
                             str(busybox_tar), "true"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 125 and result.stdout == ""
    assert result.stderr == (f"quiltctl: Invalid log_driver '{driver}': choose among journald, k8s-file, "
                             "journald+file, none\n")
    assert subprocess.run([QUILTCTL, "ps", "-a", "-q", "--filter", f"name={name}"], capture_output=True, text=True,
                          timeout=60).stdout == ""
