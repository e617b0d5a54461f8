"""The extra networks of chapter 10 (sepdtd.models) and the runner of chapters 9-10 (sepdtd.beyond)."""
from __future__ import annotations

import pytest
import torch

from sepdtd import attribution, beyond, dtd, experiments, models, training
from sepdtd.explain.rules import Composite, ZPlus, explain


# ------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", models.MODELS)
def test_depth_at_table1_count_is_table1(name):
    t = models.TABLE1_CONV[name]
    a, b = models.build(name, seed=3), models.build_depth(name, t, seed=3)
    assert [type(m) for m in a] == [type(m) for m in b]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


@pytest.mark.parametrize("name", models.MODELS)
def test_depth_variants_have_the_asked_conv_layers(name):
    t = models.TABLE1_CONV[name]
    for n in range(0, t + 3):
        net = models.build_depth(name, n, seed=0)
        dtd.check_model(net)
        assert models.conv_layers(net) == n and net.variant == f"depth-{n}"
        assert net(torch.zeros(2, *net.input_shape)).shape == (2, 10)
        if n > t:   # the added 3x3 'same' convolutions keep the dense layers' input size
            assert net[-4].in_features == models.build(name)[-4].in_features


def test_depth_errors():
    with pytest.raises(ValueError, match="n_conv"):
        models.build_depth("mnist", -1)
    with pytest.raises(ValueError, match="unknown model"):
        models.build_depth("svhn", 2)


@pytest.mark.parametrize("width", models.SEPARATE_WIDTHS)
def test_separate_dense_layers_stay_separate_through_training(width):
    net = models.build_separate("fashion_mnist", width=width, seed=0)
    dtd.check_model(net)
    out = net[-1]
    assert isinstance(out, models.BlockDiagonalLinear) and net.variant == f"separate-{width}"
    hidden = 256 if width == "split" else 2560
    assert out.in_features == hidden and net[-4].out_features == hidden
    off = out.keep == 0
    assert (out.weight[off] == 0).all() and (out.weight[~off] != 0).any()
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    training.fit(net, x, y, x[:16], y[:16], lr=1e-2, batch_size=16, max_epochs=2, device="cpu", progress=False)
    assert (out.weight[off] == 0).all(), "an off-block weight moved during training"
    # class c's output reads only its own block of hidden neurons: its DTD relevance at the hidden
    # layer is zero outside that block
    net.eval()
    xf = x[:4].float() / 255
    feats = torch.nn.Sequential(*list(net)[:-1])(xf)
    top = torch.nn.Sequential(out)                                      # z+ at the output layer alone
    r = explain(top, feats.detach(), torch.full((4, 1), 3), Composite(ZPlus()), low=None, high=None)
    blocks = torch.arange(hidden) * 10 // hidden
    assert (r[:, 0, blocks != 3] == 0).all() and (r[:, 0, blocks == 3] != 0).any()


# ---------------------------------------------------------------------------------------- the runner
def test_plans():
    js = beyond.jobs("quick", "mnist", 0)
    assert [j.tags for j in js][2:] == [("separate-split",), ("depth-1",), ("depth-4",)]
    base = experiments.jobs("quick", "mnist", 0)[0].config
    assert all(j.config.stage == base.stage and j.config.n_train == base.n_train for j in js[2:])
    paper = experiments.jobs("quick", "cifar10", 0)
    assert [j.tags for j in beyond.jobs("quick", "cifar10", 0)] == [j.tags for j in paper]
    assert [j.tags[0] for j in beyond.jobs("full", "fashion_mnist", 1)][2:] == [
        "separate-split", "depth-0", "depth-3", "depth-5"]
    m = beyond.measurements("quick", "mnist", 0)
    assert set(m["paper"]) == {t for j in js for t in j.tags}
    assert m["beyond"]["lam1.0"].methods == tuple(attribution.METHODS) and m["beyond"]["lam0.1"].methods == ("dtd",)
    assert m["beyond"]["depth-1"].methods == tuple(attribution.METHODS)
    full = beyond.measurements("full", "mnist", 0)["beyond"]
    assert all(c.methods == tuple(attribution.METHODS) for c in full.values())
    with pytest.raises(ValueError, match="unknown profile"):
        beyond.jobs("huge", "mnist")


