"""The D-Bus error name of each of the core's errors, in one table, importable without the bus library: the
agent's bus layer names its errors from it (bus/errors.py), and quiltctl recognises them by it."""
from __future__ import annotations

from quilt_agent import errors
from quilt_agent.bus.names import (ACCESS_DENIED, ERROR_PREFIX, FAILED, NO_SUCH_CONTAINER, NOT_RUNNING, TIMED_OUT,
                                   TOO_LARGE)

ERROR_NAMES: dict[type[errors.QuiltError], str] = {
    errors.InvalidArgument: ERROR_PREFIX + "InvalidArgument",
    errors.NoSuchContainer: NO_SUCH_CONTAINER,
    errors.NameInUse: ERROR_PREFIX + "NameInUse",
    errors.NoSuchImage: ERROR_PREFIX + "NoSuchImage",
    errors.ImageInvalid: ERROR_PREFIX + "ImageInvalid",
    errors.NotRunning: NOT_RUNNING,
    errors.AlreadyRunning: ERROR_PREFIX + "AlreadyRunning",
    errors.ContainerFailed: ERROR_PREFIX + "ContainerFailed",
    errors.CommandNotFound: ERROR_PREFIX + "CommandNotFound",
    errors.CommandNotExecutable: ERROR_PREFIX + "CommandNotExecutable",
    errors.TimedOut: TIMED_OUT,
    errors.TooLarge: TOO_LARGE,
    errors.NotSupported: ERROR_PREFIX + "NotSupported",
    errors.NoSpace: ERROR_PREFIX + "NoSpace",
    errors.ResourceExhausted: ERROR_PREFIX + "ResourceExhausted",
    errors.SystemdFailed: ERROR_PREFIX + "SystemdFailed",
    errors.Failed: FAILED,
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
