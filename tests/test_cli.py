"""The command line: a user's mistake ends with one ``error:`` line and exit status 2, before any training."""
from __future__ import annotations

import pytest
import torch

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
    (["reproduce", "--profile", "smoke", "--jobs", "0"], "--jobs must be >= 1"),
    (["reproduce", "--profile", "smoke", "--device", "foo"], "--device: unknown device 'foo': use auto, cpu, cuda"),
    (["beyond", "--profile", "smoke", "--device", "meta"], "--device: unknown device 'meta'"),
    (["measure", "--device", "cuda:x"], "--device: unknown device 'cuda:x'"),
    (["tune", "--profile", "smoke", "--lams", "-1"], "--lams: every λ must be a finite number >= 0, got -1"),
    (["tune", "--profile", "smoke", "--lams", "nan"], "--lams: every λ must be a finite number >= 0, got nan"),
    (["tune", "--profile", "smoke", "--lams", "0.1", "0.1"], "--lams: each λ once"),
    (["tune", "--profile", "smoke", "--max-epochs", "0"], "--max-epochs must be >= 1"),
    (["reproduce", "--profile", "smoke", "--seeds", str(2**31)], "seeds must be below 2**31"),
    (["tune", "--profile", "smoke", "--seed", str(2**64)], "seeds must be below 2**31"),
    (["beyond", "--profile", "smoke", "--seeds", "99999999999999999999"], "seeds must be below 2**31"),
])
def test_bad_arguments_end_with_one_line_before_any_work(no_work, capsys, argv, expected):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and expected in err and "\n" not in err
    assert "choose" in err or "must be" in err or "use " in err or "each λ once" in err


@pytest.mark.parametrize("command", [["reproduce"], ["beyond"], ["tune"], ["measure"]])
@pytest.mark.parametrize("where", ["a file", "under a file", "unwritable"])
def test_an_unusable_results_dir_is_refused_before_any_work(no_work, capsys, tmp_path, monkeypatch, command, where):
    (tmp_path / "file").write_text("in the way")
    results = {"a file": tmp_path / "file", "under a file": tmp_path / "file" / "results",
               "unwritable": tmp_path / "ro" / "results"}[where]
    if where == "unwritable":  # as root, a permission bit would not stop the write: refuse it at mkstemp
        (tmp_path / "ro").mkdir()
        import tempfile

        real = tempfile.mkstemp

        def read_only(*args, dir=None, **kwargs):
            if dir is not None and str(dir).startswith(str(tmp_path / "ro")):
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    if command == ["measure"] and where == "unwritable":
        results.mkdir()
    assert cli.main([*command, "--profile", "smoke", "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --results-dir {results}") and "\n" not in err, err
    assert ("choose a folder" in err) or (command == ["measure"] and "does not exist" in err), err
    assert not (tmp_path / "ro" / "results" / "networks").exists()


def test_a_damaged_record_or_a_held_lock_is_an_error_line(monkeypatch, capsys, tmp_path):
    from sepdtd.pipeline.store import RecordError
    from sepdtd.utils import LockTimeout

    for exc in (RecordError(f"{tmp_path}/train/mnist/seed0.json: missing key 'networks'"),
                LockTimeout(f"the data cache of mnist is locked by process 1 (lock file {tmp_path}/.mnist.lock)")):
        def fail(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(experiments, "reproduce", fail)
        assert cli.main(["reproduce", "--profile", "smoke", "--results-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {exc}") and str(tmp_path) in err


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


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_refused_before_any_work(no_work, capsys):
    assert cli.main(["reproduce", "--profile", "smoke", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device: device cuda was asked for but CUDA is not available here; use --device cpu")


def test_measuring_a_profile_without_kept_networks_does_nothing_and_says_so(capsys, tmp_path):
    """`make book` runs the measure command first; a fresh clone whose full profile keeps no network yet
    has nothing to measure, and the book goes on with what is committed."""
    (tmp_path / "results").mkdir()
    assert cli.main(["measure", "--profile", "smoke", "--results-dir", str(tmp_path / "results")]) == 0
    assert capsys.readouterr().out.strip() == f"no kept networks under {tmp_path / 'results'}: nothing to measure"
    assert not list((tmp_path / "results").iterdir())


def test_measuring_a_folder_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results folder .*missing: check --results-dir"):
        remeasure.run("smoke", results_dir=tmp_path / "missing", device="cpu", progress=False)
