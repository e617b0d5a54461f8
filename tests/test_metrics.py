"""Diffusion metric (Eq. 7), cosine similarity, normalization conventions, diffusion_variants."""
from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from torch import nn

from sepdtd.metrics import (
    CONVENTIONS,
    cosine,
    cosines,
    diffusion,
    diffusion_variants,
    frobenius,
    normalize,
    scaled,
    sign_corrected,
    softmax_scale,
)


def test_identical_heatmaps_have_zero_diffusion_and_cosine_one():
    h = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(0))
    assert diffusion(h, h.clone()) == 0.0
    assert cosine(h, h.clone()) == pytest.approx(1.0)


def test_diffusion_known_frobenius_values():
    h1 = torch.zeros(2, 2, 2)
    h2 = torch.zeros(2, 2, 2)
    h2[0, 0, 0], h2[0, 1, 1] = 3.0, 4.0  # ||.||_F = 5
    h2[1] = 1.0  # ||.||_F = 2
    assert frobenius(h1, h2).tolist() == [5.0, 2.0]
    assert diffusion(h1, h2) == pytest.approx(3.5)
    assert diffusion(h2, h1) == pytest.approx(3.5)
    # (N, C, H, W) is flattened per sample; numpy works too
    assert diffusion(np.zeros((1, 3, 2, 2)), np.ones((1, 3, 2, 2))) == pytest.approx(math.sqrt(12))


@pytest.mark.parametrize("f", [diffusion, cosine])
def test_shape_mismatch_and_empty_batches_raise(f):
    with pytest.raises(ValueError, match="shapes differ"):
        f(torch.zeros(2, 3, 3), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="at least one"):
        f(torch.zeros(0, 3, 3), torch.zeros(0, 3, 3))


def test_cosine_hand_cases():
    a = torch.tensor([[[1.0, 0.0]], [[1.0, 2.0]]])
    b = torch.tensor([[[0.0, 1.0]], [[-2.0, -4.0]]])  # orthogonal (0), opposite (-1)
    assert cosine(a, b) == pytest.approx(-0.5)
    assert cosine(a, 7.0 * a) == pytest.approx(1.0)  # scale-free
    z = torch.zeros(1, 2, 2)
    assert math.isnan(cosine(z, z)) and cosines(z, torch.ones(1, 2, 2)).isnan().all()  # no direction: undefined
    assert cosine(torch.cat([a, z[:, :1]]), torch.cat([b, z[:, :1]])) == pytest.approx(-0.5)  # left out of the mean
    tiny = 1e-15 * torch.tensor([[[3.0, -1.0], [0.5, 2.0]]])
    assert cosines(tiny, tiny).item() == pytest.approx(1.0)                 # scale-aware, however small
    nan = torch.tensor([[[1.0, float("nan")]]])
    assert cosines(nan, nan).isnan().all()


