"""Training loop: early stopping, augmentation, NaN detection, resume, a tiny end-to-end fit."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from sepdtd import training
from sepdtd.regularization import block_l1, inblock_share
from sepdtd.training import EarlyStopping, NaNLossError, augment_batch, evaluate, fit


# ---------------------------------------------------------------- early stopping
def test_early_stopping_sequence():
    es = EarlyStopping(3)
    stops = [es.step(v) for v in [5.0, 4.0, 4.0, 4.5, 4.0]]
    assert stops == [False, False, False, False, True]
    assert es.best == 4.0 and es.best_epoch == 2 and es.epochs == 5


def test_early_stopping_resets_on_improvement_and_min_delta():
    es = EarlyStopping(2)
    assert [es.step(v) for v in [3.0, 3.1, 2.9, 3.0, 3.0]] == [False, False, False, False, True]
    assert es.best_epoch == 3
    es = EarlyStopping(1, min_delta=0.1)
    assert es.step(1.0) is False and es.step(0.95) is True  # 0.95 is not below 1.0 - 0.1
    es = EarlyStopping(2)
    assert [es.step(v) for v in [1.0, float("nan"), float("nan")]] == [False, False, True]


@pytest.mark.parametrize("patience", [0, -1, 1.5, True])
def test_early_stopping_rejects_bad_patience(patience):
    with pytest.raises(ValueError):
        EarlyStopping(patience)


def test_early_stopping_state_roundtrip():
    es = EarlyStopping(3)
    for v in [3.0, 2.0, 2.5]:
        es.step(v)
    es2 = EarlyStopping(3)
    es2.load_state_dict(es.state_dict())
    assert [es2.step(v) for v in [2.5, 2.5]] == [es.step(v) for v in [2.5, 2.5]] == [False, True]


# ---------------------------------------------------------------- augmentation
def _shift_oracle(size: int, dy: int, dx: int, flip: bool, fill: str) -> torch.Tensor:
    """Explicit loops: flat source index of out[h, w] = flipped[h - dy, w - dx] (-1: zero fill)."""
    src = torch.full((size * size,), -1, dtype=torch.long)
    for h in range(size):
        for w in range(size):
            sh, sw = h - dy, w - dx
            if fill == "zero" and not (0 <= sh < size and 0 <= sw < size):
                continue
            sh, sw = min(max(sh, 0), size - 1), min(max(sw, 0), size - 1)
            src[h * size + w] = sh * size + (size - 1 - sw if flip else sw)
    return src


def _apply(img: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    flat = img.flatten(1)
    return torch.where(src >= 0, flat[:, src.clamp(min=0)], torch.zeros_like(flat[:, :1])).reshape(img.shape)


def test_augment_flip_only():
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(augment_batch(x, generator=g, flip_p=1.0, max_shift=0.0), x.flip(-1))
    assert torch.equal(augment_batch(x, generator=g, flip_p=0.0, max_shift=0.0), x)


@pytest.mark.parametrize("fill", ["nearest", "zero"])
def test_augment_matches_loop_oracle(fill):
    n, size = 200, 10  # max_shift=0.25: shifts up to floor(2.5) = 2 px
    x = (torch.arange(n * 2 * size * size) % 251 + 1).to(torch.uint8).reshape(n, 2, size, size)
    out = augment_batch(x, generator=torch.Generator().manual_seed(1), max_shift=0.25, fill=fill)
    assert out.shape == x.shape and out.dtype == x.dtype
    oracles = {(dy, dx, fl): _shift_oracle(size, dy, dx, fl, fill)
               for dy in range(-2, 3) for dx in range(-2, 3) for fl in (False, True)}
    seen = set()
    for i in range(n):
        matches = [k for k, src in oracles.items() if torch.equal(out[i], _apply(x[i], src))]
        assert matches, f"sample {i} is no flip/shift of its input"
        seen.update(matches)
    assert {(dy, dx) for dy, dx, _ in seen} == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)}
    assert {fl for _, _, fl in seen} == {False, True}


def test_augment_shift_range_and_flip_rate_on_32x32():
    x = torch.zeros(2000, 1, 32, 32)
    x[:, 0, 16, 16] = 1.0  # one bright pixel: its new position reveals the shift
    x[:, 0, 16, 10] = 0.5  # left of it; right of it after a flip
    out = augment_batch(x, generator=torch.Generator().manual_seed(2), fill="zero")
    pos = (out[:, 0] == 1.0).flatten(1).float().argmax(1)
    dy, col = pos // 32 - 16, pos % 32
    assert dy.min() == -3 and dy.max() == 3  # Keras' 10 % of 32 px -> up to 3 px
    flipped = (out[:, 0] == 0.5).flatten(1).float().argmax(1) % 32 > col
    dx = torch.where(flipped, col - 15, col - 16)  # the flip maps column 16 to 15
    assert dx.min() == -3 and dx.max() == 3
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_augment_is_deterministic_per_generator_state():
    x = torch.rand(16, 3, 8, 8)
    a = augment_batch(x, generator=torch.Generator().manual_seed(5))
    b = augment_batch(x, generator=torch.Generator().manual_seed(5))
    c = augment_batch(x, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError):
        augment_batch(x[0], generator=torch.Generator())


# ---------------------------------------------------------------- synthetic data and models
def _data(n: int, seed: int, size: int = 8):
    """Two classes: a bright band in the top (0) or bottom (1) half, on noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randint(0, 80, (n, 1, size, size), generator=g).to(torch.uint8)
    rows = torch.randint(0, size // 2 - 1, (n,), generator=g) + y * (size // 2)
    x[torch.arange(n), 0, rows] = 230
    return x, y


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(4 * 6 * 6, 8),
                         nn.ReLU(), nn.Linear(8, 2))


