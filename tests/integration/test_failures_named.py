"""What the machine runs out of, and what the kernel refuses, reaches a caller as a declared error that says so:
an image import into a full filesystem is NoSpace and leaves the image store as it was; a container whose
environment is too large to hand over is InvalidArgument."""
from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError

ERR = "org.quilt.Runtime.Error."
IMAGES = Path("/var/lib/quilt/images")
SCRATCH = IMAGES / "tmp"  # where an import unpacks, before its layers are renamed into place


def store_tree() -> dict[str, int]:
    """Every path of the image store but its scratch directory, with its mode."""
    out = {}
    for directory, dirs, files in os.walk(IMAGES):
        for name in (*dirs, *files):
            rel = os.path.relpath(os.path.join(directory, name), IMAGES)
            if rel != "tmp" and not rel.startswith("tmp/"):
                out[rel] = os.lstat(os.path.join(directory, name)).st_mode
    return out


@pytest.fixture
def full_scratch(agent: None) -> Iterator[Path]:
    """The image store's scratch directory on a 1 MiB tmpfs of its own, for the test; the store's own directory
    as it was afterwards."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "quilt-test-full", str(SCRATCH)], check=True)
    try:
        yield SCRATCH
    finally:
        subprocess.run(["umount", str(SCRATCH)], check=True)


def big_rootfs(path: Path) -> Path:
    """A rootfs tarball with 4 MiB of incompressible data: more than the scratch tmpfs holds."""
    data = path.parent / "random.bin"
    data.write_bytes(os.urandom(4 << 20))
    with tarfile.open(path, "w") as tar:
        tar.add(data, arcname="data/random.bin")
    return path


async def test_an_image_import_into_a_full_filesystem_is_no_space_and_leaves_nothing(
        client: Client, full_scratch: Path, tmp_path: Path) -> None:
    source = big_rootfs(tmp_path / "big.tar")
    images_before = {e.id for e in await client.list_images()}
    tree_before = store_tree()
    with pytest.raises(ClientError) as refused:
        await client.import_image(str(source), "quilt-test/full:1")
    assert refused.value.name == ERR + "NoSpace", refused.value
    assert "No space left" in refused.value.message and "Free space" in refused.value.message, refused.value
    assert {e.id for e in await client.list_images()} == images_before
    assert store_tree() == tree_before, "the image store changed"
    assert list(full_scratch.iterdir()) == [], "the import left its work behind"


async def test_a_run_with_a_3_mb_environment_is_invalid_argument_and_leaves_no_container(
        client: Client, busybox_tar: Path, name: str) -> None:
    with pytest.raises(ClientError) as refused:
        await client.run_container(name, str(busybox_tar), ["/bin/true"], {"env": ["BIG=" + "x" * (3 << 20)]})
    assert refused.value.name == ERR + "InvalidArgument", refused.value
    assert "environment" in refused.value.message and "at most" in refused.value.message, refused.value
    assert name not in [c.name for c in await client.list_containers()]
