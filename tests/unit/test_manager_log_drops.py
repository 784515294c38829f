"""journald's reports of dropped lines, counted onto containers by the manager (Manager.watch_log_drops), over the
in-memory fakes and a stand-in for the journal's reports: the reports of this boot so far at the watch's start,
then each new one with a "logs_dropped" event; only the container the unit belongs to now, and each report once.
The journal side (journal.read_drops, DropWatch, GetLogs' marks) runs against the real journald in the
integration suite."""
from __future__ import annotations

import asyncio
import os
import threading

from quilt_agent.journal import LOG_FILE, Drop
from quilt_agent.model import now_usec
from tests.unit.manager_fixtures import Core, create, events, until
from tests.unit.manager_fixtures import core, zygote  # noqa: F401 - the fixtures


class Reports:
    """journald's reports as they come: a pipe that turns readable when one is added."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._new: list[Drop] = []
        self.closed = False

    def add(self, drop: Drop) -> None:
        self._new.append(drop)
        os.write(self._write, b"x")

    def fileno(self) -> int:
        return self._read

    def new(self) -> list[Drop]:
        os.read(self._read, 4096)
        drops, self._new = self._new, []
        return drops

    def close(self) -> None:  # by the manager, once it no longer watches
        os.close(self._read)
        os.close(self._write)


async def test_reports_from_before_the_watch_are_counted_without_events(core: Core) -> None:
    c = await create(core, ["true"], "web")
    other = await create(core, ["true"], "db")
    later = now_usec()
    past = [Drop(later, c.unit, 100), Drop(later + 1, c.unit, 50), Drop(later + 2, "ssh.service", 7),
            Drop(c.created_at - 1, c.unit, 1000)]  # the last one: a former container of the same name
    reports = Reports()
    try:
        await core.manager.watch_log_drops(reports, lambda: past)
        seen = core.manager.get(c.id)
        assert (seen.logs_dropped, seen.logs_dropped_at) == (150, later + 1)
        assert core.manager.get(other.id).logs_dropped == 0
        assert events(core, c.id, "logs_dropped") == []
    finally:
        core.manager.unwatch_log_drops()


async def test_a_new_report_is_counted_and_told_once(core: Core) -> None:
    c = await create(core, ["true"], "web")
    first = Drop(now_usec(), c.unit, 25015)
    reports = Reports()
    try:
        await core.manager.watch_log_drops(reports, lambda: [first])
        reports.add(first)  # written while the past was read: in both, counted once
        second = Drop(first.usec + 30_000_000, c.unit, 12)
        reports.add(second)
        await until(core, c.id, "logs_dropped", 1)
        assert events(core, c.id, "logs_dropped")[0] | {"time": 0} == {"name": "web", "count": 12,
                                                                     "at": second.usec, "time": 0}
        seen = core.manager.get(c.id)
        assert (seen.logs_dropped, seen.logs_dropped_at) == (25027, second.usec)
        await asyncio.sleep(0.05)  # nothing more comes of the duplicate
        assert len(events(core, c.id, "logs_dropped")) == 1
    finally:
        core.manager.unwatch_log_drops()


async def test_a_report_of_no_containers_unit_changes_nothing(core: Core) -> None:
    c = await create(core, ["true"], "web")
    reports = Reports()
    try:
        await core.manager.watch_log_drops(reports, lambda: [])
        reports.add(Drop(now_usec(), "quilt-gone.scope", 3))
        reports.add(Drop(now_usec(), c.unit, 4))
        await until(core, c.id, "logs_dropped", 1)
        assert core.manager.get(c.id).logs_dropped == 4
        assert [e.kind for e in core.recorder.events if e.kind == "logs_dropped"] == ["logs_dropped"]
    finally:
        core.manager.unwatch_log_drops()


async def test_a_log_files_failed_write_is_told_and_its_lost_lines_counted_once_reported(core: Core) -> None:
    c = await create(core, ["true"], "web", log_driver="k8s-file")
    reports = Reports()
    try:
        await core.manager.watch_log_drops(reports, lambda: [])
        failed = Drop(now_usec(), "", 0, LOG_FILE, "cannot write ctr.log (No space left on device)", "web")
        reports.add(failed)
        await until(core, c.id, "log_write_failed", 1)
        assert events(core, c.id, "log_write_failed")[0] | {"time": 0} == {
            "name": "web", "reason": "cannot write ctr.log (No space left on device)", "at": failed.usec, "time": 0}
        assert core.manager.get(c.id).logs_dropped == 0  # nothing known lost yet
        ended = Drop(failed.usec + 1000, "", 1234, LOG_FILE, container="web")
        reports.add(ended)
        await until(core, c.id, "logs_dropped", 1)
        assert events(core, c.id, "logs_dropped")[0]["count"] == 1234
        seen = core.manager.get(c.id)
        assert (seen.logs_dropped, seen.logs_dropped_at) == (1234, ended.usec)
    finally:
        core.manager.unwatch_log_drops()


async def test_the_monitors_reports_find_a_container_by_name_whatever_its_unit(core: Core) -> None:
    # A container run for a unit of the host's (its unit: NAME.service) has no quilt-NAME.scope
    core.scopes.run_service("web.service")
    c = await create(core, ["true"], "web", log_driver="k8s-file", unit="web.service")
    assert c.unit == "web.service"
    reports = Reports()
    try:
        await core.manager.watch_log_drops(reports, lambda: [])
        reports.add(Drop(now_usec(), "", 3, LOG_FILE, container="web"))
        await until(core, c.id, "logs_dropped", 1)
        assert core.manager.get(c.id).logs_dropped == 3
    finally:
        core.manager.unwatch_log_drops()


async def test_journalds_drops_are_not_lost_lines_when_the_log_file_has_them(core: Core) -> None:
    both = await create(core, ["true"], "both", log_driver="journald+file")
    c = await create(core, ["true"], "web")
    reports = Reports()
    try:
        await core.manager.watch_log_drops(reports, lambda: [])
        reports.add(Drop(now_usec(), both.unit, 500))
        reports.add(Drop(now_usec(), c.unit, 7))  # after the first: once it is counted, the first was looked at
        await until(core, c.id, "logs_dropped", 1)
        assert core.manager.get(both.id).logs_dropped == 0
        assert events(core, both.id, "logs_dropped") == []
    finally:
        core.manager.unwatch_log_drops()


class SlowReports(Reports):
    """Reports whose reading waits until the test lets it go: the journal read in a worker thread."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.Event()
        self.go = threading.Event()

    def new(self) -> list[Drop]:
        self.reading.set()
        self.go.wait(5)
        assert not self.closed, "read after close"
        return super().new()

    def close(self) -> None:
        self.closed = True
        super().close()


async def test_the_watch_is_closed_only_after_a_look_under_way_ends(core: Core) -> None:
    c = await create(core, ["true"], "web")
    reports = SlowReports()
    await core.manager.watch_log_drops(reports, lambda: [])
    reports.add(Drop(now_usec(), c.unit, 9))
    assert await asyncio.to_thread(reports.reading.wait, 5)
    core.manager.unwatch_log_drops()  # while the worker thread reads
    assert not reports.closed
    reports.go.set()
    for _ in range(100):
        if reports.closed:
            break
        await asyncio.sleep(0.01)
    assert reports.closed
    assert core.manager.get(c.id).logs_dropped == 0  # what was read after the unwatch is not counted
