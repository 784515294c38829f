"""Readiness through the real agent: a container that tells it is ready with systemd's own sd_notify client
(the host's systemd-notify, its /usr bound read-only into a busybox image), one that never does, one that dies
first, an agent restart in between, MAINPID= refused, and quiltctl run -d --sdnotify and wait --condition."""
from __future__ import annotations

import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError
from tests.integration.cli.test_quiltctl import QUILT_ERROR, assert_one_error_line, inspect, ok, quiltctl
from tests.integration.cli.test_quiltctl import clean  # noqa: F401 - the autouse fixture: agent up, nothing left
from tests.integration.conftest import systemctl
from tests.integration.waiting import until

ERR = "org.quilt.Runtime.Error."
# The host's /usr is on a filesystem that takes no idmapped mount here: these share the host's ids.
HOST_USR = {"volumes": ["/usr:/usr:ro"], "userns": "host"}


@pytest.fixture(scope="module")
def notify_image(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """busybox with /lib and /lib64 pointing into /usr, as on a merged-/usr Debian: with the host's /usr bound
    read-only, the host's systemd-notify runs in it."""
    out = tmp_path_factory.mktemp("notify") / "busybox-usr.tar"
    with tarfile.open(busybox_tar) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        for name, target in (("lib", "usr/lib"), ("lib64", "usr/lib64")):
            entry = tarfile.TarInfo(name)
            entry.type, entry.linkname = tarfile.SYMTYPE, target
            dst.addfile(entry)
    return str(out)


def journal_of_agent(text: str) -> list[str]:
    lines = subprocess.run(["journalctl", "-u", "quilt-agent", "-o", "cat"], capture_output=True,
                           text=True).stdout.splitlines()
    return [line for line in lines if text in line]


def test_run_d_returns_once_the_container_says_it_is_ready(notify_image: str, name: str) -> None:
    started = time.monotonic()
    ok("run", "-d", "--name", name, "--sdnotify", "container", "-v", "/usr:/usr:ro", "--userns", "host", notify_image,
       "sh", "-c", "sleep 1; systemd-notify --status='warming up'; systemd-notify --ready --status=serving; sleep 600")
    elapsed = time.monotonic() - started
    props = inspect(name)
    assert elapsed >= 1.0, elapsed  # it returned no sooner than READY=1 came
    assert (props["Ready"], props["NotifyStatus"], props["SdNotify"]) == (True, "serving", "container")
    assert "NOTIFY_SOCKET=/run/notify/notify.sock" in props["Environment"]
    assert "Ready:      yes (sdnotify container): serving" in ok("status", name).splitlines()
    ok("rm", "-f", name)


def test_run_d_gives_up_on_a_container_that_never_gets_ready_and_leaves_it_running(notify_image: str,
                                                                                     name: str) -> None:
    result = quiltctl("run", "-d", "--name", name, "--sdnotify", "container", "--ready-timeout", "1s",
                      notify_image, "sleep", "600")
    assert_one_error_line(result, QUILT_ERROR, f"container {name} did not become ready within 1 s; it still runs")
    props = inspect(name)
    assert (props["State"], props["Ready"]) == ("running", False)
    ok("rm", "-f", name)


def test_run_d_fails_with_the_exit_code_of_a_container_that_ends_before_it_is_ready(notify_image: str,
                                                                                     name: str) -> None:
    result = quiltctl("run", "-d", "--name", name, "--sdnotify", "container", notify_image, "sh", "-c",
                      "sleep 0.3; exit 3")
    assert_one_error_line(result, 3, f"container {name} exited with code 3 before it was ready")
    assert inspect(name)["State"] == "exited"


def test_wait_condition_from_the_command_line(notify_image: str, name: str) -> None:
    # create and start: start, unlike run -d, does not wait for the readiness
    ok("create", "--name", name, "--sdnotify", "container", "-v", "/usr:/usr:ro", "--userns", "host", notify_image,
       "sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; done; systemd-notify --ready; sleep 600")
    ok("start", name)
    waiter = subprocess.Popen(["quiltctl", "wait", "--condition", "ready", name], stdout=subprocess.PIPE, text=True)
    assert inspect(name)["Ready"] is False
    ok("exec", name, "touch", "/tmp/go")
    assert waiter.communicate(timeout=30)[0] == "ready\n" and waiter.returncode == 0
    assert ok("wait", "--condition", "running", "--condition", "exited", name) == "running\n"
    ok("stop", "-t", "0", name)
    assert ok("wait", "--condition", "ready", name) == "137\n"  # ended: only exited can hold
    assert_one_error_line(quiltctl("wait", "--condition", "paused", name), QUILT_ERROR, "Invalid wait condition")


async def test_a_restarted_agent_hears_a_container_that_gets_ready_later(client: Client, notify_image: str,
                                                                         name: str) -> None:
    path = await client.run_container(name, notify_image, ["sh", "-c", "while [ ! -e /tmp/go ]; do sleep 0.05; "
                                                                       "done; systemd-notify --ready; sleep 600"],
                                      {"sdnotify": "container", **HOST_USR})
    systemctl("restart", "quilt-agent")
    async with Client() as again:
        path = await again.get_container(name)
        assert await again.get_property(path, "Ready") is False
        await again.exec(path, ["touch", "/tmp/go"])
        assert await again.wait_condition(path, ["ready"]) == ("ready", -1)
        await again.remove(path, True)


async def test_mainpid_is_not_honoured_and_the_journal_says_so(client: Client, notify_image: str,
                                                               name: str) -> None:
    path = await client.run_container(name, notify_image, ["sh", "-c", "systemd-notify --ready --pid=1; sleep 600"],
                                      {"sdnotify": "container", **HOST_USR})
    assert await client.wait_condition(path, ["ready"]) == ("ready", -1)
    props = await client.properties(path)
    lines = await until(lambda: journal_of_agent(f"container {name} sent MAINPID=1: not honoured"),
                        "the refusal in the journal")
    assert f"its init (pid {props['MainPID']}) stays its main process" in lines[0]
    await client.remove(path, True)


@pytest.mark.parametrize("options, message", [
    ({"sdnotify": "notify"}, "Invalid sdnotify 'notify'"),
    ({"sdnotify": "healthy"}, "needs a health check"),
])
async def test_bad_sdnotify_is_invalid_argument_and_creates_nothing(client: Client, busybox_tar: Path, name: str,
                                                                    options: dict, message: str) -> None:
    with pytest.raises(ClientError) as err:
        await client.create_container(name, str(busybox_tar), ["sleep", "1"], options)
    assert err.value.name == ERR + "InvalidArgument" and message in str(err.value)
    assert name not in [e.name for e in await client.list_containers()]


async def test_wait_condition_of_an_unknown_condition_is_invalid_argument(client: Client, busybox_tar: Path,
                                                                          name: str) -> None:
    path = await client.create_container(name, str(busybox_tar), ["sleep", "1"], {})
    with pytest.raises(ClientError) as err:
        await client.wait_condition(path, ["stopped"])
    assert err.value.name == ERR + "InvalidArgument"
    await client.remove(path)
