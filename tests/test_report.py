"""Tests of sepdtd.report (Tables 2-3, claims) on synthetic results dicts."""
from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import warnings

import pytest

from sepdtd import experiments, report
from sepdtd.metrics import CONVENTIONS

LAMS = (0.0, 0.1, 0.5, 1.0, 5.0)


def result(dataset: str, seed: int, *, d: dict[float, float], acc: dict[float, float], t: tuple[float, float],
           profile: str = "smoke", scale: dict[str, float] | None = None, current: bool = True,
           inblock: float = 0.1) -> dict:
    """A results dict: diffusion under convention c is ``d[lam] * scale[c]`` (the book's convention scale 1)."""
    if scale is None:
        scale = {"raw": 10.0, "max": 1.0, "sum": 0.01, "softmax": 0.5, "sc-raw": 20.0, "sc-max": 2.0, "sc-sum": 0.02}
        scale["max"], scale[report.BOOK_CONVENTION] = scale[report.BOOK_CONVENTION], 1.0
    stale = [] if current else [{"stage": "measure", "field": "cosine", "from": "a" * 12, "to": "b" * 12,
                                 "known": False, "text": "measure code 'cosine' changed"}]
    return {
        "schema": 1, "profile": profile, "dataset": dataset, "seed": seed, "config": {}, "config_hash": "x" * 12,
        "networks_kept": True, "stale": stale,
        "provenance": {"commit": "abc", "device": "cpu", "t_start": t[0], "t_end": t[1]},
        "run_wall_s": t[1] - t[0],
        "settings": [{"lam": lam, "accuracy": acc[lam], "test_loss": 0.5, "epochs": 3, "best_epoch": 2,
                      "wall_s": 10.0 + lam, "diffusion": {c: d[lam] * scale[c] for c in CONVENTIONS},
                      "cosine": 0.9 - 0.01 * lam, "inblock": [inblock + lam / 10, 0.2], "n_eval": 100,
                      "n_test": 200, "history": {}, "stale": stale} for lam in LAMS],
    }


def flat(v: float) -> dict[float, float]:
    return dict.fromkeys(LAMS, v)


def rising(base: float) -> dict[float, float]:
    return {lam: base + lam for lam in LAMS}


@pytest.fixture
def results() -> list[dict]:
    return [
        result("mnist", 0, d=rising(0.3), acc=flat(0.98), t=(100.0, 150.0)),
        result("mnist", 1, d=rising(0.5), acc=flat(0.96), t=(200.0, 230.0), inblock=0.3),
        result("cifar10", 0, d=rising(0.1), acc=flat(0.80), t=(110.0, 190.0)),
    ]


def test_paper_tables():
    assert report.PAPER_TABLE2["cifar10"] == {0.0: 0.13, 0.1: 0.12, 0.5: 0.59, 1.0: 0.58, 5.0: 0.56}
    assert report.PAPER_TABLE2["fashion_mnist"][1.0] == 1.85 and report.PAPER_TABLE2["mnist"][0.1] == 1.06
    assert report.PAPER_TABLE3["cifar10"][0.5] == 0.81 and set(report.PAPER_TABLE3["mnist"].values()) == {0.99}
    assert report.BOOK_CONVENTION in CONVENTIONS


