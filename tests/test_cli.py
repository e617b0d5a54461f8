"""The command line: a user's mistake ends with one ``error:`` line and exit status 2, before any training."""
from __future__ import annotations

import pytest

from sepdtd import beyond, book, cli, data, experiments, remeasure, tuning


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as running anything."""
    def boom(*args, **kwargs):
        raise AssertionError("the command ran before refusing its arguments")

    for mod, name in ((experiments, "reproduce"), (beyond, "reproduce"), (tuning, "search"), (data, "prepare"),
                      (remeasure, "run")):
        monkeypatch.setattr(mod, name, boom)


@pytest.mark.parametrize("argv, expected", [
    (["reproduce", "--profile", "smoke", "--datasets", "mnist", "svhn"], "unknown data set 'svhn'"),
    (["beyond", "--profile", "smoke", "--datasets", "mnist", "svhn"], "unknown data set 'svhn'"),
    (["tune", "--profile", "smoke", "--dataset", "svhn"], "unknown data set 'svhn'"),
    (["tune", "--profile", "smoke", "--candidates", "paper", "lr9"], "unknown candidate(s) 'lr9'"),
    (["reproduce", "--profile", "smoke", "--seeds", "0", "-1"], "seeds must be >= 0"),
    (["tune", "--profile", "smoke", "--seed", "-1"], "seeds must be >= 0"),
    (["data", "prepare", "--sets", "svhn"], "unknown data set 'svhn'"),
    (["measure", "--profile", "full", "--datasets", "svhn"], "unknown data set 'svhn'"),
    (["measure", "--seeds", "-2"], "seeds must be >= 0"),
])
def test_bad_arguments_end_with_one_line_before_any_work(no_work, capsys, argv, expected):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err
    assert "choose" in err or "must be" in err


def test_a_missing_data_set_says_where_to_get_it(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("SEPDTD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SEPDTD_DATA_MIRROR", str(empty))
    monkeypatch.setenv("SEPDTD_TORCHVISION_ROOT", str(tmp_path / "tv"))
    monkeypatch.setenv("SEPDTD_OFFLINE", "1")
    assert cli.main(["data", "prepare", "--sets", "mnist"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "SEPDTD_DATA_MIRROR" in err


def test_other_errors_keep_their_traceback(monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("an internal error, not the user's")

    monkeypatch.setattr(experiments, "reproduce", bug)
    with pytest.raises(ValueError, match="internal"):
        cli.main(["reproduce", "--profile", "smoke", "--datasets", "mnist"])


def test_traceback_on_request(no_work, monkeypatch):
    monkeypatch.setenv("SEPDTD_TRACEBACK", "1")
    with pytest.raises(ValueError, match="unknown data set"):
        cli.main(["reproduce", "--profile", "smoke", "--datasets", "svhn"])


def test_results_dir_reaches_beyond_and_tune(monkeypatch, tmp_path, capsys):
    seen = {}
    monkeypatch.setattr(beyond, "reproduce", lambda profile, **kw: seen.setdefault("beyond", kw) and [])
    monkeypatch.setattr(tuning, "search", lambda *a, **kw: seen.setdefault("tune", kw) and [])
    assert cli.main(["beyond", "--profile", "smoke", "--results-dir", str(tmp_path)]) == 0
    assert cli.main(["tune", "--profile", "smoke", "--results-dir", str(tmp_path)]) == 0
    assert seen["beyond"]["results_dir"] == str(tmp_path) and seen["tune"]["results_dir"] == str(tmp_path)


def test_show_markdown_prints_plain_text_outside_ipython(capsys):
    book.show_markdown("**Table 2**, as text")
    assert capsys.readouterr().out == "**Table 2**, as text\n"
