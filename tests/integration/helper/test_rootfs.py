"""The root filesystem's own mount points: an image cannot point /proc, /sys or /dev somewhere else."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from quilt_agent.client import Client, ClientError


def image_with(busybox_tar: Path, out: Path, name: str, link: str) -> Path:
    """busybox with /NAME replaced by a symlink to link."""
    with tarfile.open(busybox_tar) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            top = member.name.lstrip("./").split("/")[0]
            if top != name:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        entry = tarfile.TarInfo(name)
        entry.type, entry.linkname = tarfile.SYMTYPE, link
        dst.addfile(entry)
    return out


@pytest.mark.parametrize(("name", "link"), [("proc", "/etc"), ("sys", "/tmp"), ("dev", "../../../../etc")])
async def test_a_symlinked_proc_sys_or_dev_in_the_image_is_refused(
        client: Client, busybox_tar: Path, tmp_path: Path, name: str, link: str) -> None:
    image = image_with(busybox_tar, tmp_path / f"{name}.tar", name, link)
    with pytest.raises(ClientError) as failed:
        await client.run_container(f"rootfs-{name}", str(image), ["/bin/true"])
    assert failed.value.name == "org.quilt.Runtime.Error.ContainerFailed"
    assert f"the image's /{name} is not a directory" in failed.value.message
