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


class AccessDenied(QuiltError):
    pass
