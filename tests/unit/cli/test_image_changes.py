"""quiltctl image import --change: podman's instructions, with '=' or a space, into ImportImage's options."""
from typing import Any

import click
import pytest

from quilt_agent.cli.images import parse_change


def changes(*texts: str) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for text in texts:
        parse_change(text, options)
    return options


def test_each_instruction_becomes_its_option() -> None:
    assert changes('CMD ["/bin/echo", "hi there"]', "ENTRYPOINT=/bin/tini --", "ENV A=1", "ENV=B=two words",
                   "WORKDIR /srv", "USER=1000:1000", "LABEL a=b", "LABEL=c=d", "STOPSIGNAL SIGINT") == {
        "cmd": ["/bin/echo", "hi there"], "entrypoint": ["/bin/tini", "--"], "env": ["A=1", "B=two words"],
        "workdir": "/srv", "user": "1000:1000", "labels": {"a": "b", "c": "d"}, "stop_signal": "SIGINT"}


def test_a_shell_form_command_is_split_as_a_shell_would() -> None:
    assert changes("CMD=/bin/sh -c 'echo $HOME'") == {"cmd": ["/bin/sh", "-c", "echo $HOME"]}


@pytest.mark.parametrize("text", ["RUN make", "CMD [1, 2]", "LABEL novalue", "CMD ['bad json"])
def test_what_is_not_an_instruction_is_a_usage_error(text: str) -> None:
    with pytest.raises(click.BadParameter):
        changes(text)
