"""quilt_agent.wire's marshalling, checked against dbus-fast's: what one writes the other reads back the same.

dbus-fast is the agent's bus library and the reference here; these are pure byte-level tests (the integration
suite runs quiltctl's verbs, on this transport, against the real dbus-daemon and agent).
"""
from __future__ import annotations

import io
import os
import socket
import threading
from typing import Any

import pytest
from dbus_fast import Message as FastMessage
from dbus_fast import MessageType, Variant as FastVariant
from dbus_fast._private.unmarshaller import Unmarshaller

from quilt_agent import api, wire

CASES: list[tuple[str, list[Any]]] = [
    ("", []),
    ("s", ["héllo"]),
    ("ybnqiuxtd", [7, True, -2, 3, -4, 5, -6, 7, 2.5]),
    ("as", [["a", "", "ccc"]]),
    ("ay", [b"\x00\x01binary\xff"]),
    ("a(ssso)", [[["id", "web", "running", "/org/quilt/Runtime/container/x"]]]),
    ("ssasa{sv}", ["web", "img", ["sh", "-c", "true"],
                   {"memory_max": ("t", 1 << 30), "env": ("as", ["A=1"]), "labels": ("a{ss}", {"k": "v"}),
                    "cpu_quota": ("d", 0.5), "init": ("b", True)}]),
    ("a(oa{sv})", [[["/o/1", {"Id": ("s", "x"), "Addresses": ("a(ss)", [["quilt", "10.0.0.2"]])}], ["/o/2", {}]]]),
    ("a(ts)", [[[1, "x"], [2, "y"]]]),
    ("(ia{ss})", [[3, {"a": "b"}]]),
]


