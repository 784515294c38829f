"""A blocking D-Bus connection, and the API's calls over it: quiltctl's transport for one-shot commands.

Written by hand, and kept to what quiltctl needs (method calls with fds, their replies, SASL EXTERNAL on a unix
socket), because the project's bus library cannot be had cheaply: importing dbus-fast pulls in asyncio and its whole
package, ~70 ms before the first byte is sent, which is most of a `quiltctl ps`. The marshalling follows the D-Bus
specification's wire format (little-endian, protocol version 1); every type the API uses is covered, and what is
not (a maybe type, a GVariant) is refused rather than guessed. The agent, and quiltctl's streaming commands, keep
dbus-fast.
"""

from __future__ import annotations

# What a one-shot command imports is what it pays for before its first message (each module costs about a
# millisecond on these machines; see bench/startup.py): this module and quilt_agent.api use only modules the
# interpreter has loaded anyway, and C modules. So _socket rather than socket (whose enum and selectors imports
# cost ~8 ms), _thread rather than threading, plain classes rather than dataclasses (~16 ms: inspect, ast, re),
# and typing only for the type checker.
import _socket
import _thread
import os
import struct

from quilt_agent.api import AgentNotReachable, Calls, error_for
from quilt_agent.bus.names import BUS_NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Coroutine, Sequence, TypeVar

    T = TypeVar("T")

METHOD_CALL, METHOD_RETURN, ERROR, SIGNAL = 1, 2, 3, 4
FLAG_ALLOW_INTERACTIVE_AUTHORIZATION = 0x4
_PATH, _INTERFACE, _MEMBER, _ERROR_NAME, _REPLY_SERIAL, _DESTINATION, _SENDER, _SIGNATURE, _UNIX_FDS = range(1, 10)
_HEADER_FIELD_TYPES = {_PATH: "o", _INTERFACE: "s", _MEMBER: "s", _ERROR_NAME: "s", _REPLY_SERIAL: "u",
                       _DESTINATION: "s", _SENDER: "s", _SIGNATURE: "g", _UNIX_FDS: "u"}
DEFAULT_SYSTEM_BUS = "unix:path=/var/run/dbus/system_bus_socket"

_FIXED = {"y": ("B", 1), "b": ("I", 4), "n": ("h", 2), "q": ("H", 2), "i": ("i", 4), "u": ("I", 4),
          "x": ("q", 8), "t": ("Q", 8), "d": ("d", 8), "h": ("I", 4)}
_ALIGN = {**{code: size for code, (_, size) in _FIXED.items()}, "s": 4, "o": 4, "g": 1, "a": 4, "(": 8, "{": 8,
          "v": 1}


class WireError(Exception):
    """A message this module cannot write or read: a type outside the API's, or a malformed reply."""


class Variant:
    """A value with its own signature ('v'): what a{sv} holds. quilt_agent.api.unwrap strips it."""

    __slots__ = ("signature", "value")

    def __init__(self, signature: str, value: Any) -> None:
        self.signature = signature
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Variant) and (self.signature, self.value) == (other.signature, other.value)

    def __repr__(self) -> str:
        return f"Variant({self.signature!r}, {self.value!r})"


def split_signature(signature: str) -> list[str]:
    """The complete types a signature is made of: 'sa{sv}(ii)' -> ['s', 'a{sv}', '(ii)']."""
    types, i = [], 0
    while i < len(signature):
        end = _complete_type_end(signature, i)
        types.append(signature[i:end])
        i = end
    return types


def _complete_type_end(signature: str, i: int) -> int:
    code = signature[i] if i < len(signature) else ""
    if code == "a":
        return _complete_type_end(signature, i + 1)
    if code in "({":
        close = ")" if code == "(" else "}"
        j = i + 1
        while j < len(signature) and signature[j] != close:
            j = _complete_type_end(signature, j)
        if j >= len(signature):
            raise WireError(f"unbalanced signature {signature!r}")
        return j + 1
    if code and (code in _FIXED or code in "sogv"):
        return i + 1
    raise WireError(f"unsupported type {code!r} in signature {signature!r}")


