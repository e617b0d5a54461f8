"""sepdtd.twoobject and the ground-truth metrics (relevance mass accuracy, pointing game) on hand-made cases."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sepdtd import metrics, twoobject


def fake_dataset(n_per_class: int = 6, n_classes: int = 4, channels: int = 1, size: int = 8):
    """Test images whose label is written in their pixels: image of class c has value 10 * (c + 1) on a c-th row."""
    y = torch.arange(n_classes).repeat_interleave(n_per_class)
    x = torch.zeros(y.numel(), channels, size, size, dtype=torch.uint8)
    for i, c in enumerate(y.tolist()):
        x[i, :, c, :] = 10 * (c + 1)
        x[i, :, c + 1, : 1 + i % 3] = 200
    return SimpleNamespace(name="fake", x_test=x, y_test=y, classes=tuple(str(c) for c in range(n_classes)))


# ------------------------------------------------------------------------------------------- pairs
def test_pair_indices_differ_are_deterministic_and_cover_all_classes():
    y = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    ia, ib = twoobject.pair_indices(y, 2000, generator=torch.Generator().manual_seed(0))
    assert (y[ia] != y[ib]).all()
    ja, jb = twoobject.pair_indices(y, 2000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ia, ja) and torch.equal(ib, jb)
    assert set(ib.tolist()) == set(range(8)) and set(ia.tolist()) == set(range(8))
    # the class of b is uniform over the other classes: for a of class 2, each other class ~1/3
    sel = y[ia] == 2
    share = torch.bincount(y[ib[sel]], minlength=4).double() / sel.sum()
    assert share[2] == 0 and (share[[0, 1, 3]] - 1 / 3).abs().max() < 0.1


def test_pair_indices_errors():
    with pytest.raises(ValueError, match="every one"):
        twoobject.pair_indices(torch.tensor([0, 0, 2]), 5)
    with pytest.raises(ValueError, match="n must"):
        twoobject.pair_indices(torch.tensor([0, 1]), 0)


# --------------------------------------------------------------------------------------- composites
def test_overlay_is_the_pixelwise_max_with_masks():
    xa = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    xb = torch.zeros(1, 1, 3, 3, dtype=torch.uint8)
    xa[0, 0, 0, :2] = torch.tensor([100, 20])
    xb[0, 0, :2, 0] = torch.tensor([50, 30])
    img, ma, mb = twoobject.overlay(xa, xb)
    assert img[0, 0].tolist() == [[100, 20, 0], [30, 0, 0], [0, 0, 0]]
    assert ma[0].tolist() == [[True, True, False], [False] * 3, [False] * 3]
    assert mb[0].tolist() == [[True, False, False], [True, False, False], [False] * 3]
    _, ma, mb = twoobject.overlay(xa, xb, threshold=25)
    assert ma.sum() == 1 and mb.sum() == 2
    with pytest.raises(TypeError, match="uint8"):
        twoobject.overlay(xa.float(), xb.float())


def test_halves_take_left_of_a_and_right_of_b():
    xa = torch.full((2, 3, 4, 6), 7, dtype=torch.uint8)
    xb = torch.full((2, 3, 4, 6), 9, dtype=torch.uint8)
    img, ma, mb = twoobject.halves(xa, xb)
    assert (img[..., :3] == 7).all() and (img[..., 3:] == 9).all()
    assert ma[:, :, :3].all() and not ma[:, :, 3:].any() and torch.equal(mb, ~ma)


def test_make_is_deterministic_and_consistent():
    ds = fake_dataset()
    t = twoobject.make(ds, 50, seed=3)
    assert t.images.dtype == torch.uint8 and t.images.shape == (50, 1, 8, 8)
    assert t.masks.dtype == torch.bool and t.masks.shape == (50, 2, 8, 8) and t.mode == "overlay"
    assert (t.label_a != t.label_b).all()
    assert torch.equal(t.labels, ds.y_test[t.index])
    assert torch.equal(t.images, torch.maximum(ds.x_test[t.index[:, 0]], ds.x_test[t.index[:, 1]]))
    u = twoobject.make(ds, 50, seed=3)
    assert torch.equal(t.images, u.images) and torch.equal(t.masks, u.masks)
    assert not torch.equal(t.index, twoobject.make(ds, 50, seed=4).index)
    c = twoobject.make(fake_dataset(channels=3), 10, seed=0)
    assert c.mode == "halves" and not (c.mask_a & c.mask_b).any()


def test_regions_follow_the_explained_class():
    t = twoobject.make(fake_dataset(), 20, seed=0)
    cls = torch.stack([t.label_b, t.label_a], dim=1)
    own, other = t.regions(cls)
    assert torch.equal(own[:, 0], t.mask_b) and torch.equal(own[:, 1], t.mask_a)
    assert torch.equal(other[:, 0], t.mask_a) and torch.equal(other[:, 1], t.mask_b)
    bad = cls.clone()
    bad[0, 0] = (set(range(4)) - set(t.labels[0].tolist())).pop()
    with pytest.raises(ValueError, match="not among"):
        t.regions(bad)


class LabelReader(nn.Module):
    """Logits from the pixels of fake_dataset: the classes whose rows are lit, the brighter row first."""

    def __init__(self, n_classes: int = 4, fail_class: int | None = None):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.n, self.fail = n_classes, fail_class

    def forward(self, x):
        rows = x[:, 0, : self.n, -1] * 255                       # the last column holds only the label rows
        logits = rows + torch.arange(self.n) * 1e-3
        if self.fail is not None:
            logits[:, self.fail] = -1.0
        return logits + self.dummy


def test_select_keeps_what_every_model_recognizes():
    t = twoobject.make(fake_dataset(), 40, seed=1)
    kept, shares = twoobject.select(t, LabelReader())
    assert shares["all"] == 1.0 and len(kept) == 40
    kept, shares = twoobject.select(t, {"ok": LabelReader(), "blind": LabelReader(fail_class=2)})
    has2 = (t.labels == 2).any(dim=1)
    assert shares["per_model"]["ok"] == 1.0
    assert math.isclose(shares["per_model"]["blind"], float((~has2).double().mean()))
    assert len(kept) == int((~has2).sum()) and not (kept.labels == 2).any()
    assert shares["kept"] == len(kept) and shares["n"] == 40


# ------------------------------------------------------------------------------------------ metrics
def test_relevance_mass_accuracy_by_hand():
    own = torch.tensor([[[True, True], [False, False]]])
    other = torch.tensor([[[True, False], [True, False]]])
    h = torch.tensor([[[5.0, 2.0], [1.0, -3.0]]])
    # both-pixel (0,0) left out: positive mass 2 (own) + 1 (other) + 0 (background, negative) -> 2/3
    assert math.isclose(float(metrics.relevance_mass_accuracy(h, own, other)[0]), 2 / 3)
    # without mask_other nothing is left out: (5 + 2) / 8
    assert math.isclose(float(metrics.relevance_mass_accuracy(h, own)[0]), 7 / 8)
    # background positive: stays in the denominator unless objects_only
    h2 = torch.tensor([[[5.0, 2.0], [1.0, 3.0]]])
    assert math.isclose(float(metrics.relevance_mass_accuracy(h2, own, other)[0]), 2 / 6)
    assert math.isclose(float(metrics.relevance_mass_accuracy(h2, own, other, objects_only=True)[0]), 2 / 3)
    # vectorised over N, nan without positive relevance
    hs = torch.stack([h[0], -h2[0].abs()])
    out = metrics.relevance_mass_accuracy(hs, own.expand(2, 2, 2), other.expand(2, 2, 2))
    assert out.shape == (2,) and math.isclose(float(out[0]), 2 / 3) and math.isnan(float(out[1]))
    # an object entirely covered by the other: undefined, not 0 (as in the pointing game)
    inside_other = torch.tensor([[[True, False], [False, False]]])
    assert math.isnan(float(metrics.relevance_mass_accuracy(h2, inside_other, own | other)[0]))
    # a nan pixel left in: undefined; in the left-out pixels: no effect
    hn = h2.clone()
    hn[0, 1, 1] = float("nan")
    assert math.isnan(float(metrics.relevance_mass_accuracy(hn, own, other)[0]))
    hn = h2.clone()
    hn[0, 0, 0] = float("nan")
    assert math.isclose(float(metrics.relevance_mass_accuracy(hn, own, other)[0]), 2 / 6)
    # a negated heatmap (negative logit) has no positive mass; sign-corrected it has the original's
    assert math.isnan(float(metrics.relevance_mass_accuracy(-h2, own, other)[0]))
    corrected = metrics.sign_corrected(-h2[:, None], torch.tensor([[-0.7]]))[:, 0]
    assert math.isclose(float(metrics.relevance_mass_accuracy(corrected, own, other)[0]), 2 / 6)


def test_pointing_game_by_hand():
    own = torch.tensor([[[True, True], [False, False]]]).expand(4, 2, 2)
    other = torch.tensor([[[True, False], [True, False]]]).expand(4, 2, 2)
    h = torch.tensor([
        [[9.0, 2.0], [1.0, 0.0]],    # max on a both-pixel (left out); then 2 on own beats 1 -> hit
        [[9.0, 2.0], [3.0, 0.0]],    # 3 on the other object -> miss
        [[1.0, 2.0], [2.0, 0.0]],    # a tie between own and other -> miss
        [[0.0, 1.0], [0.0, 4.0]],    # background maximum -> miss, but a hit on the objects only
    ])
    assert metrics.pointing_game(h, own, other).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert metrics.pointing_game(h, own, other, objects_only=True).tolist() == [1.0, 0.0, 0.0, 1.0]
    # without mask_other the both-pixel counts: image 0's max 9 is on its own object
    assert metrics.pointing_game(h[:1], own[:1])[0] == 1.0
    # a heatmap without positive relevance points nowhere: undefined, not a hit at its least negative
    # pixel (which lies on the object here) nor a miss
    blank = torch.tensor([[[-0.5, -0.1], [-0.5, -0.9]]])
    assert metrics.pointing_game(blank, own[:1], other[:1]).isnan().all()
    assert metrics.pointing_game(blank, own[:1], other[:1], objects_only=True).isnan().all()
    assert metrics.pointing_game(torch.zeros(1, 2, 2), own[:1]).isnan().all()
    # a negated heatmap (negative logit) points at its object once sign-corrected
    flipped = -h[:1]
    corrected = metrics.sign_corrected(flipped[:, None], torch.tensor([[-3.0]]))[:, 0]
    assert metrics.pointing_game(flipped, own[:1], other[:1]).isnan().all()
    assert metrics.pointing_game(corrected, own[:1], other[:1]).tolist() == [1.0]
    # a nan pixel left in makes the game undefined, not a miss; one in the left-out pixels does not
    hn = h[:1].clone()
    hn[0, 1, 0] = float("nan")
    assert metrics.pointing_game(hn, own[:1], other[:1]).isnan().all()
    hn = h[:1].clone()
    hn[0, 0, 0] = float("nan")
    assert metrics.pointing_game(hn, own[:1], other[:1]).tolist() == [1.0]
    # an object entirely covered by the other: undefined
    full = torch.ones(1, 2, 2, dtype=torch.bool)
    assert math.isnan(float(metrics.pointing_game(h[:1], own[:1] & torch.tensor([[[True, False], [False, False]]]),
                                                  full)[0]))


def test_metric_argument_errors():
    h = torch.zeros(2, 3, 3)
    m = torch.zeros(2, 3, 3, dtype=torch.bool)
    with pytest.raises(TypeError, match="bool"):
        metrics.relevance_mass_accuracy(h, m.float())
    with pytest.raises(ValueError, match="shape"):
        metrics.pointing_game(h, m[:, :2])
    with pytest.raises(ValueError, match="mask_other"):
        metrics.relevance_mass_accuracy(h, m, objects_only=True)
