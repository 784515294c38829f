"""quiltctl network create|ls|inspect|rm, and the original project's icc ping|exec.

Flags follow `podman network`; `icc` keeps the original Quilt CLI's spelling.
"""
from __future__ import annotations

from typing import Any

import click

from quilt_agent.cli import output
from quilt_agent.cli.context import each, with_client
from quilt_agent.cli.interactive import exec_
from quilt_agent.api import ClientError
from quilt_agent.cli.context import Client


@click.group()
def network() -> None:
    """Manage container networks."""


@network.command("create")
@click.option("--subnet", default=None, help="IPv4 subnet in CIDR form (default: the next free 10.89.N.0/24).")
@click.option("--gateway", default=None, help="The bridge's address (default: the subnet's first).")
@click.option("--internal", is_flag=True, help="No traffic in or out of the network but between its containers.")
@click.option("--disable-dns", is_flag=True, help="No name server: containers do not find each other by name.")
@click.argument("name")
@click.pass_context
def create(ctx: click.Context, subnet: str | None, gateway: str | None, internal: bool, disable_dns: bool,
           name: str) -> None:
    """Create a network (a bridge, a subnet, a name server); print its name."""
    options: dict[str, Any] = {}
    if subnet is not None:
        options["subnet"] = subnet
    if gateway is not None:
        options["gateway"] = gateway
    if internal:
        options["internal"] = True
    if disable_dns:
        options["dns"] = False

    async def body(client: Client) -> None:
        await client.create_network(name, options)

    with_client(ctx, body)
    click.echo(name)


async def _all(client: Client) -> list[dict[str, Any]]:
    entries = await client.list_networks()
    found = []
    for entry in entries:
        try:
            found.append(await client.network_properties(entry.path))
        except ClientError:
            pass  # removed since the list
    return found


@network.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with every property.")
@click.option("--format", "fmt", default=None, metavar="TEMPLATE",
              help="Print each network through a Go template of Podman's fields ({{.Name}} {{.ID}} {{.Driver}} "
                   "...) and Quilt's ({{.Subnet}} {{.Bridge}} ...); 'table ...' adds a header row. See quiltctl(1).")
@click.option("--noheading", is_flag=True, help="No header row.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool, fmt: str | None, noheading: bool) -> None:
    """List networks."""
    template = output.parse_format(fmt)
    rows = with_client(ctx, _all)
    if template is not None:
        from quilt_agent.cli import items  # a template's fields; only a --format imports them

        output.print_template(template, [items.network_item(p) for p in rows], items.NETWORK_HEADERS,
                              heading=not noheading)
        return
    if as_json or output.wants_json(fmt):
        output.print_json(rows)
        return
    output.print_table(("NAME", "SUBNET", "GATEWAY", "BRIDGE", "INTERNAL", "DNS", "CONTAINERS"), (
        (p["Name"], p["Subnet"], p["Gateway"], p["Bridge"], "yes" if p["Internal"] else "no",
         "yes" if p["DNS"] else "no", str(len(p["Containers"])))
        for p in rows
    ), heading=not noheading)


@network.command("inspect")
@click.argument("networks", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, networks: tuple[str, ...]) -> None:
    """Print every property of one or more networks as JSON."""

    async def body(client: Client) -> tuple[list[dict[str, Any]], bool]:
        async def one(name: str) -> dict[str, Any]:
            return await client.network_properties(await client.get_network(name))

        return await each(networks, one)

    results, ok = with_client(ctx, body)
    output.print_json(results)
    if not ok:
        ctx.exit(125)


@network.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove the containers on the network first.")
@click.argument("networks", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, networks: tuple[str, ...]) -> None:
    """Remove one or more networks."""

    async def body(client: Client) -> bool:
        async def one(name: str) -> None:
            await client.remove_network(name, force)
            click.echo(name)

        return (await each(networks, one))[1]

    if not with_client(ctx, body):
        ctx.exit(125)


@click.group()
def icc() -> None:
    """Inter-container communication (the original Quilt's commands)."""


@icc.command("ping")
@click.option("-c", "--count", type=click.IntRange(1, 100), default=3, show_default=True, help="Echo requests.")
@click.argument("source")
@click.argument("target")
@click.pass_context
def ping(ctx: click.Context, count: int, source: str, target: str) -> None:
    """ICMP echo from SOURCE's network to TARGET (a container or an address); exit 0 when answered."""

    async def body(client: Client) -> tuple[int, float, str]:
        path = await client.get_container(source)
        address = target
        try:
            found = await client.get_container(target)
            addresses = (await client.properties(found)).get("Addresses", [])
            address = ", ".join(a for _, a in addresses) or target
        except ClientError:
            pass  # an address, not a container: Ping says what is wrong with it
        received, average = await client.ping(path, target, count)
        return received, average, address

    received, average, address = with_client(ctx, body)
    line = f"{source} -> {target} ({address}): {count} sent, {received} received"
    if received:
        line += f", average {average:.3f} ms"
    click.echo(line)
    ctx.exit(0 if received else 1)


# `icc exec A -- CMD` is `exec A -- CMD` (cli/interactive.py).
icc.add_command(click.Command("exec", callback=exec_.callback, params=exec_.params,
                              context_settings=exec_.context_settings,
                              help="Run COMMAND inside the running CONTAINER (same as quiltctl exec)."))

COMMANDS: list[click.Command] = [network, icc]