class _Writer:
    def __init__(self) -> None:
        self.data = bytearray()

    def pad(self, alignment: int) -> None:
        self.data.extend(b"\0" * (-len(self.data) % alignment))

    def write(self, signature: str, value: Any) -> None:
        code = signature[0]
        self.pad(_ALIGN[code])
        if code in _FIXED:
            self.data.extend(struct.pack("<" + _FIXED[code][0], value))
        elif code in "so":
            encoded = value.encode()
            self.data.extend(struct.pack("<I", len(encoded)) + encoded + b"\0")
        elif code == "g":
            encoded = value.encode()
            self.data.extend(bytes([len(encoded)]) + encoded + b"\0")
        elif code == "v":
            self.write("g", value.signature)
            self.write(value.signature, value.value)
        elif code == "a":
            self._write_array(signature[1:], value)
        elif code in "({":
            for member, item in zip(split_signature(signature[1:-1]), value, strict=True):
                self.write(member, item)

    def _write_array(self, element: str, value: Any) -> None:
        length_at = len(self.data)
        self.data.extend(b"\0\0\0\0")
        self.pad(_ALIGN[element[0]])
        start = len(self.data)
        if element == "y":
            self.data.extend(bytes(value))
        else:
            items = value.items() if element[0] == "{" else value
            for item in items:
                self.write(element, item)
        struct.pack_into("<I", self.data, length_at, len(self.data) - start)


