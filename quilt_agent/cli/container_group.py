"""quiltctl container VERB: Podman's `podman container` group. Its verbs are the very command objects of the
top-level ones (main.COMMANDS), imported only when one runs, so `container ls` and `ps` cannot drift apart."""
from __future__ import annotations

import click

# Subcommand -> the top-level command it is (a key of main.COMMANDS), or (module, attribute) for the verbs
# that exist only in the group.
SUBCOMMANDS: dict[str, str | tuple[str, str]] = {
    "ls": "ps",
    "list": "ps",
    **{name: name for name in ("ps", "run", "create", "start", "stop", "kill", "rm", "inspect", "logs", "wait",
                               "exec", "restart", "rename", "top", "port", "pause", "unpause", "attach", "export",
                               "cp", "stats")},
    "prune": ("manage", "container_prune"),
}


class ContainerGroup(click.Group):
    """A group whose commands are looked up in SUBCOMMANDS when asked for, not registered up front."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        # Imported here: main imports this module only when `container` runs.
        from quilt_agent.cli.main import COMMANDS, load_command

        return load_command(*(COMMANDS[target] if isinstance(target, str) else target))


@click.group(cls=ContainerGroup)
def container() -> None:
    """Manage containers, as podman container: the same commands as the top-level ones (ls is ps), and prune."""
