"""quiltctl: the command line for quilt-agent. Talks only over the system bus, through quilt_agent.client."""

from __future__ import annotations

import os
import sys
from typing import Any, Sequence

import click

from quilt_agent import __version__
from quilt_agent.cli.containers import COMMANDS
from quilt_agent.cli.images import COMMANDS as IMAGE_COMMANDS
from quilt_agent.cli.interactive import COMMANDS as INTERACTIVE_COMMANDS
from quilt_agent.cli.network import COMMANDS as NETWORK_COMMANDS
from quilt_agent.cli.observe import COMMANDS as OBSERVE_COMMANDS
from quilt_agent.cli.unitrun import COMMANDS as UNIT_RUN_COMMANDS
from quilt_agent.cli.units import COMMANDS as UNIT_COMMANDS
from quilt_agent.cli.volumes import COMMANDS as VOLUME_COMMANDS
from quilt_agent.cli.context import CliState, with_client
from quilt_agent.client import Client

EXIT_INTERRUPTED = 130


class QuiltGroup(click.Group):
    """click's group, with every error as one `quiltctl: ...` line: click's own usage errors are three lines
    (usage, hint, error), which drowns the one that matters in scripts' logs."""

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
    error, and for `run` in the foreground and `exec` the command's own exit code.
    """
    ctx.ensure_object(CliState)


for _command in [*COMMANDS, *INTERACTIVE_COMMANDS, *OBSERVE_COMMANDS, *NETWORK_COMMANDS, *IMAGE_COMMANDS,
                 *VOLUME_COMMANDS, *UNIT_COMMANDS,
                 *UNIT_RUN_COMMANDS]:
    cli.add_command(_command)


@cli.command()
@click.pass_context
def version(ctx: click.Context) -> None:
    """Print the versions of quiltctl and of the running quilt-agent."""
    click.echo(f"Client: {__version__}")

    async def body(client: Client) -> str:
        return await client.version()

    click.echo(f"Agent:  {with_client(ctx, body)}")


def main() -> None:
    cli.main(prog_name="quiltctl", obj=CliState())