class _Reader:
    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def align(self, alignment: int) -> None:
        self.offset += -self.offset % alignment

    def read(self, signature: str) -> Any:
        code = signature[0]
        self.align(_ALIGN[code])
        if code in _FIXED:
            fmt, size = _FIXED[code]
            (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
            self.offset += size
            return bool(value) if code == "b" else value
        if code in "sog":
            if code == "g":
                length = self.data[self.offset]
                self.offset += 1
            else:
                (length,) = struct.unpack_from("<I", self.data, self.offset)
                self.offset += 4
            text = bytes(self.data[self.offset:self.offset + length]).decode()
            self.offset += length + 1
            return text
        if code == "v":
            inner = self.read("g")
            return Variant(inner, self.read(inner))
        if code == "a":
            return self._read_array(signature[1:])
        members = split_signature(signature[1:-1])  # ( or {: a struct, or one dict entry
        return [self.read(member) for member in members]

    def _read_array(self, element: str) -> Any:
        (length,) = struct.unpack_from("<I", self.data, self.offset)
        self.offset += 4
        self.align(_ALIGN[element[0]])
        end = self.offset + length
        if element == "y":
            value = bytes(self.data[self.offset:end])
            self.offset = end
            return value
        items = []
        while self.offset < end:
            items.append(self.read(element))
        return dict(items) if element[0] == "{" else items


def marshal_body(signature: str, body: Sequence[Any]) -> bytes:
    writer = _Writer()
    for member, value in zip(split_signature(signature), body, strict=True):
        writer.write(member, value)
    return bytes(writer.data)


def unmarshal_body(signature: str, data: bytes) -> list[Any]:
    reader = _Reader(data)
    return [reader.read(member) for member in split_signature(signature)]


class Message:
    """One D-Bus message, as read or to be written."""

    def __init__(self, type: int, serial: int = 0, flags: int = 0, path: str = "", interface: str = "",
                 member: str = "", destination: str = "", signature: str = "", body: list[Any] | None = None,
                 unix_fds: list[int] | None = None, error_name: str = "", reply_serial: int = 0,
                 sender: str = "") -> None:
        self.type = type
        self.serial = serial
        self.flags = flags
        self.path = path
        self.interface = interface
        self.member = member
        self.destination = destination
        self.signature = signature
        self.body: list[Any] = [] if body is None else body
        self.unix_fds: list[int] = [] if unix_fds is None else unix_fds
        self.error_name = error_name
        self.reply_serial = reply_serial
        self.sender = sender
        self.fd_count = 0  # as read: how many of the fds that came with the bytes are this message's

    def encode(self) -> bytes:
        body = marshal_body(self.signature, self.body)
        fields: list[list[Any]] = []
        for code, value in ((_PATH, self.path), (_INTERFACE, self.interface), (_MEMBER, self.member),
                            (_DESTINATION, self.destination), (_SIGNATURE, self.signature)):
            if value:
                fields.append([code, Variant(_HEADER_FIELD_TYPES[code], value)])
        if self.unix_fds:
            fields.append([_UNIX_FDS, Variant("u", len(self.unix_fds))])
        writer = _Writer()
        writer.data.extend(struct.pack("<cBBBII", b"l", self.type, self.flags, 1, len(body), self.serial))
        writer.write("a(yv)", fields)
        writer.pad(8)
        return bytes(writer.data) + body


def _decode(data: bytes) -> Message:
    endian = data[0:1]
    if endian != b"l":
        raise WireError("a big-endian message: this client reads little-endian ones only")
    _, kind, flags, _version, _body_length, serial = struct.unpack_from("<cBBBII", data)
    reader = _Reader(data, 12)
    message = Message(type=kind, serial=serial, flags=flags)
    for code, variant in reader.read("a(yv)"):
        value = variant.value
        if code == _PATH:
            message.path = value
        elif code == _INTERFACE:
            message.interface = value
        elif code == _MEMBER:
            message.member = value
        elif code == _ERROR_NAME:
            message.error_name = value
        elif code == _REPLY_SERIAL:
            message.reply_serial = value
        elif code == _DESTINATION:
            message.destination = value
        elif code == _SENDER:
            message.sender = value
        elif code == _SIGNATURE:
            message.signature = value
        elif code == _UNIX_FDS:
            message.fd_count = value
    reader.align(8)
    message.body = unmarshal_body(message.signature, data[reader.offset:])
    return message


def _message_length(buffer: bytes | bytearray) -> int | None:
    """The whole length of the message at the start of buffer, once its fixed header and field array are in."""
    if len(buffer) < 16:
        return None
    body_length, _serial, fields_length = struct.unpack_from("<III", buffer, 4)
    header = 16 + fields_length
    return header + (-header % 8) + body_length


def socket_address(address: str) -> str | bytes:
    """The socket of the first unix address of a D-Bus address list ('unix:path=...' or 'unix:abstract=...')."""
    for entry in address.split(";"):
        transport, _, params = entry.partition(":")
        if transport != "unix":
            continue
        keys = dict(part.split("=", 1) for part in params.split(",") if "=" in part)
        if "path" in keys:
            return _unescape(keys["path"])
        if "abstract" in keys:
            return b"\0" + _unescape(keys["abstract"]).encode()
    raise WireError(f"no unix socket in the bus address {address!r}")


def _unescape(value: str) -> str:
    """D-Bus addresses escape bytes as %XX."""
    out, i = bytearray(), 0
    while i < len(value):
        if value[i] == "%" and i + 3 <= len(value):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.extend(value[i].encode())
            i += 1
    return out.decode()


class Connection:
    """One authenticated connection to a bus. Calls may come from several threads at once (quiltctl's verbs
    that act on several containers together): writes are serialised, and whichever caller is waiting reads
    for all of them, so every reply reaches the caller that waits for its serial."""

    _MAX_FDS = 16

    def __init__(self, address: str) -> None:
        self._serial = 0
        self._buffer = bytearray()
        self._fds: list[int] = []
        self._write_lock = _thread.allocate_lock()
        self._state = _thread.allocate_lock()  # guards the three below
        self._reading = False  # whether a caller is reading for all
        self._replies: dict[int, Message] = {}
        self._waiting: dict[int, Any] = {}  # serial -> the lock its caller sleeps on while another reads
        self._sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            self._sock.connect(socket_address(address))
            hello = self._authenticate(Message(
                METHOD_CALL, path="/org/freedesktop/DBus", interface="org.freedesktop.DBus", member="Hello",
                destination="org.freedesktop.DBus"))
            self.unique_name = str(self.reply(hello).body[0])
        except BaseException:
            self.close()
            raise

    def _authenticate(self, first: Message) -> int:
        """SASL EXTERNAL, fd passing and the first message in one write, as sd-bus does: the bus reads the
        message once authentication ends, and its answers come in order, so nothing waits for a round trip
        but the first message's reply. The first message's serial."""
        uid = str(os.geteuid()).encode().hex()
        self._serial = first.serial = 1
        self._sock.sendall(b"\0AUTH EXTERNAL %s\r\nNEGOTIATE_UNIX_FD\r\nBEGIN\r\n" % uid.encode() + first.encode())
        if not self._line().startswith(b"OK "):
            raise WireError("the bus refused EXTERNAL authentication")
        if not self._line().startswith(b"AGREE_UNIX_FD"):
            raise WireError("the bus does not pass file descriptors")
        return first.serial

    def _line(self) -> bytes:
        """One line of the bus's authentication answers; what follows them (messages) stays in the buffer."""
        while (end := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > 4096:
                raise WireError("the bus answered the authentication with no line end")
            self._read_some("during authentication")
        line = bytes(self._buffer[:end + 2])
        del self._buffer[:end + 2]
        return line

    def close(self) -> None:
        self._sock.close()
        # fds not yet claimed: those read with no message yet, and those of replies whose caller went away
        unclaimed = [*self._fds, *(fd for reply in self._replies.values() for fd in reply.unix_fds)]
        for fd in unclaimed:
            os.close(fd)
        self._fds.clear()
        self._replies.clear()

    def send(self, message: Message) -> int:
        with self._write_lock:
            self._serial += 1
            message.serial = self._serial
            data = message.encode()
            if message.unix_fds:
                fds = struct.pack(f"{len(message.unix_fds)}i", *message.unix_fds)
                ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)]
                sent = self._sock.sendmsg([data], ancillary)
                if sent < len(data):
                    self._sock.sendall(data[sent:])
            else:
                self._sock.sendall(data)
            return message.serial

    def call(self, message: Message) -> Message:
        """Send a method call and wait for its reply (or error reply)."""
        return self.reply(self.send(message))

    def reply(self, serial: int) -> Message:
        """Wait for the reply to `serial`. One caller at a time reads, filing every reply it reads for whoever
        waits for it; the others sleep until a read may have brought theirs, then look, or take over reading."""
        wake = _thread.allocate_lock()
        wake.acquire()
        with self._state:
            self._waiting[serial] = wake
        try:
            while True:
                with self._state:
                    if serial in self._replies:
                        return self._replies.pop(serial)
                    reader = not self._reading
                    self._reading = True
                if not reader:
                    wake.acquire()  # released after every message read, so no wake-up is lost
                    continue
                try:
                    message = self._receive()
                except BaseException:
                    with self._state:
                        self._reading = False
                        self._wake_others(wake)  # one of them reads on, and meets the same end itself
                    raise
                with self._state:
                    self._reading = False
                    if message.type in (METHOD_RETURN, ERROR):
                        self._replies[message.reply_serial] = message
                    self._wake_others(wake)
                if message.type not in (METHOD_RETURN, ERROR):
                    for fd in message.unix_fds:  # a signal or a call to us: nobody here asked for it
                        os.close(fd)
        finally:
            with self._state:
                del self._waiting[serial]

    def _wake_others(self, wake: Any) -> None:
        """With _state held: every other waiter looks again (its reply may be in, or the reading is free)."""
        for other in self._waiting.values():
            if other is not wake and other.locked():
                other.release()

    def _receive(self) -> Message:
        while True:
            length = _message_length(self._buffer)
            if length is not None and len(self._buffer) >= length:
                message = _decode(bytes(self._buffer[:length]))
                del self._buffer[:length]
                message.unix_fds, self._fds = self._fds[:message.fd_count], self._fds[message.fd_count:]
                return message
            self._read_some()

    def _read_some(self, when: str = "") -> None:
        chunk, ancillary, _flags, _ = self._sock.recvmsg(65536, _socket.CMSG_SPACE(self._MAX_FDS * 4))
        for level, kind, payload in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                whole = len(payload) - len(payload) % 4
                self._fds.extend(struct.unpack(f"{whole // 4}i", payload[:whole]))
        if not chunk:
            raise EOFError(f"the bus closed the connection{' ' + when if when else ''}")
        self._buffer.extend(chunk)


