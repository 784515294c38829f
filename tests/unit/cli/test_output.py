"""quilt_agent.cli.output: what it writes by hand in place of a library, checked against the library."""
from __future__ import annotations

import shlex

import pytest

from quilt_agent.cli import output
from quilt_agent.replies import LogLine

COMMANDS = [
    [], [""], ["sh", "-c", "echo 'hi there' && exit 3"], ["/bin/true"], ["a b", "c\td", "e\nf"], ["it's"],
    ["x=1", "--flag=a,b", "user@host:/p%20", "+plus", "~tilde", "*glob?", "$HOME", "`x`", "a;b|c&d", "ü", "é x"],
    ['"double"', "back\\slash", "!bang", "#hash", "(p)", "{b}", "[c]", "<in>", "^x"],
]


@pytest.mark.parametrize("command", COMMANDS)
def test_command_text_quotes_as_shlex_join(command: list[str]) -> None:
    assert output.command_text(command) == shlex.join(command)


def test_every_ascii_character_is_quoted_as_shlex_quotes_it() -> None:
    for code in range(1, 128):
        word = f"a{chr(code)}b"
        assert output.command_text([word]) == shlex.quote(word), repr(word)


def test_the_table_is_bold_only_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    output.print_table(("A", "B"), [("1", "2")])
    assert capsys.readouterr().out == "A  B\n1  2\n"  # captured: not a terminal


@pytest.mark.parametrize(("driver", "said"), [
    ("journald", "quiltctl: journald dropped 12 lines here (its rate limit)\n"),
    ("k8s-file", "quiltctl: 12 lines could not be written to the log file here (a full disk, or a failing one)\n"),
    ("journald+file", "quiltctl: 12 lines could not be written to the log file here (a full disk, or a failing "
                      "one)\n"),
])
def test_a_gap_in_the_log_is_said_on_stderr_with_what_made_it(driver: str, said: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    output.print_logs([LogLine(1, "stdout", "a"), LogLine(2, output.DROPPED, "12"), LogLine(3, "stdout", "b")],
                      driver=driver)
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("a\nb\n", said)