def test_rows_aggregate_over_seeds(results):
    rs = report.rows(results)
    assert [(r["dataset"], r["lam"]) for r in rs] == [(d, lam) for d in ("cifar10", "mnist") for lam in LAMS]
    m = next(r for r in rs if r["dataset"] == "mnist" and r["lam"] == 0.5)
    assert m["n_seeds"] == 2 and m["seeds"] == [0, 1]
    assert m["accuracy"] == pytest.approx(0.97)
    assert m["accuracy_sd"] == pytest.approx(statistics.stdev([0.98, 0.96]))
    assert m["diffusion"] == pytest.approx(((0.3 + 0.5) + (0.5 + 0.5)) / 2)          # book convention, scale 1
    assert m["convention"] == report.BOOK_CONVENTION
    assert m["variants"]["sum"] == pytest.approx(0.01 * m["diffusion"])
    assert m["diffusion_sd"] == pytest.approx(statistics.stdev([0.8, 1.0]))
    assert m["inblock"] == pytest.approx([(0.15 + 0.35) / 2, 0.2])
    assert m["wall_s"] == pytest.approx(10.5) and m["cosine"] == pytest.approx(0.895)
    assert m["paper_diffusion"] == 0.98 and m["paper_accuracy"] == 0.99
    assert m["stale"] is False and m["device"] == "cpu" and m["commit"] == "abc"
    # per seed, across data sets: seed 0 spans mnist (100-150) and cifar10 (110-190)
    assert m["run_wall_s"] == pytest.approx([90.0, 30.0])
    c = next(r for r in rs if r["dataset"] == "cifar10" and r["lam"] == 0)
    assert c["n_seeds"] == 1 and c["accuracy_sd"] is None and c["run_wall_s"] == pytest.approx([90.0])
    assert report.rows(results, convention="sum")[0]["diffusion"] == pytest.approx(0.1 * 0.01)
    with pytest.raises(ValueError, match="unknown convention"):
        report.rows(results, convention="median")


def test_a_seed_whose_data_sets_ran_apart_has_no_one_wall_time(results):
    legacy = {**result("cifar10", 0, d=rising(0.1), acc=flat(0.80), t=(1e6, 1e6 + 40.0)), "networks_kept": False}
    rs = report.rows([results[0], results[1], legacy])
    m = next(r for r in rs if r["dataset"] == "mnist" and r["lam"] == 0.5)
    c = next(r for r in rs if r["dataset"] == "cifar10" and r["lam"] == 0.5)
    assert m["run_wall_s"] == pytest.approx([50.0, 30.0])         # mnist seed 0 alone in its run
    assert c["run_wall_s"] == pytest.approx([40.0])               # not the 1e6 s span across the two runs
    walls = report.seed_walls(rs)
    assert walls[0][0] is None and walls[1][0] == pytest.approx(30.0)
    assert "seed 0: — (its data sets come from different runs)" in report.format_tables(rs)


def test_stale_results_are_marked_with_their_reasons_and_superseded(results):
    old = result("mnist", 0, d=flat(9.0), acc=flat(0.1), t=(0.0, 1.0), current=False)
    rows = report.rows([old])
    assert all(r["stale"] for r in rows)
    assert rows[0]["stale_reasons"] == ["0.0: measure code 'cosine' changed"]
    with pytest.warns(RuntimeWarning, match="2 results"):
        rs = report.rows(results + [old])                # the current result of mnist seed 0 wins
    m = next(r for r in rs if r["dataset"] == "mnist" and r["lam"] == 0)
    assert m["accuracy"] == pytest.approx(0.97) and not m["stale"] and m["stale_reasons"] == []
    legacy = {**result("mnist", 0, d=flat(1.0), acc=flat(0.9), t=(0.0, 9.0)), "networks_kept": False}
    rs = report.rows([legacy, results[0]])               # kept networks win over a later legacy result
    assert rs[0]["accuracy"] == pytest.approx(0.98) and rs[0]["networks_kept"]
    assert report.rows([legacy])[0]["networks_kept"] is False


def test_closest_convention():
    paper = {ds: report.PAPER_TABLE2[ds][0.0] for ds in ("mnist", "cifar10")}
    res = [result(ds, 0, d=flat(paper[ds] / 0.01), acc=flat(0.9), t=(0.0, 1.0)) for ds in paper]
    rs = report.rows(res)                                  # "sum" (scale 0.01) equals the paper exactly
    assert report.closest_convention(rs) == "sum"
    scores = report.convention_scores(rs)
    assert scores["sum"] == pytest.approx(0.0, abs=1e-12) and set(scores) == set(CONVENTIONS)
    with pytest.raises(ValueError):
        report.closest_convention([])


