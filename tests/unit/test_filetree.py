"""filetree.py: walk and Sink (the copy core of cp and volume copy-up), tar streams, docker cp's destination rule;
and helper/mounts.py's copy-up on a plain directory. Hermetic in tmp_path; some need root (owners, device nodes,
mounts), as make test runs them."""
from __future__ import annotations

import errno
import io
import os
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from quilt_agent import filetree
from quilt_agent.filetree import CopyError, Entry, Sink

T1 = 1_600_000_000_123_456_789  # times with nanoseconds, to see they are kept to the last digit
T2 = 1_500_000_000_987_654_321


def opath(p: Path) -> int:
    return os.open(p, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)


def copy_tree(src: Path, dest_parent: Path, name: str, **kw: bool) -> None:
    top, parent = opath(src), os.open(dest_parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        filetree.copy(filetree.walk(top), Sink(parent, name, **kw))
    finally:
        os.close(top)
        os.close(parent)


def snapshot(top: Path) -> dict[str, tuple]:
    """Every entry below top (top itself as '.'): kind, mode, owner, content or target, mtime."""
    out: dict[str, tuple] = {}
    for p in [top, *sorted(top.rglob("*"))]:
        st = p.lstat()
        rel = str(p.relative_to(top))
        if stat.S_ISLNK(st.st_mode):
            what: object = ("link", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            what = ("dir",)
        elif stat.S_ISREG(st.st_mode):
            what = ("file", p.read_bytes())
        else:
            what = ("other", stat.S_IFMT(st.st_mode))
        mode = None if stat.S_ISLNK(st.st_mode) else stat.S_IMODE(st.st_mode)
        out[rel] = (what, mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """src/: files with modes, a read-only subdirectory, symlinks (relative, absolute, dangling), exact times."""
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"alpha\n")
    (src / "empty").write_bytes(b"")
    (src / "sub" / "b.bin").write_bytes(bytes(range(256)) * 5000)  # more than one read
    (src / "sub" / "deeper" / "c").write_text("c\n")
    os.symlink("../a.txt", src / "sub" / "rel")
    os.symlink("/etc/passwd", src / "abs")
    os.symlink("nowhere", src / "dangling")
    os.chmod(src / "a.txt", 0o640)
    os.chmod(src / "empty", 0o4755)
    os.chmod(src / "sub" / "deeper", 0o555)  # its content must still be written into it
    os.chmod(src / "sub", 0o750)
    for i, p in enumerate([src / "a.txt", src / "sub" / "b.bin", src / "sub" / "deeper", src / "sub", src]):
        os.utime(p, ns=(T2 + i, T1 + i))
    os.utime(src / "abs", ns=(T2, T1), follow_symlinks=False)
    return src


def test_walk_and_sink_copy_files_dirs_symlinks_modes_and_times(tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    copy_tree(tree, dest, "copy")
    assert snapshot(dest / "copy") == snapshot(tree)
    assert (dest / "copy" / "abs").lstat().st_mtime_ns == T1  # a symlink's own time, not its target's


def test_sink_strip_setid_drops_setuid_and_setgid_only(tree: Path, tmp_path: Path) -> None:
    os.chmod(tree / "sub", 0o2750)
    copy_tree(tree, tmp_path, "out", strip_setid=True)
    assert stat.S_IMODE((tmp_path / "out" / "empty").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "sub").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "out" / "a.txt").stat().st_mode) == 0o640


def test_sink_sets_owners_as_root_and_keeps_its_own_without_owners(tree: Path, tmp_path: Path) -> None:
    os.chown(tree / "a.txt", 1234, 5678)
    os.chown(tree / "sub", 4321, 8765)
    os.chown(tree / "abs", 1111, 2222, follow_symlinks=False)
    copy_tree(tree, tmp_path, "owned")
    assert snapshot(tmp_path / "owned") == snapshot(tree)
    assert os.lstat(tmp_path / "owned" / "abs").st_uid == 1111  # the link itself, not /etc/passwd
    assert os.stat("/etc/passwd").st_uid == 0
    copy_tree(tree, tmp_path, "mine", owners=False)
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in (tmp_path / "mine").rglob("*")} == {(0, 0)}


