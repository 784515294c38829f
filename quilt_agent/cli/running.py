"""What `run` does without -i or -t, once its request is built: in the foreground, run the container, wait for it
while passing signals on, print its output from the journal and exit with its code (--rm: the agent's removal,
held until then); with -d, print its id once it runs (or is ready).

Free of click: the click command (cli/containers.py) and cli/quick.py both come here.
"""

from __future__ import annotations

import os
import sys
import time

from quilt_agent.api import ClientError
from quilt_agent.bus.names import container_id
from quilt_agent.cli import output, sigproxy
from quilt_agent.cli import request as requests
from quilt_agent.cli.context import NO_SUCH_CONTAINER, fail, warn, with_async_client, with_client
from quilt_agent.replies import LogLine

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

    import click

    from quilt_agent.cli.context import Client
    from quilt_agent.cli.request import ContainerRequest

EXIT_OK = 0


def run(ctx: click.Context | None, detach: bool, ready_timeout: float, interactive: bool, tty: bool,
        **params: Any) -> int:
    """run's parameters as click passes them, without -i or -t; a request click would refuse raises
    cli/request.py's RequestError or runflags' FlagError (cli/quick.py then leaves the command line to click)."""
    assert not (interactive or tty), "run -i/-t is cli/interactive.py's"
    return run_request(ctx, requests.build_request(params, os.getcwd()), detach, ready_timeout)


async def _image_ref(client: Client, image: str) -> str:
    """hostfiles.image_ref: imported only for an image path (a name or id needs neither it nor a call)."""
    if not image.startswith("/"):
        return image
    from quilt_agent.cli import hostfiles

    return await hostfiles.image_ref(client, image)


def transport(request: ContainerRequest) -> Callable[..., Any]:
    """with_client, unless IMAGE is a file: quiltctl reads it in a thread of the loop while the agent imports."""
    return with_async_client if request.image.startswith("/") else with_client


async def _until_ready(client: Client, path: str, timeout: float) -> None:
    """As systemd waits for a Type=notify service: until it is ready, failing with its exit code if it ends
    first, or after timeout seconds (it is left running then)."""
    import asyncio

    try:
        met, code = await asyncio.wait_for(client.wait_condition(path, ["ready"]), timeout)
    except asyncio.TimeoutError:
        name = (await client.properties(path))["Name"]
        fail(f"container {name} did not become ready within {timeout:g} s; it still runs")
    if met == "exited":
        props = await client.properties(path)
        reason = f": {props['FailureReason']}" if props.get("FailureReason") else ""
        fail(f"container {props['Name']} exited with code {code} before it was ready{reason}", code if code > 0 else 125)


