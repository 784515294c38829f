"""Every failure Quilt reports, named once. No bus import: bus/errors.py maps these to D-Bus names."""


class QuiltError(Exception):
    """Base of the errors a caller is meant to see; the message says what was wrong and with which value."""


class InvalidArgument(QuiltError):
    pass


class NoSuchContainer(QuiltError):
    def __init__(self, name: str) -> None:
        super().__init__(f"No container '{name}' known")


class NameInUse(QuiltError):
    def __init__(self, name: str) -> None:
        super().__init__(f"The name '{name}' is already in use by another container")


class NoSuchImage(QuiltError):
    pass


class ImageInvalid(QuiltError):
    pass


class NotRunning(QuiltError):
    def __init__(self, name: str, state: str) -> None:
        super().__init__(f"Container '{name}' is not running (state {state})")


class AlreadyRunning(QuiltError):
    def __init__(self, name: str, hint: str = "") -> None:
        super().__init__(f"Container '{name}' is already running" + (f": {hint}" if hint else ""))


class ContainerFailed(QuiltError):
    """The container could not be started (its command could not be executed, the scope failed, ...)."""


# Podman's run tells these two from its own failures by exit status (127, 126): named apart, so a caller can too.
class CommandNotFound(ContainerFailed):
    """The container's command is not in its image (nor in its PATH): its exit code is 127."""


class CommandNotExecutable(ContainerFailed):
    """The container's command exists but cannot be invoked (not executable, a directory, permission denied,
    or its working directory cannot be entered): its exit code is 126."""


class NotSupported(QuiltError):
    """What this host cannot do correctly (pausing without a cgroup v2 freezer), refused rather than faked."""


class TooLarge(QuiltError):
    """What was asked for does not fit in one reply; the message says how to ask for it in parts, or as a stream."""


class TimedOut(QuiltError):
    """An operation with a time limit did not finish within it (an exec's timeout, a systemd job that systemd
    did not finish)."""


# What the machine or the agent ran out of, or what refused the agent: the message names the filesystem, the
# limit or the refusal, and what to do about it.
class NoSpace(QuiltError):
    """A filesystem the agent writes to is full (ENOSPC), or its quota is (EDQUOT)."""


class ResourceExhausted(QuiltError):
    """A limit of the agent's or the system's ran out: open files (LimitNOFILE), memory."""


class SystemdFailed(QuiltError):
    """systemd refused or failed a call the agent made to it; the message carries systemd's error name and text.

    The name is the agent's own, not systemd's: clients (quiltctl among them) take org.freedesktop.systemd1.*
    from the agent's bus name for a failed bus activation of the agent itself."""


class Failed(QuiltError):
    """An error in the agent itself, not in what the caller asked: the message says what, and that the journal
    (journalctl -u quilt-agent) has its traceback."""


# Networks.
class NoSuchNetwork(QuiltError):
    def __init__(self, name: str) -> None:
        super().__init__(f"No network '{name}' known")


class NetworkNameInUse(NameInUse):
    """NameInUse (the same D-Bus error), worded for a network."""

    def __init__(self, name: str) -> None:
        QuiltError.__init__(self, f"The name '{name}' is already in use by another network")


class NetworkInUse(QuiltError):
    """A network (or a container's network namespace) that others still use."""


class AddressInUse(QuiltError):
    """An address asked for with the ip option belongs to another container, or a subnet has none left."""


class PortInUse(QuiltError):
    """A host port that another container publishes already."""


# Images.
class RegistryError(QuiltError):
    """A registry refused or failed a pull (HTTP error, authentication, garbage); the message carries the
    registry's own words."""


class ImageInUse(QuiltError):
    """An image that containers use, removed without force."""


# Volumes.
class NoSuchPath(QuiltError):
    """A host path given as a volume's source, or a path to copy, that does not exist."""


class CopyFailed(QuiltError):
    """A copy that could not be completed: an entry in the way (a directory where a file goes), a path changed
    by the container during the copy, the other end of an archive gone."""


class NoSuchVolume(QuiltError):
    def __init__(self, name: str) -> None:
        super().__init__(f"No volume '{name}' known")


class VolumeNameInUse(NameInUse):
    """NameInUse (the same D-Bus error), worded for a volume."""

    def __init__(self, name: str) -> None:
        QuiltError.__init__(self, f"The name '{name}' is already in use by another volume")


class VolumeInUse(QuiltError):
    """A volume that containers use, removed without force."""


class AccessDenied(QuiltError):
    pass
