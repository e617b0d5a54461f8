"""Tests of the Section 5.1 pipeline (sepdtd.experiments): configs, caching, resume, errors, smoke run."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import warnings

import pytest
import torch

from sepdtd import data, experiments, metrics, report, training
from sepdtd.experiments import Config, Stage


# ------------------------------------------------------------------------------------------ helpers
def tiny_config(**kw) -> Config:
    """A unit small enough to train in about a second on synthetic data."""
    base = dict(profile="test", dataset="mnist", seed=0, n_train=96, n_val=48, n_test=40, n_eval=12,
                pretrain=Stage(lr=1e-3, batch_size=32, max_epochs=2),
                finetune=Stage(lr=1e-4, batch_size=32, max_epochs=1), eval_batch_size=16)
    base.update(kw)
    return Config(**base)


@pytest.fixture
def one_thread():
    """Deterministic CPU arithmetic across processes: one thread here and in the workers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def counting_fit(monkeypatch, fail_on: int | None = None) -> list[dict]:
    """Wrap training.fit and fit_stacked: record each call's λ (a list for a stack) and checkpoint;
    raise inside call number ``fail_on``."""
    calls: list[dict] = []
    real_fit, real_stacked = training.fit, training.fit_stacked

    def record(lam, kw):
        calls.append({"lam": lam, "checkpoint": str(kw["checkpoint"])})
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt("simulated interruption")

    def fit(*args, **kw):
        record(kw["lam"], kw)
        return real_fit(*args, **kw)

    def fit_stacked(nets, lams, *args, **kw):
        record(list(lams), kw)
        return real_stacked(nets, lams, *args, **kw)

    monkeypatch.setattr(training, "fit", fit)
    monkeypatch.setattr(training, "fit_stacked", fit_stacked)
    return calls


def forbid(monkeypatch, module, name):
    def boom(*a, **k):
        raise AssertionError(f"{module.__name__}.{name} must not be called")

    monkeypatch.setattr(module, name, boom)


def valid_result(config: Config) -> dict:
    """A results dict that claims ``config`` (the numbers are made up)."""
    setting = {"lam": 0.0, "accuracy": 0.5, "test_loss": 1.0, "epochs": 1, "best_epoch": 1, "wall_s": 1.0,
               "diffusion": {c: 0.1 for c in metrics.CONVENTIONS}, "cosine": 0.9, "inblock": [0.1, 0.1],
               "n_eval": 12, "history": {}}
    return {"schema": experiments.SCHEMA, "profile": config.profile, "dataset": config.dataset,
            "seed": config.seed, "config": config.as_dict(), "config_hash": experiments.config_hash(config),
            "code_hash": experiments.code_hash(), "provenance": {"t_start": 0.0, "t_end": 1.0},
            "run_wall_s": 1.0,
            "settings": [setting] + [dict(setting, lam=lam) for lam in config.lams]}


# ---------------------------------------------------------------------------------- config and hash
def test_config_hash_is_stable_and_canonical():
    c = experiments.make_config("smoke", "mnist", 0)
    h = experiments.config_hash(c)
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    assert experiments.config_hash(experiments.make_config("smoke", "mnist", 0)) == h
    assert experiments.config_hash(Config.from_dict(c.as_dict())) == h          # JSON round trip
    assert experiments.config_hash(experiments.make_config("smoke", "MNIST", 0)) == h
    ints = tiny_config(lams=(1, 5))
    assert experiments.config_hash(ints) == experiments.config_hash(tiny_config(lams=(1.0, 5.0)))
    # the same in a fresh interpreter (no dependence on hash randomisation or process state)
    out = subprocess.run([sys.executable, "-c", "from sepdtd import experiments as e; "
                          "print(e.config_hash(e.make_config('smoke', 'mnist', 0)))"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == h


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"dataset": "fashion_mnist"}, {"lams": (0.1, 0.5)}, {"n_train": 97}, {"n_eval": 13},
    {"augment": True}, {"clamp_bias": False}, {"val_fraction": 0.2}, {"profile": "other"},
    {"finetune": Stage(lr=1e-3, batch_size=32, max_epochs=1)},
    {"pretrain": Stage(lr=1e-3, batch_size=32, max_epochs=2, patience=4)},
])
def test_config_hash_changes_with_every_setting(change):
    assert experiments.config_hash(tiny_config(**change)) != experiments.config_hash(tiny_config())