def run_request(ctx: click.Context | None, request: ContainerRequest, detach: bool, ready_timeout: float) -> int:
    """Run the request's container, in the foreground or (detach) not; the exit status."""
    if detach:

        async def detached(client: Client) -> str:
            path = await client.run_container(request.name, await _image_ref(client, request.image), request.command, request.options)
            if request.options.get("sdnotify") in ("container", "healthy"):
                await _until_ready(client, path, ready_timeout)
            return container_id(path)

        waits = request.options.get("sdnotify") in ("container", "healthy")  # with a timeout: on the loop
        output.echo((with_async_client if waits else transport(request))(ctx, detached))
        return EXIT_OK

    # The logs are read after the exit. --rm is the agent's (remove_on_exit), held (RunContainer's hold_removal)
    # until quiltctl has read the exit code and the logs and removes it; if quiltctl is killed meanwhile, or the
    # start fails, the agent removes it.
    remove_after = bool(request.options.get("remove_on_exit", False))
    from quilt_agent.cli import reconnect

    timeout = reconnect.checked_timeout()

    async def foreground(client: Client) -> int:
        session = reconnect.Session(client, timeout, reached=True)  # used once the container is there
        since = time.time_ns() // 1000
        options = dict(request.options, hold_removal=True) if remove_after else request.options
        path = await client.run_container(request.name, await _image_ref(client, request.image),
                                          request.command, options)
        live = None
        if show_setup_live:
            import asyncio

            live = asyncio.ensure_future(_show_setup_live(client, path))
        cid = container_id(path)
        code = await sigproxy.wait_forwarding_signals(
            client, path, lambda: reconnect.wait_for_exit(session, client, path, cid, since))
        if live is not None:
            import asyncio

            try:
                await asyncio.wait_for(live, 5.0)  # the pipe ends with the container
            except (asyncio.TimeoutError, ClientError, OSError):
                live.cancel()
        try:
            if request.options.get("log_driver") == "none":
                pass  # nothing was kept to print, as with Podman's
            elif request.options.get("setup"):
                await session.call(lambda: _print_logs_after_setup(client, path, shown=live is not None))
            else:
                output.print_logs(await session.call(lambda: client.read_logs(path, {"dropped": True})),
                                  driver=str(request.options.get("log_driver", "journald")))
        except ClientError as e:
            if not session.restarts or e.name not in _GONE_OBJECT:
                raise
            # An agent that restarted while it ran forgot the hold: it removed the container at its exit. Its name
            # (the journal's address) is asked for only now: a run that never meets a restart makes no call for it.
            name = request.name or await reconnect.name_from_history(client, cid, since)
            where = f"_SYSTEMD_UNIT=quilt-{name}.scope" if name else "-u 'quilt-*.scope'"
            warn(f"container {cid[:output.SHORT_ID]} was removed while quilt-agent was away: its output "
                 f"is in the journal (journalctl {where})")
        if remove_after:
            try:
                await client.remove(path, False)
            except ClientError as e:
                if e.name not in _GONE_OBJECT:
                    raise
        return code

    # On a terminal the setup steps' lines are shown as they come (a package manager can take minutes).
    show_setup_live = bool(request.options.get("setup")) and sys.stderr.isatty()
    code = (with_async_client if show_setup_live else transport(request))(ctx, foreground)
    if not 0 <= code <= 255:
        # The agent reports -1 when no exit status could be recorded: a Quilt failure, not the container's code.
        fail(f"the container ended without an exit status (exit code {code})")
    return code


_GONE_OBJECT = (NO_SUCH_CONTAINER, "org.freedesktop.DBus.Error.UnknownObject",
                "org.freedesktop.DBus.Error.UnknownInterface")


async def _show_setup_live(client: Client, path: str) -> None:
    """Print the setup steps' lines on stderr as they come (FollowLogs, setup only), dimmed, until the pipe ends
    with the container."""
    import asyncio
    import json

    fd = await client.follow_logs(path, {"setup": True, "follow": True})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb"))
    try:
        async for raw in reader:
            text = json.loads(raw)["text"]
            output.echo(text if os.environ.get("NO_COLOR") else f"\x1b[2m{text}\x1b[0m", err=True)  # dim
    finally:
        transport.close()


async def _print_logs_after_setup(client: Client, path: str, shown: bool = False) -> None:
    """A foreground run's output when it had setup steps: the command's own lines only (what the package
    managers printed is in `logs --setup`), unless a step failed: then its lines go to stderr (unless `shown`
    live already), with the reason, since they are what tells why the command never ran."""
    from collections import Counter

    setup = await client.read_logs(path, {"setup": True})
    taken = Counter(setup)
    own = []
    for line in await client.read_logs(path, {}):
        if taken[line] > 0:
            taken[line] -= 1  # a setup line: GetLogs without the option may include them
        else:
            own.append(line)
    props = await client.properties(path)
    reason = str(props.get("FailureReason") or "")
    if props.get("State") == "failed" and reason.startswith("setup step"):
        if not shown:
            output.print_logs(LogLine(line.usec, "stderr", line.text) for line in setup)
        warn(reason)
    output.print_logs(own)