class BlockingClient(Calls):
    """org.quilt.Runtime's calls on a blocking Connection. Its coroutines never suspend: drive() runs them."""

    def __init__(self, bus_address: str | None = None, *, interactive: bool = False) -> None:
        self._address = bus_address or os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") or DEFAULT_SYSTEM_BUS
        self._flags = FLAG_ALLOW_INTERACTIVE_AUTHORIZATION if interactive else 0
        self._connection: Connection | None = None

    def connect(self) -> None:
        try:
            self._connection = Connection(self._address)
        except (OSError, EOFError, WireError) as e:
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise AgentNotReachable("org.freedesktop.DBus.Error.NoServer",
                                    f"cannot connect to {self._address}: {detail}") from e

    def sibling(self) -> BlockingClient:
        """A client of its own connection to the same bus, not yet connected: for a call that cannot wait for
        this one's (a signal handler's, while this one waits for a reply)."""
        return BlockingClient(self._address, interactive=bool(self._flags))

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def __aenter__(self) -> BlockingClient:
        self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def _variant(self, signature: str, value: Any) -> Variant:
        return Variant(signature, value)

    async def _call_message(
        self,
        path: str,
        interface: str,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        unix_fds: Sequence[int] = (),
        destination: str = BUS_NAME,
    ) -> Message:
        if self._connection is None:
            raise RuntimeError("BlockingClient.connect() has not been called")
        request = Message(METHOD_CALL, flags=self._flags, path=path, interface=interface, member=member,
                          destination=destination, signature=signature, body=list(body), unix_fds=list(unix_fds))
        try:
            reply = self._connection.call(request)
        except (OSError, EOFError) as e:
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise AgentNotReachable("org.freedesktop.DBus.Error.Disconnected", detail) from e
        if reply.type == ERROR:
            name = reply.error_name or "org.freedesktop.DBus.Error.Failed"
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else name
            for fd in reply.unix_fds:
                os.close(fd)
            raise error_for(name, text)
        return reply


def drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that never suspends (one that awaits only BlockingClient calls) to its end, without an
    event loop; one that does suspend is a programming error, reported as such."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a command run on the blocking transport awaited something other than a bus call")
