"""Chapter 10's analysis (sepdtd.causes): verdicts read |cos|, never the signed cosine."""
from __future__ import annotations

import pytest
import torch

from sepdtd import beyond, causes, twoobject


def _row(model, method, *, family="lambda", cos=0.9, abs_cos=0.9, mass_obj2=0.5, mass2=0.4, point2=0.5,
         n_conv=2, lam=None):
    pair = (lambda v: (v, None))
    return {"dataset": "mnist", "model": model, "method": method, "family": family, "lam": lam, "n_conv": n_conv,
            "width": "split", "params": 100, "cosine": pair(cos), "abs_cosine": pair(abs_cos),
            "diffusion": pair(0.1), "mass1": pair(0.6), "mass2": pair(mass2), "mass_obj1": pair(0.7),
            "mass_obj2": pair(mass_obj2), "point1": pair(0.8), "point2": pair(point2),
            "accuracy": pair(0.99), "train_wall_s": pair(10.0)}


def _flipped_rows(abs_cos=0.95):
    """A baseline, and a fine-tune whose second logit turned negative: the signed cosine flips, the pattern stays."""
    return [_row("baseline", "dtd", cos=0.95, abs_cos=0.95, lam=0.0),
            _row("lam1.0", "dtd", cos=-abs_cos, abs_cos=abs_cos, mass_obj2=0.5, lam=1.0)]


def test_a_sign_flip_alone_is_not_read_as_separation():
    rows = _flipped_rows()
    text = causes.hypotheses(rows, {}, ["mnist"], {"mnist": 2})
    assert "|cos| falls by more than 0.05 in 0 of 1 cases" in text
    fac = beyond.factors(rows)
    (f,) = fac
    assert f["d_abs_cosine"] == pytest.approx(0.0) and f["d_cosine"] == pytest.approx(-1.9)
    lines = causes.factor_lines(fac, {(r["dataset"], r["model"], r["method"]): r for r in rows}, {}, ["mnist"])
    assert "no change lowers |cos| by more than 0.01" in lines


def test_a_real_change_of_pattern_is_read_as_separation():
    rows = _flipped_rows(abs_cos=0.5)
    rows[1]["mass_obj2"] = (0.6, None)
    text = causes.hypotheses(rows, {}, ["mnist"], {"mnist": 2})
    assert "|cos| falls by more than 0.05 in 1 of 1 cases" in text
    assert "holds for them on both counts" in text


def test_results_without_abs_cosine_leave_the_similarity_open():
    rows = _flipped_rows()
    for r in rows:
        r["abs_cosine"] = (None, None)
    rows.append(_row("baseline", "epsilon", cos=0.1, abs_cos=None))
    rows[-1]["abs_cosine"] = (None, None)
    text = causes.hypotheses(rows, {}, ["mnist"], {"mnist": 2})
    assert "the similarity part of the hypothesis is open" in text
    assert "|cos| was not measured" in text
    assert "It holds" not in text


def test_error_removed_is_the_share_of_the_baselines_top2_error():
    by = {("mnist", "baseline", "dtd"): _row("baseline", "dtd", mass_obj2=0.6)}
    assert causes.error_removed(by, "mnist", {"mass_obj2": 0.8}) == pytest.approx(0.5)
    assert causes.error_removed(by, "mnist", {"mass_obj2": None}) is None
    by[("mnist", "baseline", "dtd")]["mass_obj2"] = (1.0, None)
    assert causes.error_removed(by, "mnist", {"mass_obj2": 0.9}) is None     # no error to remove


def test_factor_and_range_tables_lead_with_abs_cosine():
    rows = _flipped_rows(abs_cos=0.75)
    rows.append(_row("depth-1", "dtd", family="depth", n_conv=1, abs_cos=0.85, cos=0.85))
    fac = beyond.factors(rows)
    by = {(r["dataset"], r["model"], r["method"]): r for r in rows}
    header, body = causes.factor_table(fac, by, "mnist")
    assert header[2:4] == ["Δ |cos|", "Δ cos (signed)"]
    dense = next(line for line in body if line[0] == "dense")
    assert dense[2] == "-0.200" and dense[3] == "-1.700"
    header, body = causes.range_table(fac, by, ["mnist"])
    assert body[1][1].startswith("Δ|cos| -0.20;") and body[2][1].startswith("Δ|cos| -0.10;")
    assert body[0][1] == "—"                                                # no other method was run
    header, body = causes.depth_table(rows, by, "mnist", 2)
    assert [line[0] for line in body] == ["1", "2 (Table 1)"]


