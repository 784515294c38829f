"""quiltctl exec, and run -i/-t: a command inside a container on quiltctl's own stdin, stdout and stderr.

The fds are handed to the agent with the call (ExecWithFds), so the command reads and writes them itself; with
-t it gets a pty whose master quiltctl copies (cli/terminal.py). quiltctl exits with the command's exit code,
125 when Quilt reports an error (126 and 127 are the command's own: cannot execute, not found).
"""
from __future__ import annotations

import os
from typing import Any

import click

from quilt_agent.cli import hostfiles
from quilt_agent.cli import sigproxy, terminal
from quilt_agent.cli.context import fail, with_client
from quilt_agent.cli.parsing import ENV
from quilt_agent.client import Client, ClientError


def exec_options(env: tuple[tuple[str, str], ...], workdir: str | None, user: str | None, tty: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if env:
        options["env"] = [f"{key}={value}" for key, value in env]
    if workdir is not None:
        options["workdir"] = workdir
    if user is not None:
        options["user"] = user
    if tty:
        options["tty"] = True
    return options


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Pass quiltctl's stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (with -i: an interactive shell).")
@click.option("-e", "--env", type=ENV, multiple=True, help="Set an environment variable (KEY=VALUE).")
@click.option("-w", "--workdir", default=None, help="Working directory inside the container (default: the container's).")
@click.option("-u", "--user", default=None, help="User to run as: a name or UID[:GID] (default: the container's).")
@click.argument("container")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="[--] COMMAND [ARG...]")
@click.pass_context
def exec_(ctx: click.Context, interactive: bool, tty: bool, env: tuple[tuple[str, str], ...], workdir: str | None,
          user: str | None, container: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside the running CONTAINER; exit with its exit code."""
    argv = list(command)
    if argv[:1] == ["--"]:  # option parsing stops at CONTAINER, so a `--` after it reaches us literally
        argv = argv[1:]
    if not argv:
        raise click.UsageError("a COMMAND to run is required")
    options = exec_options(env, workdir, user, tty)

    async def body(client: Client) -> int:
        path = await client.get_container(container)
        if tty:
            return await terminal.run_in_pty(
                lambda slave: client.exec_with_fds(path, argv, options, slave, slave, slave), interactive)
        if interactive:
            return await client.exec_with_fds(path, argv, options, 0, 1, 2)
        # Without -i the command's stdin is empty, as with podman exec: it must not eat a script's input.
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            return await client.exec_with_fds(path, argv, options, null, 1, 2)
        finally:
            os.close(null)

    ctx.exit(with_client(ctx, body))


def run_attached(ctx: click.Context, name: str, image: str, command: list[str], options: dict[str, Any],
                 interactive: bool, tty: bool) -> None:
    """`quiltctl run -i/-t`: create the container (CreateContainer's arguments), start it on quiltctl's stdin,
    stdout and stderr or on a pty (StartWithFds), wait, and exit with its exit code."""
    remove_after = bool(options.pop("remove_on_exit", False))

    async def start_and_wait(client: Client, path: str, stdin: int, stdout: int, stderr: int) -> int:
        await client.start_with_fds(path, tty, stdin, stdout, stderr)
        # With a terminal, ^C is a key for the container's terminal; without, quiltctl passes signals on.
        return await (client.wait(path) if tty else sigproxy.wait_forwarding_signals(client, path))

    async def body(client: Client) -> int:
        path = await client.create_container(name, await hostfiles.image_ref(client, image), command, options)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            if tty:
                code = await terminal.run_in_pty(lambda slave: start_and_wait(client, path, slave, slave, slave),
                                                 interactive)
            else:
                code = await start_and_wait(client, path, 0 if interactive else null, 1, 2)
        except ClientError:
            if remove_after:
                try:
                    await client.remove(path, True)
                except ClientError:
                    pass  # the start's error is the one to report
            raise
        finally:
            os.close(null)
        if remove_after:
            await client.remove(path, False)
        return code

    code = with_client(ctx, body)
    if not 0 <= code <= 255:
        fail(f"the container ended without an exit status (exit code {code})")
    ctx.exit(code)


COMMANDS: list[click.Command] = [exec_]
