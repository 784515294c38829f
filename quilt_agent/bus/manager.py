"""org.quilt.Runtime.Manager on /org/quilt/Runtime."""
from dbus_fast.service import PropertyAccess, ServiceInterface, dbus_property

from quilt_agent import __version__
from quilt_agent.bus.names import MANAGER_INTERFACE


class ManagerInterface(ServiceInterface):
    def __init__(self) -> None:
        super().__init__(MANAGER_INTERFACE)

    @dbus_property(access=PropertyAccess.READ, name="Version")
    def version(self) -> "s":
        return __version__
