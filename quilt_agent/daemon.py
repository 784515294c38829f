"""Wiring only: store, recovery, manager, exported objects, bus name, sd_notify, signals."""
import asyncio
import logging
import os
import signal

from dbus_fast import BusType, RequestNameReply
from dbus_fast.aio import MessageBus
from systemd import daemon as sd_daemon

from quilt_agent import __version__
from quilt_agent.bus import caller
from quilt_agent.bus.manager import ManagerInterface
from quilt_agent.bus.names import BUS_NAME, MANAGER_PATH
from quilt_agent.bus.polkit import Authority
from quilt_agent.config import default_paths
from quilt_agent.helper.zygote import Zygote
from quilt_agent.images.service import Images
from quilt_agent.images.store import ImageStore
from quilt_agent.manager import Manager
from quilt_agent.scopes import Scopes
from quilt_agent.store import Store

log = logging.getLogger("quilt")


async def run(zygote: Zygote) -> int:
    paths = default_paths()
    paths.root.mkdir(mode=0o700, parents=True, exist_ok=True)
    bus = await MessageBus(bus_type=BusType.SYSTEM, negotiate_unix_fd=True).connect()
    bus.add_message_handler(caller.remember)
    store = await Store.open(paths.database)
    scopes = Scopes(bus)
    await scopes.connect()
    manager = Manager(paths, store, scopes, zygote, Images(ImageStore(paths.images, zygote.extract)))
    await manager.recover()
    interface = ManagerInterface(manager, Authority(bus), bus)
    bus.export(MANAGER_PATH, interface)
    interface.export_existing()
    bus.add_message_handler(interface.unknown_container)
    bus.add_message_handler(interface.unknown_network)
    bus.add_message_handler(interface.unknown_image)
    bus.add_message_handler(interface.unknown_volume)

    reply = await bus.request_name(BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        log.error("could not own %s: %s", BUS_NAME, reply)
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

    sd_daemon.notify("READY=1")
    log.info("quilt-agent %s ready on %s, %d containers known", __version__, BUS_NAME, len(manager.list()))
    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
    sd_daemon.notify("STOPPING=1")
    loop.remove_reader(zygote_fd)
    os.close(zygote_fd)
    bus.disconnect()
    await manager.flush()
    await store.close()
    return status
