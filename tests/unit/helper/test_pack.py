"""Packing an overlayfs upper directory into an OCI layer (quilt_agent/helper/pack.py): overlayfs's deletion
marks become OCI whiteouts. Needs root, as the agent does (mknod, trusted.* xattrs)."""
from __future__ import annotations

import io
import os
import stat
import struct
import tarfile
from pathlib import Path

import pytest

from quilt_agent.helper import pack


def test_upper_directory_becomes_an_oci_layer_with_whiteouts(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    (upper / "usr/lib").mkdir(parents=True)
    (upper / "usr/lib/new.py").write_text("print(1)\n")
    os.link(upper / "usr/lib/new.py", upper / "usr/lib/same.py")
    os.symlink("new.py", upper / "usr/lib/link.py")
    os.mknod(upper / "usr/lib/gone.py", stat.S_IFCHR | 0o000, os.makedev(0, 0))  # a deleted lower file
    (upper / "opt").mkdir()
    os.setxattr(upper / "opt", "trusted.overlay.opaque", b"y")  # a directory whose lower content is hidden
    (upper / "etc").mkdir()
    (upper / "etc/resolv.conf").write_text("")
    out = io.BytesIO()
    pack.write_layer(str(upper), out, frozenset({"etc/resolv.conf"}))
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile("usr/lib/new.py").read() == b"print(1)\n"
    assert members["usr/lib/.wh.gone.py"].isreg() and "usr/lib/gone.py" not in members
    assert members["opt/.wh..wh..opq"].isreg()
    assert members["usr/lib/link.py"].issym() and members["usr/lib/link.py"].linkname == "new.py"
    assert {members["usr/lib/same.py"].islnk(), members["usr/lib/new.py"].islnk()} == {True, False}
    assert "etc/resolv.conf" not in members and members["etc"].isdir()


def test_file_capabilities_and_user_xattrs_go_into_the_layer(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "ping").write_bytes(b"x")
    cap = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)  # cap_net_raw+ep, as a postinst's setcap leaves it
    os.setxattr(upper / "ping", "security.capability", cap)
    os.setxattr(upper / "ping", "user.note", b"kept")
    out = io.BytesIO()
    pack.write_layer(str(upper), out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        headers = tar.getmember("ping").pax_headers
    assert headers["SCHILY.xattr.security.capability"].encode("utf-8", "surrogateescape") == cap
    assert headers["SCHILY.xattr.user.note"] == "kept"


def test_a_user_namespaces_layer_gets_the_ids_the_container_saw(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    first = 524288
    for name, uid in (("root-file", first), ("user-file", first + 1000), ("stranger", 7)):
        (upper / name).write_text("x")
        os.chown(upper / name, uid, uid)
    out = io.BytesIO()
    pack.write_layer(str(upper), out, id_first=first)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        owners = {m.name: (m.uid, m.gid) for m in tar.getmembers()}
    assert owners == {"root-file": (0, 0), "user-file": (1000, 1000), "stranger": (65534, 65534)}


def test_pack_writes_the_layer_from_a_chrooted_child(tmp_path: Path) -> None:
    upper = tmp_path / "upper"
    upper.mkdir()
    (upper / "f").write_text("x")
    # A symlink planted by the container: inside the chroot it points at the upper directory's own /f.
    os.symlink("/f", upper / "escape")
    pack.pack(str(upper), str(tmp_path / "layer.tar"))
    with tarfile.open(tmp_path / "layer.tar") as tar:
        assert sorted(tar.getnames()) == ["escape", "f"]
        assert tar.getmember("escape").linkname == "/f"


def test_a_failed_pack_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="packing"):
        pack.pack(str(tmp_path / "missing"), str(tmp_path / "layer.tar"))
    assert not (tmp_path / "layer.tar").exists()
