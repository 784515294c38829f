"""The reports of dropped lines as journal.py reads them from journal entries: journald's own and quilt-monitor's
(monitor/logfile.c), their MESSAGE_ID as systemd.journal.Reader gives it (a uuid.UUID) or as text, and only from
whom they say they are (journald's trusted fields). Reading them from the real journal is the integration suite's."""
from __future__ import annotations

import uuid

import pytest

from quilt_agent.journal import (
    DROPPED_MESSAGE_ID, JOURNALD, LOG_DROPPED_ID, LOG_FAILED_ID, LOG_FILE, MAX_DROPPED, Drop, _drop,
)

JOURNALD_SENT = {"_TRANSPORT": "driver"}
MONITOR_SENT = {"_UID": 0, "_COMM": "quilt-mon web", "_TRANSPORT": "journal"}


def test_journalds_report_names_the_unit_and_the_count() -> None:
    entry = {"MESSAGE_ID": uuid.UUID(DROPPED_MESSAGE_ID), "__REALTIME_TIMESTAMP": 5, "N_DROPPED": "42",
             "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", **JOURNALD_SENT}
    assert _drop(entry) == Drop(5, "quilt-web.scope", 42, JOURNALD)


def test_the_monitors_failed_write_is_a_gap_begun_with_its_reason() -> None:
    entry = {"MESSAGE_ID": LOG_FAILED_ID, "__REALTIME_TIMESTAMP": 7, "N_DROPPED": "0", "QUILT_CONTAINER": "web",
             "MESSAGE": "cannot write ctr.log (No space left on device): dropping lines", **MONITOR_SENT}
    assert _drop(entry) == Drop(7, "", 0, LOG_FILE, "cannot write ctr.log (No space left on device): dropping lines",
                                container="web")


def test_the_monitors_count_is_lines_lost_from_the_containers_file() -> None:
    entry = {"MESSAGE_ID": uuid.UUID(LOG_DROPPED_ID), "__REALTIME_TIMESTAMP": 9, "N_DROPPED": "1200",
             "QUILT_CONTAINER": "web", **MONITOR_SENT}
    assert _drop(entry) == Drop(9, "", 1200, LOG_FILE, container="web")


@pytest.mark.parametrize("entry", [
    # anybody may send journald an entry with these ids: only the trusted fields say who did
    {"MESSAGE_ID": DROPPED_MESSAGE_ID, "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", "N_DROPPED": "3",
     "_TRANSPORT": "journal"},
    {"MESSAGE_ID": LOG_DROPPED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "3", "_UID": 1000, "_COMM": "quilt-mon web"},
    {"MESSAGE_ID": LOG_DROPPED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "3", "_UID": 0, "_COMM": "bash"},
    # what is not a report
    {"MESSAGE_ID": DROPPED_MESSAGE_ID, "N_DROPPED": "3", **JOURNALD_SENT},
    {"MESSAGE_ID": DROPPED_MESSAGE_ID, "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", "N_DROPPED": "x", **JOURNALD_SENT},
    {"MESSAGE_ID": DROPPED_MESSAGE_ID, "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", "N_DROPPED": str(MAX_DROPPED),
     **JOURNALD_SENT},
    {"MESSAGE_ID": LOG_DROPPED_ID, "N_DROPPED": "3", **MONITOR_SENT},
    {"MESSAGE_ID": LOG_DROPPED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "0", **MONITOR_SENT},
    {"MESSAGE_ID": LOG_FAILED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "-1", **MONITOR_SENT},
])
def test_entries_from_others_or_without_a_container_or_count_are_no_reports(entry: dict) -> None:
    assert _drop({"__REALTIME_TIMESTAMP": 1, **entry}) is None
