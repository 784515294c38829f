"""quilt_agent.replies: records as @dataclass(frozen=True) would make them, without importing dataclasses."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quilt_agent import replies
from quilt_agent.replies import ContainerEntry, Event, LogLine

PROJECT = Path(__file__).resolve().parents[2]


def test_records_are_built_by_position_or_by_name_and_compare_by_value() -> None:
    assert LogLine(1, "stdout", "hi") == LogLine(usec=1, stream="stdout", text="hi")
    assert LogLine(1, "stdout", "hi") != LogLine(1, "stderr", "hi")
    assert ContainerEntry("i", "web", "running", "/p") != LogLine(1, "web", "x")
    assert (LogLine(1, "stdout", "hi").usec, LogLine(1, "stdout", "hi").text) == (1, "hi")


def test_a_record_cannot_be_changed_or_given_other_fields() -> None:
    line = LogLine(1, "stdout", "hi")
    with pytest.raises(AttributeError):
        line.text = "changed"  # type: ignore[misc]
    with pytest.raises(TypeError):
        LogLine(1, "stdout")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        LogLine(1, "stdout", "hi", extra=1)  # type: ignore[call-arg]


def test_records_hash_by_value_and_show_their_fields() -> None:
    assert len({LogLine(1, "stdout", "hi"), LogLine(1, "stdout", "hi")}) == 1
    assert repr(LogLine(1, "stdout", "hi")) == "LogLine(usec=1, stream='stdout', text='hi')"
    assert repr(Event(5, "exited", "c", {"exit_code": 0})) == (
        "Event(time=5, kind='exited', container_id='c', details={'exit_code': 0})")


def test_every_record_names_its_fields_in_its_constructor_order() -> None:
    import inspect

    for name in ("ImageEntry", "ImageProgress", "ContainerEntry", "Event", "ExecOutput", "NetworkEntry", "LogLine"):
        record = getattr(replies, name)
        assert tuple(inspect.signature(record.__init__).parameters)[1:] == record.__slots__, name


def test_importing_the_records_imports_no_dataclasses() -> None:
    code = "import sys, quilt_agent.replies; print('dataclasses' in sys.modules, 'typing' in sys.modules)"
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PROJECT)}).stdout
    assert out.split() == ["False", "False"]


def test_records_pickle_copy_and_match_as_dataclasses_did() -> None:
    import copy
    import pickle

    line = LogLine(1, "stdout", "hi")
    assert pickle.loads(pickle.dumps(line)) == line == copy.copy(line) == copy.deepcopy(line)
    match line:
        case LogLine(usec, stream, text):
            assert (usec, stream, text) == (1, "stdout", "hi")
    with pytest.raises(AttributeError):
        del line.text  # type: ignore[misc]


def test_a_record_leaves_comparison_with_other_types_to_them() -> None:
    from unittest import mock

    assert LogLine(1, "stdout", "hi") == mock.ANY
    assert LogLine(1, "stdout", "hi").__eq__(3) is NotImplemented