def test_scheduling_fields_do_not_change_the_hash():
    h = experiments.config_hash(tiny_config())
    assert experiments.config_hash(tiny_config(eval_batch_size=7)) == h


def test_profiles():
    assert set(experiments.PROFILES) == {"smoke", "quick", "full"}
    full = experiments.PROFILES["full"]
    assert (full.n_train, full.n_val, full.n_test, full.n_eval) == (None, None, None, None)
    assert full.seeds == (0, 1, 2) and full.lams == (0.1, 0.5, 1.0, 5.0)
    assert full.pretrain.patience == full.finetune.patience == 3 and full.pretrain.max_epochs >= 100
    assert full.finetune.lr < full.pretrain.lr
    for name in ("smoke", "quick"):
        p = experiments.PROFILES[name]
        assert p.n_train and p.n_eval and name.upper() in p.description
        assert p.lams == experiments.LAMBDAS
    assert experiments.make_config("quick", "cifar10").augment
    assert not experiments.make_config("quick", "mnist").augment


# --------------------------------------------------------------------------------------- errors
def test_errors():
    with pytest.raises(ValueError, match="unknown data set"):
        experiments.make_config("smoke", "svhn")
    with pytest.raises(ValueError, match="unknown data set"):
        tiny_config(dataset="imagenet")
    with pytest.raises(ValueError, match="unknown profile"):
        experiments.make_config("huge", "mnist")
    with pytest.raises(ValueError, match=">= 0"):
        tiny_config(lams=(0.1, -0.5))
    with pytest.raises(ValueError, match="baseline"):
        tiny_config(lams=(0.0, 0.5))
    with pytest.raises(ValueError, match="duplicate"):
        tiny_config(lams=(0.5, 0.5))
    with pytest.raises(ValueError, match="finite"):
        tiny_config(lams=(float("nan"),))
    with pytest.raises(ValueError, match="lr"):
        Stage(lr=-1.0, batch_size=32, max_epochs=1)
    with pytest.raises(ValueError, match="seed"):
        tiny_config(seed=-1)
    with pytest.raises(ValueError, match="unknown profile"):
        experiments.reproduce("huge")
    with pytest.raises(ValueError, match="jobs"):
        experiments.reproduce("smoke", jobs=0)
    with pytest.raises(ValueError, match="unknown data set"):
        experiments.reproduce("smoke", datasets=["svhn"])
    with pytest.raises(TypeError, match="Config"):
        experiments.run({"profile": "smoke"})
    with pytest.raises(ValueError, match="not one of"):
        experiments.load_model("smoke", "mnist", 0.3)


# ------------------------------------------------------------------------------ caching and files
def test_results_of_another_config_are_refused(monkeypatch, dirs):
    forbid(monkeypatch, training, "fit")
    forbid(monkeypatch, data, "load")
    cfg = tiny_config()
    path = experiments.result_path(cfg, dirs["results_dir"])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(valid_result(tiny_config(seed=1))))        # a file of another config
    with pytest.raises(ValueError, match="another configuration"):
        experiments.run(cfg, device="cpu", progress=False, **dirs)
    forged = valid_result(tiny_config(seed=1))
    forged["config_hash"] = experiments.config_hash(cfg)                   # claims ours, holds another
    path.write_text(json.dumps(forged))
    with pytest.raises(ValueError, match="another configuration"):
        experiments.run(cfg, device="cpu", progress=False, **dirs)


def test_existing_results_are_loaded_not_recomputed(monkeypatch, dirs):
    forbid(monkeypatch, training, "fit")
    forbid(monkeypatch, data, "load")
    cfg = tiny_config()
    res = valid_result(cfg)
    path = experiments.result_path(cfg, dirs["results_dir"])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(res))
    assert experiments.run(cfg, device="cpu", progress=False, **dirs) == res
    smoke = experiments.make_config("smoke", "fashion_mnist", 2)
    res = valid_result(smoke)
    path = experiments.result_path(smoke, dirs["results_dir"])
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(res))
    assert experiments.ensure_run("smoke", "fashion-mnist", 2, "cpu", **dirs) == res


