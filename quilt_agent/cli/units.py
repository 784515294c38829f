"""quiltctl unit-check FILE and quiltctl generate unit CONTAINER: Quilt's container files (quilt_agent/unitfiles.py)
from the command line. `quiltctl unit-run`, which the generated services run, is cli/unitrun.py's."""
from __future__ import annotations

from typing import Any

import click

from quilt_agent import unitfiles
from quilt_agent.cli.context import fail, with_client
from quilt_agent.cli.context import Client

EXIT_INVALID = 1  # what the failing service of a bad file exits with: `systemctl start` fails


@click.command("unit-check")
@click.argument("file", type=click.Path(dir_okay=False))
def unit_check(file: str) -> None:
    """Check a .container, .network or .volume FILE and print the service quilt-generator makes of it.

    A bad file is one line on stderr, FILE:LINE: KEY: why, and exit status 1. References to other files
    (Network=db.network, Volume=data.volume:/srv) are looked up in the unit directories, then beside FILE.
    """
    try:
        record = unitfiles.load(file)
    except unitfiles.UnitFileError as e:
        fail(str(e), EXIT_INVALID)
    click.echo(unitfiles.service_text(record), nl=False)


@click.group()
def generate() -> None:
    """Generate files from existing containers."""


@generate.command("unit")
@click.argument("container")
@click.pass_context
def generate_unit(ctx: click.Context, container: str) -> None:
    """Print a .container file that makes a container like CONTAINER, environment included.

    Save it as /etc/quilt/containers/NAME.container and run `systemctl daemon-reload` to have systemd run it as
    NAME.service.
    """
    async def body(client: Client) -> tuple[dict[str, Any], list[str]]:
        path = await client.get_container(container)
        return await client.properties(path), await client.get_environment(path)

    props, environment = with_client(ctx, body)
    click.echo(unitfiles.container_file_text(props, environment), nl=False)


COMMANDS = [unit_check, generate]
