"""quiltctl's network flags become the create options the agent expects; the network and icc verbs parse."""
from __future__ import annotations

from click.testing import CliRunner

from quilt_agent.cli.containers import build_request, run
from quilt_agent.cli.main import cli


def _request(*args: str):  # type: ignore[no-untyped-def]
    ctx = run.make_context("run", list(args))
    return build_request(ctx.params, "/")


def test_network_flags_become_options() -> None:
    request = _request("--network", "a,b", "--network", "c", "--network-alias", "web", "--ip", "10.89.0.9",
                       "-p", "8080:80", "--publish", "127.0.0.1:53:53/udp", "/img.tar", "true")
    assert request.options == {"networks": ["a", "b", "c"], "aliases": ["web"], "ip": "10.89.0.9",
                               "ports": ["8080:80", "127.0.0.1:53:53/udp"]}
    assert request.command == ["true"]


def test_no_network_flags_no_options() -> None:
    assert _request("/img.tar", "true").options == {}
    assert _request("--net", "none", "/img.tar", "true").options == {"networks": ["none"]}


def test_the_verbs_exist() -> None:
    runner = CliRunner()
    for args in (["network", "--help"], ["network", "create", "--help"], ["network", "ls", "--help"],
                 ["network", "inspect", "--help"], ["network", "rm", "--help"], ["icc", "ping", "--help"],
                 ["icc", "exec", "--help"]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, (args, result.output)