def test_load_results_skips_temporary_and_foreign_files(tmp_path):
    cfg = tiny_config()
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "seed0-x.json").write_text(json.dumps(valid_result(cfg)))
    (tmp_path / "mnist" / "seed0-x.json.tmp-123").write_text("{half")
    (tmp_path / "mnist" / "seed1.json.tmp-9abc").write_text("{half")
    (tmp_path / "notes.json").write_text(json.dumps({"not": "a result"}))
    got = experiments.load_results(tmp_path)
    assert len(got) == 1 and got[0]["config_hash"] == experiments.config_hash(cfg)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        experiments.load_results(tmp_path)
    with pytest.raises(FileNotFoundError):
        experiments.load_results(tmp_path / "missing")


def test_load_models_without_checkpoints_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m sepdtd reproduce --profile smoke --datasets mnist"):
        experiments.load_models("smoke", "mnist", results_dir=tmp_path / "r", checkpoints_dir=tmp_path / "c")


# ----------------------------------------------------------------------------------------- resume
def test_resume_after_interruption(monkeypatch, synthetic, fixed_code, dirs):
    cfg = tiny_config()
    lams = list(cfg.lams)
    calls = counting_fit(monkeypatch, fail_on=2)                       # dies as the fine-tunes start
    with pytest.raises(KeyboardInterrupt):
        experiments.run(cfg, device="cpu", progress=False, **dirs)
    assert [c["lam"] for c in calls] == [0.0, lams]
    assert not experiments.result_path(cfg, dirs["results_dir"]).exists()    # nothing half-written
    ckdir = experiments.checkpoint_dir(cfg, dirs["checkpoints_dir"])
    partial = json.loads((ckdir / "partial.json").read_text())
    assert sorted(partial["settings"]) == ["baseline"]

    calls = counting_fit(monkeypatch)
    res = experiments.run(cfg, device="cpu", progress=False, **dirs)
    assert [c["lam"] for c in calls] == [lams]                          # the baseline is not retrained
    assert calls[0]["checkpoint"] == str(ckdir / "finetunes.pt")
    assert [s["lam"] for s in res["settings"]] == [0.0, *lams]
    assert res["settings"][0] == partial["settings"]["baseline"]
    assert res["provenance"]["resumed_settings"] == ["baseline"]
    assert experiments.result_path(cfg, dirs["results_dir"]).exists()

    calls = counting_fit(monkeypatch)
    assert experiments.run(cfg, device="cpu", progress=False, **dirs) == json.loads(
        experiments.result_path(cfg, dirs["results_dir"]).read_text())
    assert calls == []


def test_interrupted_measurements_resume_from_the_finished_stack(monkeypatch, synthetic, fixed_code, tmp_path):
    cfg = tiny_config(lams=(0.1, 0.5, 5.0))
    ref = experiments.run(cfg, device="cpu", progress=False, results_dir=tmp_path / "r0",
                          checkpoints_dir=tmp_path / "c0")
    real, n = experiments._measure, []

    def measure(*a, **k):
        n.append(1)
        if len(n) == 3:                                                  # after baseline and λ = 0.1
            raise KeyboardInterrupt("simulated interruption")
        return real(*a, **k)

    monkeypatch.setattr(experiments, "_measure", measure)
    dirs = {"results_dir": tmp_path / "r1", "checkpoints_dir": tmp_path / "c1"}
    with pytest.raises(KeyboardInterrupt):
        experiments.run(cfg, device="cpu", progress=False, **dirs)
    monkeypatch.setattr(experiments, "_measure", real)
    res = experiments.run(cfg, device="cpu", progress=False, **dirs)
    assert res["provenance"]["resumed_settings"] == ["baseline", "lam0.1"]
    for a, b in zip(ref["settings"], res["settings"]):
        assert json.dumps(_numbers(a), sort_keys=True) == json.dumps(_numbers(b), sort_keys=True)
    # the finished stack was loaded, not trained again
    assert all(s["resumed_from"] == s["epochs"] for s in res["settings"][2:])