def _with(variant: type, body: list[Any]) -> list[Any]:
    """The case's body with its (signature, value) pairs as `variant` objects."""
    def convert(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: variant(*v) if isinstance(v, tuple) else convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        return value
    return [convert(v) for v in body]


def _plain(value: Any) -> Any:
    """Variants of either library as (signature, plain value); lists and tuples alike."""
    if api.is_variant(value):
        return (value.signature, _plain(value.value))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _read_with_dbus_fast(data: bytes) -> FastMessage:
    unmarshaller = Unmarshaller(io.BytesIO(data))  # type: ignore[arg-type]
    message = unmarshaller.unmarshall()
    assert message is not None
    return message


@pytest.mark.parametrize("signature,body", CASES, ids=[c[0] or "empty" for c in CASES])
def test_what_wire_writes_dbus_fast_reads_back_the_same(signature: str, body: list[Any]) -> None:
    ours = wire.Message(wire.METHOD_CALL, serial=9, path="/org/quilt/Runtime", interface="org.quilt.Runtime.Manager",
                        member="Create", destination="org.quilt.Runtime", signature=signature,
                        body=_with(wire.Variant, body))
    theirs = _read_with_dbus_fast(ours.encode())
    assert (theirs.message_type, theirs.serial, theirs.path, theirs.member, theirs.signature) == (
        MessageType.METHOD_CALL, 9, "/org/quilt/Runtime", "Create", signature)
    assert _plain(theirs.body) == _plain(_with(wire.Variant, body))


@pytest.mark.parametrize("signature,body", CASES, ids=[c[0] or "empty" for c in CASES])
def test_what_dbus_fast_writes_wire_reads_back_the_same(signature: str, body: list[Any]) -> None:
    theirs = FastMessage(message_type=MessageType.METHOD_RETURN, reply_serial=4, serial=11, signature=signature,
                         body=_with(FastVariant, body), destination=":1.5")
    ours = wire._decode(theirs._marshall(False))
    assert (ours.type, ours.reply_serial, ours.serial, ours.signature) == (wire.METHOD_RETURN, 4, 11, signature)
    assert _plain(ours.body) == _plain(_with(FastVariant, body))


def test_an_error_reply_keeps_its_name_and_text() -> None:
    theirs = FastMessage.new_error(FastMessage(member="M", path="/", serial=3),
                                   "org.quilt.Runtime.Error.NoSuchContainer", "No container 'x' known")
    ours = wire._decode(theirs._marshall(False))
    assert (ours.type, ours.error_name, ours.reply_serial, ours.body) == (
        wire.ERROR, "org.quilt.Runtime.Error.NoSuchContainer", 3, ["No container 'x' known"])


@pytest.mark.parametrize("signature", ["m", "a{", "(ss", "a", "z", "ss)"])
def test_types_outside_the_api_are_refused_not_guessed(signature: str) -> None:
    with pytest.raises(wire.WireError):
        wire.split_signature(signature)


def test_addresses_name_their_socket() -> None:
    assert wire.socket_address("unix:path=/run/dbus/system_bus_socket") == "/run/dbus/system_bus_socket"
    assert wire.socket_address("tcp:host=x;unix:path=/a%20b,guid=1") == "/a b"
    assert wire.socket_address("unix:abstract=/tmp/dbus-x") == b"\0/tmp/dbus-x"
    with pytest.raises(wire.WireError):
        wire.socket_address("tcp:host=localhost,port=1")


def _connection_on(sock: socket.socket) -> wire.Connection:
    """A Connection over one end of a socketpair, past authentication and Hello (the other end plays the bus)."""
    connection = wire.Connection.__new__(wire.Connection)
    connection._sock, connection._buffer, connection._fds = sock, bytearray(), []
    connection._state, connection._reading, connection._replies, connection._waiting = (
        wire._thread.allocate_lock(), False, {}, {})
    return connection


def test_replies_split_across_reads_and_fds_reach_their_message() -> None:
    """A reply that arrives in pieces is read whole, and the fd that came with it is its own."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    connection = _connection_on(ours)
    reply = FastMessage(message_type=MessageType.METHOD_RETURN, reply_serial=1, serial=2, signature="h", body=[0],
                        unix_fds=[0])
    data = reply._marshall(True)
    read, write = os.pipe()
    try:
        theirs.sendmsg([data[:10]], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, read.to_bytes(4, "little"))])
        theirs.sendall(data[10:])
        message = connection._receive()
        assert (message.reply_serial, message.body, len(message.unix_fds)) == (1, [0], 1)
        os.write(write, b"x")
        assert os.read(message.unix_fds[0], 1) == b"x"
        os.close(message.unix_fds[0])
    finally:
        for fd in (read, write):
            os.close(fd)
        ours.close()
        theirs.close()


def test_a_coroutine_that_suspends_is_a_programming_error_not_a_hang() -> None:
    class Suspends:
        def __await__(self) -> Any:
            yield None

    async def body() -> None:
        await Suspends()

    with pytest.raises(RuntimeError, match="awaited something other than a bus call"):
        wire.drive(body())


def test_concurrent_calls_each_get_their_own_reply_whatever_the_order_replies_come_in() -> None:
    """Three threads wait on one connection; the replies come last-asked first, the first only after the others
    have theirs: each caller gets the reply to its own serial, and none waits for another's."""

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    connection = _connection_on(ours)
    got: dict[int, Any] = {}
    done = {serial: threading.Event() for serial in (1, 2, 3)}

    def wait(serial: int) -> None:
        got[serial] = connection.reply(serial).body
        done[serial].set()

    threads = [threading.Thread(target=wait, args=(serial,)) for serial in (1, 2, 3)]
    try:
        for thread in threads:
            thread.start()
        for serial in (3, 2):
            theirs.sendall(FastMessage(message_type=MessageType.METHOD_RETURN, reply_serial=serial, serial=10 + serial,
                                       signature="u", body=[serial * 100])._marshall(False))
            assert done[serial].wait(5), f"the caller of {serial} did not get its reply"
        assert not done[1].is_set()
        theirs.sendall(FastMessage(message_type=MessageType.METHOD_RETURN, reply_serial=1, serial=11, signature="u",
                                   body=[100])._marshall(False))
        for thread in threads:
            thread.join(5)
        assert got == {1: [100], 2: [200], 3: [300]}
        assert not connection._waiting and not connection._replies
    finally:
        ours.close()
        theirs.close()


def test_a_closed_bus_ends_every_waiting_call_not_only_the_reading_one() -> None:

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    connection = _connection_on(ours)
    errors: list[BaseException] = []

    def wait(serial: int) -> None:
        try:
            connection.reply(serial)
        except EOFError as e:
            errors.append(e)

    threads = [threading.Thread(target=wait, args=(serial,)) for serial in (1, 2)]
    for thread in threads:
        thread.start()
    theirs.close()
    for thread in threads:
        thread.join(5)
    ours.close()
    assert [t.is_alive() for t in threads] == [False, False] and len(errors) == 2


def _bus_answering(path: str, answer: bytes, hang_up: bool = False) -> tuple[socket.socket, list[bytes]]:
    """A listening socket that plays a bus for one client: it reads what the client sends at once, then writes
    `answer` in one piece, and waits for the client to close (hang_up: closes at once). The bytes it read are
    appended to the returned list."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    heard: list[bytes] = []

    def serve() -> None:
        peer, _ = server.accept()
        with peer:
            data = b""
            while b"BEGIN\r\n" not in data:
                chunk = peer.recv(65536)
                if not chunk:
                    break
                data += chunk
            heard.append(data)
            peer.sendall(answer)
            if not hang_up:
                peer.recv(1)

    threading.Thread(target=serve, daemon=True).start()
    return server, heard


def _hello_reply(name: str) -> bytes:
    return FastMessage(message_type=MessageType.METHOD_RETURN, reply_serial=1, serial=1, signature="s",
                       body=[name])._marshall(True)


def test_authentication_and_hello_go_in_one_write_and_their_answers_in_one_read(tmp_path: Any) -> None:
    """The answers and the Hello reply may arrive together: the lines are taken off, the message stays."""
    server, heard = _bus_answering(str(tmp_path / "bus"), b"OK 0123456789abcdef0123456789abcdef\r\n"
                                   b"AGREE_UNIX_FD\r\n" + _hello_reply(":1.42"))
    try:
        connection = wire.Connection(f"unix:path={tmp_path}/bus")
        assert connection.unique_name == ":1.42"
        connection.close()
    finally:
        server.close()
    sent = heard[0]
    assert sent.startswith(b"\0AUTH EXTERNAL " + str(os.geteuid()).encode().hex().encode() + b"\r\n")
    begin = sent.index(b"NEGOTIATE_UNIX_FD\r\nBEGIN\r\n") + len(b"NEGOTIATE_UNIX_FD\r\nBEGIN\r\n")
    assert Unmarshaller(io.BytesIO(sent[begin:])).unmarshall().member == "Hello"


@pytest.mark.parametrize("answer, error", [
    (b"REJECTED EXTERNAL\r\n", "refused EXTERNAL"),
    (b"OK 0123456789abcdef0123456789abcdef\r\nERROR\r\n", "does not pass file descriptors"),
    (b"x" * 5000, "no line end"),
])
def test_a_bus_that_refuses_the_authentication_is_a_wire_error(tmp_path: Any, answer: bytes, error: str) -> None:
    server, _ = _bus_answering(str(tmp_path / "bus"), answer)
    try:
        with pytest.raises(wire.WireError, match=error):
            wire.Connection(f"unix:path={tmp_path}/bus")
    finally:
        server.close()


def test_a_bus_that_hangs_up_during_authentication_says_when(tmp_path: Any) -> None:
    server, _ = _bus_answering(str(tmp_path / "bus"), b"OK 0123", hang_up=True)
    try:
        with pytest.raises(EOFError, match="during authentication"):
            wire.Connection(f"unix:path={tmp_path}/bus")
    finally:
        server.close()
