"""What the volume tests share: an image with a planted symlink and a non-empty directory, running a script in a
container to its end, and removing every volume a test made."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import AsyncIterator

import pytest

from quilt_agent.client import Client
from tests.integration.cleanup import VOLUME_GONE, Cleanup
from tests.integration.conftest import remove_containers
from tests.integration.network.conftest import END, Output, logs_until_end

ERR = "org.quilt.Runtime.Error."
VOLUMES = Path("/var/lib/quilt/volumes")
HOSTDIR = "/tmp/quilt-volume-hostdir"  # what the image's symlink points at, on the host's side


@pytest.fixture(scope="session")
def volume_image(busybox_tar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """busybox plus `evil -> /tmp/quilt-volume-hostdir` (absolute: a runtime that resolves it on the host
    would mount there) and `seed/` with content to copy up into a new volume."""
    out = tmp_path_factory.mktemp("volimg") / "volimg.tar"
    with tarfile.open(busybox_tar) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        link = tarfile.TarInfo("evil")
        link.type, link.linkname = tarfile.SYMTYPE, HOSTDIR
        dst.addfile(link)
        rel = tarfile.TarInfo("relevil")
        rel.type, rel.linkname = tarfile.SYMTYPE, "../../../../../../tmp/quilt-volume-hostdir"
        dst.addfile(rel)
        seed = tarfile.TarInfo("seed")
        seed.type, seed.mode = tarfile.DIRTYPE, 0o750
        dst.addfile(seed)
        data = b"from the image\n"
        f = tarfile.TarInfo("seed/hello.txt")
        f.size = len(data)
        dst.addfile(f, io.BytesIO(data))
    return out


async def run(client: Client, name: str, image: Path | str, script: str, options: dict | None = None) -> Output:
    wrapped = f"{script}\nrc=$?; echo {END}; echo {END} >&2; exit $rc"
    path = await client.run_container(name, str(image), ["/bin/sh", "-c", wrapped], options or {})
    code = await client.wait(path)
    out, err = await logs_until_end(client, path)
    await client.remove(path, force=True)
    return Output(code, out, err)


@pytest.fixture
async def vclient(client: Client) -> AsyncIterator[Client]:
    """The client fixture, and every volume left by the test removed after its containers."""
    yield client
    cleanup = Cleanup("vclient")
    await cleanup.attempt("list containers", remove_containers(client, cleanup))
    await cleanup.attempt("list volumes", remove_volumes(client, cleanup))
    cleanup.report()


async def remove_volumes(client: Client, cleanup: Cleanup) -> None:
    for name, _, _ in await client.list_volumes():
        await cleanup.attempt(f"remove volume {name}", client.remove_volume(name, True), VOLUME_GONE)
    cleanup.left("volumes", [name for name, _, _ in await client.list_volumes()])
