"""scripts/probe_bad_input.py: how it sorts outcomes, and its fast cases, which must all be handled well."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "probe_bad_input.py"


@pytest.fixture(scope="module")
def probe():
    spec = importlib.util.spec_from_file_location("probe_bad_input", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.mark.parametrize("outcome, verdict", [
    ({"error": "ChecksumError ValueError", "message": "/m/a.gz: not a complete gzip file"}, "well"),
    ({"error": "ValueError", "message": "/m/a.gz: not a complete gzip file"}, "poor"),        # not the named class
    ({"error": "ChecksumError ValueError", "message": "the file is damaged"}, "poor"),       # names no file
    ({"error": "EOFError", "message": "Compressed file ended"}, "crash"),
    ({"error": "KeyError LookupError", "message": "'networks'"}, "crash"),
    ({"value": 3}, "wrong"),
    ({"timed_out": True}, "crash"),
])
def test_a_call_is_sorted_by_what_it_raised(probe, outcome, verdict):
    expect = probe.Expect(error=("ChecksumError",), says=(r"a\.gz",))
    assert probe.classify(expect, probe.Outcome(**outcome))[0] == verdict


@pytest.mark.parametrize("outcome, verdict", [
    ({"value": [1, 2], "warnings": ["skipped the damaged /m/a.gz"]}, "well"),
    ({"value": [1, 2], "warnings": ["something else"]}, "poor"),
    ({"value": [0, 0], "warnings": ["skipped the damaged /m/a.gz"]}, "wrong"),
    ({"error": "DataNotFoundError FileNotFoundError OSError", "message": "found in no source"}, "poor"),
])
def test_a_repair_is_sorted_by_its_result_and_its_warning(probe, outcome, verdict):
    expect = probe.Expect(check=lambda v: v == [1, 2], warns=r"a\.gz")
    assert probe.classify(expect, probe.Outcome(**outcome))[0] == verdict


@pytest.mark.parametrize("outcome, verdict", [
    ({"exit_code": 2, "stderr": "error: --jobs must be >= 1, got 0\n"}, "well"),
    ({"exit_code": 2, "stderr": "usage: python -m sepdtd\npython -m sepdtd: error: argument --jobs: invalid int\n"},
     "well"),
    ({"exit_code": 2, "stderr": "error: something is wrong\n"}, "poor"),
    ({"exit_code": 1, "stderr": "Traceback (most recent call last):\n  ...\nValueError: jobs must be >= 1\n"}, "crash"),
    ({"exit_code": -9, "stderr": ""}, "crash"),
    ({"exit_code": 0, "stderr": ""}, "wrong"),
    ({"exit_code": -1, "timed_out": True}, "crash"),
])
def test_a_command_is_sorted_by_its_exit_and_error_line(probe, outcome, verdict):
    assert probe.classify(probe.Expect(says=("--jobs",)), probe.Outcome(**outcome))[0] == verdict


def test_the_cases_cover_every_area_of_the_issue(probe):
    cases = probe.all_cases()
    assert {c.area for c in cases} == {"data", "training", "results", "processes and files", "command line"}
    assert len({c.name for c in cases}) == len(cases) >= 40


def test_the_fast_cases_are_all_handled_well(probe, capsys):
    cases = [c for c in probe.all_cases() if c.fast]
    rows = probe.run_cases(cases)
    table = probe.format_rows(rows)
    assert [v for _, v, _ in rows] == ["well"] * len(cases), table
    n = probe.counts(rows)
    assert n == {"cases": len(cases), "well": len(cases), "poor": 0, "wrong": 0, "crash": 0}
    assert table.splitlines()[-1] == f"cases: {len(cases)}  well: {len(cases)}  poor: 0  wrong: 0  crash: 0"
