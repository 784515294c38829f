"""What ps, inspect, status, logs, start, stop, rm, wait and exec (without a terminal) do once their arguments are
parsed.

Free of click: cli/show.py, cli/lifecycle.py and cli/interactive.py declare these verbs to click (help, completion, usage errors),
and cli/quick.py runs their common forms without importing click at all, which is a third of a `quiltctl ps`.
Both hand the parsed arguments here, so the two paths cannot differ in what they do. Each function returns the
command's exit status (0, or 125 when a container named could not be acted on); a failure that ends the command
at once does so by context.fail. `ctx` is click's context (for tests' fake clients), or None.
"""

from __future__ import annotations

import os
import time

# Signal numbers from the C module: `signal` itself imports enum for its Signals class, which only a warning below
# needs.
from _signal import SIGKILL, SIGTERM

from quilt_agent.api import ClientError
from quilt_agent.cli import output
from quilt_agent.cli.context import ACCESS_DENIED, EXIT_QUILT_ERROR, NOT_RUNNING, each, fail, warn, with_client

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, Sequence

    import click

    from quilt_agent.cli.context import Client

UINT32_MAX = (1 << 32) - 1
EXIT_OK = 0


# --- ps, inspect, status ---------------------------------------------------------------------------------------


def ps(ctx: click.Context | None, show_all: bool, as_json: bool, quiet: bool, fmt: str | None,
       filter_specs: Sequence[str], last: int | None, latest: bool, no_trunc: bool, noheading: bool) -> int:
    from quilt_agent.cli import listing

    try:
        filters = listing.parse_filters(filter_specs)
        if last is not None and latest:
            raise listing.ListingError("--last and --latest cannot be used together")
    except listing.ListingError as e:
        fail(str(e))
    template = output.parse_format(fmt)
    chosen_all = show_all
    show_all = listing.fetches_all(show_all, filters, last, latest)  # what the body fetches

    # A template or JSON may show any property; the table only what it shows and filters by.
    names = () if as_json or output.wants_json(fmt) or template is not None else listing.TABLE_PROPERTIES

    async def body(client: Client) -> list[dict[str, Any]]:
        # One call for every container's properties, however many there are.
        rows = [props for _path, props in await client.list_container_properties(names)]
        return [props for props in rows if show_all or props.get("State") in ("running", "paused")]

    try:
        rows = listing.select(with_client(ctx, body), chosen_all, filters, last, latest)
    except listing.ListingError as e:  # a before= or since= that names no container
        fail(str(e))
    now = time.time()
    if as_json or output.wants_json(fmt):
        output.print_json([listing.dated(props) for props in rows])
    elif template is not None:  # a template wins over -q, as in Podman
        from quilt_agent.cli import items  # a template's fields; only a --format imports them

        output.print_template(template, [items.ps_item(props, now, no_trunc) for props in rows],
                              items.PS_HEADERS, heading=not noheading, example=items.ps_item({}, now))
    elif quiet:
        for props in rows:
            output.echo(str(props["Id"])[:None if no_trunc else output.SHORT_ID])
    else:
        output.print_ps_table(rows, now, no_trunc, heading=not noheading)
    return EXIT_OK


async def _inspect_one(client: Client, name: str) -> dict[str, Any]:
    path, props = await client.get_container_properties(name)
    if props.get("HealthCommand"):
        status, streak, checks = await client.health_log(path)
        props["HealthLog"] = {"Status": status, "FailingStreak": streak, "Log": [
            {"Start": start, "End": end, "ExitCode": code, "Output": text} for start, end, code, text in checks]}
    try:
        props["Environment"] = await client.get_environment(path)
    except ClientError as e:
        # The environment may hold secrets and is only for those who may manage the container; others still
        # get everything else.
        if e.name != ACCESS_DENIED:
            raise
    return props


