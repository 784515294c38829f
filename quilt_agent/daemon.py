"""Wiring only: connect to the system bus, export the objects, own the name, tell systemd."""
import asyncio
import logging
import signal

from dbus_fast import BusType, RequestNameReply
from dbus_fast.aio import MessageBus
from systemd import daemon as sd_daemon

from quilt_agent import __version__
from quilt_agent.bus.manager import ManagerInterface
from quilt_agent.bus.names import BUS_NAME, MANAGER_PATH

log = logging.getLogger("quilt")


async def run() -> int:
    bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    bus.export(MANAGER_PATH, ManagerInterface())
    reply = await bus.request_name(BUS_NAME)
    if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
        log.error("could not own %s: %s", BUS_NAME, reply)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sd_daemon.notify("READY=1")
    log.info("quilt-agent %s ready on %s", __version__, BUS_NAME)
    disconnected = asyncio.ensure_future(bus.wait_for_disconnect())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({disconnected, stopping}, return_when=asyncio.FIRST_COMPLETED)
    sd_daemon.notify("STOPPING=1")
    bus.disconnect()
    return 0
