"""A container's NOTIFY_SOCKET as the agent reads it: sd_notify's format, and the per-container sockets in a real
event loop, sent to as a container's service sends."""
from __future__ import annotations

import array
import asyncio
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from quilt_agent import notify
from quilt_agent.notify import Notification, NotifySockets, parse

CID = "c0ffee"  # short: the tests' directories are deep already


# --- parse ---------------------------------------------------------------------------------------------------------

def test_ready_and_status_are_read_from_newline_separated_assignments() -> None:
    assert parse(b"READY=1\nSTATUS=Serving on :80\n") == Notification(ready=True, status="Serving on :80")


def test_mainpid_stopping_and_errno_are_read_and_other_keys_ignored() -> None:
    got = parse(b"MAINPID=4242\nSTOPPING=1\nERRNO=5\nWATCHDOG=1\nFDSTORE=1\nEXTEND_TIMEOUT_USEC=9")
    assert got == Notification(mainpid=4242, stopping=True, errno=5)


def test_nothing_sent_is_none_and_an_empty_status_is_sent() -> None:
    assert parse(b"") == Notification(ready=False, status=None, mainpid=None, stopping=False, errno=None)
    assert parse(b"STATUS=").status == ""


@pytest.mark.parametrize("value", [b"0", b"true", b"yes", b" 1", b"1 ", b"2"])
def test_ready_counts_only_as_1(value: bytes) -> None:
    assert not parse(b"READY=" + value).ready
    assert not parse(b"STOPPING=" + value).stopping


def test_a_line_that_is_not_utf8_holds_a_nul_or_has_no_equals_sign_is_skipped_alone() -> None:
    got = parse(b"STATUS=\xff\xfe broken\nMAINPID=1\x002\nREADY\nnot an assignment\nREADY=1\nSTATUS=fine")
    assert got == Notification(ready=True, status="fine")


def test_the_first_assignment_of_a_key_counts_as_in_systemd() -> None:
    assert parse(b"STATUS=first\nSTATUS=second\nMAINPID=7\nMAINPID=8").status == "first"
    assert parse(b"MAINPID=7\nMAINPID=8").mainpid == 7
    assert parse(b"READY=0\nREADY=1").ready


def test_status_is_capped() -> None:
    assert parse(b"STATUS=" + "é".encode() * 5000).status == "é" * notify.MAX_STATUS


@pytest.mark.parametrize("value", [b"", b"0", b"-1", b"+5", b"12x", b" 12", b"0x10", b"99999999999", b"4294967296",
                                   "١٢".encode()])
def test_a_mainpid_or_errno_that_is_no_number_is_ignored(value: bytes) -> None:
    got = parse(b"MAINPID=" + value + b"\nERRNO=" + value)
    assert got.mainpid is None
    assert got.errno == (0 if value == b"0" else None)


def test_the_container_finds_its_socket_where_podman_puts_it() -> None:
    assert notify.CONTAINER_SOCKET == "/run/notify/notify.sock"


# --- NotifySockets -------------------------------------------------------------------------------------------------

