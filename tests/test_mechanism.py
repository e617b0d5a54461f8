"""The sign-aware study (sepdtd.mechanism): ablations, the decomposition of the logits, the λ sweep."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from sepdtd import experiments, mechanism, remeasure
from sepdtd.pipeline import fingerprint, measure


@pytest.fixture
def tiny_mechanism(tiny, monkeypatch):
    monkeypatch.setitem(mechanism.SWEEP_LAMS, "tiny", (1.0, 1000.0))
    return tiny


def test_the_plan_fine_tunes_the_kept_baseline_with_one_change_each():
    js = mechanism.jobs("full", "mnist", 0)
    paper_fine = experiments.jobs("full", "mnist", 0)[1].config
    by = {j.tags: j.config for j in js}
    free = by[("abl-free-output-bias",)]
    assert dataclasses.replace(free, clamp_output_bias=True, lams=paper_fine.lams) == paper_fine
    out = by[("abl-output-penalty",)]
    assert dataclasses.replace(out, penalty_layers="dense", lams=paper_fine.lams) == paper_fine
    assert free.lams == out.lams == (mechanism.ABLATION_LAM,)
    sweep = by[tuple(f"sweep-lam{lam!r}" for lam in mechanism.SWEEP_LAMS["full"])]
    assert sweep.penalty == "mean" and sweep.start == paper_fine.start and sweep.stage == paper_fine.stage
    quick = {j.tags[0]: j.config for j in mechanism.jobs("quick", "mnist", 0)}
    assert quick["sweep-lam1.0"].stage.max_epochs == 10 > quick["lam0.1"].stage.max_epochs
    assert dataclasses.replace(quick["sweep-lam1.0"].stage, max_epochs=2) == quick["lam0.1"].stage
    plans = mechanism.measurements("full", "mnist", 0)
    assert set(plans["mechanism"]) == {"baseline", "lam0.1", "lam0.5", "lam1.0", "lam5.0", "abl-free-output-bias",
                                       "abl-output-penalty"}
    assert "output-bias" in fingerprint.train_dependencies(free)
    with pytest.raises(ValueError, match="unknown profile"):
        mechanism.jobs("huge", "mnist")


def test_the_logit_parts_add_up_to_the_logit():
    net = fingerprint.probe_network()
    x, _ = fingerprint.probe_images()
    with torch.no_grad():
        logits = net(x)
    classes = logits.topk(2, dim=1).indices
    parts = measure._logit_parts(net, x, classes, 3)
    assert torch.allclose(parts[..., :5].sum(-1), logits.gather(1, classes).double(), atol=1e-12)
    assert torch.allclose(parts[..., 5], logits.gather(1, classes).double(), atol=1e-12)
    assert (parts[..., 0] >= 0).all() and (parts[..., 2] >= 0).all()        # positive weights, ReLU inputs
    assert (parts[..., 1] <= 0).all() and (parts[..., 3] <= 0).all()
    # by hand for one image and class: w_cj a_j over the blocks of Eq. 6
    from sepdtd import regularization

    seen = []
    h = net[-1].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        net(x[3:4])
    h.remove()
    c = int(classes[3, 1])
    w, a = net[-1].weight[c], seen[0][0]
    off = regularization.block_mask(3, 9, 3)[c]
    assert parts[3, 1, 2].item() == pytest.approx(float((w * a).detach()[off & (w > 0)].sum()))
    assert parts[3, 1, 4].item() == pytest.approx(float(net[-1].bias[c]))


def test_a_unit_of_the_study_runs_and_is_read_back(synthetic, tiny_mechanism, dirs):
    res = mechanism.run("tiny", "mnist", 0, device="cpu", progress=False, **dirs)
    tags = [e["tag"] for e in res["networks"]]
    assert tags == ["baseline", "lam0.5", "lam5.0", "abl-free-output-bias", "abl-output-penalty", "sweep-lam1.0",
                    "sweep-lam1000.0"]
    assert res["stale"] == []
    rows = mechanism.ablation_rows([res])
    assert [r["tag"] for r in rows] == ["baseline", "abl-free-output-bias", "abl-output-penalty"]
    for r in rows:
        assert set(r["pointing2"]) == {"signed", "corrected", "centered"}
        assert r["top2_parts"]["logit"] == pytest.approx(sum(v for k, v in r["top2_parts"].items() if k != "logit"))
    sweep = mechanism.sweep_rows([res])
    assert [r["lam"] for r in sweep] == [0.0, 1.0, 1000.0] and all(r["inblock"] is not None for r in sweep)
    net = experiments.load_network("tiny", "mnist", "abl-free-output-bias", results_dir=dirs["results_dir"])
    assert not net.training
    assert mechanism.load_results("tiny", results_dir=dirs["results_dir"]) == [res]
    # the measure command finds every measurement of the study
    plans = remeasure.plans("tiny", "mnist", 0, tags)
    assert set(plans) == {"paper", "beyond", "mechanism"} and set(plans["paper"]) == set(tags)
    assert set(plans["beyond"]) == {"baseline", "lam0.5", "lam5.0"}          # the paper's networks of chapter 9
    assert set(plans["mechanism"]) == {"baseline", "lam0.5", "lam5.0", "abl-free-output-bias", "abl-output-penalty"}


def test_the_measure_plan_gives_the_paper_networks_of_chapters_9_10_every_measurement():
    paper = ["baseline", "lam0.1", "lam0.5", "lam1.0", "lam5.0"]
    plans = remeasure.plans("full", "mnist", 0, paper)
    assert {k: sorted(v) for k, v in plans.items()} == {k: sorted(paper) for k in ("paper", "beyond", "mechanism")}
    assert set(remeasure.plans("full", "mnist", 1, paper)) == {"paper"}     # chapters 9-10 study seed 0 only


def test_a_unit_without_its_ablations_and_sweep_is_read_with_what_is_missing(synthetic, tiny_mechanism, dirs):
    res = mechanism.run("tiny", "mnist", 0, device="cpu", progress=False, **dirs)
    assert res["missing"] == []
    from sepdtd.pipeline import store

    path = store.record_path(dirs["results_dir"], "train", "mnist", 0)
    gone = [t for t in store.read_record(path)["networks"] if t.startswith(("abl-output", "sweep-"))]

    def drop(tags):
        store.update_record(path, {}, lambda nets: [nets.pop(t) for t in tags])

    drop(gone)
    part = mechanism.unit("tiny", "mnist", 0, results_dir=dirs["results_dir"])
    assert sorted(part["missing"]) == sorted(gone)
    assert [e["tag"] for e in part["networks"]] == [e["tag"] for e in res["networks"] if e["tag"] not in gone]
    assert mechanism.sweep_rows([part]) == [r for r in mechanism.sweep_rows([res]) if r["lam"] == 0.0]
    import matplotlib.pyplot as plt

    from sepdtd import plots

    quick = [{**r, "dataset": "cifar10", "profile": "quick"} for r in mechanism.sweep_rows([res])]
    fig = plots.lambda_sweep(mechanism.sweep_rows([part]) + quick)     # MNIST has no sweep: no line
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["CIFAR-10"]
    fig = plots.lambda_sweep(mechanism.sweep_rows([res]) + quick)
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["MNIST (tiny)", "CIFAR-10 (quick)"]
    plt.close("all")
    drop(["lam0.5"])
    assert mechanism.unit("tiny", "mnist", 0, results_dir=dirs["results_dir"]) is None   # a paper network is gone


def _ablation_row(tag, seed=0, dataset="mnist", corrected=0.25, nan=3):
    return {"dataset": dataset, "seed": seed, "tag": tag, "accuracy": 0.98, "abs_cosine": 0.5,
            "logit_nonpositive": [0.1, 0.9], "centered_logit_nonpositive": [0.0, None],
            "pointing2": {"signed": 0.0, "corrected": corrected, "centered": 0.5},
            "pointing2_nan": {"signed": 7, "corrected": nan, "centered": 0}}


def test_the_ablation_table_orders_the_networks_and_shows_the_sign_corrected_pointing_game():
    rows = [_ablation_row("abl-output-penalty"), _ablation_row("lam1.0", corrected=None, nan=12),
            _ablation_row("baseline", seed=1), _ablation_row("baseline")]
    header, body = mechanism.ablation_table(rows)
    assert len(header) == len(body[0]) == 9
    assert [(b[1], b[2]) for b in body] == [("0", "baseline"), ("0", "λ = 1"),
                                            ("0", "λ = 1, Eq. 6 on the output layer only"), ("1", "baseline")]
    assert body[0][4:] == ["10% / 90%", "0% / —", "0.500", "25%", "3"]
    assert body[1][7:] == ["—", "12"]


def test_the_centred_cosine_is_that_of_heatmaps_started_at_the_centred_logits():
    """DTD is linear in its start: started at c instead of f, a heatmap is h * c / f."""
    from sepdtd import dtd, metrics

    net = fingerprint.probe_network()
    x, _ = fingerprint.probe_images()
    with torch.no_grad():
        logits = net(x)
    top = logits.topk(2, dim=1)
    centered = top.values - logits.mean(1, keepdim=True)
    h = dtd.heatmap(net, x, top.indices, low=0.0, high=1.0).detach().double()
    got = measure.top2_cosines(h, top.values, centered)
    scale = (centered / top.values).double().view(-1, 2, 1, 1)         # the heatmaps started at the centred logits
    want = metrics.cosines((h * scale)[:, 0], (h * scale)[:, 1]).double()
    mixed = (top.values[:, 0] > 0) & (top.values[:, 1] <= 0)
    assert mixed.any(), "the probe needs an image whose top-1 logit is > 0 and top-2 logit <= 0"
    ok = ~want.isnan()
    torch.testing.assert_close(got["centered_cosine"][ok], want[ok], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got["abs_cosine"], got["cosine"].abs(), equal_nan=True)


def test_the_parts_table_shows_each_part_of_the_top2_logit_and_their_sum():
    parts = {"in_pos": 0.5, "in_neg": -0.25, "off_pos": 0.0, "off_neg": -2.0, "bias": -0.125, "logit": -1.875}
    rows = [{**_ablation_row("lam1.0"), "top2_parts": parts}, {**_ablation_row("baseline"), "top2_parts": parts}]
    header, body = mechanism.parts_table(rows)
    assert header[3:] == ["in-block +", "in-block −", "off-block +", "off-block −", "bias", "logit"]
    assert [b[2] for b in body] == ["baseline", "λ = 1"]                   # the table's network order
    assert body[0][3:] == ["+0.50", "-0.25", "+0.00", "-2.00", "-0.12", "-1.88"]
