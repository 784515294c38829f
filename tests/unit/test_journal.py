"""The reports of dropped lines as journal.py reads them from journal entries: journald's own and quilt-monitor's
(monitor/logfile.c), their MESSAGE_ID as systemd.journal.Reader gives it (a uuid.UUID) or as text. Reading them
from the real journal is the integration suite's."""
from __future__ import annotations

import uuid

from quilt_agent.journal import DROPPED_MESSAGE_ID, JOURNALD, LOG_DROPPED_ID, LOG_FAILED_ID, LOG_FILE, Drop, _drop


def test_journalds_report_names_the_unit_and_the_count() -> None:
    entry = {"MESSAGE_ID": uuid.UUID(DROPPED_MESSAGE_ID), "__REALTIME_TIMESTAMP": 5, "N_DROPPED": "42",
             "OBJECT_SYSTEMD_UNIT": "quilt-web.scope"}
    assert _drop(entry) == Drop(5, "quilt-web.scope", 42, JOURNALD)


def test_the_monitors_failed_write_is_a_gap_begun_with_its_reason() -> None:
    entry = {"MESSAGE_ID": LOG_FAILED_ID, "__REALTIME_TIMESTAMP": 7, "N_DROPPED": "0", "QUILT_CONTAINER": "web",
             "MESSAGE": "cannot write ctr.log (No space left on device): dropping lines"}
    assert _drop(entry) == Drop(7, "quilt-web.scope", 0, LOG_FILE,
                                "cannot write ctr.log (No space left on device): dropping lines")


def test_the_monitors_count_is_lines_lost_from_the_file() -> None:
    entry = {"MESSAGE_ID": uuid.UUID(LOG_DROPPED_ID), "__REALTIME_TIMESTAMP": 9, "N_DROPPED": "1200", "QUILT_CONTAINER": "web"}
    assert _drop(entry) == Drop(9, "quilt-web.scope", 1200, LOG_FILE)


def test_entries_without_a_unit_or_a_count_are_no_reports() -> None:
    for entry in ({"MESSAGE_ID": DROPPED_MESSAGE_ID, "N_DROPPED": "3"},
                  {"MESSAGE_ID": DROPPED_MESSAGE_ID, "OBJECT_SYSTEMD_UNIT": "quilt-web.scope", "N_DROPPED": "x"},
                  {"MESSAGE_ID": LOG_DROPPED_ID, "N_DROPPED": "3"},
                  {"MESSAGE_ID": LOG_DROPPED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "0"},
                  {"MESSAGE_ID": LOG_FAILED_ID, "QUILT_CONTAINER": "web", "N_DROPPED": "-1"}):
        assert _drop({"__REALTIME_TIMESTAMP": 1, **entry}) is None, entry
