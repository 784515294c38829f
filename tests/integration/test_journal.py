"""journal.py against the test host's journald: synchronize (its Varlink call, and the fallbacks when that fails), and
the reader kept between reads."""
from __future__ import annotations

import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
from systemd import journal as systemd_journal

from quilt_agent import journal
from tests.integration.waiting import until_now


def test_lines_streamed_just_before_a_synchronize_are_stored_when_it_returns() -> None:
    identifier = f"quilt-test-{uuid.uuid4().hex[:8]}"
    with systemd_journal.stream(identifier) as stream:
        for i in range(2000):
            stream.write(f"line {i}\n")
    assert journal.synchronize() is True
    stored = subprocess.run(["journalctl", "-q", "-t", identifier, "-o", "cat"], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert len(stored) == 2000 and stored[-1] == "line 1999"


def test_without_varlink_it_asks_journalctl() -> None:
    assert journal.synchronize("/run/no-such-varlink-socket") is True


def test_a_varlink_peer_that_hangs_up_without_an_answer_is_not_waited_for(tmp_path: Path) -> None:
    path = str(tmp_path / "varlink")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)

        def hang_up() -> None:
            conn, _ = server.accept()
            conn.recv(4096)
            conn.close()

        peer = threading.Thread(target=hang_up, daemon=True)
        peer.start()
        result: list[bool] = []
        caller = threading.Thread(target=lambda: result.append(journal.synchronize(path)), daemon=True)
        caller.start()
        caller.join(timeout=10)
        assert not caller.is_alive(), "synchronize waited on a peer that had hung up"
        assert result == [True]  # journalctl --sync, after the peer's silence


def _journal_files(name: str) -> list[Path]:
    return [p for root in ("/var/log/journal", "/run/log/journal") for p in Path(root).glob(f"*/{name}")]


def test_the_kept_reader_reads_a_journal_file_made_after_it_was_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    """journald keeps a file per uid: a container's first line, from ids no process logged from before, goes into
    a new file. The reader kept from the read before must find it (its inotify watch, processed at each use)."""
    uid = 3_900_000 + uuid.uuid4().int % 50_000
    tag = uuid.uuid4().hex[:8]
    unit, identifier = f"quilt-test-{tag}.scope", f"quilt-test-{tag}"
    assert not _journal_files(f"user-{uid}.journal")
    reads = journal._ReaderThread()  # a reader of the test's own, opened by the first read below
    monkeypatch.setattr(journal, "_reads", reads)
    opened = []
    open_reader = journal._open_reader
    monkeypatch.setattr(journal, "_open_reader", lambda: opened.append(1) or open_reader())
    journal.read_lines("init.scope", 0, last=1)
    # The writer stays until the end: journald reads a stream's unit from /proc as it stores each line, so a line
    # whose writer has exited may be stored without its _SYSTEMD_UNIT.
    writer = subprocess.Popen(["systemd-run", "--quiet", "--scope", f"--unit={unit}", "--", "setpriv",
                               f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c",
                               f"{{ echo 'from ids new to the journal'; exec sleep 60; }} | systemd-cat -t {identifier}"])
    try:
        until_now(lambda: journal.synchronize() and _stored(unit, identifier), "the line in the journal")
        assert _journal_files(f"user-{uid}.journal"), "journald kept the line in no file of its own: nothing is tested"
        lines = journal.read_lines(unit, 0, identifier=identifier)
    finally:
        subprocess.run(["systemctl", "stop", unit], check=False)
        writer.wait(10)
    assert [line.text for line in lines] == ["from ids new to the journal"]
    assert len(opened) == 1, "the second read opened a reader of its own: the kept one was not tested"


def _stored(unit: str, identifier: str) -> bool:
    """Whether a reader opened now finds the line: what the kept one must find too."""
    fresh = systemd_journal.Reader()
    try:
        fresh.add_match(_SYSTEMD_UNIT=unit, SYSLOG_IDENTIFIER=identifier)
        return fresh.get_next() != {}
    finally:
        fresh.close()