def _measured(rule_change, lam_change):
    zb, zp = causes.FIRST_RULES

    def fields(v):
        return dict.fromkeys(causes.FIRST_FIELDS, 0.5) | {"abs_cosine": v}

    return {("mnist", 0.0): {zb: fields(0.9), zp: fields(0.9 + rule_change)},
            ("mnist", 1.0): {zb: fields(0.9 + lam_change), zp: fields(0.9 + rule_change + lam_change)}}


def test_first_layer_summary_compares_the_rule_with_the_fine_tuning():
    text, change, small = causes.first_layer_summary(_measured(0.002, -0.1), ["mnist"])
    assert small and change["mnist"] == pytest.approx(0.002) and "made above the first layer" in text
    text, _, small = causes.first_layer_summary(_measured(0.2, -0.1), ["mnist"])
    assert not small and "at least as much as the fine-tuning" in text
    _, _, small = causes.first_layer_summary(_measured(0.0002, -0.0001), ["mnist"])
    assert small                                                   # both below the tolerance: no finding
    header, body = causes.change_table(_measured(0.002, -0.1), ["mnist"])
    assert body[0][1:4] == ["-0.100", "-0.100", "+0.002"]


def test_factor5_reads_both_first_layer_rules_from_the_rows():
    rows = []
    for model, lam in (("baseline", 0.0), ("lam1.0", 1.0)):
        rows += [_row(model, "dtd", abs_cos=0.99 - lam / 10, lam=lam),
                 _row(model, "zplus", abs_cos=0.98 - lam / 10, mass2=0.5, lam=lam)]
    rows.append(_row("baseline", "dtd", lam=0.0) | {"dataset": "cifar10"})        # no z+ there: left out
    by = {(r["dataset"], r["model"], r["method"]): r for r in rows}
    measured = causes.first_layer_rows(by, ["mnist", "cifar10"])
    assert set(measured) == {("mnist", 0.0), ("mnist", 1.0)}
    zb, zp = causes.FIRST_RULES
    assert measured["mnist", 1.0][zp]["abs_cosine"] == pytest.approx(0.88)
    assert measured["mnist", 0.0][zp]["d"] == pytest.approx(0.1) and measured["mnist", 0.0][zp]["mass2"] == 0.5
    text, change, small = causes.first_layer_summary(measured, ["mnist", "cifar10"])
    assert small and change == {"mnist": pytest.approx(-0.01)}
    header, body = causes.change_table(measured, ["mnist", "cifar10"])
    assert [line[0] for line in body] == ["MNIST"] and body[0][4] == "+0.100"


def test_the_first_layers_z_plus_heatmap_is_sign_corrected_before_the_ground_truth(monkeypatch):
    from sepdtd.pipeline import measure

    tset = twoobject.make("mnist", 6, seed=0)
    n = len(tset)
    logits = torch.full((n, 10), -5.0, dtype=torch.float64)
    logits[torch.arange(n), tset.labels[:, 0]] = -1.0
    logits[torch.arange(n), tset.labels[:, 1]] = -2.0                        # both top logits negative
    own, _ = tset.regions(tset.labels)
    h = own.double() * torch.tensor([-1.0, -2.0], dtype=torch.float64).view(1, 2, 1, 1)   # carries their sign
    monkeypatch.setattr(measure, "_top2_heatmaps",
                        lambda method, model, x, dev: (h[: len(x)], logits[: len(x)], tset.labels[: len(x)]))
    fields, _ = measure._ground_truth("zplus", None, tset, torch.device("cpu"), n)
    assert fields["pointing"] == [1.0, 1.0] and fields["mass"] == [1.0, 1.0]
    fields, _ = measure._ground_truth("clrp", None, tset, torch.device("cpu"), n)   # not started at the logit
    assert fields["pointing"] == [None, None] and fields["pointing_nan"] == [n, n]


def test_the_scatter_reads_abs_cosine_and_says_where_it_is_missing():
    import matplotlib.pyplot as plt

    from sepdtd import plots

    rows = _flipped_rows(abs_cos=0.6)
    fig = plots.similarity_vs_ground_truth(rows, ["mnist", "cifar10"])
    ax, empty = fig.axes[:2]
    xs = sorted(float(x) for c in ax.collections for x, _ in c.get_offsets())
    assert xs == pytest.approx([0.6, 0.95])               # |cos|, not the signed -0.6
    assert any(t.get_text() == "|cos| not measured" for t in empty.texts)
    plt.close(fig)