def test_fifos_sockets_and_devices_are_skipped_never_opened(tree: Path, tmp_path: Path) -> None:
    os.mkfifo(tree / "fifo")  # opening it for reading would block the copy forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tree / "sock"))
    os.mknod(tree / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    try:
        kinds = {e.path: e.kind for e in filetree.walk(opath(tree))}
        assert ("fifo",) not in kinds and ("sock",) not in kinds and ("null",) not in kinds
        copy_tree(tree, tmp_path, "out")
    finally:
        sock.close()
    assert sorted(os.listdir(tmp_path / "out")) == ["a.txt", "abs", "dangling", "empty", "sub"]


def test_walk_of_a_symlink_or_a_file_yields_that_one_entry(tree: Path) -> None:
    (link,) = filetree.walk(opath(tree / "abs"))
    assert (link.path, link.kind, link.target) == ((), "symlink", "/etc/passwd")
    fd = opath(tree / "a.txt")
    entries = []
    for e in filetree.walk(fd):
        assert e.read is not None
        entries.append((e.path, e.kind, e.size, e.read(100)))
    assert entries == [((), "file", 6, b"alpha\n")]
    os.close(fd)


def test_walk_never_follows_a_symlink_to_a_directory(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(outside, src / "link")
    assert [(e.path, e.kind) for e in filetree.walk(opath(src))] == [((), "dir"), (("link",), "symlink")]


# --- the destination is never written through a symlink ----------------------------------------------------------

@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the copy's destination, which a planted symlink points at."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "a.txt").write_text("untouched\n")
    return out


def test_planted_symlink_in_a_file_position_is_replaced_not_written_through(tree: Path, tmp_path: Path,
                                                                            outside: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "copy").mkdir(parents=True)
    os.symlink(outside / "a.txt", dest / "copy" / "a.txt")
    copy_tree(tree, dest, "copy")
    assert not (dest / "copy" / "a.txt").is_symlink()
    assert (dest / "copy" / "a.txt").read_text() == "alpha\n"
    assert (outside / "a.txt").read_text() == "untouched\n"
    assert stat.S_IMODE((outside / "a.txt").stat().st_mode) != 0o640


def test_planted_symlink_in_a_directory_position_is_replaced_not_written_through(tree: Path, tmp_path: Path,
                                                                                 outside: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "copy").mkdir(parents=True)
    os.symlink(outside, dest / "copy" / "sub")
    before = snapshot(outside)
    copy_tree(tree, dest, "copy")
    assert (dest / "copy" / "sub").is_dir() and not (dest / "copy" / "sub").is_symlink()
    assert (dest / "copy" / "sub" / "deeper" / "c").read_text() == "c\n"
    assert snapshot(outside) == before


def test_planted_symlink_at_the_top_name_is_replaced(tree: Path, tmp_path: Path, outside: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "copy")
    before = snapshot(outside)
    copy_tree(tree, dest, "copy")
    assert not (dest / "copy").is_symlink() and (dest / "copy" / "a.txt").read_text() == "alpha\n"
    assert snapshot(outside) == before


def test_symlink_swapped_in_for_a_held_directory_is_never_followed(tree: Path, tmp_path: Path,
                                                                  outside: Path) -> None:
    """What a container could do between two entries: the Sink holds each directory on the way open, so the rest
    of its content goes where the directory went, never through the symlink put in its place."""
    dest = tmp_path / "dest"
    dest.mkdir()
    parent = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    sink = Sink(parent, "copy")
    before = snapshot(outside)

    def swapping() -> Iterator[Entry]:
        for e in filetree.walk(opath(tree)):
            if e.path == ("sub", "b.bin"):
                os.rename(dest / "copy" / "sub", tmp_path / "moved")
                os.symlink(outside, dest / "copy" / "sub")
            yield e
    filetree.copy(swapping(), sink)
    assert snapshot(outside) == before
    assert (tmp_path / "moved" / "b.bin").is_file() and (dest / "copy" / "sub").is_symlink()
    os.close(parent)


def test_a_symlink_swapped_in_for_a_directory_not_yet_held_is_refused(tree: Path, tmp_path: Path,
                                                                      outside: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "copy").mkdir(parents=True)
    os.symlink(outside, dest / "copy" / "sub")  # planted before the copy: replaced by a directory
    before = snapshot(outside)
    parent = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    filetree.copy(filetree.walk(opath(tree)), Sink(parent, "copy"))
    os.close(parent)
    assert snapshot(outside) == before and (dest / "copy" / "sub").is_dir()
    with pytest.raises(CopyError) as err:  # a parent that is a symlink when first reached: refused
        sink = Sink(os.open(dest, os.O_PATH | os.O_DIRECTORY), "copy2")
        os.symlink(outside, dest / "copy2")
        sink.put(Entry(("x",), "file", 0o644, 0, 0, 0, 0, size=0, read=lambda n: b""))
    assert err.value.errno == errno.ELOOP and "copy2" in str(err.value)
    assert snapshot(outside) == before


def test_a_directory_where_a_file_goes_is_a_copy_error(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "dest" / "copy" / "a.txt").mkdir(parents=True)
    with pytest.raises(CopyError) as err:
        copy_tree(tree, tmp_path / "dest", "copy")
    assert err.value.errno == errno.EISDIR and "copy/a.txt" in str(err.value)


def test_a_file_where_a_directory_goes_is_replaced(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "dest" / "copy").mkdir(parents=True)
    (tmp_path / "dest" / "copy" / "sub").write_text("in the way")
    copy_tree(tree, tmp_path / "dest", "copy")
    assert snapshot(tmp_path / "dest" / "copy") == snapshot(tree)


@pytest.mark.parametrize("top", ["", ".", "..", "a/b"])
def test_sink_refuses_a_top_that_is_not_one_name(tmp_path: Path, top: str) -> None:
    with pytest.raises(CopyError):
        Sink(os.open(tmp_path, os.O_PATH), top)


def test_a_tree_deeper_than_path_max_is_copied(tmp_path: Path) -> None:
    """A container can make one (mkdir and cd, again and again); walk reads it by fds, the Sink should too."""
    src = tmp_path / "src"
    src.mkdir()
    fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(20):  # 20 * 251 characters: beyond PATH_MAX (4096)
        os.mkdir("d" * 250, dir_fd=fd)
        fd2 = os.open("d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = fd2
    os.close(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    os.close(fd)
    top = opath(src)
    assert sum(1 for _ in filetree.walk(top)) == 22
    parent = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    filetree.copy(filetree.walk(top), Sink(parent, "out"))
    copied = list(filetree.walk(opath(tmp_path / "out")))  # by fds: no path to it fits in PATH_MAX
    assert len(copied) == 22 and copied[-1].path[-1] == "leaf" and len(copied[-1].path) == 21
    shutil.rmtree(tmp_path / "out")
    shutil.rmtree(src)


def test_a_tree_deeper_than_the_limit_is_refused_not_half_walked(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(filetree.MAX_DEPTH + 1):
        os.mkdir("d", dir_fd=fd)
        fd2 = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = fd2
    os.close(fd)
    with pytest.raises(CopyError) as err:
        list(filetree.walk(opath(tmp_path / "d")))
    assert err.value.errno == errno.ELOOP and str(filetree.MAX_DEPTH) in str(err.value)


# --- tar streams -------------------------------------------------------------------------------------------------

def tar_of(*members: tuple[str, bytes | None, str]) -> io.BytesIO:
    """An archive of (name, content or None for a directory, symlink target or '')."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if target:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def unpack(archive: io.BytesIO, dest: Path) -> str:
    top, entries = filetree.read_tar(archive)
    parent = os.open(dest, os.O_PATH | os.O_DIRECTORY)
    try:
        filetree.copy(entries, Sink(parent, top))
    finally:
        os.close(parent)
    return top


def test_write_tar_read_tar_round_trip_keeps_tree_modes_times_and_symlinks(tree: Path, tmp_path: Path) -> None:
    buf = io.BytesIO()
    filetree.write_tar(filetree.walk(opath(tree)), "copy", buf)
    buf.seek(0)
    dest = tmp_path / "dest"
    dest.mkdir()
    assert unpack(buf, dest) == "copy"
    assert snapshot(dest / "copy") == snapshot(tree)


def test_read_tar_gives_the_entries_in_order_with_their_metadata() -> None:
    top, entries = filetree.read_tar(tar_of(("t", None, ""), ("t/f", b"data", ""), ("t/l", None, "/etc")))
    got = [(e.path, e.kind, e.target, e.read(10) if e.read else None) for e in entries]
    assert top == "t" and got == [((), "dir", "", None), (("f",), "file", "", b"data"),
                                  (("l",), "symlink", "/etc", None)]


@pytest.mark.parametrize("bad", ["t/../evil", "../evil", "t/sub/../../evil", ".."])
def test_read_tar_refuses_dotdot_names(tmp_path: Path, bad: str) -> None:
    archive = tar_of(("t", None, ""), (bad, b"x", "")) if bad.startswith("t/") else tar_of((bad, b"x", ""))
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(CopyError) as err:
        unpack(archive, dest)
    assert err.value.errno == errno.EINVAL and bad in str(err.value)
    assert not (tmp_path / "evil").exists() and not (dest / "evil").exists()


def test_read_tar_makes_absolute_names_relative(tmp_path: Path) -> None:
    archive = tar_of(("/t", None, ""), ("/t/f", b"abs", ""), ("//t/./g", b"dots", ""))
    assert unpack(archive, tmp_path) == "t"
    assert (tmp_path / "t" / "f").read_bytes() == b"abs" and (tmp_path / "t" / "g").read_bytes() == b"dots"


def test_read_tar_refuses_a_second_top(tmp_path: Path) -> None:
    archive = tar_of(("a", None, ""), ("a/x", b"1", ""), ("b", None, ""), ("b/y", b"2", ""))
    with pytest.raises(CopyError) as err:
        unpack(archive, tmp_path)
    assert "'b' is not below 'a'" in str(err.value)
    assert not (tmp_path / "b").exists()


def test_read_tar_skips_hard_links_devices_and_fifos(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind in (("t", tarfile.DIRTYPE), ("t/hard", tarfile.LNKTYPE), ("t/dev", tarfile.CHRTYPE),
                           ("t/fifo", tarfile.FIFOTYPE)):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, "/etc/shadow" if kind == tarfile.LNKTYPE else ""
            tar.addfile(info)
    buf.seek(0)
    unpack(buf, tmp_path)
    assert os.listdir(tmp_path / "t") == []


def test_read_tar_of_an_empty_archive_is_a_copy_error() -> None:
    with pytest.raises(CopyError):
        filetree.read_tar(tar_of())


def test_symlink_in_an_archive_is_never_followed_by_a_later_entry(tmp_path: Path, outside: Path) -> None:
    """The archive form of the planted symlink: t/l -> outside, then t/l/a.txt."""
    archive = tar_of(("t", None, ""), ("t/l", None, str(outside)), ("t/l/a.txt", b"through\n", ""))
    with pytest.raises(CopyError) as err:
        unpack(archive, tmp_path)
    assert err.value.errno == errno.ELOOP and "t/l" in str(err.value)
    assert (outside / "a.txt").read_text() == "untouched\n"


def _entry(read: object, size: int) -> Entry:
    return Entry((), "file", 0o644, 0, 0, T2, T1, size=size, read=read)  # type: ignore[arg-type]


def test_write_tar_writes_exactly_the_size_it_announced(tmp_path: Path) -> None:
    """A file that shrank or grew between its stat and its read: padded or cut, the stream stays readable."""
    for data, size, expected in ((b"abc", 6, b"abc\0\0\0"), (b"abcdefgh", 4, b"abcd")):
        src = io.BytesIO(data)
        buf = io.BytesIO()
        filetree.write_tar([_entry(src.read, size)], "f", buf)
        buf.seek(0)
        with tarfile.open(fileobj=buf) as tar:
            member = tar.getmember("f")
            assert member.size == size and tar.extractfile(member).read() == expected  # type: ignore[union-attr]


def test_write_tar_keeps_the_content_of_a_file_read_in_short_pieces() -> None:
    """os.read may return less than asked before the end of a file (a FUSE or network file system, a signal)."""
    data = bytes(range(256)) * 300
    src = io.BytesIO(data)
    buf = io.BytesIO()
    filetree.write_tar([_entry(lambda n: src.read(min(n, 1000)), len(data))], "f", buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        assert tar.extractfile("f").read() == data  # type: ignore[union-attr]


def test_tar_times_before_1970_and_whole_seconds_round_trip(tmp_path: Path) -> None:
    times = [-1, -1_500_000_000_000_000_001, 0, 1_000_000_000, T1]
    buf = io.BytesIO()
    filetree.write_tar([Entry(("d%d" % i,) if i else (), "dir", 0o755, 0, 0, t, t) for i, t in enumerate(times)],
                       "t", buf)
    buf.seek(0)
    _, entries = filetree.read_tar(buf)
    assert [(e.mtime_ns, e.atime_ns) for e in entries] == [(t, t) for t in times]


def test_read_tar_takes_times_written_by_other_tools(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, mtime, pax in (("t", 1_600_000_000, {}), ("t/a", 1.5, {}), ("t/b", 0, {"mtime": "2.25"}),
                                 ("t/c", 0, {"mtime": "1e3"})):
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.pax_headers = tarfile.DIRTYPE, mtime, pax
            tar.addfile(info)
    buf.seek(0)
    _, entries = filetree.read_tar(buf)
    assert [e.mtime_ns for e in entries] == [1_600_000_000 * 10**9, 1_500_000_000, 2_250_000_000, 10**12]


@pytest.mark.parametrize("name,top", [("/", "root"), ("/a/b", "b"), ("/a/b/", "b"), ("/a/b/.", "b"), ("x", "x")])
def test_tar_top_is_the_last_component(name: str, top: str) -> None:
    assert filetree.tar_top(name) == top


# --- docker cp's destination rule -------------------------------------------------------------------------------

def _dest(tmp_path: Path, dest: str) -> tuple[str, str]:
    def open_dir(p: str) -> int:
        return os.open(tmp_path / p.lstrip("/"), os.O_PATH | os.O_DIRECTORY)
    fd, name = filetree.destination(open_dir, dest, "top")
    try:
        return os.readlink(f"/proc/self/fd/{fd}"), name
    finally:
        os.close(fd)


def test_destination_an_existing_directory_receives_the_source_under_its_own_name(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    assert _dest(tmp_path, "/dir") == (str(tmp_path / "dir"), "top")
    assert _dest(tmp_path, "/dir/") == (str(tmp_path / "dir"), "top")
    assert _dest(tmp_path, "/") == (str(tmp_path), "top")


def test_destination_a_new_name_in_an_existing_directory_is_the_new_name(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "file").write_text("")
    assert _dest(tmp_path, "/dir/new") == (str(tmp_path / "dir"), "new")
    assert _dest(tmp_path, "/new") == (str(tmp_path), "new")
    assert _dest(tmp_path, "/dir/file") == (str(tmp_path / "dir"), "file")  # an existing file: replaced


def test_destination_with_a_missing_parent_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        _dest(tmp_path, "/no/such/new")
    assert err.value.filename == "/no/such"
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError) as err:
        _dest(tmp_path, "/file/new")  # a file as the parent
    assert err.value.filename == "/file"


def test_destination_ending_with_a_slash_must_be_an_existing_directory(tmp_path: Path) -> None:
    """docker cp: 'DEST_PATH does not exist and ends with /: the destination directory must exist'."""
    with pytest.raises(FileNotFoundError):
        _dest(tmp_path, "/new/")


# --- same_mount: what volume copy-up relies on -----------------------------------------------------------------

SAME_MOUNT = textwrap.dedent("""
    import os, sys
    from quilt_agent import filetree
    from quilt_agent.helper.syscalls import mount, MS_BIND
    top = sys.argv[1]
    mount("tmpfs", top + "/mnt", "tmpfs", 0, "size=1m")
    open(top + "/mnt/on-tmpfs", "w").close()
    mount(top + "/bound-src", top + "/bound", None, MS_BIND)
    fd = os.open(top, os.O_PATH | os.O_NOFOLLOW)
    for same in (True, False):
        print(sorted("/".join(e.path) for e in filetree.walk(fd, same_mount=same)))
""")


def test_same_mount_leaves_out_what_is_mounted_below_the_top(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("no unshare(1): util-linux is Essential on Debian")
    top = tmp_path / "top"
    (top / "mnt").mkdir(parents=True)
    (top / "own").write_text("x")
    (top / "bound").write_text("")  # a file bind-mounted over, as /etc/resolv.conf in a container
    (tmp_path / "top" / "bound-src").write_text("host")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", SAME_MOUNT,
                             str(top)], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.fail(f"no mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    same, every = result.stdout.splitlines()
    assert same == str(["", "bound-src", "own"])  # neither the tmpfs nor the bound file, nor the mount point
    assert every == str(["", "bound", "bound-src", "mnt", "mnt/on-tmpfs", "own"])
    assert os.listdir(top / "mnt") == []  # the mounts lived in the child's namespace only


# --- volume copy-up (helper/mounts.py) on a plain directory: staging, failure, capabilities ------------------------

@pytest.fixture
def copyup(tmp_path: Path, tree: Path) -> Iterator[tuple[int, int, Path]]:
    """(root fd, target fd, the volume's empty _data): the container's root is tmp_path, the image dir src."""
    data = tmp_path / "volumes" / "v" / "_data"
    data.mkdir(parents=True)
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    target = os.open(tree, os.O_PATH | os.O_DIRECTORY)
    yield root, target, data
    os.close(root)
    os.close(target)


def test_copy_up_fills_the_volume_and_gives_its_root_the_directory_mode(copyup: tuple[int, int, Path],
                                                                       tree: Path) -> None:
    from quilt_agent.helper import mounts
    root, target, data = copyup
    os.chmod(tree, 0o710)
    os.chown(tree, 1234, 5678)
    mounts._copy_up(root, target, str(data))
    got, want = snapshot(data), snapshot(tree)
    assert got.pop(".")[:4] == want.pop(".")[:4] == (("dir",), 0o710, 1234, 5678)
    assert got == want
    assert os.listdir(data.parent) == ["_data"]  # the staging directory is gone


def test_copy_up_that_fails_midway_leaves_the_volume_empty(copyup: tuple[int, int, Path],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from quilt_agent.helper import mounts
    root, target, data = copyup
    put = Sink.put

    def failing(self: Sink, e: Entry) -> None:
        if e.path == ("sub", "b.bin"):
            raise CopyError(errno.ENOSPC, "no space for 'sub/b.bin'")
        put(self, e)
    monkeypatch.setattr(Sink, "put", failing)  # the forked child inherits it
    with pytest.raises(OSError) as err:
        mounts._copy_up(root, target, str(data))
    assert "sub/b.bin" in str(err.value)
    assert os.listdir(data) == [] and os.listdir(data.parent) == ["_data"]
    assert stat.S_IMODE(data.stat().st_mode) == 0o755  # not given the image directory's mode either


def test_copy_up_runs_with_the_container_capabilities_only(copyup: tuple[int, int, Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from quilt_agent.helper import mounts
    from quilt_agent.helper.process import DEFAULT_CAPABILITIES
    root, target, data = copyup
    seen = tmp_path / "status"
    real = filetree.copy

    def observed(entries: Iterator[Entry], sink: Sink) -> None:
        seen.write_text(Path("/proc/self/status").read_text())
        real(entries, sink)
    monkeypatch.setattr(filetree, "copy", observed)
    mounts._copy_up(root, target, str(data))
    status = dict(line.split(":\t", 1) for line in seen.read_text().splitlines() if ":\t" in line)
    default = sum(1 << c for c in DEFAULT_CAPABILITIES.values())
    assert int(status["CapEff"], 16) & ~default == 0, status["CapEff"]
    assert int(status["CapBnd"], 16) & ~default == 0, status["CapBnd"]
    assert status["NoNewPrivs"].strip() == "1"
    assert os.getpid() != int(status["Pid"])  # a child: the agent's own process keeps its capabilities


# --- remove_tree and tree_size: trees of any depth -----------------------------------------------------------------

DEEP = 5000  # far past Python's recursion limit and PATH_MAX: only a walk by fd and name reaches the bottom


def make_deep(top: Path, depth: int, outside: Path) -> None:
    """top/d/d/.../d, depth levels below top, each with a symlink to outside, every 50th with a file and a symlink
    to outside's file; the last 'd' is a symlink to outside. Made by fd: its paths are longer than the kernel
    takes."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for level in range(depth + 1):
            os.symlink(outside, "out", dir_fd=fd)
            if level % 50 == 0:
                out = os.open("f", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644, dir_fd=fd)
                os.write(out, b"x" * 5000)
                os.close(out)
                os.symlink(outside / "a.txt", "out-file", dir_fd=fd)
            if level == depth:
                os.symlink(outside, "d", dir_fd=fd)
                break
            os.mkdir("d", dir_fd=fd)
            below = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


def deep_blocks(top: Path) -> int:
    """st_blocks * 512 of every entry below top, as make_deep made it, going down by fd."""
    total = 0
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        while True:
            total += sum(os.stat(n, dir_fd=fd, follow_symlinks=False).st_blocks * 512 for n in os.listdir(fd))
            try:
                below = os.open("d", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:  # the last one, a symlink
                return total
            os.close(fd)
            fd = below
    finally:
        os.close(fd)


@pytest.fixture
def deep(tmp_path: Path, outside: Path) -> Iterator[Path]:
    top = tmp_path / "deep"
    make_deep(top, DEEP, outside)
    yield top
    # Whatever the test did, no tree pytest's own cleanup (shutil.rmtree) cannot remove is left behind.
    subprocess.run(["rm", "-rf", "--", str(top)], check=True)


def test_remove_tree_removes_a_deep_tree_with_bounded_fds_and_follows_no_symlink(deep: Path, outside: Path) -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # New fds must stay below 64 past the highest one open now: an fd held per level would hit EMFILE at once.
    highest = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 64, hard))
    try:
        filetree.remove_tree(deep)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not os.path.lexists(deep)
    assert os.listdir(outside) == ["a.txt"] and (outside / "a.txt").read_text() == "untouched\n"


def test_tree_size_of_a_deep_tree_counts_every_entry_and_follows_no_symlink(deep: Path, outside: Path) -> None:
    (outside / "big").write_bytes(b"y" * (1 << 20))  # reached through every 'out' symlink if they were followed
    expected = deep_blocks(deep)
    assert expected >= (DEEP // 50) * 4096  # the files' data at least (tmpfs gives directories no blocks)
    assert filetree.tree_size(deep) == expected
    assert sum(1 for _ in filetree.lstat_below(deep)) == (DEEP + 1) * 2 + (DEEP // 50 + 1) * 2


def test_remove_tree_of_a_symlink_or_a_file_unlinks_only_that(tmp_path: Path, outside: Path) -> None:
    os.symlink(outside, tmp_path / "link")
    (tmp_path / "file").write_text("x")
    filetree.remove_tree(tmp_path / "link")
    filetree.remove_tree(str(tmp_path / "file"))
    filetree.remove_tree(tmp_path / "missing")  # nothing to do is no error
    assert sorted(os.listdir(tmp_path)) == ["outside"]
    assert os.listdir(outside) == ["a.txt"]
    assert list(filetree.lstat_below(outside / "a.txt")) == [] and filetree.tree_size(tmp_path / "missing") == 0


def test_remove_tree_relative_to_a_dir_fd(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c").write_text("c")
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        filetree.remove_tree("a", dir_fd=fd)
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []


REMOVE_ACROSS_MOUNT = textwrap.dedent("""
    import os, sys
    from quilt_agent import filetree
    from quilt_agent.helper.syscalls import mount, MS_BIND
    top = sys.argv[1]
    mount("tmpfs", top + "/sub/mnt", "tmpfs", 0, "size=1m")
    open(top + "/sub/mnt/on-tmpfs", "w").close()
    mount(top + "/../bind-src", top + "/sub/bound", None, MS_BIND)  # the same filesystem: the same st_dev
    try:
        filetree.remove_tree(top)
    except OSError as e:
        print("error", e.errno)
    print(sorted(os.path.relpath(os.path.join(d, n), top) for d, ds, fs in os.walk(top) for n in ds + fs))
    filetree.remove_tree(top, ignore_errors=True)  # the same, silently
""")


def test_remove_tree_never_removes_what_is_mounted_below(tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("no unshare(1): util-linux is Essential on Debian")
    top = tmp_path / "top"
    (top / "sub" / "mnt").mkdir(parents=True)
    (top / "sub" / "bound").mkdir()
    (top / "sub" / "own").write_text("x")
    (tmp_path / "bind-src").mkdir()
    (tmp_path / "bind-src" / "kept").write_text("x")
    (top / "own").write_text("x")
    result = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c",
                             REMOVE_ACROSS_MOUNT, str(top)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.fail(f"no mount namespace here: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    error, left = result.stdout.splitlines()
    assert error == f"error {errno.EXDEV}"  # the first error: a mount point, not entered
    assert left == str(["sub", "sub/bound", "sub/bound/kept", "sub/mnt", "sub/mnt/on-tmpfs"])  # the rest is gone
    assert sorted(os.listdir(top / "sub")) == ["bound", "mnt"] and os.listdir(top / "sub" / "mnt") == []
    assert os.listdir(tmp_path / "bind-src") == ["kept"]


def _owned(uid: int, gid: int) -> filetree.Entry:
    return filetree.Entry(path=("f",), kind="file", mode=0o644, uid=uid, gid=gid, atime_ns=0, mtime_ns=0)


def test_owners_move_into_and_out_of_a_user_namespaces_range() -> None:
    first = 524288
    inside = [_owned(0, 0), _owned(1000, 5), _owned(70000, 1)]
    assert [(e.uid, e.gid) for e in filetree.into_range(inside, first)] == [
        (first, first), (first + 1000, first + 5), (first + 65534, first + 1)]  # 70000 has no id inside
    host = [_owned(first, first), _owned(first + 1000, first + 5), _owned(0, 7)]
    assert [(e.uid, e.gid) for e in filetree.out_of_range(host, first)] == [(0, 0), (1000, 5), (65534, 65534)]
    assert list(filetree.into_range(inside, -1)) == inside and list(filetree.out_of_range(host, -1)) == host
