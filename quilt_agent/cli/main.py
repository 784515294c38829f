"""quiltctl: the command line for quilt-agent. Talks only over the system bus.

Each command lives in a module of quilt_agent.cli and is imported only when it runs: a `quiltctl ps` pays for
`ps`, not for `run`'s flag table, the terminal code or the image verbs (COMMANDS below says where each one is).
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Sequence

import click

from quilt_agent import __version__
from quilt_agent.cli.context import CliState

EXIT_INTERRUPTED = 130

# Command name -> (module under quilt_agent.cli, attribute). The one place a command is registered.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("containers", "run"),
    "create": ("containers", "create"),
    "start": ("containers", "start"),
    "stop": ("containers", "stop"),
    "kill": ("containers", "kill"),
    "rm": ("containers", "rm"),
    "remove": ("containers", "remove"),
    "ps": ("containers", "ps"),
    "inspect": ("containers", "inspect"),
    "status": ("containers", "status"),
    "logs": ("containers", "logs"),
    "wait": ("containers", "wait"),
    "healthcheck": ("containers", "healthcheck"),
    "exec": ("interactive", "exec_"),
    "stats": ("observe", "stats"),
    "events": ("observe", "events"),
    "network": ("network", "network"),
    "icc": ("network", "icc"),
    "image": ("images", "image"),
    "volume": ("volumes", "volume"),
    "cp": ("volumes", "cp"),
    "unit-check": ("units", "unit_check"),
    "generate": ("units", "generate"),
    "unit-run": ("unitrun", "unit_run"),
    "version": ("main", "version"),
}

# Podman commands quiltctl does not have, and what to use instead: an unknown command is answered with this, or
# with nothing but "no such command" (click's own guess by spelling, `rmi` -> "rm", misleads).
PODMAN_EQUIVALENTS: dict[str, str] = {}


class QuiltGroup(click.Group):
    """click's group, with commands imported on first use and every error as one `quiltctl: ...` line: click's
    own usage errors are three lines (usage, hint, error), which drowns the one that matters in scripts' logs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        if where is None:
            return None
        module, attribute = where
        command = getattr(importlib.import_module(f"quilt_agent.cli.{module}"), attribute)
        assert isinstance(command, click.Command)
        return command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                              list[str]]:
        name = args[0]
        if self.get_command(ctx, name) is None and not name.startswith("-"):
            instead = PODMAN_EQUIVALENTS.get(name)
            hint = f": {instead}" if instead else ""
            raise click.UsageError(f"no such command '{name}'{hint}", ctx)
        return super().resolve_command(ctx, args)

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            click.echo(f"quiltctl: {e.format_message()}{hint}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"quiltctl: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:
            # `quiltctl ps | head`: the reader has gone; send the rest of our output nowhere, quietly.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(1)
        sys.exit(code if type(code) is int else 0)


@click.group(cls=QuiltGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="quiltctl", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run and manage Quilt containers through quilt-agent.

    Exit status: 0 on success, 2 for a command line quiltctl cannot take, 125 when Quilt or the bus reports an
    error, 126 when the container's command cannot be run, 127 when it does not exist, and for `run` in the
    foreground and `exec` the command's own exit code.
    """
    ctx.ensure_object(CliState)


@click.command()
@click.pass_context
def version(ctx: click.Context) -> None:
    """Print the versions of quiltctl and of the running quilt-agent."""
    from quilt_agent.cli.context import with_client

    click.echo(f"Client: {__version__}")

    async def body(client: Any) -> str:
        return str(await client.version())

    click.echo(f"Agent:  {with_client(ctx, body)}")


def main() -> None:
    cli.main(prog_name="quiltctl", obj=CliState())
