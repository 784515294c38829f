"""The monitor's own decisions that need no container (quilt_agent/helper/monitor.py): how a journald that refuses
the container's output streams is told. The monitor at work is the integration suite's (tests/integration/helper)."""
from __future__ import annotations

import errno
import os

import pytest

from quilt_agent import journal
from quilt_agent.helper import monitor
from quilt_agent.helper.process import SetupError
from quilt_agent.helper.protocol import LaunchSpec


def spec() -> LaunchSpec:
    return LaunchSpec(container_id="c" * 64, name="web", unit="quilt-web.scope", lower="/l", upper="/u", work="/w",
                      merged="/m", exit_file="/e", command=("true",), env=(), workdir="/", user="",
                      hostname="web", namespaces=())


@pytest.mark.parametrize("code", [errno.EPIPE, errno.ECONNRESET])
def test_a_stream_journald_hangs_up_on_is_its_stream_limit_by_name(monkeypatch: pytest.MonkeyPatch,
                                                                   code: int) -> None:
    """journald closes a stream beyond its 4096 at once: the start fails naming that limit."""
    def refused(*_: object) -> int:
        raise OSError(code, "refused")

    monkeypatch.setattr(journal, "open_stream", refused)
    with pytest.raises(SetupError) as caught:
        monitor._journal_streams(spec())
    assert caught.value.exhausted == "journald-streams" and caught.value.exit_code == 125
    assert "at most 4096" in str(caught.value) and "each running container holds 2" in str(caught.value)


def test_a_journald_that_is_not_there_is_a_plain_setup_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(*_: object) -> int:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(journal, "open_stream", missing)
    with pytest.raises(SetupError) as caught:
        monitor._journal_streams(spec())
    assert caught.value.exhausted == ""
    assert str(caught.value) == "cannot connect the container's output to journald: No such file or directory"


def test_a_limit_that_ran_out_crosses_the_status_pipe() -> None:
    """_fail writes "CODE@LIMIT reason"; run() reads the limit back out of the code."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        monitor._fail(write, 125, "journald refused", "journald-streams")
    os.close(write)
    text = os.read(read, 4096).decode()
    os.close(read)
    os.waitpid(pid, 0)
    code, _, reason = text.partition(" ")
    assert (code.partition("@")[0], code.partition("@")[2], reason) == ("125", "journald-streams",
                                                                        "journald refused")
