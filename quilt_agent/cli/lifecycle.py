"""The verbs that change a container's state: start, stop, kill, rm (remove), wait, and healthcheck run; start,
stop, rm and wait are declared to click here and done by cli/verbs.py.

One-shot commands: each is a few bus calls on the blocking transport (cli/context.py), so nothing here imports
what only creating a container needs.
"""

from __future__ import annotations

import click

from quilt_agent.cli import verbs
from quilt_agent.cli.context import Client, with_client
from quilt_agent.cli.paramtypes import SIGNAL


@click.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def start(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Start one or more created containers."""
    ctx.exit(verbs.start(ctx, containers))


@click.command()
@click.option(
    "-t",
    "--time",
    "timeout",
    type=click.IntRange(min=0, max=verbs.UINT32_MAX),
    default=None,
    help="Seconds to wait before SIGKILL (default: the container's stop timeout; 0 kills at once).",
)
@click.option("-a", "--all", "every", is_flag=True, help="Stop every running container.")
@click.argument("containers", nargs=-1)
@click.pass_context
def stop(ctx: click.Context, timeout: int | None, every: bool, containers: tuple[str, ...]) -> None:
    """Stop one or more containers, all at once: their stop signal, then SIGKILL after the timeout."""
    if every == bool(containers):
        raise click.UsageError("name the containers to stop, or give -a for every running one")
    ctx.exit(verbs.stop(ctx, timeout, every, containers))


@click.command()
@click.option(
    "-s", "--signal", "signum", type=SIGNAL, default="KILL", show_default=True, help="Signal: TERM, SIGHUP, 9..."
)
@click.option("-a", "--all", "every", is_flag=True, help="Signal every running container.")
@click.argument("containers", nargs=-1)
@click.pass_context
def kill(ctx: click.Context, signum: int, every: bool, containers: tuple[str, ...]) -> None:
    """Send a signal to the processes of one or more containers."""
    if every == bool(containers):
        raise click.UsageError("name the containers to signal, or give -a for every running one")

    async def action(client: Client, path: str, name: str) -> str:
        await client.kill(path, signum)
        return name

    if every:
        containers = tuple(with_client(ctx, verbs.running_names))
    ctx.exit(verbs.for_each(ctx, containers, action))


@click.command()
@click.option("-f", "--force", is_flag=True, help="Stop running containers first.")
@click.option("-a", "--all", "every", is_flag=True,
              help="Remove every container that does not run (with -f, running ones too).")
@click.argument("containers", nargs=-1)
@click.pass_context
def rm(ctx: click.Context, force: bool, every: bool, containers: tuple[str, ...]) -> None:
    """Remove one or more containers."""
    if every == bool(containers):
        raise click.UsageError("name the containers to remove, or give -a for every one")
    ctx.exit(verbs.rm(ctx, force, every, containers))


# The original CLI's name for rm.
remove = click.Command(
    "remove", callback=rm.callback, params=rm.params, help="Remove one or more containers (same as rm)."
)


@click.group()
def healthcheck() -> None:
    """Run a container's health check."""


@healthcheck.command(name="run")
@click.argument("container")
@click.pass_context
def healthcheck_run(ctx: click.Context, container: str) -> None:
    """Run the health check of a running container now; print its status. Exit status 0 when the check
    passed, 1 when it failed."""

    async def body(client: Client) -> tuple[str, int, str]:
        return await client.run_health_check(await client.get_container(container))

    status, code, text = with_client(ctx, body)
    click.echo(status)
    if code != 0:
        if text.strip():
            click.echo(text.rstrip(), err=True)
        ctx.exit(1)


@click.command()
@click.option("--condition", "conditions", multiple=True, metavar="CONDITION",
              help="Wait until one of these holds (repeat for several): exited (the default), running, ready, "
                   "healthy, unhealthy.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def wait(ctx: click.Context, conditions: tuple[str, ...], containers: tuple[str, ...]) -> None:
    """Wait for one or more containers to exit, or to meet a condition; print each exit code (or, for a
    condition other than exited, its name)."""
    ctx.exit(verbs.wait(ctx, conditions, containers))
