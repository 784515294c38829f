"""How many lines one GetLogs reply carries (manager._one_reply): more is TooLarge, saying how to read them."""
from __future__ import annotations

import pytest

from quilt_agent.errors import TooLarge
from quilt_agent.journal import LogLine
from quilt_agent.manager import MAX_LOG_REPLY_BYTES, MAX_LOG_REPLY_LINES, _one_reply
from quilt_agent.model import Container, ContainerSpec, State


def container() -> Container:
    return Container(id="c" * 64, spec=ContainerSpec(name="web", image="i", image_id="i", command=("true",)), state=State.EXITED,
                     created_at=1)


def test_as_many_lines_as_a_reply_carries_pass() -> None:
    lines = [LogLine(i, "stdout", "x") for i in range(MAX_LOG_REPLY_LINES)]
    assert _one_reply(container(), lines) is lines


@pytest.mark.parametrize("lines", [
    [LogLine(i, "stdout", "x") for i in range(MAX_LOG_REPLY_LINES + 1)],
    [LogLine(1, "stdout", "x" * (MAX_LOG_REPLY_BYTES // 2)), LogLine(2, "stdout", "y" * (MAX_LOG_REPLY_BYTES // 2 + 1))],
])
def test_more_is_too_large_naming_the_ways_to_read_it(lines: list[LogLine]) -> None:
    with pytest.raises(TooLarge) as caught:
        _one_reply(container(), lines)
    text = str(caught.value)
    assert "container web's log are " in text and "FollowLogs with follow false" in text