def test_normalize_conventions_per_heatmap():
    h = torch.tensor([[[[1.0, -4.0], [2.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (B=1, K=2, 2, 2)
    assert normalize(h, "raw") is h
    m = normalize(h, "max")
    assert torch.allclose(m[0, 0], h[0, 0] / 4.0) and torch.equal(m[0, 1], h[0, 1])
    s = normalize(h, "sum")
    assert torch.allclose(s[0, 0], h[0, 0] / 8.0) and torch.equal(s[0, 1], h[0, 1])
    assert s[0, 0].abs().sum().item() == pytest.approx(1.0)
    r = torch.ones(1, 3, 2, 2)  # relevance (N, C, H, W): one map across channels
    assert normalize(r, "sum", heatmap_dims=3).sum().item() == pytest.approx(1.0)


def test_normalize_rejects_softmax_and_unknown():
    assert CONVENTIONS == ("raw", "max", "sum", "softmax", "sc-raw", "sc-max", "sc-sum")
    for c in ("softmax", "sc-max"):
        with pytest.raises(ValueError, match="needs the logits"):
            normalize(torch.ones(1, 2, 2), c)
    with pytest.raises(ValueError, match="unknown convention"):
        normalize(torch.ones(1, 2, 2), "l2")


def test_a_sign_flip_is_no_separation_under_the_sign_corrected_conventions():
    """The top-2 logit is negative: DTD returns the same pattern negated. The signed quantities read that
    as the largest separation; the sign-corrected ones see the same explanation."""
    g = torch.Generator().manual_seed(4)
    pattern = torch.rand(1, 3, 3, generator=g)
    logits = torch.tensor([[2.0, -2.0, -5.0]])
    classes = torch.tensor([[0, 1]])
    h = logits.gather(1, classes)[:, :, None, None] * pattern[:, None]         # (1, 2, 3, 3): +P and -P
    assert cosines(h[:, 0], h[:, 1]).item() == pytest.approx(-1.0)
    for c in ("raw", "max", "sum"):
        signed = scaled(h, c, logits=logits, classes=classes)
        fixed = scaled(h, f"sc-{c}", logits=logits, classes=classes)
        assert frobenius(signed[:, 0], signed[:, 1]).item() > 0.1
        assert frobenius(fixed[:, 0], fixed[:, 1]).item() == pytest.approx(0.0, abs=1e-12)
    soft = scaled(h, "softmax", logits=logits, classes=classes)              # started at p > 0
    assert (soft > 0).all()
    assert torch.equal(sign_corrected(h, torch.tensor([[2.0, 0.0]]))[:, 1], torch.zeros(1, 3, 3))
    assert torch.equal(scaled(h, "sc-raw", logits=logits, classes=classes, starts_at_logit=False), h)
    with pytest.raises(ValueError, match="starts elsewhere"):
        scaled(h, "softmax", logits=logits, classes=classes, starts_at_logit=False)


def test_softmax_scale():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    p = torch.softmax(logits, 1)
    s = softmax_scale(logits, torch.tensor([[0, 1]]))
    assert s[0, 0].item() == pytest.approx(p[0, 0].item() / 2.0)
    assert s[0, 1].item() == pytest.approx(p[0, 1].item() / -1.0)  # negative logit flips the sign
    g = softmax_scale(logits, torch.tensor([[2]]), eps=1e-6)  # f_k = 0: guarded, finite
    assert torch.isfinite(g).all() and g.item() == pytest.approx(p[0, 2].item() / 1e-6)


class _Patterns:
    """Fake DTD: the heatmap of class k is f_k(x) * P_k (linear in the starting relevance, as DTD is)."""

    def __init__(self, n_classes: int, h: int, w: int):
        self.p = torch.randn(n_classes, h, w, generator=torch.Generator().manual_seed(1))
        self.calls = []

    def __call__(self, model, x, classes, *, low, high):
        assert classes.dtype == torch.int64 and classes.shape == (x.shape[0], 2)
        assert (low, high) == (0.0, 1.0)
        self.calls.append(x.shape[0])
        f = model(x).gather(1, classes)
        return f[:, :, None, None] * self.p[classes]


def _linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3 * 4 * 4, 5))


def test_diffusion_variants_against_hand_computation():
    model = _linear_model()
    x = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    fake = _Patterns(5, 4, 4)
    model.train()
    out = diffusion_variants(model, x, low=0.0, high=1.0, batch_size=3, device="cpu", heatmap_fn=fake)
    assert model.training  # mode restored
    assert fake.calls == [3, 3, 1]
    assert set(out) == {*CONVENTIONS, "cosine", "abs_cosine", "sc_cosine", "undefined", "top1_nonpositive",
                        "top2_nonpositive", "n"} and out["n"] == 7 and out["undefined"] == 0

    model.eval()
    with torch.no_grad():
        logits = model(x.float() / 255)
    top = logits.topk(2, 1).indices
    f = logits.gather(1, top)
    p = torch.softmax(logits, 1).gather(1, top)
    h = f[:, :, None, None] * fake.p[top]
    hs = p[:, :, None, None] * fake.p[top]
    raw = np.mean([torch.linalg.norm(h[n, 0] - h[n, 1]).item() for n in range(7)])
    soft = np.mean([torch.linalg.norm(hs[n, 0] - hs[n, 1]).item() for n in range(7)])
    mx = np.mean([torch.linalg.norm(h[n, 0] / h[n, 0].abs().max() - h[n, 1] / h[n, 1].abs().max()).item()
                  for n in range(7)])
    sm = np.mean([torch.linalg.norm(h[n, 0] / h[n, 0].abs().sum() - h[n, 1] / h[n, 1].abs().sum()).item()
                  for n in range(7)])
    assert out["raw"] == pytest.approx(raw, rel=1e-5)
    assert out["softmax"] == pytest.approx(soft, rel=1e-4)
    assert out["max"] == pytest.approx(mx, rel=1e-5)
    assert out["sum"] == pytest.approx(sm, rel=1e-5)
    assert out["cosine"] == pytest.approx(cosine(h[:, 0], h[:, 1]), rel=1e-5)
    # the heatmaps carry their logits' signs: |cos| and the shares of logits <= 0 (chapter 6)
    assert ((f[:, 0] > 0) != (f[:, 1] > 0)).any(), "the test needs an image whose two logits differ in sign"
    per_image = [torch.nn.functional.cosine_similarity(h[n, 0].flatten(), h[n, 1].flatten(), dim=0).item()
                 for n in range(7)]
    assert out["abs_cosine"] == pytest.approx(np.mean(np.abs(per_image)), rel=1e-5)
    assert out["abs_cosine"] > out["cosine"] + 1e-3
    sc = np.mean([c * np.sign(f[n, 0].item() * f[n, 1].item()) for n, c in enumerate(per_image)])
    assert out["sc_cosine"] == pytest.approx(sc, rel=1e-5)
    hc = h * torch.sign(f)[:, :, None, None]
    sc_raw = np.mean([torch.linalg.norm(hc[n, 0] - hc[n, 1]).item() for n in range(7)])
    assert out["sc-raw"] == pytest.approx(sc_raw, rel=1e-5)
    assert [out["top1_nonpositive"], out["top2_nonpositive"]] == (f <= 0).double().mean(0).tolist()
    same = diffusion_variants(model, x, low=0.0, high=1.0, batch_size=100, device="cpu", heatmap_fn=fake)
    assert same == pytest.approx(out)


def test_cosines_are_the_terms_of_cosine():
    g = torch.Generator().manual_seed(5)
    h1, h2 = torch.randn(6, 3, 4, generator=g), torch.randn(6, 3, 4, generator=g)
    h2[0], h1[1] = -2.5 * h1[0], 0.0
    c = cosines(h1, h2)
    assert c.shape == (6,) and c.dtype == torch.float64
    assert c[0].item() == pytest.approx(-1.0) and c[1].isnan()
    assert cosine(h1, h2) == pytest.approx(c[~c.isnan()].mean().item())


def test_diffusion_variants_takes_one_convention_by_name():
    fake = _Patterns(5, 4, 4)
    x = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    one = diffusion_variants(_linear_model(), x, low=0.0, high=1.0, device="cpu", heatmap_fn=fake, conventions="max")
    every = diffusion_variants(_linear_model(), x, low=0.0, high=1.0, device="cpu", heatmap_fn=fake)
    assert [c for c in CONVENTIONS if c in one] == ["max"] and one["max"] == pytest.approx(every["max"])


def test_diffusion_variants_rejects_bad_input():
    fake = _Patterns(5, 4, 4)
    with pytest.raises(ValueError, match="unknown conventions"):
        diffusion_variants(_linear_model(), torch.zeros(2, 3, 4, 4), low=0.0, high=1.0, device="cpu",
                           heatmap_fn=fake, conventions=("raw", "l2"))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        diffusion_variants(_linear_model(), torch.zeros(3, 4, 4), low=0.0, high=1.0, device="cpu", heatmap_fn=fake)


@pytest.mark.skipif(importlib.util.find_spec("sepdtd.dtd") is None, reason="sepdtd.dtd not written yet")
def test_diffusion_variants_with_real_dtd():
    from sepdtd import models

    model = models.build("fashion_mnist", seed=0)
    x = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    out = diffusion_variants(model, x, low=0.0, high=1.0, batch_size=4, device="cpu")
    assert out["n"] == 6
    for c in CONVENTIONS:
        assert math.isfinite(out[c]) and out[c] >= 0
    assert -1.0 <= out["cosine"] <= out["abs_cosine"] <= 1.0
    # DTD is linear in the starting relevance: doubling the logits (last layer x 2) doubles every heatmap,
    # so "raw" doubles while the scale-free conventions do not move
    with torch.no_grad():
        model[-1].weight.mul_(2.0)
        model[-1].bias.mul_(2.0)
    out2 = diffusion_variants(model, x, low=0.0, high=1.0, batch_size=4, device="cpu")
    assert out2["raw"] == pytest.approx(2 * out["raw"], rel=1e-4)
    for c in ("max", "sum", "cosine"):
        assert out2[c] == pytest.approx(out[c], rel=1e-4, abs=1e-7)
