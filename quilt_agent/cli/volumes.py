"""quiltctl volume create|ls|inspect|rm|prune, and run/create's -v/--volume, --tmpfs and --read-only.

Flags follow `podman volume`.
"""
from __future__ import annotations

import os
from typing import Any

import click

from quilt_agent.cli import hostfiles
from quilt_agent.cli import output
from quilt_agent.cli.context import each, with_async_client, with_client
from quilt_agent.api import ClientError
from quilt_agent.cli.context import Client

LABEL_HELP = "Set a label (KEY=VALUE)."


FLAGS = [
    click.option("-v", "--volume", multiple=True,
                 help="Mount SOURCE:DEST[:ro|rw,nosuid,nodev,noexec]: SOURCE a host path or a volume's name "
                      "(made on first use); DEST alone: an anonymous volume, removed with the container."),
    click.option("--tmpfs", multiple=True, help="Mount a tmpfs: DEST[:size=64m,mode=1777]."),
    click.option("--read-only", is_flag=True, help="Mount the root read-only (/tmp, /run and volumes stay writable)."),
]


def _label(values: tuple[str, ...]) -> dict[str, str]:
    labels = {}
    for value in values:
        key, sep, val = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got '{value}'", param_hint="--label")
        labels[key] = val
    return labels


@click.group()
def volume() -> None:
    """Manage named volumes."""


@volume.command("create")
@click.option("-l", "--label", multiple=True, help=LABEL_HELP)
@click.argument("name")
@click.pass_context
def create(ctx: click.Context, label: tuple[str, ...], name: str) -> None:
    """Create a volume; print its name."""
    labels = _label(label)

    async def body(client: Client) -> None:
        await client.create_volume(name, {"labels": labels} if labels else {})

    with_client(ctx, body)
    click.echo(name)


async def _all(client: Client) -> list[dict[str, Any]]:
    found = []
    for _, _, path in await client.list_volumes():
        try:
            found.append(await client.volume_properties(path))
        except ClientError:
            pass  # removed since the list
    return found


@volume.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list with every property.")
@click.option("-q", "--quiet", is_flag=True, help="Print the names only.")
@click.option("--format", "fmt", default=None, metavar="TEMPLATE",
              help="Print each volume through a Go template of Podman's fields ({{.Name}} {{.Driver}} "
                   "{{.Mountpoint}} {{.Labels}} ...); 'table ...' adds a header row. See quiltctl(1).")
@click.option("--noheading", is_flag=True, help="No header row.")
@click.pass_context
def ls(ctx: click.Context, as_json: bool, quiet: bool, fmt: str | None, noheading: bool) -> None:
    """List volumes."""
    template = output.parse_format(fmt)
    rows = with_client(ctx, _all)
    if template is not None:
        from quilt_agent.cli import items  # a template's fields; only a --format imports them

        output.print_template(template, [items.volume_item(p) for p in rows], items.VOLUME_HEADERS,
                              heading=not noheading)
        return
    if as_json or output.wants_json(fmt):
        output.print_json(rows)
        return
    if quiet:
        for p in rows:
            click.echo(p["Name"])
        return
    output.print_table(("NAME", "MOUNTPOINT", "USED BY"),
                       ((p["Name"], p["Mountpoint"], ",".join(p["UsedBy"])) for p in rows), heading=not noheading)


@volume.command("inspect")
@click.argument("volumes", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, volumes: tuple[str, ...]) -> None:
    """Print every property of one or more volumes as JSON."""

    async def body(client: Client) -> tuple[list[dict[str, Any]], bool]:
        async def one(name: str) -> dict[str, Any]:
            return await client.volume_properties(await client.get_volume(name))

        return await each(volumes, one)

    results, ok = with_client(ctx, body)
    output.print_json(results)
    if not ok:
        ctx.exit(125)


@volume.command("rm")
@click.option("-f", "--force", is_flag=True, help="Remove the containers that use the volume first.")
@click.argument("volumes", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, volumes: tuple[str, ...]) -> None:
    """Remove one or more volumes and their data."""

    async def body(client: Client) -> bool:
        async def one(name: str) -> None:
            await client.remove_volume(name, force)
            click.echo(name)

        return (await each(volumes, one))[1]

    if not with_client(ctx, body):
        ctx.exit(125)


@volume.command("prune")
@click.pass_context
def prune(ctx: click.Context) -> None:
    """Remove every volume no container uses; print the space freed."""

    async def body(client: Client) -> int:
        return await client.prune_volumes()

    click.echo(f"{output.size_text(with_client(ctx, body))} freed")


def _split(arg: str) -> tuple[str, str] | None:
    """CONTAINER:PATH -> (container, path); a host path (absolute, ./ or without a colon before a slash) -> None."""
    head, sep, tail = arg.partition(":")
    if not sep or not head or "/" in head or arg.startswith((".", "/")):
        return None
    return head, tail if tail.startswith("/") else "/" + tail


@click.command("cp")
@click.argument("source", metavar="SRC")
@click.argument("dest", metavar="DEST")
@click.pass_context
def cp(ctx: click.Context, source: str, dest: str) -> None:
    """Copy files between a container and the host: SRC and DEST are paths, one of them CONTAINER:PATH.

    As docker cp: a DEST that is an existing directory receives SRC under its own name; '-' is a tar stream on
    stdin (SRC) or stdout (DEST). Works on running and stopped containers; modes, times and symlinks are kept
    (owners too for root). The host's side is read and written by quiltctl with your own rights; what comes
    out of a container never writes through a symlink on the host and loses its setuid and setgid bits.
    """
    src, dst = _split(source), _split(dest)
    if (src is None) == (dst is None):
        raise click.UsageError("give exactly one side as CONTAINER:PATH (the other is a host path or '-')")
    cwd = os.getcwd()

    def host(path: str) -> str:
        return path if path == "-" else os.path.join(cwd, path)

    async def body(client: Client) -> None:
        if src is not None:
            await hostfiles.copy_out(client, await client.get_container(src[0]), src[1], host(dest))
        else:
            assert dst is not None
            await hostfiles.copy_in(client, await client.get_container(dst[0]), host(source), dst[1])

    with_async_client(ctx, body)  # the host's side of the copy runs in a thread of the loop


COMMANDS: list[click.Command] = [volume, cp]
