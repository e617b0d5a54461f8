"""Fingerprints of what the code computes: the outputs of small deterministic probes.

A stored result is *stale* when the code that produced it would now compute something else. The
fingerprint of a stage is therefore not a hash of its source text (editing a docstring, a comment, a
validation or an error message changes nothing) but the hash of what the stage's own functions return
on a fixed probe: CPU, float64, fixed seeds, values rounded to 8 significant digits (:func:`_digest`),
so that the summation order of another machine does not show.

- :func:`train_components`: one fingerprint per part of the training stage (the network builders, the
  data split, the training loop, the augmentation, the penalty and stacked fine-tunes);
  :func:`train_dependencies` says which of them a training job depends on.
- :func:`measure_fields`: one fingerprint per measured field (``"accuracy"``, ``"diffusion.raw"``,
  ``"methods.dtd.pointing"``, ...), from :mod:`sepdtd.pipeline.measure` run on a probe network and
  probe images that hold the edge cases: a negative logit, a blank heatmap (a logit of 0), tied
  logits, and a two-object image whose object lies inside the pixels both objects share. Changing
  one metric changes the fingerprints of its fields and of no others.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["TRAIN_COMPONENTS", "train_components", "train_dependencies", "measure_fields", "probe_network",
           "probe_images", "probe_pairs", "probe_data"]

#: The parts of the training stage that have a fingerprint.
TRAIN_COMPONENTS = ("model.table1", "model.separate", "model.depth", "split", "loop", "augment", "penalty",
                    "output-bias")


def _values(obj: Any) -> Iterable[float]:
    if isinstance(obj, torch.Tensor):
        yield from obj.detach().double().reshape(-1).tolist()
    elif isinstance(obj, dict):
        for k in sorted(obj):
            yield from _values(obj[k])
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _values(v)
    elif obj is None:
        yield float("nan")
    elif isinstance(obj, str):
        yield obj
    else:
        yield float(obj)


def _q(v: float | str) -> str:
    if isinstance(v, str):
        return v
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{0.0 if abs(v) < 1e-9 else v:.8g}"


def _digest(*parts: Any) -> str:
    """12 hex digits of the sha256 of the parts' values, each rounded to 8 significant digits."""
    blob = json.dumps([[_q(v) for v in _values(p)] for p in parts], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------- probe network
def probe_network(seed: int = 4) -> nn.Module:
    """A float64 network of the paper's layer types: 3 classes on 1 x 8 x 8 images, biases <= 0.

    Its output biases ``(0, -0.5, 0)`` make the logits of an all-zero image tie at 0 (a blank heatmap,
    ties); on :func:`probe_images` half of the top-2 logits are negative.
    """
    from sepdtd import models

    g = torch.Generator().manual_seed(seed)
    net = models.PaperNet("probe", (1, 8, 8), [
        nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(27, 9), nn.ReLU(), nn.Dropout(0.5), nn.Linear(9, 3)]).double()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g, dtype=torch.float64) * 0.6)
                m.bias.copy_(-0.1 * torch.rand(m.bias.shape, generator=g, dtype=torch.float64))
        net[0].weight.abs_()
        net[-1].bias.copy_(torch.tensor([0.0, -0.5, 0.0], dtype=torch.float64))
    return net.eval()


