"""Podman's other container verbs: restart, rename, pause, unpause, top, port, attach, export, container prune.

One-shot verbs on the blocking transport (context.with_client); what only formats or parses is a plain function
here, so the unit tests reach it without an agent.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

import click

from quilt_agent import errors
from quilt_agent.api import ClientError
from quilt_agent.bus.error_names import ERROR_NAMES
from quilt_agent.cli.context import Client, each, error_message, fail, warn, with_client

_UINT32_MAX = (1 << 32) - 1
SHORT_ID = 12
# What ListContainers calls a container that does not run: what `container prune` removes (Podman's stopped,
# exited and created ones).
STOPPED_STATES = ("created", "exited", "failed")
ALREADY_RUNNING = ERROR_NAMES[errors.AlreadyRunning]
NO_SUCH_CONTAINER = ERROR_NAMES[errors.NoSuchContainer]


def _run_each(ctx: click.Context, names: Sequence[str], action: Callable[[Client, str], Awaitable[None]],
              together: bool = False) -> None:
    """action(client, name) for each name, Podman's way: each name printed once it is done, a failure on a line of
    its own while the others go on, and status 125 at the end if any failed."""

    async def body(client: Client) -> bool:
        async def one(name: str) -> None:
            await action(client, name)
            click.echo(name)

        return (await each(names, one, together))[1]

    if not with_client(ctx, body):
        ctx.exit(125)


async def _names_in(client: Client, states: Sequence[str]) -> list[str]:
    return [e.name for e in await client.list_containers() if e.state in states]


# --- restart -------------------------------------------------------------------------------------------------

@click.command()
@click.option("-t", "--time", "timeout", type=click.IntRange(min=0, max=_UINT32_MAX), default=None,
              help="Seconds to wait before SIGKILL when stopping (default: the container's stop timeout; 0 kills "
                   "at once).")
@click.option("-a", "--all", "every", is_flag=True, help="Restart every container, running or not.")
@click.option("--running", is_flag=True, help="With -a: only the running ones.")
@click.argument("containers", nargs=-1)
@click.pass_context
def restart(ctx: click.Context, timeout: int | None, every: bool, running: bool, containers: tuple[str, ...]) -> None:
    """Stop running containers (their stop signal, then SIGKILL after the timeout) and start them again; start
    those that do not run. All at once; each name is printed once it runs again. A container run with --rm is
    kept across its restart."""
    if every == bool(containers):
        raise click.UsageError("name the containers to restart, or give -a for every one")
    if running and not every:
        raise click.UsageError("--running goes with -a")

    async def action(client: Client, name: str) -> None:
        # The agent's Restart, not Stop then Start: a --rm container would be gone between the two.
        await client.restart(await client.get_container(name), timeout)

    if every:
        states = ("running", "paused") if running else ("created", "running", "paused", "exited", "failed")
        containers = tuple(with_client(ctx, lambda client: _names_in(client, states)))
    _run_each(ctx, containers, action, together=True)


# --- rename, pause, unpause ----------------------------------------------------------------------------------

@click.command()
@click.argument("container")
@click.argument("new_name")
@click.pass_context
def rename(ctx: click.Context, container: str, new_name: str) -> None:
    """Give a container that does not run a new name (checked as at create). A running one is refused: its
    systemd scope, quilt-NAME.scope, is named after it until it stops."""

    async def body(client: Client) -> None:
        await client.rename(await client.get_container(container), new_name)

    with_client(ctx, body)


def _pause_command(verb: str, states: tuple[str, ...], call: Callable[[Client, str], Awaitable[None]],
                   doc: str) -> click.Command:
    @click.command(verb, help=doc)
    @click.option("-a", "--all", "every", is_flag=True, help=f"Every container that can be {verb}d.")
    @click.argument("containers", nargs=-1)
    @click.pass_context
    def command(ctx: click.Context, every: bool, containers: tuple[str, ...]) -> None:
        if every == bool(containers):
            raise click.UsageError(f"name the containers to {verb}, or give -a for every one")

        async def action(client: Client, name: str) -> None:
            await call(client, await client.get_container(name))

        if every:
            containers = tuple(with_client(ctx, lambda client: _names_in(client, states)))
        _run_each(ctx, containers, action)

    return command


pause = _pause_command("pause", ("running",), lambda client, path: client.pause(path),
                       "Freeze every process of running containers (the cgroup v2 freezer): their state becomes "
                       "paused until unpause. stop, kill and rm -f work on a paused container; exec does not.")
unpause = _pause_command("unpause", ("paused",), lambda client, path: client.unpause(path),
                         "Thaw paused containers.")


# --- top -----------------------------------------------------------------------------------------------------

# psgo's descriptors (what podman top takes) that quiltctl shows, with their headers; AIX codes map onto them.
DESCRIPTORS: dict[str, str] = {
    "user": "USER", "huser": "HUSER", "pid": "PID", "hpid": "HPID", "ppid": "PPID", "pcpu": "%CPU",
    "etime": "ELAPSED", "tty": "TTY", "time": "TIME", "args": "COMMAND", "comm": "COMMAND", "state": "STATE",
    "nice": "NI", "pgid": "PGID", "vsz": "VSZ", "rss": "RSS",
}
AIX_DESCRIPTORS = {"%C": "pcpu", "%P": "ppid", "%U": "user", "%a": "args", "%c": "comm", "%n": "nice",
                   "%p": "pid", "%r": "pgid", "%t": "etime", "%u": "user", "%x": "time", "%y": "tty", "%z": "vsz"}
DEFAULT_DESCRIPTORS = ("user", "pid", "ppid", "pcpu", "etime", "tty", "time", "args")


def parse_descriptors(words: Sequence[str]) -> list[str]:
    """podman top's format descriptors, space- or comma-separated (`pid,args`, `-- pid args`, `%p %a`); the
    default list when none. UsageError naming the first one quiltctl does not show."""
    found = [AIX_DESCRIPTORS.get(w, w) for word in words for w in word.replace(",", " ").split()]
    unknown = [w for w in found if w not in DESCRIPTORS]
    if unknown:
        raise click.UsageError(f"unknown descriptor '{unknown[0]}': quiltctl top shows {', '.join(DESCRIPTORS)} "
                               f"(and the AIX codes {' '.join(AIX_DESCRIPTORS)})")
    return found or list(DEFAULT_DESCRIPTORS)


def duration_text(seconds: float) -> str:
    """A duration as Go's time.Duration prints one (what podman top's ELAPSED and TIME show): 0s, 250ms, 4.5s,
    1m2.25s, 3h0m1s."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    whole_minutes, rest = divmod(round(seconds, 3), 60)
    hours, minutes = divmod(int(whole_minutes), 60)
    secs = f"{rest:.3f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{secs}"
    if minutes:
        return f"{minutes}m{secs}"
    return secs


