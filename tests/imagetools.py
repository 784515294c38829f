"""Test images made with the real tools, at test time: OCI layouts with umoci (a layer per step, whiteouts
computed by umoci's own diff), oci-archive and docker-archive files and registry pushes with skopeo.

Nothing here is a binary committed to the tree: every image is built from Debian's busybox-static and files
the tests write.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

Step = Callable[[Path], None]  # changes a rootfs in place; umoci makes a layer of the difference


def run(*cmd: str, input: bytes | None = None) -> str:
    result = subprocess.run(cmd, input=input, capture_output=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


def busybox(rootfs: Path) -> None:
    """A one-file userland: /bin/busybox and a link per applet, /etc/passwd, /tmp."""
    for d in ("bin", "etc", "tmp", "root"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    os.chmod(rootfs / "tmp", 0o1777)
    shutil.copy2("/bin/busybox", rootfs / "bin/busybox")
    for applet in run("/bin/busybox", "--list").split():
        if applet != "busybox" and not (rootfs / "bin" / applet).exists():
            os.symlink("/bin/busybox", rootfs / "bin" / applet)
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/tmp:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\nuser:x:1000:\n")


def oci_layout(layout: Path, tag: str, steps: Sequence[Step], config: Sequence[str] = (),
               raw_layers: Sequence[bytes] = (), base: str = "") -> Path:
    """An OCI image layout at `layout` (created if needed) with image `tag`: the layers of image `base` of the
    layout if given, one layer per step, then each raw (uncompressed) layer tar as it is, then `umoci config`
    flags (e.g. "--config.cmd=/bin/sh")."""
    if not (layout / "oci-layout").exists():
        run("umoci", "init", "--layout", str(layout))
    if base:
        run("umoci", "tag", "--image", f"{layout}:{base}", tag)
    else:
        run("umoci", "new", "--image", f"{layout}:{tag}")
    bundle = layout.parent / f".bundle-{tag}"
    for step in steps:
        run("umoci", "unpack", "--image", f"{layout}:{tag}", str(bundle))
        step(bundle / "rootfs")
        run("umoci", "repack", "--image", f"{layout}:{tag}", str(bundle))
        shutil.rmtree(bundle)
    for i, raw in enumerate(raw_layers):
        path = layout.parent / f".raw-{tag}-{i}.tar"
        path.write_bytes(raw)
        run("umoci", "raw", "add-layer", "--image", f"{layout}:{tag}", str(path))
        path.unlink()
    if config:
        run("umoci", "config", "--image", f"{layout}:{tag}", *config)
    run("umoci", "gc", "--layout", str(layout))
    return layout


def tar_layer(*members: tuple[str, bytes | None]) -> bytes:
    """An uncompressed layer tar: (name, data) for files, (name/, None) for directories."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name.rstrip("/"))
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def copy(source: str, dest: str, *flags: str) -> None:
    """skopeo copy, e.g. copy("oci:/x:v1", "docker-archive:/y.tar:app:v1")."""
    run("skopeo", "copy", "--quiet", *flags, source, dest)


def index_of(layout: Path) -> dict:
    return json.loads((layout / "index.json").read_text())


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def manifest_of(layout: Path, tag: str) -> tuple[str, dict]:
    for m in index_of(layout)["manifests"]:
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            return m["digest"], json.loads(blob(layout, m["digest"]).read_text())
    raise KeyError(tag)


def _write_blob(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob(layout, digest).write_bytes(data)
    return digest, len(data)


def set_config(layout: Path, tag: str, **fields: object) -> None:
    """Set keys of image `tag`'s run config (its "config" object) that umoci does not know, such as Docker's
    Healthcheck: a new config blob, manifest and index entry (the old blobs stay until `umoci gc`)."""
    _, manifest = manifest_of(layout, tag)
    config = json.loads(blob(layout, manifest["config"]["digest"]).read_text())
    config.setdefault("config", {}).update(fields)
    manifest["config"]["digest"], manifest["config"]["size"] = _write_blob(layout, json.dumps(config).encode())
    digest, size = _write_blob(layout, json.dumps(manifest).encode())
    index = index_of(layout)
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            entry["digest"], entry["size"] = digest, size
    (layout / "index.json").write_text(json.dumps(index))


def whiteout_steps() -> list[Step]:
    """Three layers: busybox; some files; then a file deleted and a directory replaced by a file."""

    def files(root: Path) -> None:
        (root / "etc/deleted").write_text("in the lower layer\n")
        (root / "opt/dir").mkdir(parents=True)
        (root / "opt/dir/inner").write_text("in the lower layer\n")
        (root / "etc/kept").write_text("kept\n")

    def delete_and_replace(root: Path) -> None:
        (root / "etc/deleted").unlink()
        shutil.rmtree(root / "opt/dir")
        (root / "opt/dir").write_text("now a file\n")

    return [busybox, files, delete_and_replace]


def opaque_layer() -> bytes:
    """A layer that makes /srv opaque (hiding what lower layers put there) and adds /srv/new."""
    return tar_layer(("srv/", None), ("srv/.wh..wh..opq", b""), ("srv/new", b"new\n"))


def image_index(layout: Path, tag: str, platforms: Sequence[tuple[str, str, str]]) -> str:
    """Add an image index named `tag` to the layout, over the images (source tag, os, architecture) given;
    returns its digest. skopeo copy --all pushes it as a manifest list."""
    import hashlib

    entries = []
    for source, os_name, arch in platforms:
        digest, _ = manifest_of(layout, source)
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest,
                        "size": blob(layout, digest).stat().st_size,
                        "platform": {"os": os_name, "architecture": arch}})
    data = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": entries}).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blob(layout, digest).write_bytes(data)
    index = index_of(layout)
    index["manifests"].append({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": digest,
                               "size": len(data), "annotations": {"org.opencontainers.image.ref.name": tag}})
    (layout / "index.json").write_text(json.dumps(index))
    return digest


def device_and_escape_layers() -> dict[str, bytes]:
    """Raw layers that try what an image must not: a member out of the root, an absolute symlink then a file
    through it, a hardlink to a host file; and one with device nodes and a setuid file (allowed, devices
    skipped)."""
    def build(*members: tarfile.TarInfo) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for m in members:
                tar.addfile(m, io.BytesIO(b"x" * m.size) if m.isreg() else None)
        return out.getvalue()

    def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, linkname: str = "",
               mode: int = 0o644) -> tarfile.TarInfo:
        m = tarfile.TarInfo(name)
        m.type, m.size, m.linkname, m.mode = kind, size, linkname, mode
        if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
            m.devmajor, m.devminor = 1, 3
        return m

    return {
        "dotdot": build(member("../../../escaped-dotdot", size=3)),
        "absolute-symlink": build(member("etc/", tarfile.DIRTYPE, mode=0o755),
                                  member("etc/evil", tarfile.SYMTYPE, linkname="/var/lib/quilt"),
                                  member("etc/evil/escaped-symlink", size=3)),
        "hardlink": build(member("shadow", tarfile.LNKTYPE, linkname="../../../../etc/shadow")),
        "devices": build(member("dev/", tarfile.DIRTYPE, mode=0o755), member("dev/null", tarfile.CHRTYPE),
                         member("dev/sda", tarfile.BLKTYPE), member("bin/", tarfile.DIRTYPE, mode=0o755),
                         member("bin/suid", size=4, mode=0o4755)),
    }
