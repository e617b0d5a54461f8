"""The committed full profile: its networks are intact and within budget, its results are current, and
staleness follows what the code computes, not its text."""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sepdtd import beyond, experiments, training
from sepdtd.pipeline import store

REPO = Path(__file__).resolve().parent.parent
FULL = REPO / "results" / "full"


def _kept() -> list[dict]:
    """The units of results/full whose networks are kept (the tests below need one at least)."""
    if not list((FULL / "train").glob("*/seed*.json")):
        pytest.skip("no unit of results/full keeps its networks yet (no train records)")
    kept = [u for u in experiments.load_results(FULL) if u["networks_kept"]]
    assert kept, "results/full has train records but no complete unit: run python -m sepdtd measure --profile full"
    return kept


def test_every_result_of_a_kept_unit_names_the_digest_of_a_kept_network():
    manifest = store.read_manifest(FULL)
    for u in _kept():
        assert [s["lam"] for s in u["settings"]] == [0.0, *experiments.PROFILES["full"].lams], u["dataset"]
        for s in u["settings"]:
            net = s["network"]
            assert manifest[net["file"]]["sha256"] == net["sha256"], (u["dataset"], u["seed"], s["lam"])


def test_every_kept_network_is_intact_and_within_budget():
    _kept()
    manifest = store.read_manifest(FULL)
    assert manifest
    total = 0
    for rel, e in manifest.items():
        path = FULL / rel
        assert path.stat().st_size == e["bytes"] <= store.MAX_NETWORK_BYTES, rel
        assert store.sha256_file(path) == e["sha256"], f"{rel} does not match the manifest"
        total += e["bytes"]
    assert total <= store.MAX_PROFILE_BYTES
    files = {p.relative_to(FULL).as_posix() for p in (FULL / "networks").rglob("*.safetensors")}
    assert files == set(manifest), "network files and the manifest disagree"
    for path in (FULL / "train").glob("*/seed*.json"):
        for tag, e in store.read_record(path)["networks"].items():
            assert manifest[e["file"]]["sha256"] == e["sha256"], f"{path.name} {tag}"


def test_rounding_to_float16_changes_accuracy_by_at_most_0001():
    _kept()
    entries = [e for p in (FULL / "train").glob("*/seed*.json") for e in store.read_record(p)["networks"].values()]
    assert entries
    for e in entries:
        r = e["rounding"]
        assert abs(r["accuracy_float32"] - r["accuracy_float16"]) <= 0.001, e["file"]
        assert r["n_test"] == 10_000


def test_committed_results_are_current_or_a_known_change():
    """A committed result the code would now compute otherwise must be re-measured (or retrained), or listed
    with its reason in results/full/known-changes.json."""
    units = experiments.load_results(FULL) + beyond.load_results("full")
    assert units
    unexplained = [(u["dataset"], u["seed"], r["text"]) for u in units for r in u["stale"] if not r.get("known")]
    assert unexplained == []


def test_a_kept_network_loads_on_a_fresh_clone_and_reproduces_its_accuracy(tmp_path, monkeypatch):
    from sepdtd import data

    monkeypatch.setenv("SEPDTD_CACHE", str(tmp_path / "cache"))                  # an empty cache
    import torch

    for u in _kept():
        (stored,) = [s for s in u["settings"] if s["lam"] == 1.0]
        net = experiments.load_model("full", u["dataset"], 1.0, seed=u["seed"])
        ds = data.load(u["dataset"])
        _, acc = training.evaluate(net, torch.as_tensor(ds.x_test), torch.as_tensor(ds.y_test).long(),
                                   device="cpu")
        assert abs(acc - stored["accuracy"]) <= 0.001, (u["dataset"], u["seed"])


# ------------------------------------------------------------------------- staleness by behaviour
def _report(package: Path) -> list[dict]:
    """``python -m sepdtd.report results/full --json`` run with the package at ``package``."""
    env = {**os.environ, "PYTHONPATH": str(package)}
    out = subprocess.run([sys.executable, "-m", "sepdtd.report", str(FULL), "--json"], capture_output=True,
                         text=True, env=env, cwd=package, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "sepdtd", tmp_path / "sepdtd", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(root: Path, module: str, old: str, new: str) -> None:
    path = root / "sepdtd" / module
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found once in {module}"
    path.write_text(text.replace(old, new))


def test_the_report_marks_no_committed_row_stale():
    rows = _report(REPO)
    assert rows and not any(r["stale"] for r in rows)


def test_the_report_shows_the_kept_units():
    kept = {(u["dataset"], u["seed"]) for u in _kept()}
    rows = _report(REPO)
    assert {(r["dataset"], s) for r in rows for s in r["seeds"]} >= kept


def test_editing_every_docstring_and_comment_stales_nothing(tmp_path):
    root = _copy(tmp_path)
    for path in (root / "sepdtd").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body \
                    and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
                    and isinstance(node.body[0].value.value, str):
                node.body[0].value.value += "\n\nEdited."
        path.write_text(ast.unparse(tree))       # also drops every comment and reformats the code
    assert "Edited." in (root / "sepdtd" / "metrics.py").read_text()
    rows = _report(root)
    assert rows and not any(r["stale"] for r in rows)


def _with_kept(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The report's rows of the data sets with a kept unit (a row may also hold legacy seeds), and the rest."""
    names = {u["dataset"] for u in _kept()}
    return [r for r in rows if r["dataset"] in names], [r for r in rows if r["dataset"] not in names]


def test_changing_one_metric_stales_exactly_its_fields(tmp_path):
    root = _copy(tmp_path)
    _edit(root, "metrics.py", "    c = (a * b).sum(dim=1) / (", "    c = 0.99 * (a * b).sum(dim=1) / (")
    kept, others = _with_kept(_report(root))
    assert kept and all(r["stale"] for r in kept) and not any(r["stale"] for r in others)
    fields = {reason.split("'")[1] for r in kept for reason in r["stale_reasons"]}
    assert fields == {"cosine", "abs_cosine", "sc_cosine"}


def test_changing_the_stacked_fine_tunes_stales_the_fine_tuned_networks_only(tmp_path):
    root = _copy(tmp_path)
    _edit(root, "training.py", "            obj = obj + self.lam_t * self._penalty()\n",
          "            obj = obj + 2 * self.lam_t * self._penalty()\n")
    rows, _ = _with_kept(_report(root))
    assert rows and all(r["stale"] == (r["lam"] > 0) for r in rows)
    assert all("training code 'penalty' changed" in reason for r in rows for reason in r["stale_reasons"])


def test_changing_the_training_loop_stales_every_network_it_trained(tmp_path):
    root = _copy(tmp_path)
    _edit(root, "training.py", "dropout_seed = (seed * 0x9E3779B1 + 0x7F4A7C15) % 2**63",
          "dropout_seed = (seed * 0x9E3779B1 + 0x7F4A7C17) % 2**63")
    rows, others = _with_kept(_report(root))
    assert rows and all(r["stale"] for r in rows) and not any(r["stale"] for r in others)
    assert all(any("'loop' changed" in reason for reason in r["stale_reasons"]) for r in rows)
