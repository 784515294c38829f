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
    errors.TimedOut: ERROR_PREFIX + "TimedOut",
    errors.NoSuchNetwork: ERROR_PREFIX + "NoSuchNetwork",
    errors.NetworkInUse: ERROR_PREFIX + "NetworkInUse",
    errors.AddressInUse: ERROR_PREFIX + "AddressInUse",
    errors.PortInUse: ERROR_PREFIX + "PortInUse",
    errors.RegistryError: ERROR_PREFIX + "RegistryError",
    errors.ImageInUse: ERROR_PREFIX + "ImageInUse",
    errors.NoSuchPath: ERROR_PREFIX + "NoSuchPath",
    errors.CopyFailed: ERROR_PREFIX + "CopyFailed",
    errors.NoSuchVolume: ERROR_PREFIX + "NoSuchVolume",
    errors.VolumeInUse: ERROR_PREFIX + "VolumeInUse",
    errors.AccessDenied: ACCESS_DENIED,
}


def to_dbus_error(err: errors.QuiltError) -> DBusError:
    # A message may quote what came from outside (a registry's answer, a file name): a NUL or a lone surrogate
    # would make it an invalid D-Bus string, and dbus-daemon disconnects whoever sends one.
    text = str(err).replace("\0", "\\0").encode("utf-8", "backslashreplace").decode("utf-8")
    for kind in type(err).__mro__:
        if kind in ERROR_NAMES:
            return DBusError(ERROR_NAMES[kind], text)
    return DBusError(ERROR_PREFIX + "Failed", text)
