"""Making containers: run and create, with their flags (what run does: cli/running.py). (The verbs that change a container's
state are cli/lifecycle.py's, those that show containers cli/show.py's: they need none of the flags' machinery.)

Flags follow Podman; the original Quilt CLI's spellings (create --image-path/--memory-limit/--cpu-limit/
--enable-all-namespaces, status, remove) map onto the same D-Bus calls.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import click

from quilt_agent.cli import hostfiles
from quilt_agent.cli import request as requests
from quilt_agent.cli import runflags, running
from quilt_agent.cli import volumes as volume_flags
from quilt_agent.cli.context import Client
from quilt_agent.cli.paramtypes import CPU_PERCENT, CPUS, ENV, HEALTH_CMD, LABEL, MEMORY, NAMESPACE_LIST, SECONDS
from quilt_agent.cli.request import ContainerRequest
from quilt_agent.bus.names import container_id

# The agent refuses a stop_timeout above a day (quilt_agent/model.py, _parse_stop_timeout).
MAX_STOP_TIMEOUT = 86400
DEFAULT_READY_TIMEOUT = 90.0  # systemd's default TimeoutStartSec=


ENV_FILE_HELP = ("Read environment variables from FILE: KEY=VALUE lines, '#' comments; a KEY alone passes this "
                 "shell's value (none when it is unset).")
# --entrypoint, --env-file, /etc files, capabilities, stop signal, -P: cli/runflags.py turns them into options.
_RUN_FLAGS: list[Callable[[Any], Any]] = [
    click.option("--entrypoint", default=None, metavar="CMD",
                 help="The program to run instead of the image's ENTRYPOINT (its CMD is not used then): one program, "
                      "or a JSON array; '' runs the command alone."),
    click.option("--env-file", multiple=True, metavar="FILE", help=ENV_FILE_HELP),
    click.option("--add-host", multiple=True, metavar="HOST:IP", help="Add a line to the container's /etc/hosts."),
    click.option("--dns", multiple=True, metavar="IP",
                 help="A name server for the container's /etc/resolv.conf (repeat for several; replaces the "
                      "network's, so other containers' names are not resolved then)."),
    click.option("--dns-search", multiple=True, metavar="DOMAIN",
                 help="A search domain for /etc/resolv.conf (repeat for several; '.' for none)."),
    click.option("--dns-option", multiple=True, metavar="OPTION", help="An /etc/resolv.conf option, e.g. ndots:2."),
    click.option("--cap-add", multiple=True, metavar="CAP",
                 help="Add a capability (NET_RAW or CAP_NET_RAW, or ALL) to the default set; one beyond it needs "
                      "the manage-privileged action."),
    click.option("--cap-drop", multiple=True, metavar="CAP", help="Drop a capability (or ALL) from the set."),
    click.option("--stop-signal", default=None, metavar="SIGNAL",
                 help="The signal stop sends first (default: the image's STOPSIGNAL, else SIGTERM)."),
    click.option("-P", "--publish-all", is_flag=True,
                 help="Publish every port the image exposes to a free host port (`inspect` shows which)."),
]


def build_request(params: dict[str, Any], cwd: str) -> ContainerRequest:
    """cli/request.py's, with its refusals as click's: a flag's bad value names the flag, flags that cannot go
    together are a usage error (status 2 either way)."""
    try:
        return requests.build_request(params, cwd)
    except runflags.FlagError as e:
        raise click.BadParameter(str(e), param_hint=f"'{e.flag}'") from None
    except requests.RequestError as e:
        raise click.UsageError(str(e)) from None


def container_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    flags = [
        click.option("--name", default=None, help="Name of the container (default: chosen by the agent)."),
        click.option("-e", "--env", type=ENV, multiple=True,
                     help="Set an environment variable (KEY=VALUE; KEY alone: this shell's value, if set)."),
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
                     help="Publish a port: [[HOSTIP:][HOSTPORT]:]CONTAINERPORT[/tcp|udp]; without HOSTPORT, a free "
                          "one (`inspect` shows which)."),
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
        *_RUN_FLAGS,
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
        click.option("--log-driver", default=None, metavar="DRIVER",
                     help="Where its output goes: journald (default), k8s-file (a log file, never rate-limited; "
                          "'file' too), journald+file (both) or none (nothing is kept)."),
        click.option("--log-opt", multiple=True, metavar="KEY=VALUE",
                     help="The log file's rotation: max-size=SIZE (e.g. 10m), max-files=N (kept files)."),
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


@click.command(context_settings=_COMMAND_SETTINGS, epilog=_COMPAT_EPILOG)
@container_flags
@click.pass_context
def create(ctx: click.Context, **params: Any) -> None:
    """Create a container from IMAGE without starting it; print its id."""
    request = build_request(params, os.getcwd())

    async def body(client: Client) -> str:
        path = await client.create_container(request.name, await hostfiles.image_ref(client, request.image), request.command, request.options)
        return container_id(path)

    click.echo(running.transport(request)(ctx, body))


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
        from quilt_agent.cli import interactive as interactive_cli

        interactive_cli.run_attached(ctx, request.name, request.image, request.command, request.options,
                                     interactive, tty)
        return
    ctx.exit(running.run_request(ctx, request, detach, ready_timeout))
