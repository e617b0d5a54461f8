"""The stages of sepdtd.pipeline: configurations, kept networks, records, fingerprints, train and measure."""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from sepdtd import metrics, training, utils
from sepdtd.pipeline import fingerprint, measure, store, train, view
from sepdtd.pipeline.config import MeasureConfig, Stage, TrainConfig, finetune_seed

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------ configs
def test_config_key_is_canonical_and_ignores_scheduling():
    a = TrainConfig(dataset="mnist", seed=0, lams=(1, 0.5), stage=Stage(lr=1e-3, batch_size=128, max_epochs=5))
    b = TrainConfig(dataset="fashion-mnist", seed=0).__class__(dataset="MNIST", seed=0, lams=(1.0, 0.5),
                                                               stage=Stage(lr=0.001, batch_size=128, max_epochs=5),
                                                               eval_batch_size=77)
    assert a.key() == b.key() and len(a.key()) == 12
    assert TrainConfig.from_dict(json.loads(json.dumps(a.as_dict()))) == a
    assert MeasureConfig.from_dict(MeasureConfig(kind="beyond", dataset="mnist", seed=1, methods=("dtd", "epsilon"))
                                   .as_dict()).methods == ("dtd", "epsilon")


@pytest.mark.parametrize("change", [
    {"seed": 1}, {"arch": "depth-1"}, {"lams": (0.5,)}, {"n_train": 100}, {"n_val": 10}, {"val_fraction": 0.2},
    {"augment": True}, {"clamp_bias": False}, {"n_blocks": 5}, {"penalty": "mean"}, {"penalty_layers": "output"},
    {"start": "baseline:abc"}, {"stage": Stage(lr=1e-4, batch_size=128, max_epochs=200)},
])
def test_every_setting_changes_the_key(change):
    base = TrainConfig(dataset="mnist", seed=0)
    assert dataclasses.replace(base, **change).key() != base.key()


@pytest.mark.parametrize("bad, message", [
    ({"dataset": "svhn"}, "unknown data set"), ({"seed": -1}, "seed"), ({"seed": 2**40}, "below 2"),
    ({"lams": (float("nan"),)}, "finite"), ({"lams": (0.1, 0.1)}, "duplicate"), ({"arch": "resnet"}, "unknown arch"),
    ({"penalty": "max"}, "penalty"), ({"start": "baseline"}, "start"), ({"val_fraction": 1.0}, "val_fraction"),
])
def test_bad_train_configs_are_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        TrainConfig(**{"dataset": "mnist", "seed": 0, **bad})


def test_from_dict_names_unknown_fields():
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**TrainConfig(dataset="mnist", seed=0).as_dict(), "colour": "red"})


def test_train_seed():
    cfg = TrainConfig(dataset="mnist", seed=3)
    assert cfg.train_seed == 3
    assert dataclasses.replace(cfg, start="baseline:x").train_seed == finetune_seed(3) != 3


# --------------------------------------------------------------------------------------------- store
def _net(seed: int = 0) -> torch.nn.Module:
    return fingerprint.probe_network(seed).float()


def test_networks_are_kept_as_float16_with_their_digest(tmp_path):
    net = _net()
    info = store.save_network(tmp_path, "networks/probe/seed0/a.safetensors", net, metadata={"tag": "a"})
    assert info["dtype"] == "float16" and len(info["sha256"]) == 64
    assert store.read_manifest(tmp_path)["networks/probe/seed0/a.safetensors"]["sha256"] == info["sha256"]
    again = {store.save_network(tmp_path, f"networks/p/b{i}.safetensors", net, metadata={"tag": "a"})["sha256"]
             for i in range(8)}
    assert again == {info["sha256"]}                  # the same network gives the same bytes, every time
    state = store.load_state(tmp_path, info["file"], info["sha256"])
    for k, v in net.state_dict().items():
        assert state[k].dtype == torch.float16
        assert torch.equal(state[k].float(), v.half().float())


def test_the_same_weights_give_the_same_file(tmp_path):
    net = _net()
    digests = {store.save_network(tmp_path, f"networks/probe/seed0/{i}.safetensors", net,
                                  metadata={"tag": "a", "job": "k"})["sha256"] for i in range(12)}
    assert len(digests) == 1
    info = store.save_network(tmp_path, "networks/probe/seed0/a.safetensors", net, metadata={"tag": "a"})
    with safe_open(tmp_path / info["file"], "pt") as f:
        assert f.metadata() == {"sepdtd": '{"tag": "a"}'}
    state = store.load_state(tmp_path, info["file"], info["sha256"])
    assert all(torch.equal(state[k], v.half()) for k, v in net.state_dict().items())