def test_convention_ratio_scores_compare_the_change_against_the_baseline():
    paper = report.PAPER_TABLE2["mnist"]
    # "max" (scale 3) reproduces every ratio d_λ / d_0 of the paper; "raw" halves each λ's
    d = {lam: v * 3 for lam, v in paper.items()}
    rs = report.rows([result("mnist", 0, d=d, acc=flat(0.9), t=(0.0, 1.0))])
    for r in rs:
        r["variants"] = {"max": r["variants"]["max"],
                         "raw": r["variants"]["raw"] * (1.0 if r["lam"] == 0 else 0.5)}
    scores = report.convention_ratio_scores(rs)
    assert scores["max"] == pytest.approx(0.0, abs=1e-12)
    assert scores["raw"] == pytest.approx(math.log(2))
    assert report.convention_ratio_scores([r for r in rs if r["lam"] > 0]) == {}   # no baseline, no score


def test_claims_are_judged_on_paired_intervals():
    # three seeds; per seed the baseline's d and accuracy differ, the fine-tunes' differences are given
    base_d, base_acc = (0.5, 0.7, 0.6), (0.985, 0.975, 0.99)
    dd = {0.1: (0.10, 0.12, 0.11), 0.5: (0.2, -0.2, 0.05), 1.0: (0.3, 0.31, 0.29), 5.0: (-0.1, -0.12, -0.11)}
    da = {0.1: (0.002, 0.004, 0.003), 0.5: (0.0, 0.0, 0.0), 1.0: (-0.015, -0.02, -0.016), 5.0: (-0.02, 0.01, 0.0)}
    res = [result("mnist", k, d={0.0: base_d[k], **{lam: base_d[k] + v[k] for lam, v in dd.items()}},
                  acc={0.0: base_acc[k], **{lam: base_acc[k] + v[k] for lam, v in da.items()}}, t=(0.0, 1.0))
           for k in range(3)]
    rows = report.rows(res)
    r01 = next(r for r in rows if r["lam"] == 0.1)
    p = r01["paired"]["d"]
    assert p["convention"] == report.PRIMARY_CONVENTION and p["n"] == 3
    assert p["mean"] == pytest.approx(0.11 * 0.02)                        # sc-sum is scaled by 0.02 here
    sd = statistics.stdev([0.10 * 0.02, 0.12 * 0.02, 0.11 * 0.02])
    assert p["hi"] - p["mean"] == pytest.approx(4.303 * sd / math.sqrt(3))  # t(0.975, 2 df)
    by = {(c["claim"], c["lam"]): c for c in report.claims(rows)}
    assert by[("diffusion", 0.1)]["held"] is True and by[("diffusion", 1.0)]["held"] is True
    assert by[("diffusion", 0.5)]["held"] is False and by[("diffusion", 0.5)]["why"] == "the interval includes 0"
    assert by[("diffusion", 5.0)]["held"] is False and "below" in by[("diffusion", 5.0)]["why"]
    assert by[("accuracy", 0.1)]["held"] and by[("accuracy", 0.5)]["held"]
    assert by[("accuracy", 1.0)]["held"] is False and by[("accuracy", 5.0)]["held"] is False
    assert by[("diffusion[raw]", 0.1)]["convention"] == "raw"
    assert by[("baseline_accuracy", 0.0)]["held"]                          # mean 0.9833 vs 0.98
    text = report.format_claims(report.claims(rows))
    assert "NOT held  MNIST λ=5: d[sc-sum] − baseline -0.002 [" in text and "n = 3" in text
    # one seed: no interval, no verdict
    one = {(c["claim"], c["lam"]): c for c in report.claims(report.rows(res[:1]))}
    assert one[("diffusion", 0.1)]["held"] is None and one[("diffusion", 0.1)]["why"] == "one seed, no interval"
    assert "open" in report.format_claims(list(one.values()))
    low = report.claims(report.rows([result("mnist", 0, d=rising(0.3), acc=flat(0.95), t=(0.0, 1.0))]))
    assert not next(c for c in low if c["claim"] == "baseline_accuracy")["held"]
    near = next(c for c in report.claims(report.rows([result("mnist", 0, d=rising(0.3), acc=flat(0.977),
                                                                    t=(0.0, 1.0))]))
                if c["claim"] == "baseline_accuracy")                # 0.003 short of 0.99 - 0.01: counted as missed
    assert not near["held"] and "rounding" in near["text"]


