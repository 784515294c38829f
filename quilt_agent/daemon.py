"""The agent's life on the bus: the store, the services (app.py), the exported objects, the bus name, sd_notify,
the watchdog, the idle exit and signals."""
import asyncio
import gc
import logging
import os
import resource
import signal

from dbus_fast import BusType, Message, RequestNameReply
from systemd import daemon as sd_daemon

from quilt_agent import __version__, app, lifecycle, loopcheck
from quilt_agent.bus import caller, guard
from quilt_agent.bus.manager import ManagerInterface
from quilt_agent.bus.names import BUS_NAME, MANAGER_PATH
from quilt_agent.bus.polkit import Authority
from quilt_agent.bus.relay import Relay, RelayingBus
from quilt_agent.config import Paths, default_paths
from quilt_agent.graceperiod import GracePeriod
from quilt_agent.helper.zygote import Zygote
from quilt_agent.machines import Machined
from quilt_agent.scopes import Scopes
from quilt_agent.store import Store, StoreRefused

log = logging.getLogger("quilt")

# The LSB's "program is not configured", beside __main__.EXIT_NOT_INSTALLED: the unit does not restart on either
# (RestartPreventExitStatus=), since only an administrator can fix their cause.
EXIT_BAD_STATE = 6  # the state database is refused (store.py)


async def run(zygote: Zygote) -> int:
    _raise_fd_limit()
    paths = default_paths()
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    idle_seconds = lifecycle.idle_seconds()
    try:
        store = await Store.open(paths.database)
    except StoreRefused as e:
        log.error("%s", e, extra={"QUILT_DATABASE": str(e.path)})
        return EXIT_BAD_STATE
    try:
        return await _serve(paths, store, zygote, idle_seconds)
    finally:
        # Whatever ended the agent: the store's thread would otherwise keep the process from exiting.
        await store.close()


async def _serve(paths: Paths, store: Store, zygote: Zygote, idle_seconds: float) -> int:
    bus = await RelayingBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
    bus.add_message_handler(caller.remember)
    bus.add_message_handler(lifecycle.CALLS.seen)
    scopes = Scopes(bus, GracePeriod.of_this_process())
    await scopes.connect()
    services = await app.build(paths, store, scopes, zygote, Machined(bus))
    manager = services.manager
    manager.subscribe(lifecycle.ContainerEdges(lifecycle.CALLS))
    authority = Authority(bus)
    relay = Relay(authority)
    await relay.connect()
    interface = ManagerInterface(services, authority, bus, relay)
    relay.describe_with(interface.describe_signal, interface.progress_addressee)
    bus.relay = relay
    bus.export(MANAGER_PATH, interface)
    await interface.export_existing()
    bus.add_message_handler(interface.unknown_container)
    bus.add_message_handler(interface.unknown_network)
    bus.add_message_handler(interface.unknown_image)
    bus.add_message_handler(interface.unknown_volume)

    reply = await bus.request_name(BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        log.error("could not own %s: %s", BUS_NAME, reply)
        bus.disconnect()
        return 1

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    status = 0
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def zygote_died() -> None:
        nonlocal status
        loop.remove_reader(zygote_fd)  # a pidfd stays readable: once is enough
        # Forking a new one from this threaded process would be unsafe: let systemd restart us.
        log.error("the fork server (pid %d) died; exiting so that systemd restarts the agent", zygote.pid)
        status = 1
        stop.set()

    zygote_fd = os.pidfd_open(zygote.pid)
    loop.add_reader(zygote_fd, zygote_died)

    # Recovery is done and the name is owned: calls queued by the activation are being answered.
    loopcheck.serving()
    # What start-up made (modules, the containers' records) lives as long as the agent: out of the cyclic
    # collector's reach, a full collection walks only what calls made since, and stays short. Measured in the test
    # host: reading ~40,000 journal lines through GetLogs held the loop 126-172 ms (in handles that do next to
    # nothing: collections) in 2 runs of 3 without this, never over 100 ms in 2 runs with it.
    gc.freeze()
    known = manager.list()
    sd_daemon.notify(f"READY=1\nSTATUS={len(known)} containers known")
    log.info("quilt-agent %s ready on %s, %d containers known", __version__, BUS_NAME, len(known))
    tasks = {asyncio.ensure_future(bus.wait_for_disconnect()), asyncio.ensure_future(stop.wait())}
    watchdog = lifecycle.watchdog_seconds()
    if watchdog:
        tasks.add(asyncio.ensure_future(lifecycle.ping_watchdog(watchdog, sd_daemon.notify)))
    idle = None
    if idle_seconds:
        idle = asyncio.ensure_future(lifecycle.wait_until_idle(idle_seconds, lifecycle.CALLS, manager.activity,
                                                               lifecycle.Followers(bus)))
        tasks.add(idle)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    if idle in done and not idle.exception():
        # As systemd's own idle services do: STOPPING=1 first, so that systemd queues a start asked for from
        # now on (the bus activating us again) instead of taking this agent for running; then the name goes.
        # Every call that reached us before the release is answered: they precede its reply on the connection.
        sd_daemon.notify("STOPPING=1\nSTATUS=idle: exiting")
        log.info("idle for %g s with no container running: exiting (the next call starts the agent again)",
                 idle_seconds)
        try:
            await bus.release_name(BUS_NAME)
            await asyncio.sleep(0)  # the calls dispatched with the reply start, and count themselves
            await lifecycle.CALLS.drained()
        except Exception as e:  # noqa: BLE001 - the bus went away meanwhile: nothing is left to answer
            log.warning("releasing %s: %s", BUS_NAME, e)
    else:
        for task in done:
            if not task.cancelled() and task.exception():
                log.error("exiting: %s", task.exception())
                status = 1
        sd_daemon.notify("STOPPING=1")
        if bus.connected:
            # The name goes first: a caller that comes back at once (quiltctl riding out a restart) is queued
            # by the bus for the next agent, instead of reaching this one after its calls were ended below.
            try:
                await asyncio.wait_for(bus.release_name(BUS_NAME), 5)
                await asyncio.sleep(0)  # the calls that came before the release start, and count themselves
            except Exception as e:  # noqa: BLE001 - the bus went away meanwhile: nothing is left to answer
                log.warning("releasing %s: %s", BUS_NAME, e)
    for task in tasks:
        task.cancel()
    # The journal turns readable at every line, this agent's last ones too: no look at it may start once the
    # loop's worker threads are shut down (after this returns), which would fail the look's task.
    manager.unwatch_log_drops()
    loop.remove_reader(zygote_fd)
    os.close(zygote_fd)
    if bus.connected:
        await guard.end_calls()
        try:
            # Answered after every message queued before it: the calls' replies have left when it returns.
            await asyncio.wait_for(bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                                                    interface="org.freedesktop.DBus.Peer", member="Ping")), 5)
        except (OSError, EOFError, asyncio.TimeoutError) as e:
            log.warning("the bus went away while the last replies were sent: %s", e)
    relay.close()
    bus.disconnect()
    return status  # run() closes the store, which writes what is queued first


def _raise_fd_limit() -> None:
    """Each running container holds a few of the agent's fds (pidfds, its monitor's socket): the soft limit of 1024
    that systemd gives services would cap the agent at a few hundred containers. The hard limit is the real one, as
    systemd and Podman raise it for themselves. The fork server, forked before this, keeps the soft limit, and so
    do the containers it starts."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
