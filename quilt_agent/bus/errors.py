"""Core errors -> D-Bus error names, in one table."""
from dbus_fast import DBusError

from quilt_agent import errors
from quilt_agent.bus.names import ERROR_PREFIX

ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"

ERROR_NAMES: dict[type[errors.QuiltError], str] = {
    errors.InvalidArgument: ERROR_PREFIX + "InvalidArgument",
    errors.NoSuchContainer: ERROR_PREFIX + "NoSuchContainer",
    errors.NameInUse: ERROR_PREFIX + "NameInUse",
    errors.NoSuchImage: ERROR_PREFIX + "NoSuchImage",
    errors.ImageInvalid: ERROR_PREFIX + "ImageInvalid",
    errors.NotRunning: ERROR_PREFIX + "NotRunning",
    errors.AlreadyRunning: ERROR_PREFIX + "AlreadyRunning",
    errors.ContainerFailed: ERROR_PREFIX + "ContainerFailed",
    errors.AccessDenied: ACCESS_DENIED,
}


def to_dbus_error(err: errors.QuiltError) -> DBusError:
    for kind in type(err).__mro__:
        if kind in ERROR_NAMES:
            return DBusError(ERROR_NAMES[kind], str(err))
    return DBusError(ERROR_PREFIX + "Failed", str(err))