def test_claims_at_the_boundary_and_their_summary():
    # accuracies exactly 0.01 lower at every seed (up to float rounding): held, "at most 0.01 below"
    base, tuned = (0.9077, 0.9222, 0.7665), (0.8977, 0.9122, 0.7565)
    res = [result("mnist", s, d=rising(0.3), acc={0.0: b, **dict.fromkeys(LAMS[1:], t)}, t=(0.0, 1.0))
           for s, (b, t) in enumerate(zip(base, tuned))]
    rs = report.rows(res)
    assert all(c["held"] for c in report.claims(rs) if c["claim"] == "accuracy")
    summary = report.format_tables(rs)
    assert f"d(λ) > d(baseline) under {report.PRIMARY_CONVENTION} (the primary convention): 4/4 held" in summary
    assert "accuracy at most 0.01 below the baseline's: 4/4 held" in summary
    # a λ run at fewer seeds than its baseline is paired on the seeds it has
    res[2]["settings"] = [s for s in res[2]["settings"] if s["lam"] != 1.0]
    assert next(r for r in report.rows(res) if r["lam"] == 1.0)["paired"]["accuracy"]["n"] == 2


def test_format_tables(results):
    old = result("cifar10", 1, d=rising(0.1), acc=flat(0.7), t=(300.0, 310.0), current=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = report.format_tables(report.rows(results + [old]))
    assert "Table 2" in text and "Table 3" in text and "CIFAR-10" in text and "MNIST" in text
    assert "0.900 ± 0.141 [0.98]" in text          # mnist λ=0.5: mean of 0.8 and 1.0, paper 0.98
    assert "0.750 ± 0.071 [0.80] *" in text        # cifar10 accuracy with a stale seed
    assert "seed 0: 90.0 s" in text and "seed 1: 30.0 s" not in text  # seed 1 spans mnist and cifar10
    assert "seed 1: 110.0 s" in text
    assert "Baseline" in text and "5.0" in text and "stale" in text
    assert report.format_tables([]) == "no results"
    assert "'raw'" in report.format_tables(report.rows(results), all_conventions=True)


def _write(results: list[dict], root) -> None:
    """As results of the first layout (``legacy/``), which the reader takes as they are."""
    for r in results:
        path = root / "legacy" / r["dataset"] / f"seed{r['seed']}-{r['config_hash']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(r))


def test_module_main_json_in_a_subprocess(results, tmp_path):
    _write(results, tmp_path)
    out = subprocess.run([sys.executable, "-m", "sepdtd.report", str(tmp_path), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    want = json.loads(json.dumps(report.rows(experiments.load_results(tmp_path))))
    assert got == want and len(got) == 10 and not any(r["networks_kept"] for r in got)
    assert report.main([str(tmp_path)]) == 0
    assert report.main([str(tmp_path / "nothing")]) == 2
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 1


def test_resumed_seeds_are_marked(results):
    results[1]["provenance"]["resumed_settings"] = ["baseline"]     # mnist seed 1 resumed an interrupted run
    rs = report.rows(results)
    m = next(r for r in rs if r["dataset"] == "mnist" and r["lam"] == 0.0)
    assert m["resumed"] == [False, True]
    text = report.format_tables(rs)
    assert "seed 0: 90.0 s," in text and "seed 1: 30.0 s (resumed: may span more than one run)" in text


def test_finetune_fit_reads_the_histories(results):
    h = {"train_loss": [1.0, 1.0, 1.0], "val_loss": [0.50, 0.40, 0.45], "val_accuracy": [0.8, 0.9, 0.85],
         "penalty": [100.0, 90.0, 95.0]}
    for r in results:
        r["settings"][0]["history"] = h
        for f in r["settings"][1:]:
            lam = f["lam"]
            f["history"] = {"train_loss": [2.0, 2.0], "val_loss": [0.9 + lam * 0.5, 0.6 + lam * 0.1],
                            "val_accuracy": [0.7, 0.88], "penalty": [0.5, 0.1]}
            f["best_epoch"], f["epochs"] = 2, 4
    fit = {f["dataset"]: f for f in report.finetune_fit(results)}
    assert list(fit) == ["cifar10", "mnist"] and fit["mnist"]["n_units"] == 2
    m = fit["mnist"]
    assert m["base_ce"] == pytest.approx(0.40) and m["base_accuracy"] == pytest.approx(0.9)   # best epoch 2
    assert m["base_penalty"] == pytest.approx(90.0)
    assert m["ce_epoch1"] == pytest.approx(0.9) and m["ce"] == pytest.approx(0.6)   # objective - λ S(W)
    assert m["accuracy"] == pytest.approx(0.88) and m["penalty"] == pytest.approx(0.1) and m["epochs"] == 4
    results[0]["settings"][0]["history"] = {}
    assert report.finetune_fit(results[:1]) == []


def test_a_unit_resumed_from_a_training_checkpoint_is_marked_too(results):
    results[2]["settings"][3]["resumed_from"] = 5                   # cifar10 seed 0: a fine-tune resumed
    rs = report.rows(results)
    assert next(r for r in rs if r["dataset"] == "cifar10")["resumed"] == [True]
    assert next(r for r in rs if r["dataset"] == "mnist")["resumed"] == [True, False]   # seed 0 spans both


def test_at_equal_penalty_interpolates_in_log_penalty():
    fast = {"penalty": [1000.0, 100.0, 10.0, 10.0, 1.0], "val_accuracy": [0.8, 0.6, 0.5, 0.9, 0.1]}
    slow = {"penalty": [2000.0, 1000.0, 316.227766, 100.0, 31.6227766, 0.5],
            "val_accuracy": [0.9, 0.81, 0.7, 0.62, 0.55, 0.4]}
    got = report.at_equal_penalty(fast, slow)
    # 2000 and 0.5 lie outside the reference's range; fast's epochs after S stops falling are ignored
    assert [g[0] for g in got] == pytest.approx([1000.0, 316.227766, 100.0, 31.6227766])
    assert [g[1] for g in got] == [0.81, 0.7, 0.62, 0.55]
    assert [g[2] for g in got] == pytest.approx([0.8, 0.7, 0.6, 0.55])      # halfway in log S
    # the reference ends where its S(W) stops falling (10 -> 10): 1.0 is then outside its range
    got = report.at_equal_penalty(fast, {"penalty": [5.0, 1.0], "val_accuracy": [0.3, 0.2]})
    assert got == []
    # not finite or not positive: the reference stops there, the other's epoch is skipped
    ref = {"penalty": [100.0, 10.0, 0.0, 0.001], "val_accuracy": [0.8, 0.6, 0.5, 0.4]}
    assert report.at_equal_penalty(ref, {"penalty": [0.001], "val_accuracy": [0.1]}) == []
    ref_nan = {"penalty": [100.0, 10.0, float("nan"), 1.0], "val_accuracy": [0.8, 0.6, 0.5, 0.4]}
    assert report.at_equal_penalty(ref_nan, {"penalty": [2.0], "val_accuracy": [0.1]}) == []
    other = {"penalty": [float("nan"), 31.6227766, 50.0], "val_accuracy": [0.9, float("nan"), 0.7]}
    assert [g[:2] for g in report.at_equal_penalty(ref, other)] == [(50.0, 0.7)]
    assert report.at_equal_penalty({"penalty": [5.0], "val_accuracy": [0.5]}, slow) == []
    assert report.at_equal_penalty(fast, {"penalty": [], "val_accuracy": []}) == []


def test_controls_are_told_apart_from_fine_tunes():
    def row(name, lam, acc, d, stopped=True, epochs=40, **kw):
        return {"dataset": "cifar10", "seed": 0, "name": name, "lam": lam, "accuracy": acc, "delta": acc - 0.8356,
                "keeps": acc - 0.8356 >= -0.01, "diffusion": d, "cosine": 0.9 if lam < 1e-20 else 0.25,
                "stopped_early": stopped, "epochs": epochs, "best_epoch": epochs - 10, "lr": 1e-4, "optimizer": "adam",
                "batch_size": 128, "patience": 10, "max_epochs": 200, "baseline_accuracy": 0.8356, "stale": False,
                **kw}

    assert report.is_control(report.CONTROL_LAM) and report.is_control(1e-31) and not report.is_control(1e-29)
    assert not report.is_control(0.0) and not report.is_control(0.1)
    assert report.lam_text(report.CONTROL_LAM) == "λ → 0 (control)" and report.lam_text(1.0) == "λ = 1"
    assert report.lam_text(0.0) == "λ = 0"
    control = row("p10", report.CONTROL_LAM, 0.8200, 0.190, epochs=60)
    rows_ = [control, row("p10", 1.0, 0.8416, 0.128, False, 200), row("paper", 1.0, 0.8018, 0.12)]
    # the control, 0.0156 below the baseline, is no candidate for Table 3's claim: p10 keeps at every λ
    assert report.tuning_verdicts(rows_) == ["CIFAR-10, seed 0: at most 0.01 below the baseline at every λ run: p10 "
                                             "(of these, p10 ended at the epoch cap, not by the stopping rule)."]
    (line,) = report.tuning_controls(rows_)                 # paper has no control: no sentence
    assert line == ("CIFAR-10 seed 0, p10: its control (same start, settings and data order, no penalty) stopped after "
                    "60 epochs (best 50) at test accuracy 0.8200 (-0.0156 against the baseline), d 0.190, top-2 cosine "
                    "0.900; λ = 1 ended at its epoch cap after 200 epochs (best 190) at 0.8416, d 0.128, cosine 0.250. "
                    "With the same settings, the penalty moves test accuracy by +0.0216, d by -0.062 and the cosine "
                    "by -0.650; against the baseline, λ = 1 is at most Table 3's 0.01 below it (+0.0060).")
    assert report.tuning_controls(rows_[1:]) == []
    # one sentence per λ; no pairing across names, stages, baselines or seeds; a second control is not repeated
    more = [row("p10", 5.0, 0.83, 0.1), row("p10-cap15", 1.0, 0.7, 0.1, max_epochs=15),
            row("p10", 1.0, 0.8, 0.1, baseline_accuracy=0.79), row("p10", 1.0, 0.8, 0.1, seed=1),
            row("p10", 1.0, 0.8, 0.1, lr=1e-5), {**control, "stale": True, "accuracy": 0.5}]
    lines = report.tuning_controls(rows_ + more)
    assert [ln.split(": its control")[0] for ln in lines] == ["CIFAR-10 seed 0, p10"] * 2
    assert "λ = 1 ended" in lines[0] and "λ = 5 stopped" in lines[1] and all("0.8200" in ln for ln in lines)
    (stale,) = report.tuning_controls([{**control, "stale": True}, rows_[1]])
    assert stale.startswith("CIFAR-10 seed 0, p10 (stale): ")
    (blank,) = report.tuning_controls([{**control, "diffusion": None}, rows_[1]])
    assert "d —, top-2" in blank and "d by — and" in blank


def test_tuning_labels_tell_apart_runs_of_one_candidate():
    def res(name, lams, device="cpu", chash="a", seed=0):
        return {"dataset": "cifar10", "seed": seed, "name": name, "config_hash": chash,
                "provenance": {"device": device}, "finetunes": [{"lam": lam} for lam in lams]}

    cpu, gpu, gpu2 = res("paper", [1.0]), res("paper", [1.0], "H200"), res("paper", [1.0], "H200", "b")
    other_seed, control, p10 = res("paper", [1.0], seed=1), res("paper", [1e-30]), res("p10", [1.0])
    labels = report.tuning_labels([cpu, other_seed, control, p10])
    assert set(labels.values()) == {"paper", "p10"}            # unique already: names only
    labels = report.tuning_labels([cpu, gpu, other_seed, control])
    assert labels[id(cpu), 1.0] == "paper (cpu)" and labels[id(gpu), 1.0] == "paper (H200)"
    assert labels[id(other_seed), 1.0] == "paper" and labels[id(control), 1e-30] == "paper"
    labels = report.tuning_labels([cpu, gpu, gpu2])
    assert labels[id(cpu), 1.0] == "paper (cpu)"
    assert {labels[id(gpu), 1.0], labels[id(gpu2), 1.0]} == {"paper (H200) (a)", "paper (H200) (b)"}


def test_the_claims_table_reads_the_paired_intervals():
    base_d, base_acc = (0.5, 0.7, 0.6), (0.985, 0.975, 0.99)
    res = [result("mnist", k, d={0.0: base_d[k], **{lam: base_d[k] + 0.1 for lam in LAMS[1:]}},
                  acc={0.0: base_acc[k], 0.1: base_acc[k] - 0.05, **{lam: base_acc[k] for lam in LAMS[2:]}},
                  t=(0.0, 1.0)) for k in range(3)]
    for r in res:
        for s in r["settings"]:
            s["abs_cosine"] = 0.99 if s["lam"] == 0 else 0.5
    table = {(r["claim"], r["dataset"]): r for r in report.claims_table(report.rows(res))}
    diffused = table[("the top-2 heatmap looks like the top-1's", "MNIST")]
    assert diffused["verdict"] == "held" and diffused["ours"] == "|cos| 0.990 ± 0.000 (n = 3)"
    sep = table[("fine-tuning separates the heatmaps (|cos|)", "MNIST")]
    assert sep["verdict"] == "held" and sep["paired"].startswith("-0.490 [")
    assert table[("fine-tuning separates the heatmaps (d)", "MNIST")]["verdict"] == "held"
    acc = table[("accuracy does not decrease notably", "MNIST")]
    assert acc["verdict"] == "partly" and acc["reason"].endswith("2 of 3 other λ held")   # λ = 0.1 costs 0.05
    assert all(len(r["reason"].split()) <= 12 for r in table.values())
    one = {(r["claim"], r["dataset"]): r for r in report.claims_table(report.rows(res[:1]))}
    assert one[("fine-tuning separates the heatmaps (d)", "MNIST")]["verdict"] == "open"


def test_an_interval_across_the_bound_is_inconclusive_not_a_failure():
    base_acc, shift = (0.985, 0.975, 0.99), (-0.03, 0.02, 0.0)
    res = [result("mnist", k, d={lam: 0.5 for lam in LAMS},
                  acc={0.0: base_acc[k], **{lam: base_acc[k] + shift[k] for lam in LAMS[1:]}},
                  t=(0.0, 1.0)) for k in range(3)]
    table = {(r["claim"], r["dataset"]): r for r in report.claims_table(report.rows(res))}
    acc = table[("accuracy does not decrease notably", "MNIST")]
    assert acc["verdict"] == "inconclusive" and "includes -0.01" in acc["reason"]
    res = [result("mnist", k, d={lam: 0.5 for lam in LAMS},
                  acc={0.0: base_acc[k], **{lam: base_acc[k] - 0.05 - 0.001 * k for lam in LAMS[1:]}},
                  t=(0.0, 1.0)) for k in range(3)]
    table = {(r["claim"], r["dataset"]): r for r in report.claims_table(report.rows(res))}
    assert table[("accuracy does not decrease notably", "MNIST")]["verdict"] == "not held"


def test_the_paired_table_gives_each_fine_tune_its_interval_and_verdicts():
    base_acc, shift = (0.985, 0.975, 0.99), (-0.03, 0.02, 0.0)
    res = [result("mnist", k, d={0.0: 0.5, **{lam: 0.6 + 0.01 * k for lam in LAMS[1:]}},
                  acc={0.0: base_acc[k], **{lam: base_acc[k] + shift[k] for lam in LAMS[1:]}},
                  t=(0.0, 1.0)) for k in range(3)]
    header, body = report.paired_table(report.rows(res))
    assert header[5] == f"Δ d [{report.PRIMARY_CONVENTION}]"
    assert [line[1] for line in body] == ["0.1", "0.5", "1.0", "5.0"]          # no line for the baseline
    line = body[2]
    assert line[2] == "0, 1, 2"
    # d under sc-sum is 0.02 * d: differences 0.0020, 0.0022, 0.0024, sd 0.0002, t(2) = 4.303
    half = 4.303 * 0.0002 / 3 ** 0.5
    assert line[5] == f"+0.0022 [{0.0022 - half:+.4f}, {0.0022 + half:+.4f}], n = 3"
    assert line[6] == "held" and line[7] == "inconclusive"
    one = report.paired_table(report.rows(res[:1]))[1]
    assert one[0][5].endswith("n = 1") and one[0][6] == "open"


def test_the_sign_table_reads_the_stored_logit_signs():
    res = [result("mnist", 0, d=flat(0.5), acc=flat(0.98), t=(0.0, 1.0))]
    for s in res[0]["settings"]:
        s["logit_nonpositive"] = [0.0, 0.25] if s["lam"] == 0 else [0.9, 1.0]
        s["abs_cosine"] = 0.99 if s["lam"] == 0 else 0.4
    header, body = report.sign_table(report.rows(res))
    assert header[3:5] == ["top-1 logit ≤ 0", "top-2 logit ≤ 0"]
    assert body[0][3:] == ["0.0 %", "25.0 %", "+0.900", "0.990"]
    assert body[3][3:5] == ["90.0 %", "100.0 %"] and body[3][6] == "0.400"
    legacy = [result("mnist", 0, d=flat(0.5), acc=flat(0.98), t=(0.0, 1.0))]
    assert report.sign_table(report.rows(legacy))[1][0][3:5] == ["—", "—"]


def test_the_convention_table_counts_the_verdicts_per_convention():
    res = [result("mnist", k, d={0.0: 0.5, **{lam: 0.6 + 0.01 * k for lam in LAMS[1:]}}, acc=flat(0.98),
                  t=(0.0, 1.0)) for k in range(3)]
    header, body = report.convention_table(report.rows(res))
    assert header == ["convention", "MNIST"]
    assert [line[0] for line in body][:1] == ["`raw`"]
    primary = next(line for line in body if "(primary)" in line[0])
    assert primary[0] == f"`{report.PRIMARY_CONVENTION}` (primary)" and primary[1] == "4 of 4 held"
    one = report.convention_table(report.rows(res[:1]))[1]
    assert one[0][1] == "0 of 4 held (4 open)"


def test_a_row_is_stale_only_where_its_own_networks_are():
    res = result("mnist", 0, d=rising(0.3), acc=flat(0.98), t=(0.0, 1.0), current=False)
    res["settings"][0]["stale"] = []                                  # only the fine-tunes are stale
    rows = {r["lam"]: r for r in report.rows([res])}
    assert not rows[0.0]["stale"] and rows[0.0]["stale_reasons"] == []
    assert all(rows[lam]["stale"] and rows[lam]["stale_reasons"] for lam in LAMS[1:])


def test_a_kept_unit_replaces_its_legacy_result_without_a_warning(recwarn):
    kept = result("mnist", 0, d=rising(0.3), acc=flat(0.98), t=(0.0, 1.0))
    legacy = {**result("mnist", 0, d=rising(0.5), acc=flat(0.90), t=(0.0, 1.0)), "networks_kept": False}
    rows = report.rows([legacy, kept])
    assert rows[0]["accuracy"] == 0.98 and not [w for w in recwarn if "results for profile" in str(w.message)]
    with pytest.warns(RuntimeWarning, match="2 results for profile"):
        report.rows([kept, dict(kept)])