class Received:
    """on_message's calls, awaitable one at a time."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, Notification]] = asyncio.Queue()

    def __call__(self, container_id: str, notification: Notification) -> None:
        self.queue.put_nowait((container_id, notification))

    async def next(self) -> tuple[str, Notification]:
        return await asyncio.wait_for(self.queue.get(), 5)

    async def nothing(self) -> None:
        await asyncio.sleep(0.05)
        assert self.queue.empty()


def send(directory: Path, data: bytes, fds: list[int] | None = None) -> None:
    """As a container's service sends: to the socket's path (through the directory's fd: sun_path is short)."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client:
            client.settimeout(5)  # a full queue (net.unix.max_dgram_qlen) fails the test, not hangs it
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
            client.sendmsg([data], rights, 0, f"/proc/self/fd/{fd}/{notify.SOCKET_NAME}")
    finally:
        os.close(fd)


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[NotifySockets]:
    made = NotifySockets(tmp_path / "notify")
    yield made
    made.close_all()


async def test_ready_and_status_sent_by_the_container_reach_on_message_with_the_sender(
        sockets: NotifySockets, tmp_path: Path) -> None:
    received = Received()
    directory = sockets.open(CID, os.getuid(), received)
    assert directory == tmp_path / "notify" / CID
    send(directory, b"READY=1\nSTATUS=up")
    container_id, got = await received.next()
    assert container_id == CID
    assert (got.ready, got.status) == (True, "up")
    assert (got.sender_pid, got.sender_uid) == (os.getpid(), os.getuid())


async def test_only_the_agent_reaches_the_directories_and_anyone_the_container_reaches_sends(
        sockets: NotifySockets, tmp_path: Path) -> None:
    directory = sockets.open(CID, os.getuid(), Received())
    assert stat.S_IMODE((tmp_path / "notify").stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    sock = (directory / notify.SOCKET_NAME).lstat()
    assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o666
    assert sock.st_uid == os.getuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
async def test_the_socket_belongs_to_the_containers_root(sockets: NotifySockets) -> None:
    directory = sockets.open(CID, 524288, Received())
    sock = (directory / notify.SOCKET_NAME).lstat()
    assert (sock.st_uid, sock.st_gid) == (524288, 524288)


async def test_a_second_open_binds_a_new_socket_in_the_same_directory_which_alone_receives(
        tmp_path: Path) -> None:
    # As after the agent's restart: the old agent's socket is still open while the new one binds.
    old, new = Received(), Received()
    before, after = NotifySockets(tmp_path / "notify"), NotifySockets(tmp_path / "notify")
    try:
        directory = before.open(CID, os.getuid(), old)
        inode = (directory / notify.SOCKET_NAME).lstat().st_ino
        assert after.open(CID, os.getuid(), new) == directory
        assert (directory / notify.SOCKET_NAME).lstat().st_ino != inode
        send(directory, b"READY=1")
        assert (await new.next())[1].ready
        await old.nothing()
        # And a second open() of the same agent stops reading the first socket.
        again = Received()
        after.open(CID, os.getuid(), again)
        send(directory, b"STATUS=again")
        assert (await again.next())[1].status == "again"
        await new.nothing()
    finally:
        before.close_all()
        after.close_all()


async def test_close_removes_the_directory_and_close_all_leaves_them_for_the_next_agent(
        sockets: NotifySockets) -> None:
    first = sockets.open(CID, os.getuid(), Received())
    second = sockets.open("other", os.getuid(), Received())
    sockets.close(CID)
    assert not first.exists()
    sockets.close(CID)  # again, or for a container never opened: nothing to do
    sockets.close("never-opened")
    sockets.close_all()
    assert (second / notify.SOCKET_NAME).exists()
    sockets.close("other")  # ended while no agent listened
    assert not second.exists()


async def test_oversized_and_garbage_datagrams_do_not_stop_the_reader(sockets: NotifySockets) -> None:
    received = Received()
    directory = sockets.open(CID, os.getuid(), received)
    send(directory, b"READY=1\n" + b"x" * notify.MAX_DATAGRAM)  # longer than systemd takes: dropped whole
    send(directory, b"\xff\x00\n=\n\n")
    send(directory, b"")
    send(directory, b"STATUS=after")
    assert (await received.next())[1] == Notification(sender_pid=os.getpid(), sender_uid=os.getuid())
    assert (await received.next())[1] == Notification(sender_pid=os.getpid(), sender_uid=os.getuid())
    assert (await received.next())[1].status == "after"
    await received.nothing()


async def test_a_failing_on_message_costs_its_datagram_only(sockets: NotifySockets) -> None:
    received = Received()

    def on_message(container_id: str, notification: Notification) -> None:
        if notification.status == "boom":
            raise RuntimeError("boom")
        received(container_id, notification)

    directory = sockets.open(CID, os.getuid(), on_message)
    send(directory, b"STATUS=boom")
    send(directory, b"STATUS=fine")
    assert (await received.next())[1].status == "fine"


async def test_more_datagrams_than_one_wakeup_reads_all_arrive_in_order(
        sockets: NotifySockets, monkeypatch: pytest.MonkeyPatch) -> None:
    # Fewer per wakeup than the kernel queues (net.unix.max_dgram_qlen, 10 by default) before a sender blocks.
    monkeypatch.setattr(notify, "PER_WAKEUP", 2)
    received = Received()
    directory = sockets.open(CID, os.getuid(), received)
    count = 7
    for i in range(count):
        send(directory, f"STATUS={i}".encode())
    assert [(await received.next())[1].status for _ in range(count)] == [str(i) for i in range(count)]


async def test_fds_sent_along_are_not_kept_by_the_agent(sockets: NotifySockets, tmp_path: Path) -> None:
    received = Received()
    directory = sockets.open(CID, os.getuid(), received)
    before = set(os.listdir("/proc/self/fd"))
    r, w = os.pipe()
    try:
        send(directory, b"FDSTORE=1\nSTATUS=with fds", [r, w])
    finally:
        os.close(r)
        os.close(w)
    assert (await received.next())[1].status == "with fds"
    assert set(os.listdir("/proc/self/fd")) <= before


async def test_on_message_may_close_the_socket_it_is_called_for(sockets: NotifySockets) -> None:
    received = Received()

    def on_message(container_id: str, notification: Notification) -> None:
        received(container_id, notification)
        sockets.close(container_id)

    directory = sockets.open(CID, os.getuid(), on_message)
    send(directory, b"STATUS=one")
    send(directory, b"STATUS=two")  # waiting in the same wakeup: not read from the closed socket
    assert (await received.next())[1].status == "one"
    await received.nothing()
    assert not directory.exists()


async def test_a_symlinked_container_directory_is_refused_and_its_target_untouched(
        sockets: NotifySockets, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "notify").mkdir(mode=0o700)
    (tmp_path / "notify" / CID).symlink_to(elsewhere)
    with pytest.raises(OSError, match="not a directory of the agent's"):
        sockets.open(CID, os.getuid(), Received())
    assert list(elsewhere.iterdir()) == []
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o700


async def test_a_symlinked_top_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "notify").symlink_to(elsewhere)
    with pytest.raises(OSError, match="not a directory of the agent's"):
        NotifySockets(tmp_path / "notify").open(CID, os.getuid(), Received())
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("container_id", ["", ".", "..", "a/b", "../x", "a\0b"])
async def test_an_id_that_is_not_one_name_is_refused(sockets: NotifySockets, container_id: str) -> None:
    with pytest.raises(ValueError):
        sockets.open(container_id, os.getuid(), Received())
    with pytest.raises(ValueError):
        sockets.close(container_id)