def test_a_damaged_or_swapped_network_is_refused_with_its_name(tmp_path):
    a = store.save_network(tmp_path, "networks/x/a.safetensors", _net(0))
    b = store.save_network(tmp_path, "networks/x/b.safetensors", _net(1))
    path = tmp_path / a["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(store.DigestError, match="a.safetensors is damaged or was swapped"):
        store.load_state(tmp_path, a["file"])
    (tmp_path / b["file"]).replace(path)  # b's bytes under a's name
    with pytest.raises(store.DigestError, match="a.safetensors"):
        store.load_state(tmp_path, a["file"])
    c = store.save_network(tmp_path, "networks/x/c.safetensors", _net(2))
    with pytest.raises(store.DigestError, match="c.safetensors .* not the one the record was made from"):
        store.load_state(tmp_path, c["file"], a["sha256"])
    with pytest.raises(FileNotFoundError, match="d.safetensors is missing"):
        store.load_state(tmp_path, "networks/x/d.safetensors")


def _entry(cfg: TrainConfig) -> dict:
    return {"config": cfg.as_dict(), "config_hash": cfg.key(), "fingerprint": {}, "file": "f", "sha256": "0" * 64,
            "training": {"epochs": 1, "best_epoch": 1, "history": {}}, "provenance": {}}


def test_records_are_checked_on_read(tmp_path):
    path = store.record_path(tmp_path, "train", "mnist", 0)
    cfg = TrainConfig(dataset="mnist", seed=0)
    store.update_record(path, {"stage": "train", "dataset": "mnist", "seed": 0},
                        lambda n: n.update(baseline=_entry(cfg)))
    assert store.read_record(path)["networks"]["baseline"]["config_hash"] == cfg.key()
    rec = json.loads(path.read_text())
    rec["networks"]["baseline"]["config"]["n_train"] = 7  # an edited configuration
    path.write_text(json.dumps(rec))
    with pytest.raises(store.RecordError, match=r"seed0.json: networks.baseline.config hashes to .* it was edited"):
        store.read_record(path)
    del rec["networks"]["baseline"]["training"]
    path.write_text(json.dumps(rec))
    with pytest.raises(store.RecordError, match="has no 'training'"):
        store.read_record(path)
    path.write_text("{")
    with pytest.raises(store.RecordError, match="seed0.json: not valid JSON"):
        store.read_record(path)


def test_concurrent_updates_keep_every_entry(tmp_path):
    path = store.record_path(tmp_path, "train", "mnist", 0)
    cfg = TrainConfig(dataset="mnist", seed=0)

    def add(tag: str) -> None:
        store.update_record(path, {"stage": "train", "dataset": "mnist", "seed": 0},
                            lambda n: n.update({tag: _entry(cfg)}))

    threads = [threading.Thread(target=add, args=(f"n{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(store.read_record(path)["networks"]) == [f"n{i}" for i in range(8)]


# -------------------------------------------------------------------------------------- fingerprints
def test_the_probe_holds_the_edge_cases():
    net = fingerprint.probe_network()
    x, _ = fingerprint.probe_images()
    with torch.no_grad():
        logits = net(x)
    top = logits.topk(2, dim=1).values
    assert (top[:, 1] < 0).any() and (top[:, 1] > 0).any()        # negative and positive second logits
    assert logits[0, 0] == logits[0, 2] == 0                          # tied logits of 0 on the zero image
    from sepdtd import dtd

    h = dtd.heatmap(net, x[:1], logits[:1].topk(2, dim=1).indices, low=0.0, high=1.0)
    assert h.abs().max() == 0                                         # its heatmaps are blank
    pairs = fingerprint.probe_pairs(net)
    a, b = pairs.masks[:, 0], pairs.masks[:, 1]
    assert ((a & ~b).flatten(1).sum(1) == 0).any()                    # an object inside the shared pixels
    _, per = measure.beyond_fields(net, x, pairs, methods=("dtd",), max_scored=10, batch_size=3)
    assert per["methods.dtd.pointing"].isnan().any() and (per["methods.dtd.pointing"] == 0).any()


def test_measure_fingerprints_name_every_field():
    paper = fingerprint.measure_fields("paper")
    assert {"accuracy", "test_loss", "cosine", "abs_cosine", "logit_nonpositive", "inblock"} <= set(paper)
    assert {f"diffusion.{c}" for c in metrics.CONVENTIONS} <= set(paper)
    beyond = fingerprint.measure_fields("beyond")
    assert {"methods.dtd.pointing", "methods.sglrp.mass", "methods.epsilon.cosine"} <= set(beyond)


def _fresh(kind: str) -> dict[str, str]:
    return fingerprint.measure_fields.__wrapped__(kind)


def test_changing_one_metric_changes_exactly_its_fields(monkeypatch):
    before = _fresh("paper")
    real = metrics.cosines
    monkeypatch.setattr(metrics, "cosines", lambda a, b, **kw: real(a, b, **kw) * 0.5)
    after = _fresh("paper")
    assert {k for k in before if before[k] != after[k]} == {"cosine", "abs_cosine", "sc_cosine"}
    monkeypatch.setattr(metrics, "cosines", real)
    before = _fresh("beyond")
    real_point = metrics.pointing_game
    monkeypatch.setattr(metrics, "pointing_game", lambda *a, **kw: real_point(*a, **kw).nan_to_num(0.0))
    changed = {k for k, v in _fresh("beyond").items() if before[k] != v}
    assert changed and all(k.endswith(("pointing", "pointing_objects", "pointing_nan")) for k in changed)


def test_changing_the_stacked_loop_changes_the_finetunes_only(monkeypatch):
    before = fingerprint.train_components.__wrapped__()
    real = training._Stack.objective
    monkeypatch.setattr(training._Stack, "objective", lambda self, xb, yb: real(self, xb, yb) * 1.5)
    after = fingerprint.train_components.__wrapped__()
    assert {k for k in before if before[k] != after[k]} == {"penalty", "output-bias"}
    base = TrainConfig(dataset="mnist", seed=0)
    assert "penalty" not in fingerprint.train_dependencies(base)
    assert "penalty" in fingerprint.train_dependencies(dataclasses.replace(base, start="baseline:x"))


def test_fingerprints_do_not_depend_on_threads_or_process():
    code = ("import json, sys, torch; torch.set_num_threads(int(sys.argv[1])); from sepdtd.pipeline import "
            "fingerprint as f; print(json.dumps([f.train_components(), f.measure_fields('paper'), "
            "f.measure_fields('beyond')]))")
    outs = [subprocess.run([sys.executable, "-c", code, n], capture_output=True, text=True, check=True, cwd=REPO).stdout
            for n in ("1", "2")]
    assert outs[0] == outs[1]
    assert json.loads(outs[0])[0] == fingerprint.train_components()


# ----------------------------------------------------------------------------------------- stages
@pytest.fixture
def probe_data(monkeypatch):
    """Stand-ins for the data set: 1 x 8 x 8 probe images, so the stages run in seconds."""
    from sepdtd import data

    x, y = fingerprint.probe_data(120, 0)
    xt, yt = fingerprint.probe_data(40, 1)
    ds = data.Dataset(name="mnist", x_train=(x * 255).to(torch.uint8), y_train=y, x_test=(xt * 255).to(torch.uint8),
                      y_test=yt, classes=("a", "b", "c"))
    monkeypatch.setattr(data, "load", lambda name, **kw: ds)
    monkeypatch.setattr(TrainConfig, "build", lambda self: fingerprint.probe_network(self.seed).float().train())


def _jobs(max_epochs: int = 3) -> list[train.Job]:
    base = TrainConfig(dataset="mnist", seed=0, stage=Stage(lr=0.01, batch_size=16, max_epochs=max_epochs))
    fine = dataclasses.replace(base, lams=(0.01, 1.0), start=f"baseline:{base.key()}",
                               stage=Stage(lr=0.003, batch_size=16, max_epochs=max_epochs))
    return [train.Job(("baseline",), base), train.Job(("lam0.01", "lam1.0"), fine)]


def test_train_keeps_networks_and_skips_current_ones(probe_data, tmp_path, monkeypatch):
    js = _jobs()
    kw = dict(device="cpu", progress=False, checkpoints_dir=tmp_path / "ck", profile="probe")
    out = train.ensure(tmp_path / "r", "mnist", 0, js, **kw)
    assert list(out) == ["baseline", "lam0.01", "lam1.0"]
    base = out["baseline"]
    assert out["lam1.0"]["start"] == {"tag": "baseline", "sha256": base["sha256"]}
    assert out["lam1.0"]["training"]["seed"] == finetune_seed(0)
    assert set(base["fingerprint"]) == {"model.table1", "split", "loop"}
    assert {"accuracy_float32", "accuracy_float16", "abs_cosine_float16"} <= set(base["rounding"])
    # the fine-tunes start from the kept (float16) baseline
    kept = measure.load_network(tmp_path / "r", base)
    assert all(torch.equal(v, v.half().float()) for v in kept.state_dict().values())
    calls = []
    monkeypatch.setattr(training, "fit", lambda *a, **k: calls.append(1))
    assert train.ensure(tmp_path / "r", "mnist", 0, js, **kw) == out and not calls


def test_a_stage_removes_what_dead_writers_left_anywhere_below(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid, old = int(dead.stdout), time.time() - utils.STALE_AFTER_S - 60
    left = [tmp_path / "r" / "networks" / "mnist" / "seed3" / f"lam1.0.safetensors.tmp-{utils._host()}-{pid}-a1",
            tmp_path / "ck" / "mnist" / "seed3" / "0123abcd" / f"train.pt.tmp-{utils._host()}-{pid}-b2"]
    for f in left:
        f.parent.mkdir(parents=True)
        f.write_bytes(b"half")
        os.utime(f, (old, old))
    assert train.ensure(tmp_path / "r", "mnist", 0, [], device="cpu", checkpoints_dir=tmp_path / "ck") == {}
    assert not any(f.exists() for f in left) and all(f.parent.is_dir() for f in left)


def test_an_interrupted_job_resumes_and_gives_the_same_networks(probe_data, tmp_path, monkeypatch):
    kw = dict(device="cpu", progress=False, profile="probe", checkpoint_every_s=0)
    whole = train.ensure(tmp_path / "a", "mnist", 0, _jobs(4), checkpoints_dir=tmp_path / "ck1", **kw)
    real = training._Stack.validate
    count = {"n": 0}

    def stop_after_two(self, *a):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a)

    monkeypatch.setattr(training._Stack, "validate", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train.ensure(tmp_path / "b", "mnist", 0, _jobs(4), checkpoints_dir=tmp_path / "ck2", **kw)
    assert set(store.read_record(store.record_path(tmp_path / "b", "train", "mnist", 0))["networks"]) == {"baseline"}
    monkeypatch.setattr(training._Stack, "validate", real)
    resumed = train.ensure(tmp_path / "b", "mnist", 0, _jobs(4), checkpoints_dir=tmp_path / "ck2", **kw)
    assert resumed["lam1.0"]["training"]["resumed_from"] == 2
    for tag in whole:
        assert resumed[tag]["sha256"] == whole[tag]["sha256"]


def test_stale_networks_are_kept_or_retrained_on_request(probe_data, tmp_path, monkeypatch):
    kw = dict(device="cpu", progress=False, checkpoints_dir=tmp_path / "ck", profile="probe")
    js = _jobs(2)
    out = train.ensure(tmp_path, "mnist", 0, js, **kw)
    changed = {**fingerprint.train_components(), "loop": "0" * 12}
    monkeypatch.setattr(fingerprint, "train_components", lambda: changed)
    reasons = train.status(out["baseline"], js[0], "baseline", out)
    assert [r["field"] for r in reasons] == ["loop"]
    with pytest.warns(RuntimeWarning, match="keeping the stale networks"):
        assert train.ensure(tmp_path, "mnist", 0, js, **kw)["baseline"]["sha256"] == out["baseline"]["sha256"]
    again = train.ensure(tmp_path, "mnist", 0, js, retrain="stale", **kw)
    assert again["baseline"]["fingerprint"]["loop"] == "0" * 12


def test_measured_fields_equal_the_generic_metrics_with_their_own_forward_pass():
    """The measure stage reads the top-2 classes and logits from the explanation's own forward pass; the
    public metrics run a separate one. In float64 both must give the same numbers, sign cases included."""
    from sepdtd import attribution

    net = fingerprint.probe_network()
    x, y = fingerprint.probe_images()
    for method in ("dtd", "clrp"):
        fields, per = measure.top2_fields(method, net, x, torch.device("cpu"), 3, metrics.CONVENTIONS[:3])
        ref = metrics.top2(net, x, low=0.0, high=1.0, batch_size=5, device="cpu", conventions=metrics.CONVENTIONS[:3],
                           heatmap_fn=functools.partial(attribution.heatmap, method),
                           starts_at_logit=method in measure.LOGIT_STARTED)
        for k in ("cosine", "abs_cosine", "sc_cosine", *(f"diffusion.{c}" for c in metrics.CONVENTIONS[:3])):
            torch.testing.assert_close(per[k], ref[k], equal_nan=True)
        assert per["logit_nonpositive"].tolist() == (ref["logits"] <= 0).double().tolist()
    fields, per = measure.paper_fields(net, (x * 255).round().to(torch.uint8), y, x, batch_size=3)
    loss, acc = training.evaluate(net, (x * 255).round().to(torch.uint8), y, device="cpu")
    assert fields["accuracy"] == pytest.approx(acc, abs=1e-12) and fields["test_loss"] == pytest.approx(loss, rel=1e-6)


@pytest.mark.parametrize("labels, message", [
    (torch.tensor([0, 1, 2, 0, 1, 2, 0, 3]), r"y_test holds labels in \[0, 3\] but the model has 3 outputs"),
    (torch.tensor([0, 1, 2]), r"y_test must be a \(N,\) tensor with N = 8 labels"),
    (torch.zeros(8), "y_test must hold integer class labels"),
])
def test_paper_fields_refuse_bad_labels_before_measuring(labels, message, monkeypatch):
    net = fingerprint.probe_network()
    x, _ = fingerprint.probe_images()
    monkeypatch.setattr(measure, "top2_fields", lambda *a, **kw: pytest.fail("measured despite bad labels"))
    with pytest.raises((TypeError, ValueError), match=message):
        measure.paper_fields(net, x, labels, x)


def test_measure_resumes_and_redoes_only_what_is_not_current(probe_data, tmp_path, monkeypatch):
    root = tmp_path / "r"
    train.ensure(root, "mnist", 0, _jobs(2), device="cpu", progress=False, checkpoints_dir=tmp_path / "ck")
    cfg = MeasureConfig(kind="paper", dataset="mnist", seed=0, batch_size=16)
    plan = {t: cfg for t in ("baseline", "lam0.01", "lam1.0")}
    done = []

    def stop(tag):
        done.append(tag)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure.measure(root, "mnist", 0, plan, device="cpu", progress=False, on_network=stop)
    rec = measure.measure(root, "mnist", 0, plan, device="cpu", progress=False, on_network=done.append)
    assert done == ["baseline", "lam0.01", "lam1.0"]
    e = rec["networks"]["lam1.0"]
    assert e["fields"]["n_test"] == 40 and 0 <= e["fields"]["accuracy"] <= 1
    assert set(e["fingerprints"]) >= {"accuracy", "diffusion.raw", "cosine"}
    measure.measure(root, "mnist", 0, plan, device="cpu", progress=False, on_network=done.append)
    assert len(done) == 3
    # a changed metric makes exactly its fields stale, and only those networks' entries are redone
    fp = {**fingerprint.measure_fields("paper"), "cosine": "0" * 12}
    monkeypatch.setattr(fingerprint, "measure_fields", lambda kind: fp)
    reasons = measure.status(e, e["sha256"], cfg)
    assert [r["field"] for r in reasons] == ["cosine"]
    measure.measure(root, "mnist", 0, plan, device="cpu", progress=False, on_network=done.append)
    assert len(done) == 6


def test_the_view_explains_known_changes(probe_data, tmp_path, monkeypatch):
    js = _jobs(2)
    root = tmp_path / "r"
    train.ensure(root, "mnist", 0, js, device="cpu", progress=False, checkpoints_dir=tmp_path / "ck")
    cfg = MeasureConfig(kind="paper", dataset="mnist", seed=0, batch_size=16)
    plans = {"paper": {t: cfg for j in js for t in j.tags}}
    measure.measure(root, "mnist", 0, plans["paper"], device="cpu", progress=False)
    assert all(not n["stale"] for n in view.networks(root, "mnist", 0, js, plans).values())
    old = fingerprint.measure_fields("paper")["cosine"]
    fp = {**fingerprint.measure_fields("paper"), "cosine": "1" * 12}
    monkeypatch.setattr(fingerprint, "measure_fields", lambda kind: fp)
    (root / view.KNOWN_CHANGES).write_text(json.dumps({"changes": [
        {"stage": "measure", "field": "cosine", "from": old, "to": "1" * 12, "why": "a tolerance only"}]}))
    nets = view.networks(root, "mnist", 0, js, plans)
    reasons = nets["lam1.0"]["stale"]
    assert [(r["field"], r["known"], r["why"]) for r in reasons] == [("cosine", True, "a tolerance only")]
