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

EXIT_INTERRUPTED = 130

# Command name -> (module under quilt_agent.cli, attribute). The one place a command is registered.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("containers", "run"),
    "create": ("containers", "create"),
    "start": ("lifecycle", "start"),
    "stop": ("lifecycle", "stop"),
    "kill": ("lifecycle", "kill"),
    "rm": ("lifecycle", "rm"),
    "remove": ("lifecycle", "remove"),
    "ps": ("show", "ps"),
    "inspect": ("show", "inspect"),
    "status": ("show", "status"),
    "logs": ("show", "logs"),
    "wait": ("lifecycle", "wait"),
    "healthcheck": ("lifecycle", "healthcheck"),
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
    # Podman's names for the image verbs: the same commands as image ls/rm/pull/import/tag.
    "images": ("images", "ls"),
    "rmi": ("images", "rm"),
    "pull": ("images", "pull"),
    "import": ("images", "import_"),
    "tag": ("images", "tag"),
    "restart": ("manage", "restart"),
    "rename": ("manage", "rename"),
    "pause": ("manage", "pause"),
    "unpause": ("manage", "unpause"),
    "top": ("manage", "top"),
    "port": ("manage", "port"),
    "attach": ("manage", "attach"),
    "export": ("manage", "export"),
    "container": ("container_group", "container"),
    "info": ("system", "info"),
    "system": ("system", "system"),
}

# Podman commands quiltctl does not have, and what to use instead: an unknown command is answered with this, or
# with nothing but "no such command" (click's own guess by spelling, `rmi` -> "rm", misleads).
PODMAN_EQUIVALENTS: dict[str, str] = {
    "build": "quiltctl builds no images: build with buildah or podman, save the image to an archive "
             "(podman save -o app.tar IMAGE) and `quiltctl import app.tar NAME`",
    "farm": "quiltctl builds no images: build with buildah or podman and `quiltctl import` the archive",
    "commit": "quiltctl makes no image from a container: `quiltctl export CONTAINER -o root.tar`, then "
              "`quiltctl import root.tar NAME`",
    "diff": "Quilt keeps no record of a container's changes to its image: `quiltctl export CONTAINER` writes its "
            "whole root",
    "history": "Quilt keeps no image history: `quiltctl image inspect IMAGE` shows its layers and config",
    "save": "quiltctl writes no image archives: save with podman or skopeo; `quiltctl export CONTAINER` writes a "
            "container's root as a tarball",
    "load": "`quiltctl import FILE [NAME]` takes a docker save or oci-archive file, an OCI layout or a rootfs "
            "tarball",
    "push": "quiltctl pushes to no registry: push with podman or skopeo",
    "search": "quiltctl searches no registry: `skopeo list-tags docker://REPOSITORY` lists a repository's tags",
    "login": "quiltctl keeps no registry logins: `quiltctl pull --auth-file FILE` reads a docker config.json "
             "(`podman login --authfile FILE` writes one)",
    "logout": "quiltctl keeps no registry logins: it reads credentials only from `quiltctl pull --auth-file FILE`",
    "manifest": "Quilt keeps no manifest lists: `quiltctl pull --platform OS/ARCH` picks one image of a list",
    "untag": "`quiltctl rmi NAME` removes one name of an image that has several",
    "pod": "Quilt has no pods: containers share a network namespace with `--network container:NAME`, or a "
           "network with `quiltctl network create`",
    "kube": "quiltctl runs no Kubernetes YAML: `quiltctl generate unit CONTAINER` writes a systemd unit for a "
            "container",
    "play": "quiltctl runs no Kubernetes YAML: `quiltctl generate unit CONTAINER` writes a systemd unit for a "
            "container",
    "compose": "quiltctl reads no compose files: write one systemd unit per container with "
               "`quiltctl generate unit CONTAINER`",
    "quadlet": "Quilt reads no quadlet files: `quiltctl generate unit CONTAINER` writes a systemd unit and "
               "`quiltctl unit-check FILE` checks one",
    "auto-update": "Quilt updates no images by itself: `quiltctl pull IMAGE`, then recreate the container or "
                   "restart its unit",
    "update": "Quilt cannot change a container's limits once created: remove it and create it with the new flags",
    "init": "Quilt prepares a container when it starts: `quiltctl start CONTAINER`",
    "mount": "quiltctl mounts no container's root on the host: `quiltctl cp` copies files in and out, "
             "`quiltctl exec` runs commands inside",
    "unmount": "quiltctl mounts no container's root on the host, so there is nothing to unmount",
    "umount": "quiltctl mounts no container's root on the host, so there is nothing to unmount",
    "secret": "Quilt has no secret store: pass a value with `-e NAME` (taken from your environment) or "
              "`--env-file FILE`, or a file with `-v FILE:/run/secrets/NAME:ro`",
    "machine": "quiltctl runs containers on this host only, through its quilt-agent: it manages no virtual "
               "machines",
    "unshare": "quiltctl has no user namespace to enter: containers run through the system's quilt-agent",
    "artifact": "Quilt keeps no OCI artifacts, only images (`quiltctl pull`, `quiltctl import`)",
    "checkpoint": "Quilt cannot checkpoint a container: `quiltctl pause` freezes one in place",
    "restore": "Quilt cannot checkpoint or restore a container: `quiltctl pause` and `unpause` freeze and thaw one",
}


def load_command(module: str, attribute: str) -> click.Command:
    """The command `attribute` of quilt_agent.cli.`module`, importing the module now (COMMANDS' entries)."""
    command = getattr(importlib.import_module(f"quilt_agent.cli.{module}"), attribute)
    assert isinstance(command, click.Command)
    return command


class QuiltGroup(click.Group):
    """click's group, with commands imported on first use and every error as one `quiltctl: ...` line: click's
    own usage errors are three lines (usage, hint, error), which drowns the one that matters in scripts' logs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        where = COMMANDS.get(cmd_name)
        return None if where is None else load_command(*where)

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
    from quilt_agent.cli.context import CliState  # here, not at the top: `quiltctl --version` needs none of it

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
    cli.main(prog_name="quiltctl")
