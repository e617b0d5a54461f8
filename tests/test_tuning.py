"""The fine-tuning settings search (sepdtd.tuning): the unit's kept baseline, its seed, kept networks."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from sepdtd import cli, experiments, report, training, tuning
from sepdtd.pipeline.config import Stage, finetune_seed


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


def test_the_units_own_stage_repeats_the_units_finetunes(synthetic, tiny, dirs):
    unit = experiments.run("tiny", "mnist", 0, device="cpu", progress=False, **dirs)
    res = tuning.run("tiny", "mnist", 0, "same", tiny.finetune, device="cpu", progress=False, **dirs)
    from sepdtd.pipeline import store

    for a, b in zip(res["finetunes"], unit["settings"][1:]):
        sa = store.load_state(dirs["results_dir"], a["network"]["file"])
        sb = store.load_state(dirs["results_dir"], b["network"]["file"])
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert res["baseline"]["network"]["sha256"] == unit["settings"][0]["network"]["sha256"]
    assert [s["accuracy"] for s in res["finetunes"]] == [s["accuracy"] for s in unit["settings"][1:]]


def test_another_stage_starts_from_the_kept_baseline(monkeypatch, synthetic, tiny, dirs):
    experiments.run("tiny", "mnist", 0, device="cpu", progress=False, **dirs)
    calls = spy(monkeypatch)
    stage = Stage(lr=3e-5, batch_size=32, max_epochs=2)
    res = tuning.run("tiny", "mnist", 0, "slow", stage, lams=[1.0], device="cpu", progress=False, **dirs)
    assert calls == [("stack", [1.0], 3e-5, finetune_seed(0))]          # the baseline is not trained again
    assert [s["tag"] for s in res["finetunes"]] == ["tune-slow-lam1.0"]
    assert res["stage"]["lr"] == 3e-5 and res["networks_kept"] and not res["stale"]
    assert tuning.run("tiny", "mnist", 0, "slow", stage, lams=[1.0], device="cpu", progress=False, **dirs) == res
    assert len(calls) == 1
    (found,) = tuning.load_results(dirs["results_dir"])
    assert found == res
    rows = tuning.summary([found])
    assert rows[0]["name"] == "slow" and rows[0]["delta"] == rows[0]["accuracy"] - rows[0]["baseline_accuracy"]


def test_candidates_and_errors(monkeypatch, capsys):
    assert tuning.CANDIDATES["paper"] == experiments.PROFILES["full"].finetune
    assert len({(s.lr, s.patience, s.optimizer) for s in tuning.CANDIDATES.values()}) == len(tuning.CANDIDATES)
    with pytest.raises(ValueError, match="unknown candidate"):
        tuning.run("smoke", "mnist", 0, "nonsense")
    ran = []
    monkeypatch.setattr(tuning, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(ValueError, match="unknown candidates.*'nonsense'"):
        tuning.search("smoke", "mnist", 0, ["paper", "nonsense"])        # checked before "paper" runs
    assert ran == []
    tuning.search("smoke", "mnist", 0, "paper")                            # one name, not its letters
    assert [a[3] for a in ran] == ["paper"]
    with pytest.raises(ValueError, match="candidate name"):
        tuning.jobs("smoke", "mnist", 0, "a/b", tuning.CANDIDATES["paper"])
    with pytest.raises(TypeError, match="Stage"):
        tuning.jobs("smoke", "mnist", 0, "x", {"lr": 1e-4})

    seen = []
    entry = {"lam": 1.0, "accuracy": 0.48, "epochs": 7, "best_epoch": 4, "stopped_early": True, "inblock": [1.0, None],
             "diffusion": {"raw": 0.2}, "cosine": 0.5}
    def fake_run(profile, ds, seed, name, stage, **kw):
        seen.append((profile, name, stage))
        return {"baseline": {"accuracy": 0.5, "diffusion": {"raw": 0.1}}, "finetunes": [entry],
                "stage": dataclasses.asdict(stage), "dataset": "mnist", "seed": 0, "name": name}

    monkeypatch.setattr(tuning, "run", fake_run)
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
    assert lines == ["CIFAR-10, seed 0: at most 0.01 below the baseline at every λ run: b, c-cap5 (of these, c-cap5 "
                     "ended at the epoch cap, not by the stopping rule)."]
    assert report.tuning_verdicts([row("a", 1.0, False)]) == [
        "CIFAR-10, seed 0: at most 0.01 below the baseline at every λ run: no candidate."]
    # a stale row does not count; one candidate from two baselines is judged once per baseline
    stale = {**row("a", 1.0, False), "stale": True}
    assert report.tuning_verdicts([stale, row("a", 1.0, True)]) == report.tuning_verdicts([row("a", 1.0, True)])
    assert report.tuning_verdicts([row("a", 1.0, True)]) == [
        "CIFAR-10, seed 0: at most 0.01 below the baseline at every λ run: a."]
    cpu = {**row("a", 1.0, True), "baseline_accuracy": 0.8356}
    gpu = {**row("a", 1.0, False), "baseline_accuracy": 0.7879}
    assert report.tuning_verdicts([cpu, gpu]) == [
        "CIFAR-10, seed 0: at most 0.01 below the baseline at every λ run: a (from the baseline at 0.8356)."]

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
            "settings": [{"lam": 0.0, "accuracy": 0.7879},
                         {"lam": 0.1, "epochs": 30, "best_epoch": 27, "accuracy": 0.77},
                         {"lam": 1.0, "epochs": 52, "best_epoch": 49, "accuracy": 0.7832}]}
    (line,) = report.tuning_endpoints([res], [unit])          # the capped λ = 5 is no end point
    assert line.startswith("CIFAR-10 seed 0, λ = 1: paper (adam 0.0001, patience 3) was stopped after 52 epochs "
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


def test_a_control_runs_through_the_package_and_the_report(synthetic, tiny, dirs):
    res = tuning.run("tiny", "mnist", 0, "paper", tuning.CANDIDATES["paper"], lams=[report.CONTROL_LAM, 1.0],
                     device="cpu", progress=False, **dirs)
    assert [e["lam"] for e in res["finetunes"]] == [report.CONTROL_LAM, 1.0]
    rows = tuning.summary([res])
    assert [report.is_control(r["lam"]) for r in rows] == [True, False]
    (line,) = report.tuning_controls(rows)
    assert line.startswith("MNIST seed 0, paper: its control (same start, settings and data order, no penalty) ")
    assert f"by {rows[1]['accuracy'] - rows[0]['accuracy']:+.4f}" in line
    assert report.tuning_verdicts(rows) == report.tuning_verdicts(rows[1:])   # the control is no candidate
