"""Watching containers: `logs -f` (FollowLogs), `stats` (GetStats) and `events` (the Event signal, ListEvents)."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from quilt_agent.cli import output, reconnect
from quilt_agent.cli.context import NO_SUCH_CONTAINER, NOT_RUNNING, UNKNOWN_OBJECT, with_async_client, with_client
from quilt_agent.cli.parsing import parse_since
from quilt_agent.api import ClientError
from quilt_agent.replies import Event, LogLine
from quilt_agent.cli.context import Client

_GONE = (NOT_RUNNING, NO_SUCH_CONTAINER, UNKNOWN_OBJECT, "org.freedesktop.DBus.Error.UnknownInterface")


def _time_option(ctx: click.Context, name: str, text: str | None, now: float) -> int:
    if text is None:
        return 0
    try:
        return parse_since(text, now)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx=ctx, param_hint=f"'--{name}'") from None


# --- logs -f -------------------------------------------------------------------------------------------------


def follow_logs(ctx: click.Context, container: str, lines: int | None, since: str | None, until: str | None,
                follow: bool, timestamps: bool, setup: bool = False) -> None:
    """`logs` with -f or --until: through FollowLogs, a pipe the agent writes the lines to."""
    now = time.time()
    options: dict[str, Any] = {"follow": follow}
    if setup:
        options["setup"] = True
    if since is not None:
        options["since"] = _time_option(ctx, "since", since, now)
    if until is not None:
        options["until"] = _time_option(ctx, "until", until, now)
    if lines:
        options["lines"] = lines
    elif lines == 0:
        if not follow:
            with_client(ctx, lambda client: client.get_container(container))  # still an error if unknown
            return
        options["since"] = max(options.get("since", 0), int(now * 1_000_000))  # -n 0 -f: only new lines

    options["end_marker"] = True  # a pipe that ends without it was cut by the agent's going away
    timeout = reconnect.checked_timeout()

    async def body(client: Client) -> None:
        session = reconnect.Session(client, timeout)
        path, props = await session.call(lambda: client.get_container_properties(container))
        driver = str(props.get("LogDriver", ""))
        cursor = ""
        while True:
            if cursor:  # resumed after a restart of the agent: from the line after the last one printed
                options.pop("lines", None)
                options["after_cursor"] = cursor
            try:
                fd = await session.call(lambda: client.follow_logs(path, options))
            except ClientError as e:
                if session.restarts and e.name in _GONE:
                    return  # removed while the agent was away: its log is over, as when removed while followed
                raise
            # The agent writes to the pipe until the container ends (or --until); the bus waits meanwhile.
            with os.fdopen(fd, "rb") as pipe:
                for raw in pipe:
                    if not raw.endswith(b"\n"):
                        break  # the agent died in the middle of a line: it comes again after the last whole one
                    line = json.loads(raw)
                    if "end" in line:
                        return
                    output.print_logs([LogLine(line["usec"], line["stream"], line["text"])], timestamps, driver)
                    cursor = line.get("cursor") or cursor
            await session.come_back()

    with_client(ctx, body)


# --- stats ---------------------------------------------------------------------------------------------------


def _memory_total() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n}B"


class _Sampler:
    """Turns successive GetStats results into rows: CPU % over the time since the last sample (since the
    container's start for the first), as podman stats does."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, int]] = {}

    def row(self, props: dict[str, Any], stats: dict[str, int], now: float) -> dict[str, Any]:
        cid = props["Id"]
        cpu = stats.get("cpu_usec", 0)
        last_time, last_cpu = self._last.get(cid, (props["StartedAt"] / 1e6, 0))
        self._last[cid] = (now, cpu)
        elapsed = max(now - last_time, 1e-6)
        limit = stats.get("memory_max") or _memory_total()
        return {"id": cid, "name": props["Name"], "cpu_percent": round((cpu - last_cpu) / 1e6 / elapsed * 100, 2),
                "memory_usage": stats.get("memory_current", 0), "memory_limit": limit,
                "memory_percent": round(100 * stats.get("memory_current", 0) / limit, 2) if limit else 0.0,
                "memory_peak": stats.get("memory_peak", 0), "pids": stats.get("pids_current", 0),
                "pids_limit": stats.get("pids_max", 0), "cpu_time_usec": cpu}


async def _sample(client: Client, names: tuple[str, ...], sampler: _Sampler) -> list[dict[str, Any]]:
    if names:
        paths = [await client.get_container(n) for n in names]
    else:
        paths = [e.path for e in await client.list_containers() if e.state == "running"]
    rows = []
    for path in paths:
        try:
            props = await client.properties(path)
            stats = await client.get_stats(path)
        except ClientError as e:
            if e.name in _GONE and not names:
                continue  # it stopped or went meanwhile: it is simply no longer in the table
            raise
        rows.append(sampler.row(props, stats, time.time()))
    return rows


def _stats_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold" if output.colour() else "")
    for column in ("ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "MEM PEAK", "PIDS"):
        table.add_column(column, no_wrap=True)
    for r in rows:
        pids = f"{r['pids']}" + (f" / {r['pids_limit']}" if r["pids_limit"] else "")
        table.add_row(r["id"][:output.SHORT_ID], r["name"], f"{r['cpu_percent']:.2f}%",
                      f"{_size(r['memory_usage'])} / {_size(r['memory_limit'])}", f"{r['memory_percent']:.2f}%",
                      _size(r["memory_peak"]), pids)
    return table


@click.command()
@click.option("--no-stream", is_flag=True, help="Print one sample and exit.")
@click.option("-i", "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between samples.")
@click.option("--json", "as_json", is_flag=True, help="Print each sample as a JSON list.")
@click.argument("containers", nargs=-1)
@click.pass_context
def stats(ctx: click.Context, no_stream: bool, interval: float, as_json: bool, containers: tuple[str, ...]) -> None:
    """Show the CPU, memory and pids use of running containers (all, or those named), live."""
    sampler = _Sampler()
    tty = sys.stdout.isatty()

    def show(rows: list[dict[str, Any]]) -> None:
        if as_json:
            click.echo(json.dumps(rows))
        else:
            console = Console(width=None if tty else 10_000, no_color=not output.colour(), highlight=False)
            with console.capture() as captured:
                console.print(_stats_table(rows))
            for line in captured.get().splitlines():
                click.echo(line.rstrip())

    timeout = reconnect.checked_timeout()

    async def body(client: Client) -> None:
        from rich.live import Live  # only here: every other verb would pay for importing it

        session = reconnect.Session(client, timeout)

        async def sample() -> list[dict[str, Any]]:
            # A restart of the agent meanwhile: the sample is taken again, of the agent that comes back.
            return await session.call(lambda: _sample(client, containers, sampler))

        if no_stream or as_json or not tty:
            while True:
                show(await sample())
                if no_stream:
                    return
                await asyncio.sleep(interval)
        with Live(_stats_table(await sample()), auto_refresh=False) as live:
            while True:
                await asyncio.sleep(interval)
                live.update(_stats_table(await sample()), refresh=True)

    with_async_client(ctx, body)


# --- events --------------------------------------------------------------------------------------------------


def _event_text(event: Event) -> str:
    details = dict(event.details)
    name = details.pop("name", "")
    details.pop("time", None)
    extra = "".join(f", {k}={v}" for k, v in sorted(details.items()))
    return (f"{output.log_timestamp(event.time)} container {event.kind} {event.container_id[:output.SHORT_ID]} "
            f"(name={name}{extra})")


class _Printed:
    """The events printed lately, to print none twice: the signal and the history tell the same event, and the
    history read after a restart of the agent starts at the last printed event's microsecond, which others may
    share. An event is its (time, kind, container): one container has one edge of a kind at a time."""

    KEEP = 4096

    def __init__(self) -> None:
        self._seen: dict[tuple[int, str, str], None] = {}  # in order printed, the oldest dropped past KEEP
        self.last_time = 0

    @staticmethod
    def _key(event: Event) -> tuple[int, str, str]:
        return (event.time, event.kind, event.container_id)

    def __contains__(self, event: Event) -> bool:
        return self._key(event) in self._seen

    def add(self, event: Event) -> None:
        self._seen[self._key(event)] = None
        if len(self._seen) > self.KEEP:
            del self._seen[next(iter(self._seen))]
        self.last_time = max(self.last_time, event.time)


@click.command()
@click.option("--since", default=None,
              help="Show stored events since TIME first (10m or '10m ago', a Unix time, ISO 8601).")
@click.option("--until", default=None, help="Stop at TIME; a past TIME prints the stored events and exits.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
@click.pass_context
def events(ctx: click.Context, since: str | None, until: str | None, as_json: bool) -> None:
    """Print container lifecycle events (created, started, failed, oom, exited, removed) as they happen."""
    now = time.time()
    since_usec = _time_option(ctx, "since", since, now)
    until_usec = _time_option(ctx, "until", until, now)

    def show(event: Event) -> None:
        if as_json:
            click.echo(json.dumps({"time": event.time, "kind": event.kind, "container_id": event.container_id,
                                   "details": event.details}))
        else:
            click.echo(_event_text(event))

    come_back_within = reconnect.checked_timeout()

    async def body(client: Client) -> None:
        session = reconnect.Session(client, come_back_within, reached=True)  # used once the agent has changed
        agent = await client.watch_agent()  # its restarts: the events told meanwhile are read from the history
        queue = await client.watch_events()  # before reading the history: nothing falls between the two
        printed = _Printed()
        if since is not None or until is not None:
            for event in await client.list_events(since_usec, until_usec):
                printed.add(event)
                show(event)
        if until is not None and until_usec <= time.time() * 1_000_000:
            return
        resume_from = printed.last_time or int(time.time() * 1_000_000)
        deadline = None if until is None else until_usec / 1e6
        generation = agent.generation
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            getting = asyncio.ensure_future(queue.get())
            restarted = asyncio.ensure_future(agent.changed(generation))
            done, _ = await asyncio.wait({getting, restarted}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            restarted.cancel()
            if getting not in done:
                getting.cancel()
            else:
                event = getting.result()
                if event in printed:
                    continue  # told by the signal and already printed from the history
                if until_usec and event.time > until_usec:
                    return
                printed.add(event)
                show(event)
                continue
            if not done:
                return  # --until has come
            # The agent went away, or another took its place: once it answers, the events since the last one
            # printed come from its history (those of its recovery were told before anyone could listen).
            generation = agent.generation
            if not agent.owner:
                await session.come_back()
            await session.call(client.renew_event_watch)
            history = await session.call(lambda: client.list_events(printed.last_time or resume_from, until_usec))
            for event in history:
                if event not in printed:
                    printed.add(event)
                    show(event)

    with_async_client(ctx, body)  # ^C ends it: click makes that status 130


COMMANDS: list[click.Command] = [stats, events]
