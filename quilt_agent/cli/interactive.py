"""quiltctl exec, and run -i/-t: a command inside a container on quiltctl's own stdin, stdout and stderr.

The fds are handed to the agent with the call (ExecWithFds), so the command reads and writes them itself; with
-t it gets a pty whose master quiltctl copies (cli/terminal.py). quiltctl exits with the command's exit code,
125 when Quilt reports an error (126 and 127 are the command's own: cannot execute, not found).
"""
from __future__ import annotations

import os
import time
from typing import Any, Awaitable

import click

from quilt_agent.cli import hostfiles
from quilt_agent.cli import reconnect, sigproxy, verbs
from quilt_agent.cli.context import NO_SUCH_CONTAINER, UNKNOWN_OBJECT, fail, with_async_client
from quilt_agent.cli.paramtypes import ENV
from quilt_agent.api import AgentNotReachable, ClientError
from quilt_agent.bus.names import FAILED
from quilt_agent.cli.context import Client


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option("-i", "--interactive", is_flag=True, help="Pass quiltctl's stdin to the command.")
@click.option("-t", "--tty", is_flag=True, help="Give the command a terminal (with -i: an interactive shell).")
@click.option("-e", "--env", type=ENV, multiple=True,
              help="Set an environment variable (KEY=VALUE; KEY alone: this shell's value, if set).")
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
    if not tty:
        ctx.exit(verbs.exec_(ctx, interactive, tty, env, workdir, user, container, command))
    options = verbs.exec_options(env, workdir, user, tty)

    async def body(client: Client) -> int:
        from quilt_agent.cli import terminal

        path = await client.get_container(container)

        async def on_terminal(slave: int) -> int:
            try:
                return await client.exec_with_fds(path, argv, options, slave, slave, slave)
            except ClientError as e:
                if reconnect.agent_gone(e):
                    raise terminal.Orphaned() from e  # the session goes on: the command has our pty
                raise

        try:
            return await terminal.run_in_pty(on_terminal, interactive)
        except terminal.Orphaned:
            raise reconnect.AgentGone(verbs.EXEC_CUT.format(container=container, then="ran to its end"),
                                      FAILED) from None

    ctx.exit(with_async_client(ctx, body))  # a terminal's copying needs the loop


def run_attached(ctx: click.Context, name: str, image: str, command: list[str], options: dict[str, Any],
                 interactive: bool, tty: bool) -> None:
    """`quiltctl run -i/-t`: create the container (CreateContainer's arguments), start it on quiltctl's stdin,
    stdout and stderr or on a pty (StartWithFds), wait, and exit with its exit code.

    The container runs on our fds, not the agent's: a restart of the agent leaves it attached, and the wait
    goes on with the agent that comes back (cli/reconnect.py). --rm (remove_on_exit) is the agent's to do, held
    (HoldRemoval) until quiltctl has the exit code: if quiltctl is killed, the agent removes it at its exit."""
    remove_after = bool(options.get("remove_on_exit", False))
    timeout = reconnect.checked_timeout()

    async def start_and_wait(client: Client, session: reconnect.Session, path: str, container_id: str, since: int,
                             stdin: int, stdout: int, stderr: int) -> int:
        await client.start_with_fds(path, tty, stdin, stdout, stderr)

        def wait() -> Awaitable[int]:
            return reconnect.wait_for_exit(session, client, path, container_id, since)

        # With a terminal, ^C is a key for the container's terminal; without, quiltctl passes signals on.
        return await (wait() if tty else sigproxy.wait_forwarding_signals(client, path, wait))

    async def body(client: Client) -> int:
        since = time.time_ns() // 1000  # its exit, if the agent removed it while away, is in the history since
        path = await client.create_container(name, await hostfiles.image_ref(client, image), command, options)
        session = reconnect.Session(client, timeout, reached=True)
        null = os.open(os.devnull, os.O_RDONLY)
        try:
            if remove_after:
                await client.hold_removal(path)  # before the start: it cannot be gone before we have its exit
            container_id = str((await client.properties(path))["Id"])
            if tty:
                from quilt_agent.cli import terminal

                code = await terminal.run_in_pty(
                    lambda slave: start_and_wait(client, session, path, container_id, since, slave, slave, slave),
                    interactive)
            else:
                code = await start_and_wait(client, session, path, container_id, since,
                                            0 if interactive else null, 1, 2)
        except ClientError as e:
            if remove_after and not isinstance(e, (AgentNotReachable, reconnect.AgentGone)) \
                    and not reconnect.agent_gone(e):
                try:
                    await client.remove(path, True)
                except ClientError:
                    pass  # the start's error is the one to report
            raise
        finally:
            os.close(null)
        if remove_after:
            await _remove_held(client, path)
        return code

    code = with_async_client(ctx, body)
    if not 0 <= code <= 255:
        fail(f"the container ended without an exit status (exit code {code})")
    ctx.exit(code)


async def _remove_held(client: Client, path: str) -> None:
    """Remove the exited --rm container we held; one the agent removed already (a restart of the agent forgets
    holds) is no error."""
    try:
        await client.remove(path, False)
    except ClientError as e:
        if e.name not in (NO_SUCH_CONTAINER, UNKNOWN_OBJECT, "org.freedesktop.DBus.Error.UnknownInterface"):
            raise


COMMANDS: list[click.Command] = [exec_]
