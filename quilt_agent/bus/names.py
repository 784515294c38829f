"""Bus names, object paths and interface names, in one place (the agent's bus layer and its clients use these)."""

BUS_NAME = "org.quilt.Runtime"
MANAGER_PATH = "/org/quilt/Runtime"
MANAGER_INTERFACE = "org.quilt.Runtime.Manager"
CONTAINER_INTERFACE = "org.quilt.Runtime.Container"
CONTAINER_PATH_PREFIX = "/org/quilt/Runtime/container/"
IMAGE_INTERFACE = "org.quilt.Runtime.Image"
NETWORK_INTERFACE = "org.quilt.Runtime.Network"
NETWORK_PATH_PREFIX = "/org/quilt/Runtime/network/"
VOLUME_INTERFACE = "org.quilt.Runtime.Volume"
ERROR_PREFIX = "org.quilt.Runtime.Error."
# The error names quiltctl reacts to by name, spelled here so that it need not import the agent's error classes
# (bus/error_names.py maps every one of them to its name, these among them).
ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"
NO_SUCH_CONTAINER = ERROR_PREFIX + "NoSuchContainer"
NOT_RUNNING = ERROR_PREFIX + "NotRunning"
TOO_LARGE = ERROR_PREFIX + "TooLarge"
TIMED_OUT = ERROR_PREFIX + "TimedOut"
FAILED = ERROR_PREFIX + "Failed"


def container_path(container_id: str) -> str:
    return CONTAINER_PATH_PREFIX + container_id


def container_id(path: str) -> str:
    """The id a container's object path is named by (container_path's inverse)."""
    return path.removeprefix(CONTAINER_PATH_PREFIX)


def network_path(network_id: str) -> str:
    return NETWORK_PATH_PREFIX + network_id
