"""The verbs that show containers: ps, inspect and status, each in one bus round trip per container named
(ListContainerProperties, GetContainerProperties), and logs; declared to click here, done by cli/verbs.py (logs -f
and --until by cli/observe.py).
"""

from __future__ import annotations

import time

import click

from quilt_agent.cli import verbs
from quilt_agent.cli.parsing import parse_since


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers, not only running ones.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of the containers' properties (as inspect, without Environment).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the ids.")
@click.option("--format", "fmt", default=None, metavar="TEMPLATE",
              help="Print each container through a Go template of Podman's fields ({{.ID}} {{.Names}} {{.Status}} "
                   "...; 'table ...' adds a header row), or 'json'. See quiltctl(1) for what templates take.")
@click.option("-f", "--filter", "filter_specs", multiple=True, metavar="KEY=VALUE",
              help="Only the containers that match: name= (a regular expression), id= (a prefix), status=, "
                   "label=KEY or label=KEY=VALUE, label!=, ancestor=, exited=, health=, network=, volume=, "
                   "before= and since= (a container), restart-policy=, command=. Several of one key match any of "
                   "them (label all of them); different keys must all match.")
@click.option("-n", "--last", type=click.IntRange(min=0), default=None, metavar="N",
              help="Only the N newest containers, in any state.")
@click.option("-l", "--latest", is_flag=True, help="Only the newest container, in any state.")
@click.option("--no-trunc", is_flag=True, help="Do not shorten ids, images and commands.")
@click.option("--noheading", is_flag=True, help="No header row.")
@click.pass_context
def ps(ctx: click.Context, show_all: bool, as_json: bool, quiet: bool, fmt: str | None,
       filter_specs: tuple[str, ...], last: int | None, latest: bool, no_trunc: bool, noheading: bool) -> None:
    """List containers: the running ones, or with -a all, in the order they were created."""
    ctx.exit(verbs.ps(ctx, show_all, as_json, quiet, fmt, filter_specs, last, latest, no_trunc, noheading))


@click.command()
@click.option("-f", "--format", "fmt", default=None, metavar="TEMPLATE",
              help="Print each container through a Go template of Podman's inspect fields ({{.State.Status}}, "
                   "{{.Config.Env}}, {{json .HostConfig}} ...) instead of the JSON. See quiltctl(1).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, fmt: str | None, containers: tuple[str, ...]) -> None:
    """Print every property of one or more containers as JSON (times as RFC 3339 dates)."""
    ctx.exit(verbs.inspect(ctx, fmt, containers))


@click.command()
@click.argument("container")
@click.pass_context
def status(ctx: click.Context, container: str) -> None:
    """Show a short summary of a container."""
    ctx.exit(verbs.status(ctx, container))


@click.command()
@click.option(
    "-n", "--tail", "lines", type=click.IntRange(min=0, max=verbs.UINT32_MAX), default=None, help="Only the last N lines."
)
@click.option("--since", default=None,
              help="Only lines since TIME: a duration ago (10s, 5m, 2h or '2h ago'), a Unix time or ISO 8601.")
@click.option("--until", default=None, help="Only lines until TIME (same forms as --since).")
@click.option("-f", "--follow", is_flag=True, help="Print new lines as they come, until the container exits.")
@click.option("-t", "--timestamps", is_flag=True, help="Begin each line with its time (RFC 3339).")
@click.option("--setup", "setup", is_flag=True, help="Only the output of the setup steps.")
@click.argument("container")
@click.pass_context
def logs(ctx: click.Context, lines: int | None, since: str | None, until: str | None, follow: bool,
         timestamps: bool, setup: bool, container: str) -> None:
    """Print a container's output: its stdout on stdout, its stderr on stderr."""
    if follow or until is not None:
        from quilt_agent.cli import observe

        observe.follow_logs(ctx, container, lines, since, until, follow, timestamps, setup)
        return
    since_usec = None
    if since is not None:
        try:
            since_usec = parse_since(since, time.time())
        except ValueError as e:
            raise click.BadParameter(str(e), ctx=ctx, param_hint="'--since'") from None
    ctx.exit(verbs.logs(ctx, lines, since_usec, timestamps, setup, container))
