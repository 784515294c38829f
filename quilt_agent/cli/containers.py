"""The container verbs: run, create, start, stop, kill, rm, ps, inspect, status, logs, wait.

Flags follow Podman; the original Quilt CLI's spellings (create --image-path/--memory-limit/--cpu-limit/
--enable-all-namespaces, status, remove) map onto the same D-Bus calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import click

from quilt_agent.cli import hostfiles
from quilt_agent.cli import volumes as volume_flags
from quilt_agent.cli import interactive as interactive_cli
from quilt_agent.cli import observe, output, sigproxy
from quilt_agent.cli.context import (
    ACCESS_DENIED,
    NO_SUCH_CONTAINER,
    NOT_RUNNING,
    UNKNOWN_OBJECT,
    each,
    fail,
    warn,
    with_client,
)
from quilt_agent.cli.parsing import (
    CPU_PERCENT,
    CPUS,
    ENV,
    HEALTH_CMD,
    LABEL,
    MEMORY,
    NAMESPACE_LIST,
    SECONDS,
    SIGNAL,
    parse_since,
    resolve_image,
)
from quilt_agent.client import Client, ClientError, LogLine

MIB = 1 << 20
_UINT32_MAX = (1 << 32) - 1
# The agent refuses a stop_timeout above a day (quilt_agent/model.py, _parse_stop_timeout).
MAX_STOP_TIMEOUT = 86400
DEFAULT_READY_TIMEOUT = 90.0  # systemd's default TimeoutStartSec=


@dataclass
class ContainerRequest:
    """The arguments of CreateContainer/RunContainer, as the flags describe them."""

    name: str
    image: str
    command: list[str]
    options: dict[str, Any] = field(default_factory=dict)


def _only_one(podman: tuple[str, Any], original: tuple[str, Any]) -> Any:
    """The value of whichever of two spellings of one limit was given; both at once is a usage error."""
    (podman_flag, podman_value), (original_flag, original_value) = podman, original
    if podman_value is not None and original_value is not None:
        raise click.UsageError(f"{podman_flag} and {original_flag} set the same limit: give one of them")
    return podman_value if podman_value is not None else original_value


def build_request(params: dict[str, Any], cwd: str) -> ContainerRequest:
    """Turn create/run's parsed flags into the D-Bus call's arguments."""
    args: list[str] = list(params["args"])
    image: str | None = params["image_path"]
    if image is None:
        if not args:
            raise click.UsageError("an IMAGE is required (an image name or id, or a path to an image file)")
        image = args.pop(0)
    # With option parsing stopped at IMAGE (so `run IMG ls -l` works), a `--` after IMAGE reaches us literally.
    if args[:1] == ["--"]:
        args = args[1:]

    options: dict[str, Any] = {}
    if params["env"]:
        options["env"] = [f"{key}={value}" for key, value in params["env"]]
    for key, option in (("workdir", "workdir"), ("user", "user"), ("hostname", "hostname")):
        if params[key] is not None:
            options[option] = params[key]

    memory_mib = params["memory_limit"]
    memory_from_mib = None if memory_mib is None else memory_mib * MIB
    memory = _only_one(("--memory", params["memory"]), ("--memory-limit", memory_from_mib))
    if memory is not None:
        options["memory_max"] = memory
    cpu = _only_one(("--cpus", params["cpus"]), ("--cpu-limit", params["cpu_limit"]))
    if cpu is not None:
        options["cpu_quota"] = cpu
    if params["pids_limit"] is not None:
        options["pids_max"] = params["pids_limit"]

    if params["namespaces"] is not None and params["enable_all_namespaces"]:
        raise click.UsageError("--namespaces and --enable-all-namespaces contradict each other: give one")
    # --enable-all-namespaces asks for the default set, which is what the agent applies when the key is absent;
    # spelling the set out here would let the client and the agent disagree about what "default" means.
    if params["namespaces"] is not None:
        options["namespaces"] = params["namespaces"]

    if params["rm"]:
        options["remove_on_exit"] = True
    if params["stop_timeout"] is not None:
        options["stop_timeout"] = params["stop_timeout"]
    if params["label"]:
        options["labels"] = dict(params["label"])
    # Networks (podman run's spellings); .get: callers that build params by hand may leave them out.
    networks = [n for value in params.get("network") or () for n in value.split(",") if n]
    if networks:
        options["networks"] = networks
    if params.get("network_alias"):
        options["aliases"] = list(params["network_alias"])
    if params.get("ip") is not None:
        options["ip"] = params["ip"]
    if params.get("publish"):
        options["ports"] = list(params["publish"])
    options.update(volume_flags.volume_options(params, cwd))  # -v/--volume, --tmpfs, --read-only (cli/volumes.py)
    # Setup steps go as given, in order: the agent parses and checks them (an unknown manager, or a shell's
    # `;` in a package list, is its InvalidArgument, one line and 125 here), so quiltctl and the bus agree.
    if params.get("setup"):
        options["setup"] = list(params["setup"])
    if params.get("no_setup_cache"):
        options["setup_cache"] = False
    for opt in params.get("security_opt") or ():
        key, sep, value = opt.partition("=")
        if key != "seccomp" or not sep:
            raise click.UsageError(f"--security-opt '{opt}': only seccomp=default and seccomp=unconfined are known")
        options["seccomp"] = value  # the agent checks the profile's name
    if params.get("userns") is not None:
        options["userns"] = params["userns"]  # the agent checks the mode's name
    if params.get("init"):
        options["init"] = True
    if params.get("restart"):
        policy, sep, count = params["restart"].partition(":")
        options["restart_policy"] = policy  # the agent checks the policy's name
        if sep:
            if policy != "on-failure" or not count.isdigit():
                raise click.UsageError(f"--restart '{params['restart']}': only on-failure takes a count of "
                                       "restarts (on-failure:N)")
            options["restart_max"] = int(count)
    options.update(_health_options(params))
    if params.get("sdnotify") is not None:
        options["sdnotify"] = params["sdnotify"]  # the agent checks the mode's name

    return ContainerRequest(name=params["name"] or "", image=resolve_image(image, cwd), command=args, options=options)


def _health_options(params: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if params.get("no_healthcheck"):
        if params.get("health_cmd") is not None:
            raise click.UsageError("--no-healthcheck and --health-cmd contradict each other: give one")
        options["health_cmd"] = []
    elif params.get("health_cmd") is not None:
        options["health_cmd"] = params["health_cmd"]
    for flag in ("interval", "timeout", "start_period", "retries", "on_failure"):
        if params.get(f"health_{flag}") is not None:
            options[f"health_{flag}"] = params[f"health_{flag}"]  # the agent checks the values
    return options


def container_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    flags = [
        click.option("--name", default=None, help="Name of the container (default: chosen by the agent)."),
        click.option("-e", "--env", type=ENV, multiple=True, help="Set an environment variable (KEY=VALUE)."),
        click.option("-w", "--workdir", default=None, help="Working directory inside the container."),
        click.option("-u", "--user", default=None, help="User to run as: a name or UID[:GID]."),
        click.option("--hostname", default=None, help="Hostname inside the container."),
        click.option(
            "-m", "--memory", type=MEMORY, default=None, help="Memory limit, e.g. 512M, 2G (bytes if no unit)."
        ),
        click.option("--memory-limit", type=click.IntRange(min=1), default=None, hidden=True),
        click.option("--cpus", type=CPUS, default=None, help="CPUs the container may use, e.g. 0.5 or 2."),
        click.option("--cpu-limit", type=CPU_PERCENT, default=None, hidden=True),
        click.option("--pids-limit", type=click.IntRange(min=1), default=None, help="Most processes at once."),
        click.option("--rm", is_flag=True, help="Remove the container when it exits."),
        click.option("-l", "--label", type=LABEL, multiple=True, help="Set a label (KEY=VALUE)."),
        click.option("--network", "--net", multiple=True,
                     help="Network to join (repeat for several), or none, host, container:NAME (default: quilt)."),
        click.option("--network-alias", multiple=True, help="Another name the container answers to on its networks."),
        click.option("--ip", default=None, help="The container's address on its network."),
        click.option("-p", "--publish", multiple=True,
                     help="Publish a port: [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]."),
        click.option(
            "--stop-timeout",
            type=click.IntRange(min=0, max=MAX_STOP_TIMEOUT),
            default=None,
            help="Seconds between SIGTERM and SIGKILL on stop (default 10).",
        ),
        click.option(
            "--namespaces",
            type=NAMESPACE_LIST,
            default=None,
            help="Namespaces to unshare, comma-separated: pid,mount,uts,ipc,net,cgroup.",
        ),
        click.option("--enable-all-namespaces", is_flag=True, hidden=True),
        *volume_flags.FLAGS,
        click.option("--setup", multiple=True, metavar="'MANAGER: ARGS'",
                     help="Run a setup step before the command (repeat for several, run in order): MANAGER is "
                          "pip, npm, gem, apt, apk or sh, e.g. --setup 'pip: flask'."),
        click.option("--no-setup-cache", is_flag=True,
                     help="Run the setup steps at each start instead of reusing a cached result."),
        click.option("--security-opt", multiple=True, metavar="seccomp=PROFILE",
                     help="seccomp=unconfined runs without Quilt's seccomp filter (default: seccomp=default)."),
        click.option("--userns", default=None, metavar="MODE",
                     help="auto (the default): a user namespace with 65536 host ids of its own, root inside being "
                          "no one on the host; host: the host's ids (needs the manage-privileged action)."),
        click.option("--restart", default=None, metavar="POLICY",
                     help="Restart policy: no (default), on-failure[:MAX], always or unless-stopped."),
        click.option("--init", is_flag=True,
                     help="Run an init (catatonit) as PID 1 that forwards signals to the command and reaps "
                          "orphaned processes."),
        click.option("--health-cmd", type=HEALTH_CMD, default=None, metavar="CMD",
                     help="A health check: a command line for /bin/sh -c, or a JSON array (none: no check, not even "
                          "the image's HEALTHCHECK)."),
        click.option("--health-interval", type=SECONDS, default=None, help="Time between checks (default 30s)."),
        click.option("--health-timeout", type=SECONDS, default=None, help="Time a check may take (default 30s)."),
        click.option("--health-start-period", type=SECONDS, default=None,
                     help="Time after the start when failed checks do not count (default 0s)."),
        click.option("--health-retries", type=click.IntRange(min=0), default=None,
                     help="Failed checks in a row that make it unhealthy (default 3)."),
        click.option("--health-on-failure", default=None, metavar="ACTION",
                     help="When it becomes unhealthy: none (default), kill, stop or restart."),
        click.option("--no-healthcheck", is_flag=True, help="No health check, not even the image's HEALTHCHECK."),
        click.option("--sdnotify", default=None, metavar="MODE",
                     help="When it is ready: conmon (default, once it runs), container (once it sends READY=1 to "
                          "its NOTIFY_SOCKET) or healthy (once its health check passes). run -d waits for it."),
        click.option("--image-path", "--image", "image_path", default=None, hidden=True),
        click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="IMAGE [--] [COMMAND [ARG...]]"),
    ]
    for flag in reversed(flags):
        command = flag(command)
    return command


_COMPAT_EPILOG = (
    "IMAGE is an image name, an id or id prefix, or a path (made absolute here) to an image file: a rootfs "
    "tarball, an OCI layout directory, an oci-archive or a docker save archive. The original Quilt spellings "
    "--image-path/--image PATH, --memory-limit MIB, --cpu-limit PERCENT and --enable-all-namespaces work too."
)
# Option parsing stops at IMAGE, as in Podman, so the command's own flags (`ls -l`) are not taken for ours.
_COMMAND_SETTINGS = {"allow_interspersed_args": False}


async def _until_ready(client: Client, path: str, timeout: float) -> None:
    """As systemd waits for a Type=notify service: until it is ready, failing with its exit code if it ends
    first, or after timeout seconds (it is left running then)."""
    try:
        met, code = await asyncio.wait_for(client.wait_condition(path, ["ready"]), timeout)
    except asyncio.TimeoutError:
        name = (await client.properties(path))["Name"]
        fail(f"container {name} did not become ready within {timeout:g} s; it still runs")
    if met == "exited":
        props = await client.properties(path)
        reason = f": {props['FailureReason']}" if props.get("FailureReason") else ""
        fail(f"container {props['Name']} exited with code {code} before it was ready{reason}", code if code > 0 else 125)


async def _container_id(client: Client, path: str) -> str:
    return str((await client.properties(path))["Id"])


@click.command(context_settings=_COMMAND_SETTINGS, epilog=_COMPAT_EPILOG)
@container_flags
@click.pass_context
def create(ctx: click.Context, **params: Any) -> None:
    """Create a container from IMAGE without starting it; print its id."""
    request = build_request(params, os.getcwd())

    async def body(client: Client) -> str:
        path = await client.create_container(request.name, await hostfiles.image_ref(client, request.image), request.command, request.options)
        return await _container_id(client, path)

    click.echo(with_client(ctx, body))


@click.command(context_settings=_COMMAND_SETTINGS, epilog=_COMPAT_EPILOG)
@click.option("-d", "--detach", is_flag=True,
              help="Print the container's id and return once it runs (with --sdnotify, once it is ready).")
@click.option("--ready-timeout", type=SECONDS, default=DEFAULT_READY_TIMEOUT, metavar="DURATION",
              help="With -d and --sdnotify container or healthy: how long to wait for it to be ready (default 90s).")
@click.option("-i", "--interactive", is_flag=True, help="Pass quiltctl's stdin to the container.")
@click.option("-t", "--tty", is_flag=True, help="Give the container a terminal (with -i: an interactive shell).")
@container_flags
@click.pass_context
def run(ctx: click.Context, detach: bool, ready_timeout: float, interactive: bool, tty: bool,
        **params: Any) -> None:
    """Create and start a container from IMAGE.

    In the foreground it waits for the container, prints its output and exits with its exit code. With -i or
    -t the container's stdin, stdout and stderr are quiltctl's own (or a terminal), not the journal.
    """
    request = build_request(params, os.getcwd())
    if interactive or tty:
        if detach:
            raise click.UsageError("-d cannot be combined with -i or -t: nothing would be attached")
        interactive_cli.run_attached(ctx, request.name, request.image, request.command, request.options,
                                     interactive, tty)
        return

    if detach:

        async def detached(client: Client) -> str:
            path = await client.run_container(request.name, await hostfiles.image_ref(client, request.image), request.command, request.options)
            if request.options.get("sdnotify") in ("container", "healthy"):
                await _until_ready(client, path, ready_timeout)
            return await _container_id(client, path)

        click.echo(with_client(ctx, detached))
        return

    # The logs are read after the exit: if the agent removed the container on exit, they would be gone with
    # it. So in the foreground quiltctl does the removal itself, after printing them.
    remove_after = bool(request.options.pop("remove_on_exit", False))

    async def foreground(client: Client) -> int:
        if not remove_after:
            path = await client.run_container(request.name, await hostfiles.image_ref(client, request.image), request.command, request.options)
        else:
            # A RunContainer that fails to start (command not in the image) leaves a failed container, which
            # the agent was not asked to remove: create and start apart, so --rm can remove it then too.
            path = await client.create_container(request.name, await hostfiles.image_ref(client, request.image), request.command, request.options)
            try:
                await client.start(path)
            except ClientError:
                try:
                    await client.remove(path, True)
                except ClientError:
                    pass  # the start's error is the one to report
                raise
        # On a terminal the setup steps' lines are shown as they come (a package manager can take minutes).
        live = None
        if request.options.get("setup") and sys.stderr.isatty():
            live = asyncio.ensure_future(_show_setup_live(client, path))
        code = await sigproxy.wait_forwarding_signals(client, path)
        if live is not None:
            try:
                await asyncio.wait_for(live, 5.0)  # the pipe ends with the container
            except (asyncio.TimeoutError, ClientError, OSError):
                live.cancel()
        if request.options.get("setup"):
            await _print_logs_after_setup(client, path, shown=live is not None)
        else:
            output.print_logs(await client.get_logs(path, {}))
        if remove_after:
            await client.remove(path, False)
        return code

    code = with_client(ctx, foreground)
    if not 0 <= code <= 255:
        # The agent reports -1 when no exit status could be recorded: a Quilt failure, not the container's code.
        fail(f"the container ended without an exit status (exit code {code})")
    ctx.exit(code)


async def _show_setup_live(client: Client, path: str) -> None:
    """Print the setup steps' lines on stderr as they come (FollowLogs, setup only), dimmed, until the pipe ends
    with the container."""
    fd = await client.follow_logs(path, {"setup": True, "follow": True})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb"))
    try:
        async for raw in reader:
            click.secho(json.loads(raw)["text"], err=True, dim=True)
    finally:
        transport.close()


async def _print_logs_after_setup(client: Client, path: str, shown: bool = False) -> None:
    """A foreground run's output when it had setup steps: the command's own lines only (what the package
    managers printed is in `logs --setup`), unless a step failed: then its lines go to stderr (unless `shown`
    live already), with the reason, since they are what tells why the command never ran."""
    setup = await client.get_logs(path, {"setup": True})
    taken = Counter(setup)
    own = []
    for line in await client.get_logs(path, {}):
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


def _for_each(
    ctx: click.Context,
    containers: Sequence[str],
    action: Callable[[Client, str, str], Awaitable[str | None]],
    together: bool = False,
) -> None:
    """Apply `action(client, path, name)` to each container, in turn or (together) all at once, as Podman does:
    print what it returns as each ends, report each failure on its own line, go on with the rest, and end with
    125 if any failed."""

    async def body(client: Client) -> bool:
        async def one(name: str) -> None:
            result = await action(client, await client.get_container(name), name)
            if result is not None:
                click.echo(result)

        return (await each(containers, one, together))[1]

    if not with_client(ctx, body):
        ctx.exit(125)


@click.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def start(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Start one or more created containers."""

    async def action(client: Client, path: str, name: str) -> str:
        await client.start(path)
        return name

    _for_each(ctx, containers, action)


