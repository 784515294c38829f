"""The option rules of Exec and FollowLogs, the exec environment, and the wire types of event details."""
from __future__ import annotations

import pytest

from quilt_agent.bus.events import details_to_variants
from quilt_agent.errors import InvalidArgument
from quilt_agent.execs import ExecOptions, exec_environment, parse_exec_options
from quilt_agent.logfollow import FollowOptions, parse_follow_options


def test_exec_options_are_checked_and_unknown_keys_refused() -> None:
    assert parse_exec_options({}) == ExecOptions()
    assert parse_exec_options({"env": ["A=1"], "workdir": "/srv/", "user": "1000:1000", "timeout": 5, "tty": True}) \
        == ExecOptions(env=("A=1",), workdir="/srv", user="1000:1000", timeout=5, tty=True)
    for options, words in (({"bogus": 1}, "Unknown exec option 'bogus'"), ({"timeout": -1}, "Invalid timeout -1"),
                           ({"timeout": True}, "Invalid timeout True"), ({"tty": 1}, "Option 'tty' must be a boolean"),
                           ({"env": ["=x"]}, "Invalid environment entry"), ({"workdir": "x"}, "Invalid workdir")):
        with pytest.raises(InvalidArgument, match=words):
            parse_exec_options(options)


def test_the_exec_environment_is_the_containers_then_the_execs() -> None:
    container = ("PATH=/bin", "A=container", "B=container")
    assert exec_environment(container, ExecOptions(env=("B=exec", "C=exec"))) == \
        ("PATH=/bin", "A=container", "B=exec", "C=exec")
    assert "TERM=xterm" in exec_environment(container, ExecOptions(tty=True))
    assert "TERM=vt100" in exec_environment(container, ExecOptions(tty=True, env=("TERM=vt100",)))
    assert not any(e.startswith("TERM=") for e in exec_environment(container, ExecOptions()))


def test_follow_options() -> None:
    assert parse_follow_options({}) == FollowOptions(follow=True)
    assert parse_follow_options({"lines": 3, "since": 1, "until": 2, "follow": False}) == \
        FollowOptions(lines=3, since=1, until=2, follow=False)
    assert parse_follow_options({"after_cursor": "s=1;i=2", "end_marker": True}) == \
        FollowOptions(after_cursor="s=1;i=2", end_marker=True)
    for options, words in (({"tail": 1}, "Unknown log option 'tail'"), ({"lines": -1}, "must be an unsigned"),
                           ({"follow": 1}, "must be a boolean"), ({"after_cursor": ""}, "must be a journal cursor"),
                           ({"after_cursor": "a\nb"}, "must be a journal cursor"),
                           ({"end_marker": "yes"}, "must be a boolean")):
        with pytest.raises(InvalidArgument, match=words):
            parse_follow_options(options)


def test_event_details_go_out_with_the_documented_types() -> None:
    out = details_to_variants({"name": "web", "time": 5, "exit_code": -1, "oom_killed": False, "reason": "x",
                               "other": 7, "flag": True, "ratio": 0.5, "thing": ["a"]})
    assert {k: v.signature for k, v in out.items()} == {"name": "s", "time": "t", "exit_code": "i", "oom_killed": "b",
                                                        "reason": "s", "other": "x", "flag": "b", "ratio": "d",
                                                        "thing": "s"}
    assert out["thing"].value == "['a']"