def inspect(ctx: click.Context | None, fmt: str | None, containers: Sequence[str]) -> int:
    from quilt_agent.cli import listing

    template = output.parse_format(fmt)

    async def body(client: Client) -> tuple[list[dict[str, Any]], bool]:
        return await each(containers, lambda name: _inspect_one(client, name))

    results, ok = with_client(ctx, body)
    if template is not None:
        from quilt_agent.cli import items  # a template's fields; only a --format imports them

        output.print_template(template, [items.inspect_item(props) for props in results],
                              example=items.inspect_item({}))
    else:
        output.print_json([listing.dated(props) for props in results])
    return EXIT_OK if ok else EXIT_QUILT_ERROR


def status(ctx: click.Context | None, container: str) -> int:
    async def body(client: Client) -> dict[str, Any]:
        return (await client.get_container_properties(container))[1]

    props = with_client(ctx, body)
    for line in output.status_lines(props, time.time()):
        output.echo(line)
    return EXIT_OK


def logs(ctx: click.Context | None, lines: int | None, since_usec: int | None, timestamps: bool, setup: bool,
         container: str) -> int:
    """The container's output as the journal holds it now (logs -f and --until are cli/observe.py's)."""
    options: dict[str, Any] = {"setup": True, "dropped": True} if setup else {"dropped": True}
    # On the wire lines 0 means "no limit"; `--tail 0` means no lines, as in Podman (the container is still
    # looked up, so an unknown one is still an error).
    if lines:
        options["lines"] = lines
    if since_usec is not None:
        options["since"] = since_usec

    async def body(client: Client) -> tuple[list[Any], str]:
        path, props = await client.get_container_properties(container)
        return [] if lines == 0 else await client.read_logs(path, options), str(props.get("LogDriver", ""))

    shown, driver = with_client(ctx, body)
    output.print_logs(shown, timestamps, driver)
    return EXIT_OK


def logs_now(ctx: click.Context | None, lines: int | None, since: str | None, until: str | None, follow: bool,
             timestamps: bool, setup: bool, container: str) -> int:
    """logs as cli/quick.py takes it: without --since, --until or -f (those are click's)."""
    assert since is None and until is None and not follow, "logs --since, --until and -f go through click"
    return logs(ctx, lines, None, timestamps, setup, container)


# --- start, stop, rm (and kill, in cli/lifecycle.py) -------------------------------------------------------------


def for_each(
    ctx: click.Context | None,
    containers: Sequence[str],
    action: Callable[[Client, str, str], Awaitable[str | None]],
    together: bool = False,
) -> int:
    """Apply `action(client, path, name)` to each container, in turn or (together) all at once, as Podman does:
    print what it returns as each ends, report each failure on its own line, go on with the rest, and end with
    125 if any failed."""

    async def body(client: Client) -> bool:
        async def one(name: str) -> None:
            result = await action(client, await client.get_container(name), name)
            if result is not None:
                output.echo(result)

        return (await each(containers, one, together))[1]

    return EXIT_OK if with_client(ctx, body) else EXIT_QUILT_ERROR


async def running_names(client: Client) -> list[str]:
    return [e.name for e in await client.list_containers() if e.state in ("running", "paused")]


def start(ctx: click.Context | None, containers: Sequence[str]) -> int:
    async def action(client: Client, path: str, name: str) -> str:
        await client.start(path)
        return name

    return for_each(ctx, containers, action)


def stop(ctx: click.Context | None, timeout: int | None, every: bool, containers: Sequence[str]) -> int:
    """Stop the containers named, or with `every` the running ones (not both: the caller checks)."""
    from quilt_agent.bus.names import container_id

    async def action(client: Client, path: str, name: str) -> str:
        if timeout == 0:
            # On the wire 0 means "the container's own timeout"; Podman users mean "no grace period" by -t 0.
            try:
                await client.kill(path, SIGKILL)
            except ClientError as e:
                # Stop on a stopped container succeeds (as podman stop); keep -t 0 the same.
                if e.name != NOT_RUNNING:
                    raise
            await client.wait(path)
        else:
            await client.stop(path, timeout or 0)
            _, props = await client.get_container_properties(container_id(path))
            stop_signal = int(props.get("StopSignal", SIGTERM))
            if props.get("ExitSignal") == SIGKILL and stop_signal != SIGKILL:
                # As Podman says it: the program did not end on its stop signal (one without a handler, as PID 1,
                # ignores SIGTERM), which --init or a handler would fix.
                import signal

                seconds = timeout or int(props.get("StopTimeout", 10))
                warn(f"StopSignal {signal.Signals(stop_signal).name} failed to stop container {name} in {seconds} "
                     "seconds, resorting to SIGKILL")
        return name

    if every:
        containers = with_client(ctx, running_names)
    return for_each(ctx, containers, action, together=True)


