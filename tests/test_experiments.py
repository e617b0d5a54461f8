"""The protocol of Section 5.1 (sepdtd.experiments) over the pipeline: jobs, runs, views, kept networks."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from sepdtd import beyond, data, experiments, metrics, report, training
from sepdtd.pipeline import measure, store
from sepdtd.pipeline.config import finetune_seed


def forbid(monkeypatch, module, name):
    def boom(*a, **k):
        raise AssertionError(f"{module.__name__}.{name} must not be called")

    monkeypatch.setattr(module, name, boom)


# --------------------------------------------------------------------------------------- the plan
def test_the_full_profile_is_the_papers_protocol():
    base, fine = experiments.jobs("full", "cifar10", 2)
    assert base.tags == ("baseline",) and fine.tags == ("lam0.1", "lam0.5", "lam1.0", "lam5.0")
    b, f = base.config, fine.config
    assert (b.n_train, b.n_val, b.augment, b.stage.patience, b.stage.lr) == (None, None, True, 3, 1e-3)
    assert f.start == f"baseline:{b.key()}" and f.stage.lr == 1e-4 and f.lams == experiments.LAMBDAS
    assert f.train_seed == finetune_seed(2) and b.train_seed == 2
    m = experiments.measurements("full", "mnist", 1)
    assert (m.kind, m.n_test, m.n_eval, m.seed) == ("paper", None, None, 1)
    assert not experiments.jobs("full", "mnist", 0)[0].config.augment


@pytest.mark.parametrize("call, message", [
    (lambda: experiments.jobs("huge", "mnist", 0), "unknown profile"),
    (lambda: experiments.jobs("full", "svhn", 0), "unknown data set"),
    (lambda: experiments.jobs("full", "mnist", -1), "seed"),
    (lambda: experiments.load_model("full", "mnist", 0.3), "not one of profile"),
    (lambda: experiments.reproduce("smoke", jobs=0), "jobs must be an int"),
    (lambda: experiments.reproduce("smoke", datasets=["mnist", "svhn"]), "unknown data set"),
])
def test_errors_before_any_work(monkeypatch, call, message):
    forbid(monkeypatch, training, "fit")
    with pytest.raises(ValueError, match=message):
        call()


def test_every_network_of_the_full_profile_fits_the_budget(tmp_path):
    """Each kept network at most 3 MB, the whole full profile (3 data sets x 3 seeds, chapters 9-10 and the
    sign-aware study at their seeds) at most 200 MB: checked on the networks the plans build, written as
    the store writes them."""
    from sepdtd import mechanism

    seeds = {"paper": len(experiments.PROFILES["full"].seeds), "beyond": len(beyond.PROFILES["full"].seeds),
             "mechanism": len(mechanism.SEEDS["full"])}
    total = 0
    for ds in experiments.PROFILES["full"].datasets:
        plan = {}
        for kind, js in (("beyond", beyond.jobs("full", ds, 0)), ("mechanism", mechanism.jobs("full", ds, 0))):
            for job in js:
                plan.setdefault(job.tags, ("paper" if job.tags[0] in ("baseline", "lam0.1") else kind, job))
        for tags, (kind, job) in plan.items():
            info = store.save_network(tmp_path, f"{ds}/{tags[0]}.safetensors", job.config.build())
            assert info["bytes"] <= store.MAX_NETWORK_BYTES, (ds, tags, info["bytes"])
            total += info["bytes"] * len(tags) * seeds[kind]
    assert total <= store.MAX_PROFILE_BYTES, total


# --------------------------------------------------------------------------------------------- runs
def test_a_unit_is_trained_once_measured_and_read_back(synthetic, tiny, dirs, monkeypatch):
    res = experiments.run("tiny", "mnist", 0, device="cpu", progress=False, **dirs)
    assert [s["lam"] for s in res["settings"]] == [0.0, 0.5, 5.0]
    assert res["networks_kept"] and res["stale"] == [] and res["run_wall_s"] > 0
    for key in ("commit", "device", "t_start", "t_end", "measure"):
        assert key in res["provenance"]
    for s in res["settings"]:
        assert 0 <= s["accuracy"] <= 1 and s["n_test"] == 40 and s["n_eval"] == 12
        assert set(s["diffusion"]) == set(metrics.CONVENTIONS) and len(s["inblock"]) == 2
        assert len(s["logit_nonpositive"]) == 2 and 0 <= s["abs_cosine"] <= 1 and abs(s["cosine"]) <= s["abs_cosine"]
        assert s["network"]["file"] == f"networks/mnist/seed0/{s['tag']}.safetensors"
        assert s["epochs"] == 2 and len(s["history"]["val_loss"]) == 2
    assert res["settings"][1]["seed"] == finetune_seed(0)
    assert experiments.load_results(dirs["results_dir"]) == [res]
    # the kept networks reproduce the measured accuracy
    imgs = measure.test_images(experiments.measurements("tiny", "mnist"))
    for s in res["settings"]:
        net = experiments.load_model("tiny", "mnist", s["lam"], results_dir=dirs["results_dir"])
        assert not net.training and next(net.parameters()).dtype == torch.float32
        assert training.evaluate(net, imgs["x_test"], imgs["y_test"], device="cpu")[1] == s["accuracy"]
    # a second run trains and measures nothing
    forbid(monkeypatch, training, "fit")
    forbid(monkeypatch, training, "fit_stacked")
    forbid(monkeypatch, measure, "paper_fields")
    assert experiments.run("tiny", "mnist", 0, device="cpu", progress=False, **dirs) == res
    assert experiments.ensure_run("tiny", "mnist", 0, "cpu", progress=False, **dirs) == res
    assert "Table 2" in report.format_tables(report.rows([res]))


def test_a_unit_that_is_not_measured_is_not_read(synthetic, tiny, dirs):
    from sepdtd.pipeline import train

    root = dirs["results_dir"]
    train.ensure(root, "mnist", 0, experiments.jobs("tiny", "mnist", 0), device="cpu", progress=False,
                 checkpoints_dir=dirs["checkpoints_dir"], profile="tiny")
    assert experiments.unit("tiny", "mnist", 0, results_dir=root) is None
    with pytest.warns(RuntimeWarning, match="is not complete"):
        assert experiments.load_results(root, profile="tiny") == []


def test_a_missing_network_says_how_to_train_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"reproduce --profile smoke --datasets mnist --seeds 0"):
        experiments.load_model("smoke", "mnist", 0.0, results_dir=tmp_path)


def test_legacy_results_are_read_and_marked(tmp_path):
    legacy = tmp_path / "legacy" / "cifar10"
    legacy.mkdir(parents=True)
    setting = {"lam": 0.0, "accuracy": 0.79, "diffusion": {c: 0.1 for c in metrics.CONVENTIONS}, "cosine": 0.9}
    (legacy / "seed0-abc.json").write_text(json.dumps({"schema": 1, "profile": "full", "dataset": "cifar10",
                                                       "seed": 0, "settings": [setting]}))
    (res,) = experiments.load_results(tmp_path)
    assert res["networks_kept"] is False and res["stale"] == []
    (row,) = report.rows([res])
    assert row["networks_kept"] is False and row["stale"] is False
    (legacy / "seed1-abc.json").write_text(json.dumps({"schema": 1, "settings": [{"lam": 0.0}]}))
    with pytest.raises(store.RecordError, match=r"seed1-abc.json: a setting lacks"):
        experiments.load_results(tmp_path)


@pytest.mark.slow
def test_reproduce_with_jobs_runs_units_in_processes(dirs):
    try:
        data.load("mnist")
    except data.DataNotFoundError as e:  # pragma: no cover - only without any data source
        pytest.skip(f"MNIST unavailable: {e}")
    got = experiments.reproduce("smoke", datasets=["mnist"], seeds=[0, 1], device="cpu", jobs=2, progress=False,
                                **dirs)
    assert [(r["dataset"], r["seed"]) for r in got] == [("mnist", 0), ("mnist", 1)]
    assert all(r["networks_kept"] and not r["stale"] for r in got)
    # the same units in this process load what the workers kept
    assert experiments.reproduce("smoke", datasets=["mnist"], seeds=[0, 1], device="cpu", progress=False,
                                 **dirs) == got


@pytest.mark.slow
def test_a_copied_profile_is_measured_again_to_the_same_numbers(synthetic, tiny, dirs, tmp_path):
    """The measure stage on another folder (a fresh clone) gives the stored numbers again."""
    from sepdtd import remeasure

    res = experiments.run("tiny", "mnist", 0, device="cpu", progress=False, **dirs)
    copy = tmp_path / "copy"
    shutil.copytree(dirs["results_dir"], copy)
    out = remeasure.run("tiny", results_dir=copy, device="cpu", force=True, progress=False)
    # the three networks, each with the "paper" measurement and the "beyond" one of seed 0 (chapters 9-10)
    assert sorted(k for _, _, k, _ in out["networks"]) == ["beyond"] * 3 + ["paper"] * 3 and out["current"] == 0
    again = experiments.unit("tiny", "mnist", 0, results_dir=copy)
    for a, b in zip(res["settings"], again["settings"]):
        for key in ("accuracy", "test_loss", "cosine", "abs_cosine", "logit_nonpositive", "inblock"):
            assert a[key] == b[key]
        assert all(math.isclose(a["diffusion"][c], b["diffusion"][c], rel_tol=1e-12) for c in a["diffusion"])
