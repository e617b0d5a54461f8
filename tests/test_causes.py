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
    header, body = causes.change_table(_measured(0.002, -0.1), ["mnist"])
    assert body[0][1:4] == ["-0.100", "-0.100", "+0.002"]


class _Fixed(torch.nn.Module):
    """Returns stored logits, whatever the input (the whole set goes through in one batch)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.logits[: x.shape[0]].to(x.dtype)


def test_ground_truth_of_factor5_scores_sign_corrected_heatmaps():
    tset = twoobject.make("mnist", 6, seed=0)
    n = len(tset)
    logits = torch.full((n, 10), -5.0)
    logits[torch.arange(n), tset.labels[:, 0]] = -1.0
    logits[torch.arange(n), tset.labels[:, 1]] = -2.0          # both top logits negative
    net = _Fixed(logits)

    def on_own_object(model, x, classes, *, low, high):
        own, _ = tset.regions(classes.cpu())
        start = logits.gather(1, classes.cpu())
        return own.double() * start.view(n, 2, 1, 1)             # carries the sign of the logit, as DTD does

    mass, mass_obj, point = causes._top2_ground_truth(net, on_own_object, tset, torch.device("cpu"), n)
    assert mass == pytest.approx(1.0) and mass_obj == pytest.approx(1.0) and point == pytest.approx(1.0)


def test_first_layer_rule_returns_every_field_for_both_rules():
    from sepdtd import data, models

    net = models.build("mnist", seed=0).eval()
    x = torch.as_tensor(data.load("mnist").x_test[:8])
    out = causes.first_layer_rule(net, x, twoobject.make("mnist", 16, seed=0), convention="max", max_scored=4,
                                  batch_size=8)
    assert list(out) == list(causes.FIRST_RULES)
    for v in out.values():
        assert list(v) == list(causes.FIRST_FIELDS)
        assert abs(v["cosine"]) <= v["abs_cosine"] + 1e-12 <= 1 + 1e-12
    zb, zp = causes.FIRST_RULES
    assert out[zb]["d"] != out[zp]["d"]                   # the two rules differ at the first layer


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
