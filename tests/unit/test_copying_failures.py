"""A copy that the kernel refuses says what could not be copied and why, under a declared error: a path through a
link out of the tree is InvalidArgument, a full disk NoSpace naming the side written, anything else CopyFailed;
what the agent itself ran out of (file descriptors) is left for the bus layer to name with its limit."""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from quilt_agent import copying, filetree
from quilt_agent.errors import CopyFailed, InvalidArgument, NoSpace


@pytest.fixture
def root(tmp_path: Path) -> Iterator[int]:
    """A container's tree: /etc/hostname, and /loop/a and /loop/b, symbolic links to each other."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hostname").write_text("web\n")
    (tmp_path / "loop").mkdir()
    os.symlink("b", tmp_path / "loop/a")
    os.symlink("a", tmp_path / "loop/b")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def _copy_fails_with(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    def copy(entries: object, sink: filetree.Sink) -> None:
        sink.close()
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(filetree, "copy", copy)


def test_a_path_through_a_symlink_loop_is_invalid(root: int, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"Cannot copy '/loop/a/x' out of the container .*symbolic links"):
        copying.copy_from(root, "/loop/a/x", str(tmp_path / "out"))


def test_a_full_host_disk_is_no_space_naming_the_host(root: int, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _copy_fails_with(monkeypatch, errno.ENOSPC)
    with pytest.raises(NoSpace, match=r"copying '/etc/hostname' out of the container to .*the host's filesystem"):
        copying.copy_from(root, "/etc/hostname", str(tmp_path / "out"))


def test_a_full_container_disk_is_no_space_naming_the_container(root: int, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "host-file").write_text("x")
    _copy_fails_with(monkeypatch, errno.ENOSPC)
    with pytest.raises(NoSpace, match=r"into the container's '/etc/new': its writable layer"):
        copying.copy_to(root, str(tmp_path / "host-file"), "/etc/new")


def test_an_unreadable_proc_entry_is_copy_failed_saying_what_proc_is(root: int, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proc/1").mkdir(parents=True)
    (tmp_path / "proc/1/mem").write_text("")
    _copy_fails_with(monkeypatch, errno.EIO)
    with pytest.raises(CopyFailed, match=r"'/proc/1/mem' out of the container .*Input/output error.*kernel's view"):
        copying.copy_from(root, "/proc/1/mem", str(tmp_path / "out"))


def test_running_out_of_file_descriptors_is_left_to_the_bus_layer(root: int, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _copy_fails_with(monkeypatch, errno.EMFILE)
    with pytest.raises(OSError) as raised:
        copying.copy_from(root, "/etc/hostname", str(tmp_path / "out"))
    assert raised.value.errno == errno.EMFILE