async def _running_names(client: Client) -> list[str]:
    return [e.name for e in await client.list_containers() if e.state == "running"]


@click.command()
@click.option(
    "-t",
    "--time",
    "timeout",
    type=click.IntRange(min=0, max=_UINT32_MAX),
    default=None,
    help="Seconds to wait before SIGKILL (default: the container's stop timeout; 0 kills at once).",
)
@click.option("-a", "--all", "every", is_flag=True, help="Stop every running container.")
@click.argument("containers", nargs=-1)
@click.pass_context
def stop(ctx: click.Context, timeout: int | None, every: bool, containers: tuple[str, ...]) -> None:
    """Stop one or more containers, all at once: their stop signal, then SIGKILL after the timeout."""
    if every == bool(containers):
        raise click.UsageError("name the containers to stop, or give -a for every running one")

    async def action(client: Client, path: str, name: str) -> str:
        if timeout == 0:
            # On the wire 0 means "the container's own timeout"; Podman users mean "no grace period" by -t 0.
            try:
                await client.kill(path, signal.SIGKILL)
            except ClientError as e:
                # Stop on a stopped container succeeds (as podman stop); keep -t 0 the same.
                if e.name != NOT_RUNNING:
                    raise
            await client.wait(path)
        else:
            await client.stop(path, timeout or 0)
            props = await client.properties(path)
            stop_signal = int(props.get("StopSignal", signal.SIGTERM))
            if props.get("ExitSignal") == signal.SIGKILL and stop_signal != signal.SIGKILL:
                # As Podman says it: the program did not end on its stop signal (one without a handler, as PID 1,
                # ignores SIGTERM), which --init or a handler would fix.
                seconds = timeout or int(props.get("StopTimeout", 10))
                warn(f"StopSignal {signal.Signals(stop_signal).name} failed to stop container {name} in {seconds} "
                     "seconds, resorting to SIGKILL")
        return name

    if every:
        containers = tuple(with_client(ctx, _running_names))
    _for_each(ctx, containers, action, together=True)


