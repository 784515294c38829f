"""Typed messages between agent and helpers: an unexpected message is its own error."""
import pytest

from quilt_agent.helper import protocol
from quilt_agent.helper.protocol import ExecFailed, Go, LaunchSpec, MonitorForked, ProtocolError, Spawned, Started


def test_messages_round_trip_with_tuples_restored() -> None:
    spec = LaunchSpec("id", "web", "quilt-web.scope", "/l", "/u", "/w", "/m", "/e", ("sh", "-c", "x"), ("A=1",),
                      "/", "", "web", ("pid", "mount"))
    assert protocol.decode(protocol.encode(spec), LaunchSpec) == spec
    assert protocol.decode(protocol.encode(MonitorForked(1, 2)), MonitorForked) == MonitorForked(1, 2)
    assert protocol.decode(protocol.encode(Spawned(3)), Spawned) == Spawned(3)


def test_unexpected_message_names_what_came_and_what_was_expected() -> None:
    with pytest.raises(ProtocolError, match="received Go, expected Started or ExecFailed"):
        protocol.decode(protocol.encode(Go()), Started, ExecFailed)


def test_end_of_stream_is_an_error() -> None:
    with pytest.raises(ProtocolError, match="end of stream"):
        protocol.decode(b"", Spawned)
