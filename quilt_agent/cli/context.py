"""What every verb shares: where its client comes from, and how bus errors become exit status 125.

Two transports: the one-shot verbs (ps, inspect, stop, rm, run -d, exec, ...) run on wire.BlockingClient, a plain
blocking socket, so they never import asyncio or dbus-fast (together ~70 ms of start-up); the verbs that wait on
streams or signals (logs -f, events, stats, attached run) run on client.Client and an asyncio loop.
"""

from __future__ import annotations

import sys

from quilt_agent.api import AgentNotReachable, Calls, ClientError
# ACCESS_DENIED, NO_SUCH_CONTAINER and NOT_RUNNING: for the verbs, which import them from here.
from quilt_agent.bus.names import ACCESS_DENIED, ERROR_PREFIX, NO_SUCH_CONTAINER, NOT_RUNNING  # noqa: F401

# Free of click, typing and dataclasses: the commands cli/quick.py runs without click import this (see wire.py on
# what each module costs a one-shot command).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Awaitable, Callable, NoReturn, Sequence, TypeVar

    import click

    T = TypeVar("T")
    R = TypeVar("R")

# The verbs annotate their bodies' client with this: either transport's, both being Calls.
Client = Calls

# Podman's convention: 125 is "the runtime failed", leaving 126/127 and the container's own codes distinct.
EXIT_QUILT_ERROR = 125

# The agent's own error names come from its one table (bus/errors.py); these are the bus's.
NO_SERVER = "org.freedesktop.DBus.Error.NoServer"  # Client.connect's: no system bus to talk to
SERVICE_UNKNOWN = "org.freedesktop.DBus.Error.ServiceUnknown"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"


class HostFileError(Exception):
    """A host file quiltctl itself reads or writes (cp, image import) cannot be: one line, exit 125."""


class CliState:
    """click's context obj. Tests put a fake client's factory here (used by both kinds of verbs); None: the real
    transports."""

    def __init__(self, client_factory: Callable[[], Any] | None = None) -> None:
        self.client_factory = client_factory


# What to do about an unreachable agent, on the same line as the error (scripts' logs keep one line per failure).
_NO_BUS_HINT = ("without systemd as PID 1 there is no system bus: use the test host, "
                "`python3 tests/testhost.py run -- bash` from the checkout; otherwise `make install` and start dbus")
_NO_AGENT_HINT = "is quilt-agent installed? `make install` from the checkout installs it"


def unreachable_message(error: AgentNotReachable) -> str:
    """The error's one line, with a hint when the bus itself, or the agent's bus activation, is missing."""
    if error.name == NO_SERVER:
        return f"{error.message} ({_NO_BUS_HINT})"
    if error.name == SERVICE_UNKNOWN:
        return f"{error.message} ({_NO_AGENT_HINT})"
    return error.message


def error_message(error: ClientError) -> str:
    """The one line quiltctl prints for an error reply. The agent's declared errors (NoSpace, ResourceExhausted,
    SystemdFailed, TimedOut, Failed among them) carry their own advice; anything else is named, since its text
    alone may not say where it came from (an older agent's unnamed failure, the bus's own refusal)."""
    if isinstance(error, AgentNotReachable):
        message = unreachable_message(error)
    elif _declared(error.name):
        message = error.message
    else:
        message = f"{error.message} ({error.name}; the agent's journal may say more: journalctl -u quilt-agent)"
    return " ".join(message.splitlines())  # systemd's or a registry's text may span lines: one line a failure


def _declared(name: str) -> bool:
    """Whether the name is one of the agent's declared errors: their table (with the agent's error classes) is
    imported only for an error reply, not by every command."""
    from quilt_agent.bus.error_names import DECLARED_NAMES

    return name in DECLARED_NAMES


def fail(message: str, code: int = EXIT_QUILT_ERROR) -> NoReturn:
    """End the command with one line on stderr and `code` (a SystemExit: click, CliRunner and the quick path all
    let it through as the exit status)."""
    warn(message)
    raise SystemExit(code)


def warn(message: str) -> None:
    sys.stderr.write(f"quiltctl: {message}\n")
    sys.stderr.flush()


async def each(names: Sequence[str], action: Callable[[str], Awaitable[R]],
               together: bool = False) -> tuple[list[R], bool]:
    """Run action for every name, as Podman's multi-name verbs do: a Quilt error is reported on its own line and
    the others still run; an unreachable agent stops at once. In turn, or with together all at once (a stop
    waits out each container's timeout: five at once take one, not five). Returns the results of the names that
    worked, in the names' order, and whether all did."""
    async def one(name: str) -> tuple[bool, R | None]:
        try:
            return True, await action(name)
        except AgentNotReachable:
            raise  # no point trying the others
        except ClientError as e:
            warn(error_message(e))
            return False, None

    if together and len(names) > 1:
        outcomes = await _together([one(name) for name in names])
    else:
        outcomes = [await one(name) for name in names]
    return [r for done, r in outcomes if done], all(done for done, _ in outcomes)  # type: ignore[misc]


def in_event_loop() -> bool:
    """Whether this runs on an asyncio loop (with_async_client) rather than driven on the blocking transport;
    asyncio is not imported to find out (an unimported asyncio runs no loop)."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return False
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _together(calls: list[Awaitable[T]]) -> list[T]:
    """All at once: on an asyncio loop by gather; on the blocking transport, each in a thread of its own (the
    connection serves concurrent calls), driven there as it is here."""
    if in_event_loop():
        import asyncio

        return list(await asyncio.gather(*calls))
    from concurrent.futures import ThreadPoolExecutor

    from quilt_agent.wire import drive

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(drive, calls))  # type: ignore[arg-type]


def _interactive() -> bool:
    # Only a terminal user can answer a polkit password prompt; scripts should get a clean AccessDenied.
    return sys.stdin.isatty()


# As Podman's run: a container whose command could not be run ends quiltctl with the shell's codes, not 125.
COMMAND_EXIT_CODES = {ERROR_PREFIX + "CommandNotFound": 127, ERROR_PREFIX + "CommandNotExecutable": 126}


def _failing(error: BaseException) -> NoReturn:
    if isinstance(error, ClientError):
        fail(error_message(error), COMMAND_EXIT_CODES.get(error.name, EXIT_QUILT_ERROR))
    fail(str(error))


def with_client(ctx: click.Context | None, body: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, run `body` on the blocking transport, disconnect; any ClientError ends the command with one line
    and status 125. `body` may await only the client's calls (see with_async_client for the rest)."""
    from quilt_agent.wire import BlockingClient, drive

    return _session(ctx, lambda: BlockingClient(interactive=_interactive()), drive, body)


def with_async_client(ctx: click.Context | None, body: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, run `body` on an asyncio loop, disconnect; any ClientError ends the command with one line and
    status 125. For the verbs that wait on streams or signals (logs -f, events, stats, attached run)."""
    import asyncio

    from quilt_agent.client import Client as AsyncClient

    return _session(ctx, lambda: AsyncClient(interactive=_interactive()), asyncio.run, body)


def _session(ctx: click.Context | None, transport: Callable[[], Client], run: Callable[[Any], T],
             body: Callable[[Client], Awaitable[T]]) -> T:
    """`body` on a connected client of `transport` (or the test's client_factory), run to its end by `run`."""
    state = (ctx.find_object(CliState) if ctx is not None else None) or CliState()
    client = state.client_factory() if state.client_factory else transport()

    async def session() -> T:
        async with client:
            return await body(client)

    try:
        return run(session())
    except (ClientError, HostFileError) as e:
        _failing(e)