def rm(ctx: click.Context | None, force: bool, every: bool, containers: Sequence[str]) -> int:
    """Remove the containers named, or with `every` all that do not run (with force, all)."""

    async def action(client: Client, path: str, name: str) -> str:
        await client.remove(path, force)
        return name

    async def removable(client: Client) -> list[str]:
        # Without -f a running one would only be refused: left alone, as the flag's help says.
        return [e.name for e in await client.list_containers()
                if e.state != "removing" and (force or e.state != "running")]

    if every:
        containers = with_client(ctx, removable)
    return for_each(ctx, containers, action, together=force)  # with force, running ones are killed at once


def wait(ctx: click.Context | None, conditions: Sequence[str], containers: Sequence[str]) -> int:
    """Print each container's exit code once it exits, or (conditions) the first condition it meets."""
    from quilt_agent.cli import reconnect

    timeout = reconnect.checked_timeout()

    async def body(client: Client) -> bool:
        # A restart of the agent meanwhile (a crash, an upgrade) is ridden out: the wait is asked again of the
        # agent that comes back, which has recorded an exit that came while none ran.
        session = reconnect.Session(client, timeout)

        async def one(name: str) -> None:
            path = await session.call(lambda: client.get_container(name))
            if not conditions:
                output.echo(str(await session.call(lambda: client.wait(path))))
                return
            met, code = await session.call(lambda: client.wait_condition(path, list(conditions)))
            output.echo(str(code) if met == "exited" else met)

        return (await each(containers, one))[1]

    return EXIT_OK if with_client(ctx, body) else EXIT_QUILT_ERROR


# --- exec ------------------------------------------------------------------------------------------------------

# The exec's command is the agent's child's: the agent going away (a restart, an upgrade, a crash) leaves it running
# on our terminal or fds, but nobody is left to tell its exit code, and a new agent knows nothing of it.
EXEC_CUT = ("quilt-agent went away during the exec (a restart, an upgrade or a crash): the command in container "
            "{container} {then}, but its exit code is lost")


def exec_options(env: Sequence[tuple[str, str | None]], workdir: str | None, user: str | None,
                 tty: bool) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if env:
        options["env"] = [f"{key}={value}" for key, value in env if value is not None]  # None: unset here
    if workdir is not None:
        options["workdir"] = workdir
    if user is not None:
        options["user"] = user
    if tty:
        options["tty"] = True
    return options


def exec_(ctx: click.Context | None, interactive: bool, tty: bool, env: Sequence[tuple[str, str | None]],
          workdir: str | None, user: str | None, container: str, command: Sequence[str]) -> int:
    """exec without a terminal (cli/interactive.py runs it with one): the command on quiltctl's own stdout and
    stderr, and with `interactive` its stdin; the command's exit code."""
    from quilt_agent.bus.names import FAILED
    from quilt_agent.cli import reconnect

    assert not tty, "exec with a terminal is cli/interactive.py's"
    argv = list(command[1:] if command[:1] == ("--",) else command)  # a `--` after CONTAINER reaches us literally
    options = exec_options(env, workdir, user, tty)

    async def body(client: Client) -> int:
        path = await client.get_container(container)
        # Without -i the command's stdin is empty, as with podman exec: it must not eat a script's input.
        null = -1 if interactive else os.open(os.devnull, os.O_RDONLY)
        try:
            return await client.exec_with_fds(path, argv, options, 0 if interactive else null, 1, 2)
        except ClientError as e:
            if reconnect.agent_gone(e):
                raise reconnect.AgentGone(EXEC_CUT.format(container=container, then="runs on"),
                                          FAILED) from None
            raise
        finally:
            if null >= 0:
                os.close(null)

    return with_client(ctx, body)
