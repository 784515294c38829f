"""quiltctl prints each error reply as one line: the agent's declared errors in their own words (they carry what to
do), anything else with its name and where to look."""
from __future__ import annotations

from quilt_agent.bus.errors import ERROR_NAMES
from quilt_agent.cli.context import error_message
from quilt_agent.client import AgentNotReachable, ClientError
from quilt_agent.errors import NoSpace, SystemdFailed

NO_SPACE = ERROR_NAMES[NoSpace]


def test_a_declared_error_is_printed_in_the_agents_words() -> None:
    text = "No space left writing '/var/lib/quilt/images/tmp/1-x': the filesystem mounted on /var/lib/quilt is full."
    assert error_message(ClientError(NO_SPACE, text)) == text


def test_a_message_over_several_lines_is_printed_as_one() -> None:
    text = "systemd refused StopUnit of quilt-web.scope: org.freedesktop.DBus.Error.AccessDenied: denied\nby policy"
    line = error_message(ClientError(ERROR_NAMES[SystemdFailed], text))
    assert "\n" not in line and line.endswith("denied by policy")


def test_an_undeclared_error_is_named_with_where_to_look() -> None:
    line = error_message(ClientError("org.freedesktop.DBus.Error.ServiceError",
                                     "The service interface raised an error: OSError"))
    assert line.startswith("The service interface raised an error: OSError (org.freedesktop.DBus.Error.ServiceError")
    assert "journalctl -u quilt-agent" in line


def test_an_unreachable_agent_keeps_its_hint() -> None:
    line = error_message(AgentNotReachable("org.freedesktop.DBus.Error.ServiceUnknown", "no owner"))
    assert "make install" in line
