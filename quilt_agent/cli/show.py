"""The verbs that show containers: ps, inspect and status, each in one bus round trip per container named
(ListContainerProperties, GetContainerProperties); and logs.
"""

from __future__ import annotations

import time
from typing import Any

import click

from quilt_agent.api import ClientError
from quilt_agent.cli import output
from quilt_agent.cli.context import ACCESS_DENIED, Client, each, fail, with_client
from quilt_agent.cli.parsing import parse_since

_UINT32_MAX = (1 << 32) - 1


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
    from quilt_agent.cli import listing

    try:
        filters = listing.parse_filters(filter_specs)
        if last is not None and latest:
            raise listing.ListingError("--last and --latest cannot be used together")
    except listing.ListingError as e:
        fail(str(e))
    template = output.parse_format(fmt)
    chosen_all = show_all
    show_all = listing.fetches_all(show_all, filters, last, latest)  # what the body fetches

    # A template or JSON may show any property; the table only what it shows and filters by.
    names = () if as_json or output.wants_json(fmt) or template is not None else listing.TABLE_PROPERTIES

    async def body(client: Client) -> list[dict[str, Any]]:
        # One call for every container's properties, however many there are.
        rows = [props for _path, props in await client.list_container_properties(names)]
        return [props for props in rows if show_all or props.get("State") in ("running", "paused")]

    try:
        rows = listing.select(with_client(ctx, body), chosen_all, filters, last, latest)
    except listing.ListingError as e:  # a before= or since= that names no container
        fail(str(e))
    now = time.time()
    if as_json or output.wants_json(fmt):
        output.print_json([listing.dated(props) for props in rows])
    elif template is not None:  # a template wins over -q, as in Podman
        from quilt_agent.cli import items  # a template's fields; only a --format imports them

        output.print_template(template, [items.ps_item(props, now, no_trunc) for props in rows],
                              items.PS_HEADERS, heading=not noheading, example=items.ps_item({}, now))
    elif quiet:
        for props in rows:
            click.echo(str(props["Id"])[:None if no_trunc else output.SHORT_ID])
    else:
        output.print_ps_table(rows, now, no_trunc, heading=not noheading)


async def _inspect_one(client: Client, path: str, props: dict[str, Any]) -> dict[str, Any]:
    if props.get("HealthCommand"):
        status, streak, checks = await client.health_log(path)
        props["HealthLog"] = {"Status": status, "FailingStreak": streak, "Log": [
            {"Start": start, "End": end, "ExitCode": code, "Output": text} for start, end, code, text in checks]}
    try:
        props["Environment"] = await client.get_environment(path)
    except ClientError as e:
        # The environment may hold secrets and is only for those who may manage the container; others still
        # get everything else.
        if e.name != ACCESS_DENIED:
            raise
    return props


async def _inspect_one_named(client: Client, name: str) -> dict[str, Any]:
    return await _inspect_one(client, *await client.get_container_properties(name))


@click.command()
@click.option("-f", "--format", "fmt", default=None, metavar="TEMPLATE",
              help="Print each container through a Go template of Podman's inspect fields ({{.State.Status}}, "
                   "{{.Config.Env}}, {{json .HostConfig}} ...) instead of the JSON. See quiltctl(1).")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, fmt: str | None, containers: tuple[str, ...]) -> None:
    """Print every property of one or more containers as JSON (times as RFC 3339 dates)."""
    from quilt_agent.cli import listing

    template = output.parse_format(fmt)

    async def body(client: Client) -> tuple[list[dict[str, Any]], bool]:
        return await each(containers, lambda name: _inspect_one_named(client, name))

    results, ok = with_client(ctx, body)
    if template is not None:
        from quilt_agent.cli import items  # a template's fields; only a --format imports them

        output.print_template(template, [items.inspect_item(props) for props in results],
                              example=items.inspect_item({}))
    else:
        output.print_json([listing.dated(props) for props in results])
    if not ok:
        ctx.exit(125)


@click.command()
@click.argument("container")
@click.pass_context
def status(ctx: click.Context, container: str) -> None:
    """Show a short summary of a container."""

    async def body(client: Client) -> dict[str, Any]:
        return (await client.get_container_properties(container))[1]

    props = with_client(ctx, body)
    for line in output.status_lines(props, time.time()):
        click.echo(line)


@click.command()
@click.option(
    "-n", "--tail", "lines", type=click.IntRange(min=0, max=_UINT32_MAX), default=None, help="Only the last N lines."
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
    options: dict[str, Any] = {"setup": True} if setup else {}
    # On the wire lines 0 means "no limit"; `--tail 0` means no lines, as in Podman (the container is still
    # looked up, so an unknown one is still an error).
    if lines:
        options["lines"] = lines
    if since is not None:
        try:
            options["since"] = parse_since(since, time.time())
        except ValueError as e:
            raise click.BadParameter(str(e), ctx=ctx, param_hint="'--since'") from None

    async def body(client: Client) -> list[Any]:
        path = await client.get_container(container)
        return [] if lines == 0 else await client.get_logs(path, options)

    output.print_logs(with_client(ctx, body), timestamps)