@pytest.fixture(scope="module")
def smoke_unit(tmp_path_factory):
    """The smoke unit of MNIST, in temporary results and checkpoint folders."""
    root = tmp_path_factory.mktemp("beyond")
    res = beyond.ensure("smoke", "mnist", 0, "cpu", results_dir=root / "results", checkpoints_dir=root / "ck",
                        progress=False)
    return root, res


def test_unit_results(smoke_unit):
    root, res = smoke_unit
    tags = [e["model"] for e in res["entries"]]
    assert tags == ["baseline", "lam0.1", "lam0.5", "lam1.0", "lam5.0", "separate-split", "depth-1", "depth-4"]
    for e in res["entries"]:
        expect = set(attribution.METHODS) if e["model"] in ("baseline", "lam1.0") or e["family"] != "lambda" \
            else {"dtd"}
        assert set(e["methods"]) == expect
        assert 0 <= e["recognized"] <= 1 and e["params"] > 0 and 0 <= e["accuracy"] <= 1
        for m in e["methods"].values():
            assert set(m["diffusion"]) == {"raw", "max", "sum", "sc-raw", "sc-max", "sc-sum"}
            assert -1 <= m["cosine"] <= 1 and m["blank"] >= 0 and -1 <= m["sc_cosine"] <= 1
            assert abs(m["cosine"]) <= m["abs_cosine"] + 1e-12 <= 1 + 1e-12
            assert len(m["logit_nonpositive"]) == 2 and all(0 <= v <= 1 for v in m["logit_nonpositive"])
            assert m["logit_nonpositive"][0] <= m["logit_nonpositive"][1]      # top-1 logit >= top-2 logit
            assert all(0 <= c <= nan for c, nan in zip(m["covered"], m["mass_nan"]))  # covered: no mass either
            assert all(0 <= c <= nan for c, nan in zip(m["covered"], m["pointing_nan"]))
            assert m["n_eval"] == 32 and m["n_scored"] <= 32
            for v in m["mass"] + m["pointing"]:
                assert v is None or 0 <= v <= 1
    sep = next(e for e in res["entries"] if e["family"] == "separate")
    assert sep["trained_here"] and sep["epochs"] == 1 and sep["params"] < res["entries"][0]["params"]
    assert res["two_object"]["mode"] == "overlay" and res["two_object"]["n_pairs"] == 256
    assert [r["dataset"] for r in beyond.load_results("smoke", results_dir=root / "results")] == ["mnist"]
    assert all("entries" not in r for r in experiments.load_results(root / "results", profile="smoke"))
    assert res["provenance"]["commit"] and res["provenance"]["device"].startswith("cpu") and res["stale"] == []


def test_a_unit_whose_extra_networks_are_not_kept_is_read_with_the_paper_networks(smoke_unit, tmp_path):
    import shutil

    from sepdtd.pipeline import store

    root, res = smoke_unit
    copy = tmp_path / "results"
    shutil.copytree(root / "results", copy)
    path = store.record_path(copy, "train", "mnist", 0)
    extras = [e["model"] for e in res["entries"] if e["family"] != "lambda"]
    store.update_record(path, {}, lambda nets: [nets.pop(t) for t in extras])
    part = beyond.unit("smoke", "mnist", 0, results_dir=copy)
    assert part["missing"] == extras
    assert [e["model"] for e in part["entries"]] == [e["model"] for e in res["entries"] if e["family"] == "lambda"]
    assert set(part["config"]["jobs"]) == set(part["config"]["measure"]) == {e["model"] for e in part["entries"]}


def test_unit_is_read_not_recomputed(smoke_unit, monkeypatch):
    from sepdtd.pipeline import measure

    root, res = smoke_unit
    for name in ("fit", "fit_stacked"):
        monkeypatch.setattr(training, name, lambda *a, **k: pytest.fail("trained again"))
    monkeypatch.setattr(measure, "beyond_fields", lambda *a, **k: pytest.fail("measured again"))
    assert beyond.ensure("smoke", "mnist", 0, "cpu", results_dir=root / "results", checkpoints_dir=root / "ck",
                         progress=False) == res


