"""The client library's read_logs: GetLogs' lines, or, for a log too large for one reply, the same lines streamed
through FollowLogs. The calls themselves are stand-ins here; the agent's side is the integration suite's."""
from __future__ import annotations

import json
import os
from typing import Any, Mapping

import pytest

from quilt_agent.api import Calls, ClientError
from quilt_agent.bus.error_names import NOT_RUNNING, TOO_LARGE
from quilt_agent.replies import LogLine

STREAMED = [{"usec": 1, "stream": "stdout", "text": "a", "cursor": "c1"},
            {"usec": 2, "stream": "dropped", "text": "40", "cursor": ""},
            {"usec": 3, "stream": "stderr", "text": "b", "cursor": "c3"}]


class Logs(Calls):
    def __init__(self, error: str = "", streamed: list[dict[str, Any]] | None = None) -> None:
        self.error = error
        self.streamed = STREAMED + [{"end": True}] if streamed is None else streamed
        self.asked: list[tuple[str, dict[str, Any]]] = []

    async def _call_message(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("no other call")

    def _variant(self, signature: str, value: Any) -> Any:
        return value

    async def get_logs(self, path: str, options: Mapping[str, Any] | None = None) -> list[LogLine]:
        self.asked.append(("GetLogs", dict(options or {})))
        if self.error:
            raise ClientError(self.error, "no")
        return [LogLine(usec=9, stream="stdout", text="whole")]

    async def follow_logs(self, path: str, options: Mapping[str, Any] | None = None) -> int:
        self.asked.append(("FollowLogs", dict(options or {})))
        read, write = os.pipe()
        os.write(write, b"".join(json.dumps(line).encode() + b"\n" for line in self.streamed))
        os.close(write)
        return read


async def test_a_log_one_reply_carries_is_read_with_get_logs() -> None:
    logs = Logs()
    assert await logs.read_logs("/p", {"dropped": True}) == [LogLine(usec=9, stream="stdout", text="whole")]
    assert logs.asked == [("GetLogs", {"dropped": True})]


async def test_a_log_too_large_for_one_reply_is_streamed_with_the_same_options() -> None:
    logs = Logs(TOO_LARGE)
    lines = await logs.read_logs("/p", {"dropped": True, "since": 5})
    assert lines == [LogLine(usec=1, stream="stdout", text="a"), LogLine(usec=2, stream="dropped", text="40"),
                     LogLine(usec=3, stream="stderr", text="b")]
    assert logs.asked == [("GetLogs", {"dropped": True, "since": 5}),
                          ("FollowLogs", {"dropped": True, "since": 5, "follow": False, "end_marker": True})]


async def test_a_stream_cut_before_its_end_is_an_error_not_a_shorter_log() -> None:
    with pytest.raises(ClientError) as caught:
        await Logs(TOO_LARGE, STREAMED).read_logs("/p")
    assert "ended after 3 lines, before its end" in str(caught.value)


async def test_any_other_error_is_the_callers() -> None:
    with pytest.raises(ClientError) as caught:
        await Logs(NOT_RUNNING).read_logs("/p")
    assert caught.value.name == NOT_RUNNING