def test_partial_state_of_other_code_is_not_reused(monkeypatch, synthetic, dirs):
    cfg = tiny_config(lams=(0.5,))
    monkeypatch.setattr(experiments, "code_hash", lambda: "old")
    calls = counting_fit(monkeypatch, fail_on=2)
    with pytest.raises(KeyboardInterrupt):
        experiments.run(cfg, device="cpu", progress=False, **dirs)
    monkeypatch.setattr(experiments, "code_hash", lambda: "new")
    calls = counting_fit(monkeypatch)
    with pytest.warns(RuntimeWarning, match="other code"):
        res = experiments.run(cfg, device="cpu", progress=False, **dirs)
    assert [c["lam"] for c in calls] == [0.0, [0.5]] and res["code_hash"] == "new"


def test_code_hash():
    h = experiments.code_hash()
    assert re.fullmatch(r"[0-9a-f]{12}", h)
    assert set(experiments.SOURCES) >= {"training", "metrics", "dtd", "experiments", "data", "models"}


def _numbers(setting: dict) -> dict:
    keep = ("lam", "seed", "accuracy", "test_loss", "epochs", "best_epoch", "diffusion", "cosine", "inblock",
            "n_eval", "n_test", "history")
    return {k: setting[k] for k in keep}


def test_finetunes_are_one_stack_seeded_apart_from_the_baseline(synthetic, fixed_code, monkeypatch, tmp_path):
    calls = []
    real = training.fit_stacked

    def spy(nets, lams, *a, **kw):
        calls.append((list(lams), kw["seed"]))
        return real(nets, lams, *a, **kw)

    monkeypatch.setattr(training, "fit_stacked", spy)
    res = experiments._compute(tiny_config(lams=(0.5, 5.0)), device="cpu", results_path=None, progress=False,
                               checkpoints_dir=tmp_path)
    assert calls == [([0.5, 5.0], experiments.finetune_seed(0))]
    seeds = [s["seed"] for s in res["settings"]]
    assert seeds[0] == 0 and seeds[1] == seeds[2] == experiments.finetune_seed(0) != 0
    assert res["provenance"]["finetunes"] == "stacked"
    # the fine-tunes start from the baseline and move away from it, each on its own
    assert [s["lam"] for s in res["settings"]] == [0.0, 0.5, 5.0]
    assert res["settings"][1]["history"]["val_loss"] != res["settings"][2]["history"]["val_loss"]


