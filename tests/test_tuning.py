"""Tests of the fine-tuning settings search (sepdtd.tuning): same baseline, same seed, cached, resumable."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from sepdtd import cli, experiments, report, training, tuning
from sepdtd.experiments import Config, Stage


def tiny_config(**kw) -> Config:
    base = dict(profile="test", dataset="mnist", seed=0, n_train=96, n_val=48, n_test=40, n_eval=12,
                pretrain=Stage(lr=1e-3, batch_size=32, max_epochs=2),
                finetune=Stage(lr=1e-4, batch_size=32, max_epochs=2), eval_batch_size=16, lams=(0.5, 5.0))
    base.update(kw)
    return Config(**base)


def spy(monkeypatch) -> list:
    calls = []
    real_fit, real_stacked = training.fit, training.fit_stacked

    def fit(*a, **kw):
        calls.append(("fit", kw["lam"]))
        return real_fit(*a, **kw)

    def fit_stacked(nets, lams, *a, **kw):
        calls.append(("stack", list(lams), kw["lr"], kw["seed"]))
        return real_stacked(nets, lams, *a, **kw)

    monkeypatch.setattr(training, "fit", fit)
    monkeypatch.setattr(training, "fit_stacked", fit_stacked)
    return calls


def test_the_units_own_stage_repeats_the_units_finetunes(monkeypatch, synthetic, fixed_code, dirs):
    unit = tiny_config()
    ref = experiments.run(unit, device="cpu", progress=False, **dirs)
    calls = spy(monkeypatch)
    res = tuning.run(unit, "same", unit.finetune, device="cpu", progress=False, **dirs)
    assert calls == [("stack", [0.5, 5.0], 1e-4, experiments.finetune_seed(0))]    # baseline reused
    assert res["baseline"] == ref["settings"][0]
    for mine, theirs in zip(res["finetunes"], ref["settings"][1:]):
        assert mine["lam"] == theirs["lam"]
        assert mine["accuracy"] == theirs["accuracy"]
        assert mine["history"]["val_loss"] == pytest.approx(theirs["history"]["val_loss"], rel=1e-6)
    assert res["config_hash"] == experiments.config_hash(unit)
    assert res["unit_config_hash"] == experiments.config_hash(unit)


def test_another_stage_starts_from_the_same_baseline_and_differs(monkeypatch, synthetic, fixed_code, dirs):
    unit = tiny_config()
    calls = spy(monkeypatch)
    res = tuning.run(unit, "slow", Stage(lr=1e-6, batch_size=32, max_epochs=2), lams=[5.0], device="cpu",
                     progress=False, **dirs)
    assert [c[0] for c in calls] == ["fit", "stack"]                 # no baseline yet: pre-trained first
    assert calls[1][1:3] == ([5.0], 1e-6)
    # run_wall_s is the candidate's own time: it starts after the baseline's pre-training
    assert res["provenance"]["t_start"] >= res["baseline"]["t_end"]
    assert res["run_wall_s"] == pytest.approx(res["provenance"]["t_end"] - res["provenance"]["t_start"])
    # the baseline went where the unit keeps it, so the unit itself does not pre-train again
    calls.clear()
    ref = experiments.run(unit, device="cpu", progress=False, **dirs)
    assert [c[0] for c in calls] == ["stack"]
    assert ref["settings"][0] == res["baseline"]
    assert res["finetunes"][0]["history"]["val_loss"] != ref["settings"][2]["history"]["val_loss"]
    # tiny steps: the fine-tune barely leaves the baseline
    assert abs(res["finetunes"][0]["accuracy"] - res["baseline"]["accuracy"]) <= 0.05


def test_results_are_cached_and_other_code_recomputes(monkeypatch, synthetic, fixed_code, dirs):
    unit = tiny_config()
    stage = Stage(lr=1e-4, batch_size=32, max_epochs=1)
    first = tuning.run(unit, "c1", stage, device="cpu", progress=False, **dirs)
    path = tuning.result_path(unit, "c1", tuning.candidate_config(unit, stage), dirs["results_dir"])
    assert path.exists() and path.parent.name == "mnist" and path.parent.parent.name == "tuning"
    calls = spy(monkeypatch)
    assert tuning.run(unit, "c1", stage, device="cpu", progress=False, **dirs) == json.loads(path.read_text())
    assert calls == []
    assert first["provenance"]["device"] and first["run_wall_s"] > 0
    # a file from other code is never read as this candidate's result
    doc = json.loads(path.read_text())
    doc["code_hash"] = "0" * 12
    path.write_text(json.dumps(doc))
    tuning.run(unit, "c1", stage, device="cpu", progress=False, **dirs)
    assert [c[0] for c in calls] == ["stack"]
    assert json.loads(path.read_text())["code_hash"] == tuning.code_hash()


def test_interrupted_candidate_leaves_no_result(monkeypatch, synthetic, fixed_code, dirs):
    unit = tiny_config()

    def boom(*a, **k):
        raise KeyboardInterrupt("simulated")

    monkeypatch.setattr(training, "fit_stacked", boom)
    with pytest.raises(KeyboardInterrupt):
        tuning.run(unit, "c1", Stage(lr=1e-4, batch_size=32, max_epochs=1), device="cpu", progress=False, **dirs)
    assert not (dirs["results_dir"] / "tuning").exists() or not list((dirs["results_dir"] / "tuning").rglob("*.json"))


def test_load_results_summary_and_separation_from_units(synthetic, fixed_code, dirs, monkeypatch, capsys):
    unit = tiny_config()
    experiments.run(unit, device="cpu", progress=False, **dirs)
    tuning.run(unit, "c1", Stage(lr=1e-4, batch_size=32, max_epochs=1), device="cpu", progress=False, **dirs)
    assert len(experiments.load_results(dirs["results_dir"])) == 1      # the report never sees candidates
    res = tuning.load_results(dirs["results_dir"])
    assert len(res) == 1 and res[0]["stale"] is False
    rows = tuning.summary(res)
    assert [r["lam"] for r in rows] == [0.5, 5.0]
    for r in rows:
        assert r["delta"] == pytest.approx(r["accuracy"] - r["baseline_accuracy"])
        assert r["keeps"] == (r["delta"] >= -0.01)
        assert r["max_epochs"] == 1 and r["lr"] == 1e-4
    capsys.readouterr()
    assert report.main([str(dirs["results_dir"])]) == 0               # the report lists them apart
    out = capsys.readouterr().out
    assert "Other fine-tuning settings" in out and out.count(" c1 ") == 2
    assert tuning.summary(res, tolerance=1.0)[0]["keeps"] is True
    assert tuning.summary(res, tolerance=-1.0)[0]["keeps"] is False
    monkeypatch.setattr(experiments, "code_hash", lambda: "another0code")
    assert tuning.load_results(dirs["results_dir"])[0]["stale"] is True
    assert tuning.load_results(dirs["results_dir"] / "nowhere") == []


def test_candidates_and_errors(monkeypatch, capsys):
    assert tuning.CANDIDATES["paper"] == experiments.make_config("full", "cifar10", 0).finetune
    assert len({(s.lr, s.patience, s.optimizer) for s in tuning.CANDIDATES.values()}) == len(tuning.CANDIDATES)
    with pytest.raises(ValueError, match="unknown candidate"):
        tuning.run(tiny_config(), "nonsense")
    with pytest.raises(ValueError, match="unknown candidate"):
        tuning.search("smoke", "mnist", 0, ["nonsense"])
    ran = []
    monkeypatch.setattr(tuning, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(ValueError, match="unknown candidate.*'nonsense'"):
        tuning.search("smoke", "mnist", 0, ["paper", "nonsense"])        # checked before "paper" runs
    assert ran == []
    tuning.search("smoke", "mnist", 0, "paper")                            # one name, not its letters
    assert [a[1] for a in ran] == ["paper"]
    with pytest.raises(ValueError, match="candidate name"):
        tuning.result_path(tiny_config(), "a/b", tiny_config())
    with pytest.raises(TypeError, match="Stage"):
        tuning.candidate_config(tiny_config(), {"lr": 1e-4})

    seen = []
    entry = {"lam": 1.0, "accuracy": 0.48, "epochs": 7, "best_epoch": 4, "stopped_early": True, "inblock": [1.0, None],
             "diffusion": {"raw": 0.2}, "cosine": 0.5}
    monkeypatch.setattr(tuning, "run", lambda unit, name, stage, **kw: seen.append((unit.profile, name, stage)) or {
        "baseline": {"accuracy": 0.5, "diffusion": {"raw": 0.1}}, "finetunes": [entry],
        "stage": dataclasses.asdict(stage), "dataset": "mnist", "seed": 0, "name": name})
    tuning.search("smoke", "mnist", 0, ["paper", "lr1e-5"], max_epochs=3)
    assert [(p, n, s.max_epochs, s.lr) for p, n, s in seen] == [("smoke", "paper-cap3", 3, 1e-4),
                                                              ("smoke", "lr1e-5-cap3", 3, 1e-5)]
    seen.clear()
    capsys.readouterr()
    assert cli.main(["tune", "--profile", "smoke", "--dataset", "mnist", "--candidates", "sgd", "--device", "cpu"]) == 0
    assert [(n, s.optimizer) for _, n, s in seen] == [("sgd", "sgd")]
    out = capsys.readouterr().out
    assert "sgd λ=1.0  accuracy 0.4800 (-0.0200 vs baseline 0.5000), epochs 7, in-block 1.000" in out


def test_verdicts_and_starting_baselines_for_the_book():
    def row(name, lam, keeps, stopped=True):
        return {"dataset": "cifar10", "seed": 0, "name": name, "lam": lam, "keeps": keeps, "stopped_early": stopped}

    lines = report.tuning_verdicts([row("a", 0.1, True), row("a", 1.0, False), row("b", 1.0, True),
                                    row("c-cap5", 1.0, True, stopped=False)])
    assert lines == ["CIFAR10, seed 0: at most 0.01 below the baseline at every λ run: b, c-cap5 (of these, c-cap5 "
                     "ended at the epoch cap, not by the stopping rule)."]
    assert report.tuning_verdicts([row("a", 1.0, False)]) == [
        "CIFAR10, seed 0: at most 0.01 below the baseline at every λ run: no candidate."]
    # a stale row does not count; one candidate from two baselines is judged once per baseline
    stale = {**row("a", 1.0, False), "stale": True}
    assert report.tuning_verdicts([stale, row("a", 1.0, True)]) == report.tuning_verdicts([row("a", 1.0, True)])
    assert report.tuning_verdicts([row("a", 1.0, True)]) == [
        "CIFAR10, seed 0: at most 0.01 below the baseline at every λ run: a."]
    cpu = {**row("a", 1.0, True), "baseline_accuracy": 0.8356}
    gpu = {**row("a", 1.0, False), "baseline_accuracy": 0.7879}
    assert report.tuning_verdicts([cpu, gpu]) == [
        "CIFAR10, seed 0: at most 0.01 below the baseline at every λ run: a (from the baseline at 0.8356)."]

    base = {"epochs": 43, "best_epoch": 40, "accuracy": 0.8356}
    tuned = [{"dataset": "cifar10", "seed": 0, "unit_config_hash": "h", "baseline": base,
              "provenance": {"device": "cpu"}}] * 2
    unit = {"dataset": "cifar10", "seed": 0, "config_hash": "h", "provenance": {"device": "NVIDIA H200"},
            "settings": [{"epochs": 18, "best_epoch": 15, "accuracy": 0.7879}]}
    (line,) = report.tuning_starts(tuned, [unit])
    assert "pre-trained on cpu: 43 epochs (best 40), test accuracy 0.8356" in line
    assert "pre-trained on NVIDIA H200, stopped after 18 epochs (best 15) at 0.7879" in line
    (same,) = report.tuning_starts(tuned, [{**unit, "settings": [base]}])       # the unit's own baseline
    assert "results unit" not in same
    # a second training of the baseline (same device) gets its own sentence, and the unit's note
    again = {**tuned[0], "baseline": {**base, "accuracy": 0.80, "epochs": 20}, "provenance": {"device": "NVIDIA H200"}}
    lines = report.tuning_starts([tuned[0], again], [{**unit, "settings": [base]}])
    assert len(lines) == 2 and "results unit" not in lines[0] and "results unit" in lines[1]
    assert "20 epochs (best 40), test accuracy 0.8000" in lines[1]


def test_endpoints_compare_converged_fine_tunes_with_the_unit():
    base = {"epochs": 43, "best_epoch": 40, "accuracy": 0.8356}
    ft = {"lam": 1.0, "epochs": 52, "best_epoch": 49, "accuracy": 0.8012, "stopped_early": True}
    res = {"dataset": "cifar10", "seed": 0, "name": "paper", "unit_config_hash": "h", "baseline": base,
           "stage": {"lr": 1e-4, "patience": 3, "optimizer": "adam"}, "provenance": {"device": "cpu"},
           "finetunes": [ft, {**ft, "lam": 5.0, "stopped_early": False}]}
    unit = {"dataset": "cifar10", "seed": 0, "config_hash": "h", "provenance": {"device": "NVIDIA H200"},
            "settings": [{"lam": 0.0, "accuracy": 0.7879}, {"lam": 0.1, "epochs": 30, "best_epoch": 27, "accuracy": 0.77},
                         {"lam": 1.0, "epochs": 52, "best_epoch": 49, "accuracy": 0.7832}]}
    (line,) = report.tuning_endpoints([res], [unit])          # the capped λ = 5 is no end point
    assert line.startswith("CIFAR10 seed 0, λ = 1: paper (adam 0.0001, patience 3) was stopped after 52 epochs "
                           "(best 49) at test accuracy 0.8012, -0.0344 against its baseline (0.8356, cpu).")
    assert "(NVIDIA H200) ended after 52 epochs (best 49) at 0.7832, -0.0047 against its baseline (0.7879)" in line
    (alone,) = report.tuning_endpoints([res], [])
    assert "results unit" not in alone
    assert report.tuning_endpoints([{**res, "finetunes": [{**ft, "stopped_early": False}]}], [unit]) == []


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_the_control_lambda_trains_bitwise_as_lambda_zero(device):
    """report.CONTROL_LAM stands for λ = 0 (which Config keeps for the baseline): same weights, same
    histories, bit for bit, on the CIFAR-10 net with dropout and augmentation (on CUDA also through the
    captured graph and capturable Adam); a λ of 1e-6 differs."""
    import copy

    from sepdtd import models

    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(96, 3, 32, 32, generator=g), torch.randint(0, 10, (96,), generator=g)
    xv, yv = torch.rand(32, 3, 32, 32, generator=g), torch.randint(0, 10, (32,), generator=g)
    net = models.build("cifar10", seed=0)
    out = {}
    for lam in (0.0, report.CONTROL_LAM, 1e-6):
        m = copy.deepcopy(net)
        (h,) = training.fit_stacked([m], [lam], x, y, xv, yv, lr=1e-4, batch_size=32, max_epochs=2, patience=5,
                                    augment=True, device=device, seed=3, progress=False)
        out[lam] = (m.state_dict(), h)
    ref, ref_h = out[0.0]
    for lam, same in ((report.CONTROL_LAM, True), (1e-6, False)):
        state, h = out[lam]
        assert all(torch.equal(ref[k], state[k]) for k in ref) is same, lam
        assert all(getattr(h, k) == getattr(ref_h, k)
                   for k in ("train_loss", "val_loss", "val_accuracy", "penalty")) is same, lam


def test_a_control_runs_through_the_package_and_the_report(synthetic, fixed_code, dirs):
    unit = tiny_config()
    res = tuning.run(unit, "paper", tuning.CANDIDATES["paper"], lams=[report.CONTROL_LAM, 1.0], device="cpu",
                     progress=False, **dirs)
    assert [e["lam"] for e in res["finetunes"]] == [report.CONTROL_LAM, 1.0]
    rows = tuning.summary([res])
    assert [report.is_control(r["lam"]) for r in rows] == [True, False]
    (line,) = report.tuning_controls(rows)
    assert line.startswith("MNIST seed 0, paper: its control (same start, settings and data order, no penalty) ")
    assert f"by {rows[1]['accuracy'] - rows[0]['accuracy']:+.4f}" in line
    assert report.tuning_verdicts(rows) == report.tuning_verdicts(rows[1:])   # the control is no candidate
