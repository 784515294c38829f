"""What the setup-command tests share: the Debian image with pip, npm and gem (tests/setupimage.py, built on the
machine before the test host boots) imported once, the offline package servers (tests/packageindex.py) listening in
the test host's own network namespace, where containers reach them at the Quilt network's gateway, and helpers to
run a container with setup steps to its end and read its two log streams."""
from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dbus_fast import Variant

from quilt_agent.client import Client, ClientError
from quilt_agent.network.model import DEFAULT_SUBNET
from tests import packageindex, setupimage
from tests.integration.cleanup import Cleanup
from tests.integration.conftest import remove_containers
from tests.integration.images.conftest import remove_new_images
from tests.integration.network.conftest import END
from tests.integration import waiting

ERR = "org.quilt.Runtime.Error."
BASE_NAME = "quilt-tests/setup:bookworm"
QUILTCTL = shutil.which("quiltctl") or "/usr/bin/quiltctl"
# The default network's gateway: the test host's side of the Quilt bridge, where the package servers answer.
GATEWAY = str(next(ipaddress.ip_network(DEFAULT_SUBNET).hosts()))
CACHED = "quilt: setup: using cached result "


def quiltctl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QUILTCTL, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class SetupImage:
    name: str
    id: str
    import_seconds: float


@pytest.fixture(scope="package")
def setup_image(agent: None) -> Iterator[SetupImage]:
    """The Debian image imported into Quilt once for these tests, removed after them."""
    tar = setupimage.path()
    if not tar.exists():
        pytest.fail(f"the setup tests' image {tar} is missing: build it on the machine (it needs the network, "
                    f"which the test host has not) with `python3 tests/setupimage.py build`; `make test` does",
                    pytrace=False)
    started = time.monotonic()
    result = quiltctl("image", "import", str(tar), BASE_NAME)
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"import of {tar}: {result.stderr}"
    image = SetupImage(BASE_NAME, result.stdout.strip().splitlines()[-1], seconds)
    print(f"\nsetup image {tar.name} ({tar.stat().st_size / 1e6:.0f} MB) imported in {seconds:.1f} s")
    yield image
    quiltctl("image", "rm", "-f", BASE_NAME)


@pytest.fixture(scope="package")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[packageindex.PackageServer]:
    """pip, npm and gem indexes served on 0.0.0.0 in the test host's network namespace."""
    server = packageindex.serve(tmp_path_factory.mktemp("packages") / "root", GATEWAY)
    yield server
    server.stop()


@pytest.fixture
async def busybox(client: Client, busybox_tar: Path) -> str:
    """The busybox image's id, imported before the test looks at the image list (a path given to create would
    import it then, and it would look like an image the test made)."""
    path = await client.import_image(str(busybox_tar))
    return str((await client.image_properties(path))["Id"])


@pytest.fixture
async def sclient(client: Client) -> AsyncIterator[Client]:
    """The client fixture; after the test its containers and the images it made (cached setup results) go."""
    before = {e.id for e in await client.list_images()}
    yield client
    cleanup = Cleanup("sclient")
    await cleanup.attempt("list containers", remove_containers(client, cleanup))
    await cleanup.attempt("list images", remove_new_images(client, before, cleanup))
    cleanup.report()


@dataclass
class Run:
    path: str
    exit_code: int
    stdout: list[str]  # the main command's, up to END; [] when it never ran
    setup: list[str]  # the setup stream's lines (GetLogs setup=true)
    props: dict


def setup_option(steps: list[str]) -> Variant:
    return Variant("as", steps)


async def setup_lines(client: Client, path: str, until: str | None = None, timeout: float = 10.0) -> list[str]:
    """The lines of the setup stream (GetLogs with setup=true) of a container that has ended. journald may lag
    behind its exit: with `until`, waits for a line containing it, then until two reads 0.1 s apart agree."""
    reads: list[list[str]] = []

    async def settled() -> bool:
        reads.append([line.text for line in await client.get_logs(path, {"setup": Variant("b", True)})])
        lines = reads[-1]
        return (until is None or any(until in line for line in lines)) and reads[-2:] == [lines, lines]

    await waiting.until(settled, lambda: f"no line with {until!r} in the setup stream: {reads[-1]}", timeout,
                        interval=0.1)
    return reads[-1]


async def main_lines(client: Client, path: str, expect_end: bool, timeout: float = 10.0) -> list[str]:
    """The main command's stdout up to END. Without expect_end (a command that never ran), what GetLogs has once
    the setup stream has settled, which must hold no END."""
    out: list[str] = []

    async def read() -> bool:
        out[:] = [line.text for line in await client.get_logs(path, {}) if line.stream == "stdout"]
        return END in out or not expect_end

    await waiting.until(read, lambda: f"no {END} in the logs: {out}", timeout, interval=0.05)
    if END in out:
        assert expect_end, f"the main command ran: {out}"
        return out[:out.index(END)]
    return out


async def run(client: Client, name: str, image: str, script: str, steps: list[str] | None,
              options: dict | None = None, expect_main: bool = True) -> Run:
    """A container with setup steps, run to its end: `script` (sh) is the main command, followed by an END line."""
    opts = dict(options or {})
    if steps is not None:
        opts["setup"] = setup_option(steps)
    command = ["/bin/sh", "-c", f"{script}\nrc=$?; echo {END}; exit $rc"]
    path = await client.run_container(name, image, command, opts)
    code = await client.wait(path)
    setup = await setup_lines(client, path, until="quilt: setup" if steps else None)
    out = await main_lines(client, path, expect_main)
    return Run(path, code, out, setup, await client.properties(path))


def headers(setup: list[str]) -> list[str]:
    """The header lines that start each step in the setup stream: "quilt: setup step N/M: ENTRY"."""
    return [line for line in setup if re.match(r"quilt: setup step \d+/\d+: ", line)]


def requests(server: packageindex.PackageServer, prefix: str) -> list[str]:
    """The server's GET/HEAD lines for paths under prefix (e.g. '/simple/', '/npm/', '/gem/')."""
    return [r for r in server.requests() if r.split(" ", 1)[1].startswith(prefix)]


async def no_path(client: Client, path: str, inside: str, tmp_path: Path) -> None:
    """`inside` does not exist in the container's filesystem (CopyFrom answers NoSuchPath)."""
    with pytest.raises(ClientError) as info:
        await client.copy_from(path, inside, str(tmp_path / "copied"))
    assert info.value.name == ERR + "NoSuchPath", info.value