@click.command()
@click.option(
    "-s", "--signal", "signum", type=SIGNAL, default="KILL", show_default=True, help="Signal: TERM, SIGHUP, 9..."
)
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def kill(ctx: click.Context, signum: int, containers: tuple[str, ...]) -> None:
    """Send a signal to the processes of one or more containers."""

    async def action(client: Client, path: str, name: str) -> str:
        await client.kill(path, signum)
        return name

    _for_each(ctx, containers, action)


@click.command()
@click.option("-f", "--force", is_flag=True, help="Stop running containers first.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, force: bool, containers: tuple[str, ...]) -> None:
    """Remove one or more containers."""

    async def action(client: Client, path: str, name: str) -> str:
        await client.remove(path, force)
        return name

    _for_each(ctx, containers, action, together=force)  # with force, running ones are killed at once


# The original CLI's name for rm.
remove = click.Command(
    "remove", callback=rm.callback, params=rm.params, help="Remove one or more containers (same as rm)."
)


async def _properties_or_none(client: Client, path: str) -> dict[str, Any] | None:
    try:
        return await client.properties(path)
    except ClientError as e:
        # Removed between ListContainers and GetAll: it is simply no longer there to show.
        if e.name in (NO_SUCH_CONTAINER, UNKNOWN_OBJECT, "org.freedesktop.DBus.Error.UnknownInterface"):
            return None
        raise


@click.command()
@click.option("-a", "--all", "show_all", is_flag=True, help="Show all containers, not only running ones.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list of the containers' properties (as inspect, without Environment).")
@click.option("-q", "--quiet", is_flag=True, help="Print only the ids.")
@click.pass_context
def ps(ctx: click.Context, show_all: bool, as_json: bool, quiet: bool) -> None:
    """List containers."""

    async def body(client: Client) -> list[dict[str, Any]]:
        entries = [e for e in await client.list_containers() if show_all or e.state == "running"]
        if quiet and not as_json:
            return [{"Id": e.id} for e in entries]  # ListContainers has the ids: no property call needed
        # dbus-daemon refuses a connection more than 128 pending calls on the system bus (max_replies_per_
        # connection): with 200 containers an unbounded gather failed. Keep at most 64 in flight.
        limit = asyncio.Semaphore(64)

        async def one(path: str) -> dict[str, Any] | None:
            async with limit:
                return await _properties_or_none(client, path)

        found = await asyncio.gather(*(one(e.path) for e in entries))
        return [props for props in found if props is not None]

    rows = with_client(ctx, body)
    if as_json:
        output.print_json(rows)
    elif quiet:
        for props in rows:
            click.echo(str(props["Id"])[:output.SHORT_ID])
    else:
        output.print_ps_table(rows, time.time())


async def _inspect_one(client: Client, path: str) -> dict[str, Any]:
    props = await client.properties(path)
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


async def _inspect_one_named(client: Client, name: str) -> dict[str, Any]:
    return await _inspect_one(client, await client.get_container(name))


@click.command()
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def inspect(ctx: click.Context, containers: tuple[str, ...]) -> None:
    """Print every property of one or more containers as JSON."""

    async def body(client: Client) -> tuple[list[dict[str, Any]], bool]:
        return await each(containers, lambda name: _inspect_one_named(client, name))

    results, ok = with_client(ctx, body)
    output.print_json(results)
    if not ok:
        ctx.exit(125)


@click.command()
@click.argument("container")
@click.pass_context
def status(ctx: click.Context, container: str) -> None:
    """Show a short summary of a container."""

    async def body(client: Client) -> dict[str, Any]:
        return await client.properties(await client.get_container(container))

    props = with_client(ctx, body)
    for line in output.status_lines(props, time.time()):
        click.echo(line)


@click.command()
@click.option(
    "-n", "--tail", "lines", type=click.IntRange(min=0, max=_UINT32_MAX), default=None, help="Only the last N lines."
)
@click.option("--since", default=None,
              help="Only lines since TIME: a duration ago (10s, 5m, 2h or '2h ago'), a Unix time or ISO 8601.")
@click.option("--until", default=None, help="Only lines until TIME (same forms as --since).")
@click.option("-f", "--follow", is_flag=True, help="Print new lines as they come, until the container exits.")
@click.option("-t", "--timestamps", is_flag=True, help="Begin each line with its time (RFC 3339).")
@click.option("--setup", "setup", is_flag=True, help="Only the output of the setup steps.")
@click.argument("container")
@click.pass_context
def logs(ctx: click.Context, lines: int | None, since: str | None, until: str | None, follow: bool,
         timestamps: bool, setup: bool, container: str) -> None:
    """Print a container's output: its stdout on stdout, its stderr on stderr."""
    if follow or until is not None:
        observe.follow_logs(ctx, container, lines, since, until, follow, timestamps, setup)
        return
    options: dict[str, Any] = {"setup": True} if setup else {}
    # On the wire lines 0 means "no limit"; `--tail 0` means no lines, as in Podman (the container is still
    # looked up, so an unknown one is still an error).
    if lines:
        options["lines"] = lines
    if since is not None:
        try:
            options["since"] = parse_since(since, time.time())
        except ValueError as e:
            raise click.BadParameter(str(e), ctx=ctx, param_hint="'--since'") from None

    async def body(client: Client) -> list[Any]:
        path = await client.get_container(container)
        return [] if lines == 0 else await client.get_logs(path, options)

    output.print_logs(with_client(ctx, body), timestamps)


@click.command()
@click.option("--condition", "conditions", multiple=True, metavar="CONDITION",
              help="Wait until one of these holds (repeat for several): exited (the default), running, ready, "
                   "healthy, unhealthy.")
@click.argument("containers", nargs=-1, required=True)
@click.pass_context
def wait(ctx: click.Context, conditions: tuple[str, ...], containers: tuple[str, ...]) -> None:
    """Wait for one or more containers to exit, or to meet a condition; print each exit code (or, for a
    condition other than exited, its name)."""

    async def action(client: Client, path: str, name: str) -> str:
        if not conditions:
            return str(await client.wait(path))
        met, code = await client.wait_condition(path, list(conditions))
        return str(code) if met == "exited" else met

    _for_each(ctx, containers, action)


@click.group()
def healthcheck() -> None:
    """Run a container's health check."""


@healthcheck.command(name="run")
@click.argument("container")
@click.pass_context
def healthcheck_run(ctx: click.Context, container: str) -> None:
    """Run the health check of a running container now; print its status. Exit status 0 when the check
    passed, 1 when it failed."""

    async def body(client: Client) -> tuple[str, int, str]:
        return await client.run_health_check(await client.get_container(container))

    status, code, text = with_client(ctx, body)
    click.echo(status)
    if code != 0:
        if text.strip():
            click.echo(text.rstrip(), err=True)
        ctx.exit(1)


COMMANDS: list[click.Command] = [run, create, start, stop, kill, rm, remove, ps, inspect, status, logs, wait,
                                 healthcheck]

