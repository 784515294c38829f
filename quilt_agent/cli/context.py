"""What every verb shares: where its Client comes from, and how bus errors become exit status 125."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass, field
from typing import Awaitable, Callable, NoReturn, Sequence, TypeVar, cast

import click

# ACCESS_DENIED, NO_SUCH_CONTAINER and NOT_RUNNING: for the verbs, which import them from here.
from quilt_agent.bus.errors import ACCESS_DENIED, DECLARED_NAMES, NO_SUCH_CONTAINER, NOT_RUNNING  # noqa: F401
from quilt_agent.cli.hostfiles import HostFileError
from quilt_agent.client import AgentNotReachable, Client, ClientError

T = TypeVar("T")
R = TypeVar("R")

# Podman's convention: 125 is "the runtime failed", leaving 126/127 and the container's own codes distinct.
EXIT_QUILT_ERROR = 125

# The agent's own error names come from its one table (bus/errors.py); these are the bus's.
NO_SERVER = "org.freedesktop.DBus.Error.NoServer"  # Client.connect's: no system bus to talk to
SERVICE_UNKNOWN = "org.freedesktop.DBus.Error.ServiceUnknown"
UNKNOWN_OBJECT = "org.freedesktop.DBus.Error.UnknownObject"


def _default_client() -> Client:
    # Only a terminal user can answer a polkit password prompt; scripts should get a clean AccessDenied.
    return Client(interactive=sys.stdin.isatty())


@dataclass
class CliState:
    """click's context obj. Tests put a fake Client's factory here; nothing else needs replacing."""

    client_factory: Callable[[], Client] = field(default=_default_client)


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
    elif error.name in DECLARED_NAMES:
        message = error.message
    else:
        message = f"{error.message} ({error.name}; the agent's journal may say more: journalctl -u quilt-agent)"
    return " ".join(message.splitlines())  # systemd's or a registry's text may span lines: one line a failure


def fail(message: str, code: int = EXIT_QUILT_ERROR) -> NoReturn:
    click.echo(f"quiltctl: {message}", err=True)
    raise click.exceptions.Exit(code)


def warn(message: str) -> None:
    click.echo(f"quiltctl: {message}", err=True)


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

    if together:
        outcomes = list(await asyncio.gather(*(one(name) for name in names)))
    else:
        outcomes = [await one(name) for name in names]
    return [cast(R, r) for done, r in outcomes if done], all(done for done, _ in outcomes)


def with_async_client(ctx: click.Context, body: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, run `body` on an asyncio loop, disconnect; any ClientError ends the command with one line and
    status 125. For the verbs that wait on streams, signals or several calls at once (logs -f, events, stats,
    attached run and exec); the one-shot verbs use with_client."""
    state = ctx.find_object(CliState) or CliState()

    async def session() -> T:
        async with state.client_factory() as client:
            return await body(client)

    try:
        return asyncio.run(session())
    except ClientError as e:
        fail(error_message(e))
    except HostFileError as e:
        fail(str(e))


def with_client(ctx: click.Context, body: Callable[[Client], Awaitable[T]]) -> T:
    """Connect, run `body`, disconnect; any ClientError ends the command with one line and status 125."""
    return with_async_client(ctx, body)