def tty_name(tty_nr: int) -> str:
    """/proc/PID/stat's tty_nr as ps names it: pts/N, ttyN, or ? for none."""
    major, minor = (tty_nr >> 8) & 0xFFF, (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if tty_nr == 0:
        return "?"
    if 136 <= major <= 143:
        return f"pts/{(major - 136) * 256 + minor}"
    if major == 4 and minor < 64:
        return f"tty{minor}"
    return "?"


def inside_id(host_id: int, id_map: str) -> int:
    """A host uid or gid as a user namespace's map (/proc/PID/uid_map) shows it inside; 65534 (nobody) when the
    map has no place for it."""
    for line in id_map.splitlines():
        parts = line.split()
        if len(parts) == 3:
            inside, outside, count = map(int, parts)
            if outside <= host_id < outside + count:
                return inside + host_id - outside
    return 65534


@dataclass(frozen=True)
class Process:
    """One process of a container, read from /proc on the host."""

    host_pid: int
    pid: int  # in the container's pid namespace
    host_ppid: int
    uid: int  # effective, on the host
    user_inside: int
    state: str
    nice: int
    pgid: int
    tty_nr: int
    cpu_seconds: float
    elapsed: float
    vsz: int  # KiB
    rss: int  # KiB
    comm: str
    args: str


def _read_process(pid: int, boot: float, now: float, tick: int) -> Process:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    nspid = status.get("NSpid", str(pid)).split()
    uid = int(status["Uid"].split()[1])
    with open(f"/proc/{pid}/uid_map") as f:
        user_inside = inside_id(uid, f.read())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        args = " ".join(a.decode("utf-8", "replace") for a in f.read().split(b"\0") if a)
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    started = boot + int(fields[19]) / tick
    return Process(host_pid=pid, pid=int(nspid[-1]), host_ppid=int(fields[1]), uid=uid, user_inside=user_inside,
                   state=fields[0], nice=int(fields[16]), pgid=int(fields[2]), tty_nr=int(fields[4]),
                   cpu_seconds=(int(fields[11]) + int(fields[12])) / tick, elapsed=max(0.0, now - started),
                   vsz=int(fields[20]) // 1024, rss=int(fields[21]) * page_kib, comm=comm, args=args or f"[{comm}]")


def container_pids(main_pid: int) -> list[int]:
    """The processes of the cgroup main_pid is in (its container's scope), from the unified or systemd hierarchy."""
    from quilt_agent import cgroups

    dirs = cgroups.process_cgroups(main_pid)
    for d in sorted(dirs, key=lambda d: (d.hierarchy.version != 2, "name=systemd" not in d.hierarchy.controllers)):
        try:
            return sorted(int(p) for p in d.read("cgroup.procs").split())
        except OSError:
            continue
    return [main_pid]


def _passwd_names(main_pid: int) -> dict[int, str]:
    """The container's own user names (its /etc/passwd, as podman top shows them); {} when it cannot be read."""
    try:
        with open(f"/proc/{main_pid}/root/etc/passwd", errors="replace") as f:
            return {int(p[2]): p[0] for p in (line.split(":") for line in f) if len(p) > 2 and p[2].isdigit()}
    except OSError:
        return {}


def top_rows(processes: Sequence[Process], descriptors: Sequence[str], names: dict[int, str],
             host_names: Callable[[int], str]) -> list[list[str]]:
    """The table podman top prints: a header, then one row per process, in pid order."""
    inside = {p.host_pid: p.pid for p in processes}

    def value(p: Process, d: str) -> str:
        if d == "user":
            return names.get(p.user_inside, str(p.user_inside))
        if d == "huser":
            return host_names(p.uid)
        if d == "pcpu":
            return f"{100 * p.cpu_seconds / p.elapsed:.3f}" if p.elapsed > 0 else "0.000"
        if d == "etime":
            return duration_text(p.elapsed)
        if d == "time":
            return duration_text(p.cpu_seconds)
        if d == "tty":
            return tty_name(p.tty_nr)
        return str({"pid": p.pid, "hpid": p.host_pid, "ppid": inside.get(p.host_ppid, 0), "args": p.args,
                    "comm": p.comm, "state": p.state, "nice": p.nice, "pgid": inside.get(p.pgid, p.pgid),
                    "vsz": p.vsz, "rss": p.rss}[d])

    return [[DESCRIPTORS[d] for d in descriptors]] + [[value(p, d) for d in descriptors]
                                                       for p in sorted(processes, key=lambda p: p.pid)]


def print_columns(rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns, three spaces apart, the last one as it is (podman's tabwriter layout)."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        click.echo(("".join(cell.ljust(w + 3) for cell, w in zip(row, widths)) + row[-1]).rstrip())


def _host_user(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("container")
@click.argument("descriptors", nargs=-1)
@click.pass_context
def top(ctx: click.Context, container: str, descriptors: tuple[str, ...]) -> None:
    """The processes of a running container, as podman top: USER PID PPID %CPU ELAPSED TTY TIME COMMAND by default,
    or the DESCRIPTORS given (user huser pid hpid ppid pcpu etime tty time args comm state nice pgid vsz rss, or
    AIX codes such as %p %a). PIDs and users are the container's own; hpid and huser the host's."""
    wanted = parse_descriptors(descriptors)

    async def body(client: Client) -> dict[str, Any]:
        return await client.properties(await client.get_container(container))

    props = with_client(ctx, body)
    if props.get("State") not in ("running", "paused") or not props.get("MainPID"):
        fail(f"Container '{props.get('Name', container)}' is not running (state {props.get('State')}): top shows "
             "the processes of a running container")
    main_pid = int(props["MainPID"])
    boot = time.time() - float(open("/proc/uptime").read().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    processes = []
    for pid in container_pids(main_pid):
        try:
            processes.append(_read_process(pid, boot, time.time(), tick))
        except (OSError, ValueError, KeyError, IndexError):
            continue  # ended meanwhile
    if not processes:
        fail(f"Container '{props.get('Name', container)}' has no processes left: it is exiting")
    print_columns(top_rows(processes, wanted, _passwd_names(main_pid), _host_user))


# --- port ----------------------------------------------------------------------------------------------------

def port_lines(ports: Sequence[str], wanted: str | None = None) -> list[str]:
    """podman port's lines for a container's Ports property ("[HOSTIP:]HOSTPORT:CONTAINERPORT/PROTO"): every
    mapping as "80/tcp -> 0.0.0.0:8080", or with wanted ("80", "80/tcp", "53/udp") the host's side of that
    one alone, "0.0.0.0:8080"."""
    want_port, want_proto = None, "tcp"
    if wanted is not None:
        port_text, _, proto = wanted.partition("/")
        if not port_text.isdigit() or proto not in ("", "tcp", "udp"):
            raise click.UsageError(f"'{wanted}' is not PORT or PORT/tcp or PORT/udp")
        want_port, want_proto = int(port_text), proto or "tcp"
    lines = []
    for mapping in ports:
        spec, _, proto = mapping.partition("/")
        parts = spec.split(":")
        host_ip = parts[0] if len(parts) == 3 and parts[0] else "0.0.0.0"
        host_port, container_port = parts[-2], int(parts[-1])
        proto = proto or "tcp"
        if want_port is None:
            lines.append(f"{container_port}/{proto} -> {host_ip}:{host_port}")
        elif (container_port, proto) == (want_port, want_proto):
            lines.append(f"{host_ip}:{host_port}")
    return lines


@click.command()
@click.option("-a", "--all", "every", is_flag=True, help="The published ports of every running container.")
@click.argument("container", required=False)
@click.argument("private_port", required=False, metavar="[PRIVATE_PORT[/PROTO]]")
@click.pass_context
def port(ctx: click.Context, every: bool, container: str | None, private_port: str | None) -> None:
    """The published ports of a container: "80/tcp -> 0.0.0.0:8080" each, or the host's side of PRIVATE_PORT."""
    if every and private_port is None and container is not None:
        container, private_port = None, container  # `port -a 80`: the port, of every container
    if every == (container is not None):
        raise click.UsageError("name a container, or give -a for every running one")
    if private_port is not None:
        port_lines([], private_port)  # a bad port is a usage error before the agent is asked

    async def body(client: Client) -> list[tuple[str, list[str]]]:
        if container is not None:
            props = await client.properties(await client.get_container(container))
            return [(str(props["Id"]), list(props.get("Ports") or []))]
        found = []
        for entry in await client.list_containers():
            if entry.state in ("running", "paused"):
                found.append((entry.id, list(await client.get_property(entry.path, "Ports") or [])))
        return found

    shown = False
    for container_id, ports in with_client(ctx, body):
        for line in port_lines(ports, private_port):
            click.echo(f"{container_id[:SHORT_ID]}\t{line}" if every else line)
            shown = True
    if private_port is not None and not shown:
        fail(f"failed to find published port \"{private_port if '/' in private_port else private_port + '/tcp'}\"")


# --- attach --------------------------------------------------------------------------------------------------

@click.command()
@click.option("--no-stdin", is_flag=True, help="Do not attach stdin: quiltctl never does (accepted for Podman's sake).")
@click.option("--sig-proxy", type=click.BOOL, default=False, show_default=True,
              help="Only false: ^C detaches quiltctl and leaves the container running; signals are not forwarded.")
@click.option("--detach-keys", default=None, hidden=True)
@click.argument("container")
@click.pass_context
def attach(ctx: click.Context, no_stdin: bool, sig_proxy: bool, detach_keys: str | None, container: str) -> None:
    """Follow a running container's output from now until it exits (stdout on stdout, stderr on stderr), then exit
    with its exit code. Unlike podman attach it attaches no stdin and forwards no signals: ^C only detaches."""
    if sig_proxy:
        raise click.UsageError("--sig-proxy=true is not supported: quiltctl attach forwards no signals "
                               "(^C detaches; `quiltctl kill -s SIGNAL` sends one)")
    if detach_keys is not None:
        raise click.UsageError("--detach-keys is not supported: quiltctl attach has no stdin to read them from "
                               "(^C detaches)")

    async def begin(client: Client) -> tuple[str, int]:
        path = await client.get_container(container)
        props = await client.properties(path)
        if props.get("State") not in ("running", "paused"):
            fail(f"Container '{props.get('Name', container)}' is not running (state {props.get('State')}): you can "
                 "only attach to running containers")
        return path, await client.follow_logs(path, {"follow": True, "since": time.time_ns() // 1000})

    path, fd = with_client(ctx, begin)
    with os.fdopen(fd, "rb") as pipe:  # the agent writes to it until the container ends
        for raw in pipe:
            line = json.loads(raw)
            click.echo(line["text"], err=line["stream"] == "stderr")

    async def finish(client: Client) -> int:
        return await client.wait(path)

    code = with_client(ctx, finish)
    ctx.exit(code if 0 <= code <= 255 else 125)


# --- export --------------------------------------------------------------------------------------------------

@click.command()
@click.option("-o", "--output", "output_path", type=click.Path(dir_okay=False), default=None,
              help="Write the archive to this file (default: stdout, which must not be a terminal).")
@click.argument("container")
@click.pass_context
def export(ctx: click.Context, output_path: str | None, container: str) -> None:
    """Write a container's root filesystem, running or not, as a tar archive (as podman export: its image and its
    changes, not its volumes). Device nodes, FIFOs and sockets are left out; hard links become separate files."""
    if output_path is None and sys.stdout.isatty():
        fail("refusing to export to a terminal: use -o FILE or redirect stdout")
    fd = 1
    if output_path is not None:
        try:
            fd = os.open(output_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as e:
            fail(f"cannot write '{output_path}': {e.strerror}")

    async def body(client: Client) -> None:
        await client.export_fd(await client.get_container(container), fd)

    try:
        with_client(ctx, body)
    except SystemExit:
        if output_path is not None:
            os.unlink(output_path)  # no half archive left to be taken for a whole one
        raise
    finally:
        if fd != 1:
            os.close(fd)


# --- container prune -----------------------------------------------------------------------------------------

def confirm(warning: str, force: bool) -> bool:
    """Podman's prompt: asked on a terminal unless force; a script (stdin not a terminal) is not asked."""
    if force or not sys.stdin.isatty():
        return True
    click.echo(warning, err=True)
    return click.prompt("Are you sure you want to continue? [y/N]", default="", show_default=False,
                        err=True).strip().lower() in ("y", "yes")


async def prune_containers(client: Client) -> tuple[list[str], bool]:
    """Remove every container that does not run (created, exited, failed); their ids, and whether no removal
    failed. One waiting to be restarted by its policy is not stopped: it is left, as one started meanwhile."""
    removed, ok = [], True
    for entry in await client.list_containers():
        if entry.state not in STOPPED_STATES:
            continue
        try:
            await client.remove(entry.path, False)
            removed.append(entry.id)
        except ClientError as e:
            if e.name in (ALREADY_RUNNING, NO_SUCH_CONTAINER, "org.freedesktop.DBus.Error.UnknownObject"):
                continue  # running, or about to, or gone meanwhile
            warn(error_message(e))
            ok = False
    return removed, ok


@click.command("prune")
@click.option("-f", "--force", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def container_prune(ctx: click.Context, force: bool) -> None:
    """Remove every container that does not run (created, exited or failed); print their ids."""
    if not confirm("WARNING! This will remove all non running containers.", force):
        return
    removed, ok = with_client(ctx, prune_containers)
    for container_id in removed:
        click.echo(container_id)
    if not ok:
        ctx.exit(125)
