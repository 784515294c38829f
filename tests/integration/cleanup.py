"""Teardown that cleans everything it can, then fails the test whose leftovers it could not clean.

A fixture's teardown tries each removal in turn (one failure does not stop the others) and calls report() at the
end: pytest shows what failed as an error of the test that left it, instead of the next test tripping over it.
"""
from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass, field

import pytest

from quilt_agent.client import ClientError

ERR = "org.quilt.Runtime.Error."
# An object removed meanwhile (remove_on_exit, a network's containers going with it) is not a failure to clean.
CONTAINER_GONE = (ERR + "NoSuchContainer", "org.freedesktop.DBus.Error.UnknownObject",
                  "org.freedesktop.DBus.Error.UnknownMethod")
IMAGE_GONE = (ERR + "NoSuchImage",)
NETWORK_GONE = (ERR + "NoSuchNetwork",)
VOLUME_GONE = (ERR + "NoSuchVolume",)


@dataclass
class Cleanup:
    what: str  # the fixture's name, for the report
    failures: list[str] = field(default_factory=list)

    async def attempt(self, action: str, call: Awaitable[object], gone: tuple[str, ...] = ()) -> None:
        """Await call; a failure is recorded (unless its error name says the object is gone already)."""
        try:
            await call
        except ClientError as err:
            if err.name not in gone:
                self.failures.append(f"{action}: {err.name}: {err.message}")
        except Exception as err:  # noqa: BLE001 - anything else is recorded too; the next removal still runs
            self.failures.append(f"{action}: {err!r}")

    def left(self, kind: str, names: list[str]) -> None:
        """Objects still there after their removal was tried."""
        if names:
            self.failures.append(f"{kind} still there after teardown: {', '.join(sorted(names))}")

    def report(self) -> None:
        if self.failures:
            pytest.fail(f"{self.what} teardown could not clean up what the test left:\n  "
                        + "\n  ".join(self.failures), pytrace=False)