def probe_images(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Eight float64 1 x 8 x 8 probe images in ``[0, 1]`` (the first all zero) and their labels."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.rand(8, 1, 8, 8, generator=g, dtype=torch.float64)
    x[0] = 0
    x[1] = (x[1] > 0.7).double()
    x[2, :, :, 4:] = 0
    return x, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


def probe_pairs(net: nn.Module):
    """Two-object probe images for ``net``: their labels are the net's top-2 classes, so all are scored.

    The masks hold the edge cases: disjoint objects, one object inside the other (inside the shared
    pixels: no mass or pointing value), overlapping objects, and the all-zero image (blank heatmaps).
    """
    from sepdtd import twoobject

    x, _ = probe_images()
    images = (x[[0, 3, 4, 5]] * 255).round().to(torch.uint8)
    with torch.no_grad():
        top = net(images.double() / 255).topk(2, dim=1).indices
    masks = torch.zeros(4, 2, 8, 8, dtype=torch.bool)
    masks[0, 0, :, :4], masks[0, 1, :, 4:] = True, True          # blank heatmaps, disjoint halves
    masks[1, 0, :, :4], masks[1, 1, :, 4:] = True, True          # disjoint halves
    masks[2, 0, 2:4, 2:4], masks[2, 1, 1:6, 1:6] = True, True    # object a inside the shared pixels
    masks[3, 0, :5, :5], masks[3, 1, 3:, 3:] = True, True        # overlapping objects
    return twoobject.TwoObjectSet(dataset="probe", mode="overlay", images=images, labels=top.clone(), masks=masks,
                                  index=torch.arange(8).view(4, 2), seed=0)


# -------------------------------------------------------------------------------------- measuring
@functools.cache
def measure_fields(kind: str) -> dict[str, str]:
    """Field name -> fingerprint of the ``kind`` measurement (:mod:`sepdtd.pipeline.measure`)."""
    from sepdtd import attribution
    from sepdtd.pipeline import measure

    with torch.random.fork_rng(devices=[]):
        net = probe_network()
        x, y = probe_images()
        if kind == "paper":
            fields, per = measure.paper_fields(net, x, y, x, batch_size=3, device="cpu")
        elif kind == "beyond":
            fields, per = measure.beyond_fields(net, x, probe_pairs(net), methods=tuple(attribution.METHODS),
                                                max_scored=10, batch_size=3, device="cpu")
        elif kind == "mechanism":
            fields, per = measure.mechanism_fields(net, x, probe_pairs(net), max_scored=10, batch_size=3,
                                                   device="cpu")
        else:
            raise ValueError(f"unknown measurement {kind!r}")
    flat = measure.flatten(fields)
    return {name: _digest(per.get(name), value) for name, value in flat.items()}


# --------------------------------------------------------------------------------------- training
def probe_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` float64 1 x 8 x 8 images of the three probe classes (a bright band per class) and their labels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64) * 0.5
    for c in range(3):  # a learnable class signal: a bright band per class
        x[y == c, :, 2 * c:2 * c + 2, :] += 0.5
    return x.clamp(0, 1), y


def _summary(t: torch.Tensor) -> list:
    """A tensor, or for a large one its size, sums and every k-th value (enough to see any change)."""
    t = t.detach().double().reshape(-1)
    if t.numel() <= 256:
        return t.tolist()
    return [t.numel(), float(t.sum()), float(t.abs().sum()), float((t * t).sum()), t[::t.numel() // 64].tolist()]


def _state(models: Iterable[nn.Module]) -> list:
    return [[_summary(v) for v in m.state_dict().values()] for m in models]


def _models() -> dict[str, str]:
    from sepdtd import models

    out = {}
    with torch.random.fork_rng(devices=[]):
        out["model.table1"] = _digest(*[_state([models.build(d, seed=1)]) for d in models.MODELS])
        out["model.separate"] = _digest(*[_state([models.build_separate(d, width="split", seed=1)])
                                          for d in models.MODELS])
        out["model.depth"] = _digest(*[_state([models.build_depth(d, models.TABLE1_CONV[d] + k, seed=1)])
                                       for d in models.MODELS for k in (-1, 2)])
    return out


@functools.cache
def train_components() -> dict[str, str]:
    """Component of :data:`TRAIN_COMPONENTS` -> fingerprint of the training stage's code."""
    from sepdtd import data, regularization, training

    out = _models()
    out["split"] = _digest(*data.train_val_split(1000, val_fraction=0.1, seed=3),
                           data.seeded_subset(torch.arange(50, 150), 17, 4, "train"))
    x, y = probe_data(96, 0)
    xv, yv = probe_data(48, 1)
    kw = dict(lr=0.02, batch_size=16, max_epochs=4, patience=1, device="cpu", progress=False, seed=5)
    with torch.random.fork_rng(devices=[]):
        net = probe_network(2).train()
        hist = training.fit(net, x, y, xv, yv, **kw)
        out["loop"] = _digest(_state([net]), hist.train_loss, hist.val_loss, hist.val_accuracy, hist.best_epoch)
        img = (x[:6].repeat(1, 3, 1, 1) * 255).to(torch.uint8)
        aug = training.augment_batch(img, generator=torch.Generator().manual_seed(6))
        net = probe_network(3).train()
        hist = training.fit(net, (x * 255).to(torch.uint8), y, (xv * 255).to(torch.uint8), yv, augment=True, **kw)
        out["augment"] = _digest(aug, _state([net]), hist.train_loss)
        start = probe_network(5)
        nets = [probe_network(5).train() for _ in range(3)]
        hists = training.fit_stacked(nets, [0.0, 0.05, 0.5], x, y, xv, yv, **{**kw, "max_epochs": 3})
        pens = [regularization.block_l1(start, layers=layers, reduction=red)
                for layers in regularization.PENALTY_LAYERS for red in regularization.PENALTY_REDUCTIONS]
        out["penalty"] = _digest(_state(nets), [h.val_loss for h in hists], [h.penalty for h in hists], pens)
        nets = [probe_network(6).train() for _ in range(2)]
        for net in nets:
            net[-1].bias.data.fill_(0.0)           # a free output bias then goes positive
        hists = training.fit_stacked(nets, [0.0, 0.5], x, y, xv, yv, clamp_output_bias=False,
                                     **{**kw, "max_epochs": 2, "lr": 0.05})
        out["output-bias"] = _digest(_state(nets), [h.val_loss for h in hists])
    return out


def train_dependencies(config: Any) -> tuple[str, ...]:
    """The components of :func:`train_components` that a :class:`~sepdtd.pipeline.config.TrainConfig` depends on."""
    family = "table1" if config.arch == "table1" else config.arch.split("-", 1)[0]
    deps = [f"model.{family}", "split", "loop"]
    if config.augment:
        deps.append("augment")
    if config.start is not None:
        deps.append("penalty")
    if not config.clamp_output_bias:
        deps.append("output-bias")
    return tuple(deps)