# -------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_smoke_profile_end_to_end(monkeypatch, fixed_code, dirs):
    try:
        data.load("mnist")
    except data.DataNotFoundError as e:  # pragma: no cover - only without any data source
        pytest.skip(f"MNIST unavailable: {e}")
    results = experiments.reproduce("smoke", datasets=["mnist"], device="cpu", progress=False, **dirs)
    assert len(results) == 1
    res = results[0]
    cfg = experiments.make_config("smoke", "mnist", 0)
    assert res["config_hash"] == experiments.config_hash(cfg) and res["code_hash"] == experiments.code_hash()
    assert [s["lam"] for s in res["settings"]] == [0.0, 0.1, 0.5, 1.0, 5.0]
    for key in ("commit", "versions", "device", "started", "finished", "host", "t_start", "t_end"):
        assert key in res["provenance"]
    assert res["run_wall_s"] > 0
    for s in res["settings"]:
        assert 0.0 <= s["accuracy"] <= 1.0 and s["n_eval"] == 128 and s["n_test"] == 256
        assert set(s["diffusion"]) == set(metrics.CONVENTIONS)
        assert all(math.isfinite(v) and v >= 0 for v in s["diffusion"].values())
        assert len(s["inblock"]) == 2 and s["epochs"] == 1 and s["wall_s"] > 0
    assert experiments.load_results(dirs["results_dir"]) == [json.loads(json.dumps(res))]

    # the saved weights reproduce the recorded test accuracy (oracle: recomputed independently)
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # weights vouched for by partial.json: no warning
        nets = experiments.load_models("smoke", "mnist", device="cpu", **dirs)
    assert sorted(nets) == [0.0, 0.1, 0.5, 1.0, 5.0] and not nets[0.0].training
    arrays = experiments._prepare_arrays(cfg)
    for s in res["settings"]:
        _, acc = training.evaluate(nets[s["lam"]], arrays["x_test"], arrays["y_test"], device="cpu")
        assert acc == pytest.approx(s["accuracy"])

    # a second call loads, never recomputes
    forbid(monkeypatch, training, "fit")
    assert experiments.reproduce("smoke", datasets=["mnist"], device="cpu", progress=False, **dirs) == results
    assert experiments.ensure_run("smoke", "mnist", 0, "cpu", **dirs) == results[0]
    table = report.format_tables(report.rows(results))
    assert "Table 2" in table and "Table 3" in table and "MNIST" in table

    # a damaged checkpoint is named, with what to do
    ck = experiments.checkpoint_dir(cfg, dirs["checkpoints_dir"]) / "lam0.1.state.pt"
    ck.write_bytes(ck.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"lam0\.1\.state\.pt is damaged.*with_models=True"):
        experiments.load_model("smoke", "mnist", 0.1, device="cpu", **dirs)
    # weights the folder's partial.json does not vouch for: load_model warns; ensure_run(with_models=True)
    # resumes an interrupted run of this code, and keeps the weights of other code (they belong to its results)
    ckdir = experiments.checkpoint_dir(cfg, dirs["checkpoints_dir"])
    rebuilt = []
    monkeypatch.setattr(experiments, "_compute", lambda config, **k: rebuilt.append(config))
    state = json.loads((ckdir / "partial.json").read_text())
    state["settings"] = {"baseline": state["settings"]["baseline"]}          # an interrupted rebuild
    (ckdir / "partial.json").write_text(json.dumps(state))
    with pytest.warns(RuntimeWarning, match=r"lam0\.5\.state\.pt are not listed as finished"):
        experiments.load_model("smoke", "mnist", 0.5, device="cpu", **dirs)
    with pytest.warns(RuntimeWarning, match="a run of this code into it was interrupted"):
        experiments.ensure_run("smoke", "mnist", 0, "cpu", with_models=True, **dirs)
    assert rebuilt == [cfg]
    monkeypatch.setattr(experiments, "code_hash", lambda: "another0code")
    with pytest.warns(RuntimeWarning, match=r"baseline\.state\.pt are trained by other code"):
        experiments.load_model("smoke", "mnist", 0.0, device="cpu", **dirs)
    with pytest.warns(RuntimeWarning, match="it is stale"):
        experiments.ensure_run("smoke", "mnist", 0, "cpu", with_models=True, **dirs)
    assert rebuilt == [cfg]                                                    # not rebuilt again


@pytest.mark.slow
def test_reproduce_with_jobs_runs_units_in_processes(dirs):
    """jobs > 1: units in spawned processes; here their results exist, so the workers only load them."""
    expected = []
    for seed in (0, 1):
        cfg = experiments.make_config("smoke", "mnist", seed)
        res = valid_result(cfg)
        path = experiments.result_path(cfg, dirs["results_dir"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res))
        expected.append(res)
    got = experiments.reproduce("smoke", datasets=["mnist"], seeds=[0, 1], device="cpu", jobs=2,
                                progress=False, **dirs)
    assert got == expected


def test_results_of_the_earlier_layout_are_still_read(synthetic, fixed_code, dirs):
    """Files written before fit_stacked carry the scheduling flag parallel_finetune: same configuration."""
    cfg = tiny_config(lams=(0.5,))
    res = experiments.run(cfg, device="cpu", progress=False, **dirs)
    path = experiments.result_path(cfg, dirs["results_dir"])
    res["config"]["parallel_finetune"] = True
    path.write_text(json.dumps(res))
    assert experiments.run(cfg, device="cpu", progress=False, **dirs)["config"]["parallel_finetune"] is True
    assert Config.from_dict(res["config"]) == cfg
