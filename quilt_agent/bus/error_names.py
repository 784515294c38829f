"""The D-Bus error name of each of the core's errors, in one table, importable without the bus library: the
agent's bus layer names its errors from it (bus/errors.py), and quiltctl recognises them by it."""
from __future__ import annotations

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
    errors.CommandNotFound: ERROR_PREFIX + "CommandNotFound",
    errors.CommandNotExecutable: ERROR_PREFIX + "CommandNotExecutable",
    errors.TimedOut: ERROR_PREFIX + "TimedOut",
    errors.TooLarge: ERROR_PREFIX + "TooLarge",
    errors.NotSupported: ERROR_PREFIX + "NotSupported",
    errors.NoSpace: ERROR_PREFIX + "NoSpace",
    errors.ResourceExhausted: ERROR_PREFIX + "ResourceExhausted",
    errors.SystemdFailed: ERROR_PREFIX + "SystemdFailed",
    errors.Failed: ERROR_PREFIX + "Failed",
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
DECLARED_NAMES = frozenset(ERROR_NAMES.values())

# The names quiltctl reacts to by name, besides printing the message.
NO_SUCH_CONTAINER = ERROR_NAMES[errors.NoSuchContainer]
NOT_RUNNING = ERROR_NAMES[errors.NotRunning]
TOO_LARGE = ERROR_NAMES[errors.TooLarge]