class _NaNAt(nn.Module):
    """Identity that returns nan on its ``at``-th call in training mode."""

    def __init__(self, at: int):
        super().__init__()
        self.at, self.calls = at, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.at:
                return x * float("nan")
        return x


def _fit(model, x, y, xv, yv, **kw):
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    return fit(model, x, y, xv, yv, **kw)


# ---------------------------------------------------------------- fit
def test_tiny_fit_reaches_high_accuracy_and_restores_best_weights():
    x, y = _data(600, 0)
    xv, yv = _data(200, 1)
    model = _net()
    rng_before = torch.get_rng_state()
    hist = _fit(model, x, y, xv, yv, lr=1e-2, batch_size=32, max_epochs=8, patience=3, lam=0.01)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert max(hist.val_accuracy) >= 0.95
    assert len(hist.train_loss) == len(hist.val_loss) == len(hist.val_accuracy) == hist.epochs
    assert 1 <= hist.best_epoch <= hist.epochs and hist.images_per_s > 0 and hist.wall_s > 0
    assert hist.val_loss[hist.best_epoch - 1] == min(hist.val_loss)
    # the model holds the best epoch's weights: its validation objective is the recorded best
    loss, acc = evaluate(model, xv, yv, device="cpu")
    assert loss + 0.01 * block_l1(model, 2).item() == pytest.approx(hist.val_loss[hist.best_epoch - 1], rel=1e-5)
    assert acc == hist.val_accuracy[hist.best_epoch - 1]
    assert model.training  # mode restored
    assert all((m.bias <= 0).all() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    json.dumps(hist.as_dict())


def test_early_stop_restores_best_not_last_weights():
    x, y = _data(300, 0)
    xv, yv = _data(100, 1)
    model = _net()
    hist = _fit(model, x, y, xv, 1 - yv, lr=1e-2, max_epochs=20, patience=2)  # validation gets worse
    assert hist.stopped_early and hist.epochs == hist.best_epoch + 2 < 20
    loss, _ = evaluate(model, xv, 1 - yv, device="cpu")
    assert loss == pytest.approx(hist.val_loss[hist.best_epoch - 1], rel=1e-6)
    assert loss < hist.val_loss[-1] - 1e-3


def test_penalty_moves_weight_mass_into_blocks():
    x, y = _data(300, 0)
    xv, yv = _data(100, 1)
    base, reg = _net(), _net()
    _fit(base, x, y, xv, yv, lr=1e-2, max_epochs=4, patience=5)
    hist = _fit(reg, x, y, xv, yv, lr=1e-2, max_epochs=4, patience=5, lam=1.0)
    assert hist.penalty[-1] < hist.penalty[0]
    assert inblock_share(reg, 2)[0] > inblock_share(base, 2)[0] + 0.2


def test_fit_and_evaluate_restore_eval_mode():
    x, y = _data(64, 0)
    model = _net().eval()
    _fit(model, x, y, x, y, max_epochs=1)
    assert not model.training
    evaluate(model, x, y, device="cpu")
    assert not model.training


def test_evaluate_known_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    x = torch.tensor([[255, 0, 0, 0], [0, 255, 0, 0], [255, 0, 0, 0]], dtype=torch.uint8).reshape(3, 1, 2, 2)
    y = torch.tensor([0, 1, 1])
    loss, acc = evaluate(model, x, y, device="cpu", batch_size=2)
    ce_right, ce_wrong = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert acc == pytest.approx(2 / 3)
    assert loss == pytest.approx((2 * ce_right + ce_wrong) / 3, rel=1e-6)


def test_evaluate_checks_labels_and_images_as_fit_does():
    x, y = _data(8, 0)
    with pytest.raises(ValueError, match=r"y_eval holds labels in \[0, 2\] but the model has 2 outputs"):
        evaluate(_net(), x, torch.where(y == 1, 2, y), device="cpu")
    with pytest.raises(TypeError, match="integer class labels"):
        evaluate(_net(), x, y.float(), device="cpu")
    xf = x.float() / 255
    xf[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="x_eval holds NaN or infinite"):
        evaluate(_net(), xf, y, device="cpu")


@pytest.mark.parametrize("lam", [-0.1, float("nan"), float("inf"), "0.5", True, torch.tensor([0.5])])
def test_bad_lam_raises(lam):
    x, y = _data(16, 0)
    with pytest.raises(ValueError, match="lam"):
        _fit(_net(), x, y, x, y, lam=lam)


def test_lam_takes_numpy_and_0d_tensor_scalars():
    import numpy as np

    x, y = _data(64, 0)
    ref = _net()
    _fit(ref, x, y, x, y, lam=0.5, max_epochs=1, n_blocks=2)
    for lam in (np.float32(0.5), np.array(0.5), torch.tensor(0.5, dtype=torch.float64)):
        model = _net()
        _fit(model, x, y, x, y, lam=lam, max_epochs=1, n_blocks=2)
        assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_non_finite_and_out_of_range_float_images_are_refused():
    x, y = _data(16, 0)
    xf = x.float() / 255
    xf[3, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"x_train holds NaN or infinite pixels in 1 image\(s\) \(the first is "
                                         r"image 3\)"):
        _fit(_net(), xf, y, x, y)
    with pytest.raises(ValueError, match=r"x_val spans \[0, 1\.804\], outside \[0, 1\].*uint8 images$"):
        _fit(_net(), x, y, x.float() / 127.5, y, max_epochs=1)


def test_float_images_in_0_to_255_are_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(training, "_run", _no_run)
    x, y = _data(16, 0)
    with pytest.raises(ValueError, match=r"x_train spans \[0, 2\d\d\], outside \[0, 1\].*look like 0\.\.255: divide "
                                         r"by 255"):
        _fit(_net(), x.float(), y, x, y)
    with pytest.raises(ValueError, match=r"x_eval spans \[0, 2\d\d\]"):
        evaluate(_net(), x.float(), y, device="cpu")
    with pytest.raises(ValueError, match=r"x_train spans \[-0\.5, 0\.4\d*\], outside \[0, 1\]"):
        _fit(_net(), x.float() / 255 - 0.5, y, x, y)


def _no_run(*args, **kwargs):
    raise AssertionError("training started before the arguments were checked")


def _file_in_the_way(tmp_path):
    (tmp_path / "file").write_text("in the way")
    return tmp_path / "file" / "ckpt" / "train.pt"


@pytest.mark.parametrize("change, error, message", [
    (lambda kw, tmp: kw.update(checkpoint=_file_in_the_way(tmp)), ValueError, r"checkpoint .*train\.pt cannot be "
                                                                                r"written \(.*\); choose a writable"),
    (lambda kw, tmp: kw.update(checkpoint=tmp), ValueError, "is a folder; give a file name in it"),
    (lambda kw, tmp: kw.update(n_blocks=0), ValueError, "n_blocks must be >= 1"),
    (lambda kw, tmp: kw.update(n_blocks="2"), TypeError, "n_blocks must be an int"),
    (lambda kw, tmp: kw.update(augment="no"), TypeError, "augment must be True or False, got str 'no'"),
    (lambda kw, tmp: kw.update(clamp_bias=None), TypeError, "clamp_bias must be True or False"),
    (lambda kw, tmp: kw.update(seed="0"), ValueError, r"seed must be an int in \[0, 2\*\*63\), got '0'"),
    (lambda kw, tmp: kw.update(seed=2**63), ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
    (lambda kw, tmp: kw.update(seed=-1), ValueError, r"seed must be an int in \[0, 2\*\*63\)"),
    (lambda kw, tmp: kw.update(patience=0), ValueError, "patience must be an int >= 1"),
    (lambda kw, tmp: kw.update(lr=True), ValueError, "lr must be a positive number"),
    (lambda kw, tmp: kw.update(weight_decay="0"), ValueError, "weight_decay must be a finite number >= 0"),
    (lambda kw, tmp: kw.update(checkpoint_every_s=float("nan")), ValueError, "checkpoint_every_s must be"),
    (lambda kw, tmp: kw.update(y=kw["y"].bool()), TypeError, "y_train must hold integer class labels, got torch.bool"),
    (lambda kw, tmp: kw.update(x=kw["x"].repeat(1, 3, 1, 1)), ValueError,
     r"the model does not take x_train's images of shape \(3, 8, 8\)"),
    (lambda kw, tmp: kw["model"][0].weight.data.__setitem__((0, 0, 0, 0), float("nan")), ValueError,
     r"the model's parameter 0\.weight holds NaN or infinite values"),
], ids=["checkpoint-under-a-file", "checkpoint-a-folder", "n_blocks-0", "n_blocks-str", "augment-str",
        "clamp_bias-None", "seed-str", "seed-2**63", "seed-negative", "patience-0", "lr-bool", "weight_decay-str",
        "checkpoint_every_s-nan", "labels-bool", "images-3-channels", "nan-weight"])
def test_every_argument_is_checked_before_any_work(monkeypatch, tmp_path, change, error, message):
    monkeypatch.setattr(training, "_run", _no_run)
    x, y = _data(16, 0)
    kw = dict(model=_net(), x=x, y=y)
    change(kw, tmp_path)
    model, x, y = kw.pop("model"), kw.pop("x"), kw.pop("y")
    with pytest.raises(error, match=message):
        _fit(model, x, y, x, y, **kw)
    if "checkpoint" in kw or kw.get("augment") == "no":
        with pytest.raises(error, match=message):
            training.fit_stacked([_net(), _net()], [0.0, 1.0], x, y, x, y, device="cpu", progress=False, **kw)


def test_evaluate_refuses_a_bad_batch_size():
    x, y = _data(8, 0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        evaluate(_net(), x, y, device="cpu", batch_size=0)


def test_bad_data_raises():
    x, y = _data(16, 0)
    with pytest.raises(ValueError, match="labels in"):
        _fit(_net(), x, y + 5, x, y)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        _fit(_net(), x[:, 0], y, x, y)
    with pytest.raises(ValueError, match="n_blocks"):
        _fit(_net(), x, y, x, y, lam=1.0, n_blocks=3)  # the last layer has 2 outputs


def test_nan_loss_names_epoch_and_step():
    x, y = _data(80, 0)
    model = nn.Sequential(_NaNAt(at=5 + 3), *_net())  # 3 steps per epoch at batch 32: epoch 3, step 2
    with pytest.raises(NaNLossError, match=r"epoch 3, step 2 of 3 .*lam=0.*lr=0.001.*lower learning rate"):
        _fit(model, x, y, x, y, batch_size=32, max_epochs=5)


def test_huge_learning_rate_raises_nan_error(monkeypatch):
    monkeypatch.setattr(training, "NAN_CHECK_EVERY", 2)
    x, y = _data(256, 0)
    with pytest.raises(NaNLossError, match=r"epoch \d+, step \d+ .*lr=1e\+30"):
        _fit(_net(), x, y, x, y, lr=1e30, batch_size=16, max_epochs=3)


# ---------------------------------------------------------------- checkpoints
def _same_state(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_after_interruption_is_exact(tmp_path):
    x, y = _data(200, 0)
    xv, yv = _data(64, 1)
    kw = dict(lr=3e-3, batch_size=32, patience=10, lam=0.05, augment=True, seed=3, checkpoint_key="cfg")
    full = _net(1)
    h_full = _fit(full, x, y, xv, yv, max_epochs=4, checkpoint=tmp_path / "a.pt", **kw)
    plain = _net(1)
    _fit(plain, x, y, xv, yv, max_epochs=4, **{k: v for k, v in kw.items() if k != "checkpoint_key"})
    assert _same_state(full, plain)  # checkpointing does not perturb the run

    part = _net(1)
    h1 = _fit(part, x, y, xv, yv, max_epochs=2, checkpoint=tmp_path / "b.pt", **kw)
    assert h1.epochs == 2 and not h1.stopped_early
    torch.manual_seed(1234)  # whatever the caller's RNG does in between must not matter
    resumed = _net(1)
    h2 = _fit(resumed, x, y, xv, yv, max_epochs=4, checkpoint=tmp_path / "b.pt", **kw)
    assert h2.resumed_from == 2 and h2.epochs == 4
    assert h2.train_loss == h_full.train_loss and h2.val_loss == h_full.val_loss
    assert h2.best_epoch == h_full.best_epoch
    assert _same_state(resumed, full)

    again = _net(1)  # a finished checkpoint is reused as is
    h3 = _fit(again, x, y, xv, yv, max_epochs=4, checkpoint=tmp_path / "b.pt", **kw)
    assert h3.resumed_from == 4 and h3.val_loss == h_full.val_loss and _same_state(again, full)


def test_mismatched_checkpoint_warns_and_starts_over(tmp_path):
    x, y = _data(64, 0)
    path = tmp_path / "c.pt"
    _fit(_net(), x, y, x, y, max_epochs=1, checkpoint=path, checkpoint_key="a")
    with pytest.warns(RuntimeWarning, match="other settings"):
        h = _fit(_net(), x, y, x, y, max_epochs=1, checkpoint=path, checkpoint_key="b")
    assert h.resumed_from == 0
    with pytest.warns(RuntimeWarning, match="other settings"):
        h = _fit(_net(), x, y, x, y, max_epochs=1, checkpoint=path, checkpoint_key="b", lam=0.5)
    assert h.resumed_from == 0
    path.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        h = _fit(_net(), x, y, x, y, max_epochs=1, checkpoint=path, checkpoint_key="b")
    assert h.resumed_from == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = _fit(_net(), x, y, x, y, max_epochs=2, checkpoint=path, checkpoint_key="b")
    assert h.resumed_from == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_cuda_resumes_and_detects_nan(tmp_path):
    x, y = _data(512, 0)
    xv, yv = _data(128, 1)
    kw = dict(lr=3e-3, batch_size=64, patience=10, lam=0.05, augment=True, seed=3, device="cuda")
    full = _net(1)
    h_full = _fit(full, x, y, xv, yv, max_epochs=4, **kw)
    assert max(h_full.val_accuracy) > 0.9 and next(full.parameters()).is_cuda
    part = _net(1)
    _fit(part, x, y, xv, yv, max_epochs=2, checkpoint=tmp_path / "g.pt", **kw)
    resumed = _net(1)
    h2 = _fit(resumed, x, y, xv, yv, max_epochs=4, checkpoint=tmp_path / "g.pt", **kw)
    assert h2.resumed_from == 2
    assert h2.val_loss == pytest.approx(h_full.val_loss, rel=1e-4)  # cuDNN may reorder sums
    model = nn.Sequential(_NaNAt(at=3), *_net())  # a Python-side counter: no CUDA graph
    with pytest.raises(NaNLossError, match=r"epoch 1, step 3 of 8"):
        _fit(model, x, y, xv, yv, batch_size=64, max_epochs=2, device="cuda", cuda_graph=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_cuda_graph_step_matches_ordinary_steps(lam):
    x, y = _data(500, 0)                        # 7 full batches of 64 and a last one of 52
    xv, yv = _data(128, 1)
    kw = dict(lr=3e-3, batch_size=64, patience=10, lam=lam, augment=True, seed=3, device="cuda", max_epochs=3)
    a, b = _net(1), _net(1)
    ha = _fit(a, x, y, xv, yv, cuda_graph=True, **kw)
    hb = _fit(b, x, y, xv, yv, cuda_graph=False, **kw)
    assert ha.cuda_graph and not hb.cuda_graph
    assert ha.train_loss == pytest.approx(hb.train_loss, rel=1e-4)   # same dropout masks, same steps
    assert ha.val_loss == pytest.approx(hb.val_loss, rel=1e-4)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
        assert all((m.bias <= 0).all() for m in a if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_step_snapshot_restores_parameters_and_optimizer_state():
    """The CUDA-graph capture restores the training state it found; checked here with the CPU path."""
    from sepdtd.training import _make_optimizer, _Step

    model = _net(0)
    x, y = _data(64, 0)
    x = x.float() / 255
    params = list(model.parameters())
    for fresh in (True, False):
        opt = _make_optimizer("adam", params, 1e-2, 0.0, torch.device("cpu"))
        step = _Step(lambda xb, yb: torch.nn.functional.cross_entropy(model(xb), yb), opt, params, [], graph=False)
        if not fresh:
            step(x, y)
        snap = step._snapshot()
        ref = [p.detach().clone() for p in params]
        torch.manual_seed(5)
        step(x, y)
        after_one = [p.detach().clone() for p in params]
        step(x, y)
        step._restore(snap)
        assert all(torch.equal(p, r) for p, r in zip(params, ref))
        torch.manual_seed(5)
        step(x, y)                               # the same step again: fresh state must act as new
        assert all(torch.equal(p, r) for p, r in zip(params, after_one))