def test_a_changed_method_makes_exactly_its_fields_stale(smoke_unit, monkeypatch):
    from sepdtd.pipeline import fingerprint

    root, _ = smoke_unit
    fp = dict(fingerprint.measure_fields("beyond"))
    fp["methods.sglrp.mass"] = "0" * 12
    real = fingerprint.measure_fields
    monkeypatch.setattr(fingerprint, "measure_fields", lambda kind: fp if kind == "beyond" else real(kind))
    (loaded,) = beyond.load_results("smoke", results_dir=root / "results")
    stale = {(r["field"], e["model"]) for e in loaded["entries"] for r in e["stale"]}
    assert stale == {("methods.sglrp.mass", t) for t in ("baseline", "lam1.0", "separate-split", "depth-1",
                                                            "depth-4")}


def test_reproduce_checks_every_data_set_name_first(monkeypatch):
    ran = []
    monkeypatch.setattr(beyond, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(ValueError, match="unknown data set 'svhn'"):
        beyond.reproduce("smoke", datasets=["mnist", "svhn"], seeds=[0])
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        beyond.reproduce("smoke", datasets=["mnist"], seeds=[0, -1])
    assert ran == []
    beyond.reproduce("smoke", datasets="mnist", seeds=[0])                 # one name, not its letters
    assert [a[1] for a in ran] == ["mnist"]


def test_summary_and_factors(smoke_unit):
    _, res = smoke_unit
    rows = beyond.summary([res, {**res, "seed": 1}])
    base = next(r for r in rows if r["model"] == "baseline" and r["method"] == "dtd")
    assert base["n_seeds"] == 2 and base["cosine"][1] == 0.0
    assert base["cosine"][0] == pytest.approx(res["entries"][0]["methods"]["dtd"]["cosine"])
    f = beyond.factors(rows)
    kinds = {(r["factor"], r["change"]) for r in f}
    assert {k for k, _ in kinds} == {"rule", "dense", "depth"} and len(f) == (len(attribution.METHODS) - 1) + 2 + 2
    eps = next(r for r in f if r["change"] == attribution.LABELS["epsilon"])
    want = res["entries"][0]["methods"]["epsilon"]["cosine"] - res["entries"][0]["methods"]["dtd"]["cosine"]
    assert eps["d_cosine"] == pytest.approx(want)


def test_summary_standard_errors_count_only_defined_masses(smoke_unit):
    """``mass*_se`` over the composites with a defined mass, as :func:`sepdtd.book.mass_se`."""
    from sepdtd import book

    _, res = smoke_unit
    results = [res, {**res, "seed": 1}]
    want = book.mass_se(results)
    for r in beyond.summary(results):
        se = want[(r["dataset"], r["model"], r["method"])]
        assert (r["mass1_se"], r["mass2_se"]) == pytest.approx(se, nan_ok=True)


def test_the_ground_truth_table_sums_the_undefined_cases_over_seeds(smoke_unit):
    _, res = smoke_unit
    rows = beyond.summary([res, {**res, "seed": 1}])
    base = next(r for r in rows if r["model"] == "baseline" and r["method"] == "dtd")
    m = res["entries"][0]["methods"]["dtd"]
    assert base["seeds"] == [0, 1]
    assert base["pointing_nan"] == [2 * m["pointing_nan"][0], 2 * m["pointing_nan"][1]]
    header, body = beyond.gt_table(rows, res["dataset"])
    assert header[7] == "undefined top-1 / top-2"
    assert [line[0] for line in body][0] == "Baseline" and all(line[1] == "0, 1" for line in body)
    assert body[0][2] == str(2 * m["n_scored"])
    assert body[0][7] == f"{2 * m['pointing_nan'][0]} / {2 * m['pointing_nan'][1]}"
    # results that predate the undefined counts show a dash, not a zero
    old = {**res, "entries": [{**e, "methods": {k: {kk: vv for kk, vv in v.items() if kk != "pointing_nan"}
                                                for k, v in e["methods"].items()}} for e in res["entries"]]}
    assert beyond.gt_table(beyond.summary([old]), res["dataset"])[1][0][7] == "—"
