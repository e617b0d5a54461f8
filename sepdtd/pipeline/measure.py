r"""The measure stage: every number of the book, derived from a kept network.

Two measurements (:class:`~sepdtd.pipeline.config.MeasureConfig` ``kind``):

- ``"paper"`` (:func:`paper_fields`, Tables 2-3 and Figure 6): the test accuracy and cross-entropy;
  Eq. 7 between the top-1 and top-2 DTD heatmaps under every convention of
  :data:`sepdtd.metrics.CONVENTIONS`; their mean cosine similarity and mean |cosine|; the shares of
  images whose top-1 / top-2 logit is <= 0 (DTD's heatmap carries the sign of the logit it starts
  from); the in-block share of every dense layer.
- ``"beyond"`` (:func:`beyond_fields`, chapters 9-10): per explanation method, the same diffusion
  quantities on real test images, and on two-object images with known object regions
  (:mod:`sepdtd.twoobject`) the relevance mass accuracy and the pointing game of the top-1 and top-2
  class.

Each function returns the fields and, for the fingerprints of :mod:`sepdtd.pipeline.fingerprint`, the
per-image values behind them. :func:`measure` runs a measurement over kept networks and keeps each
network's entry in the unit's measure record as soon as it is done, so an interrupted run resumes.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sepdtd import data, metrics, models, regularization, training, twoobject, utils
from sepdtd.explain.explainer import Explainer
from sepdtd.pipeline import store
from sepdtd.pipeline.config import MeasureConfig

__all__ = ["PAPER_CONVENTIONS", "BEYOND_CONVENTIONS", "test_images", "beyond_images", "paper_fields",
           "beyond_fields", "mechanism_fields", "LOGIT_PARTS", "top2_fields", "top2_cosines", "flatten", "status",
           "measure", "load_network"]

#: Conventions of Eq. 7 in the ``"paper"`` measurement.
PAPER_CONVENTIONS = metrics.CONVENTIONS

#: Conventions of Eq. 7 per method in the ``"beyond"`` measurement (``"softmax"`` needs a heatmap that
#: starts at the logit, which CLRP and SGLRP do not).
BEYOND_CONVENTIONS = (*metrics.SCALES, *(f"sc-{c}" for c in metrics.SCALES))


# --------------------------------------------------------------------------------------------- data
def test_images(config: MeasureConfig) -> dict[str, torch.Tensor]:
    """The test images of a ``"paper"`` measurement: ``x_test, y_test`` (accuracy) and ``x_eval`` (Eq. 7)."""
    ds = data.load(config.dataset)
    x, y = torch.as_tensor(ds.x_test), torch.as_tensor(ds.y_test).long()
    every = torch.arange(y.shape[0])
    te = data.seeded_subset(every, config.n_test, config.seed, "test")
    ev = data.seeded_subset(every, config.n_eval, config.seed, "eval")
    return {"x_test": x[te].contiguous(), "y_test": y[te].contiguous(), "x_eval": x[ev].contiguous()}


def beyond_images(config: MeasureConfig) -> tuple[torch.Tensor, twoobject.TwoObjectSet]:
    """The real test images (``n_eval``, drawn with the seed) and the two-object candidates of ``"beyond"``."""
    import hashlib

    ds = data.load(config.dataset)
    x = torch.as_tensor(ds.x_test)
    n = x.shape[0] if config.n_eval is None else config.n_eval
    key = int.from_bytes(hashlib.sha256(f"beyond-eval/{config.seed}".encode()).digest()[:4], "big")
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(key))[:n].sort().values
    cands = twoobject.make(config.dataset, config.n_pairs, seed=config.seed, threshold=config.threshold)
    return x[idx].contiguous(), cands


# ------------------------------------------------------------------------------------------ helpers
def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _floats(x: torch.Tensor, model: nn.Module, dev: torch.device) -> torch.Tensor:
    dtype = next(model.parameters()).dtype
    x = x.to(dev)
    return x.to(dtype) / 255 if x.dtype == torch.uint8 else x.to(dtype)


@contextlib.contextmanager
def _exact():
    """cuDNN's TF32 convolutions (on by default on GPUs) cost DTD about 1e-3 relative accuracy: measure in fp32."""
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = tf32


def _top2_heatmaps(method: str, model: nn.Module, x: torch.Tensor, dev: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top-1/top-2 heatmaps ``(B, 2, H, W)`` of a batch, all its logits ``(B, n)`` (both float64, CPU)
    and the two classes ``(B, 2)``, from the explanation's own forward pass."""
    e = Explainer(model, method, low=0.0, high=1.0)(_floats(x, model, dev), target="top2")
    return e.heatmap.double().cpu(), e.logits.double().cpu(), e.classes.cpu()


def _logits(model: nn.Module, x: torch.Tensor, dev: torch.device, batch_size: int) -> torch.Tensor:
    """``(N, n)`` float64 logits of ``x`` on the CPU, in batches; 4-D inputs run channels-last (faster on CPUs)."""
    if x.ndim == 4:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    out = []
    for sl in _batches(x.shape[0], batch_size):
        xb = _floats(x[sl], model, dev)
        out.append(model(xb.contiguous(memory_format=torch.channels_last) if xb.ndim == 4 else xb).double().cpu())
    return torch.cat(out)


#: Methods whose explanation starts at the logit, so that their heatmaps carry its sign (CLRP starts at
#: ``|f_c|``, SGLRP at the softmax's gradient).
LOGIT_STARTED = ("dtd", "zplus", "epsilon", "alphabeta", "gradient_x_input")


def _nanmean(t: torch.Tensor) -> float | None:
    ok = t[~torch.isnan(t)]
    return float(ok.mean()) if ok.numel() else None


def _nansd(t: torch.Tensor) -> float | None:
    ok = t[~torch.isnan(t)]
    return float(ok.std()) if ok.numel() > 1 else None


def top2_fields(method: str, model: nn.Module, x: torch.Tensor, dev: torch.device, batch_size: int,
                conventions: Sequence[str]) -> tuple[dict, dict]:
    """How the top-1 and top-2 heatmaps of ``x`` differ, with one explanation method.

    Returns the fields (``diffusion`` per convention, ``cosine``, ``abs_cosine``, ``sc_cosine``: means
    over the images with no blank heatmap, ``blank``: the count of the others, ``logit_nonpositive``:
    the shares of top-1 / top-2 logits <= 0, ``n_eval``) and the per-image values behind them
    (:func:`sepdtd.metrics.top2_values`). The classes and logits come from the explanation's own forward
    pass, so each batch runs the network once.
    """
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty (N, C, H, W) batch, got shape {tuple(x.shape)}")
    model.to(dev)
    parts: dict[str, list[torch.Tensor]] = {}
    with _exact():
        for sl in _batches(x.shape[0], batch_size):
            h, logits, classes = _top2_heatmaps(method, model, x[sl], dev)
            for k, v in metrics.top2_values(h, logits, classes, conventions=conventions,
                                            starts_at_logit=method in LOGIT_STARTED).items():
                parts.setdefault(k, []).append(v)
    per = {k: torch.cat(v) for k, v in parts.items()}
    per["logit_nonpositive"] = (per.pop("logits") <= 0).double()
    fields = {"diffusion": {c: float(per[f"diffusion.{c}"].mean()) for c in conventions},
              **{k: _nanmean(per[k]) for k in ("cosine", "abs_cosine", "sc_cosine")},
              "blank": int(per["cosine"].isnan().sum()),
              "logit_nonpositive": per["logit_nonpositive"].mean(0).tolist(), "n_eval": int(x.shape[0])}
    return fields, per


def top2_cosines(h: torch.Tensor, start: torch.Tensor, centered: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per image, the cosine of the top-1 and top-2 DTD heatmaps, as returned and as if started elsewhere.

    DTD's rules are linear in the relevance they start from, so a heatmap started at another value ``s``
    instead of the logit ``f`` is ``h * s / f``, and only the signs change the cosine.

    Parameters
    ----------
    h : torch.Tensor
        ``(B, 2, H, W)`` heatmaps started at the logits ``start``.
    start : torch.Tensor
        ``(B, 2)``: the top-1 and top-2 logits.
    centered : torch.Tensor
        ``(B, 2)``: the same logits minus each image's mean logit.

    Returns
    -------
    dict
        ``cosine`` (as returned), ``abs_cosine``, ``sc_cosine`` (started at ``|f|``: sign-corrected) and
        ``centered_cosine`` (started at the centred logits), float64 ``(B,)``; NaN where a heatmap is blank.
    """
    cos = metrics.cosines(h[:, 0], h[:, 1]).double()
    sign = torch.sign(start.prod(1)).double()
    return {"cosine": cos, "abs_cosine": cos.abs(), "sc_cosine": cos * sign,
            "centered_cosine": cos * sign * torch.sign(centered.prod(1)).double()}


def _ground_truth(method: str, model: nn.Module, tset: twoobject.TwoObjectSet, dev: torch.device,
                  batch_size: int) -> tuple[dict, dict]:
    """Mass accuracy and pointing game of the top-1 and top-2 class on the scored composites, on the
    sign-corrected heatmaps (:func:`sepdtd.metrics.sign_corrected`) of the methods that start at the logit."""
    names = ("mass", "pointing", "mass_objects", "pointing_objects")
    if len(tset) == 0:
        return ({**{k: [None, None] for k in names}, "mass_sd": [None, None], "mass_nan": [0, 0],
                 "pointing_nan": [0, 0], "covered": [0, 0], "n_scored": 0}, {})
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*names, "covered")}
    for sl in _batches(len(tset), batch_size):
        part = tset.subset(torch.arange(sl.start, sl.stop))
        h, logits, classes = _top2_heatmaps(method, model, part.images, dev)
        if method in LOGIT_STARTED:
            h = metrics.sign_corrected(h, logits.gather(1, classes))
        own, other = part.regions(classes)
        flat = (h.flatten(0, 1), own.flatten(0, 1), other.flatten(0, 1))
        parts["mass"].append(metrics.relevance_mass_accuracy(*flat).view(-1, 2))
        parts["pointing"].append(metrics.pointing_game(*flat).view(-1, 2))
        parts["mass_objects"].append(metrics.relevance_mass_accuracy(*flat, objects_only=True).view(-1, 2))
        parts["pointing_objects"].append(metrics.pointing_game(*flat, objects_only=True).view(-1, 2))
        parts["covered"].append((~(own & ~other).flatten(2).any(-1)).double())
    per = {k: torch.cat(v) for k, v in parts.items()}
    m, p = per["mass"], per["pointing"]
    fields = {k: [_nanmean(per[k][:, j]) for j in range(2)] for k in names}
    fields.update({
        "mass_sd": [_nansd(m[:, j]) for j in range(2)],
        "mass_nan": [int(torch.isnan(m[:, j]).sum()) for j in range(2)],
        "pointing_nan": [int(torch.isnan(p[:, j]).sum()) for j in range(2)],
        # objects with no pixel outside the shared ones: no mass or pointing value (part of both nan counts)
        "covered": [int(per["covered"][:, j].sum()) for j in range(2)],
        "n_scored": int(m.shape[0])})
    return fields, per


# ------------------------------------------------------------------------------------ measurements
@torch.no_grad()
def paper_fields(model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, x_eval: torch.Tensor, *,
                 n_blocks: int | None = None, batch_size: int = 500, device: str | torch.device = "cpu"
                 ) -> tuple[dict, dict]:
    """The ``"paper"`` measurement of one network (Tables 2-3, Figure 6).

    Parameters
    ----------
    model : torch.nn.Module
        A classifier with the paper's layers, in eval mode for the measurement (its mode is restored).
        Its parameters' dtype is the dtype of the computation; heatmaps are compared in float64.
    x_test, y_test : torch.Tensor
        Images (``uint8``, or float in ``[0, 1]``) and labels for the accuracy and cross-entropy.
    x_eval : torch.Tensor
        Images whose top-1/top-2 DTD heatmaps are compared (Eq. 7).
    n_blocks : int, optional
        Blocks of the in-block share (default: the model's classes).
    batch_size : int, optional
        Images per pass (no effect on the numbers).
    device : str or torch.device, optional
        Where to compute.

    Returns
    -------
    fields : dict
        ``accuracy``, ``test_loss``, ``n_test``, ``diffusion`` (convention -> Eq. 7), ``cosine``,
        ``abs_cosine``, ``logit_nonpositive`` ([top-1, top-2] shares of logits <= 0), ``n_eval`` and
        ``inblock`` (per dense layer; None for a layer without positive weights).
    per_image : dict
        The per-image values behind the fields (flattened names, see :func:`flatten`).
    """
    training.check_eval_data(model, x_test, y_test, "test")
    dev = utils.resolve_device(device)
    was = model.training
    model.to(dev).eval()
    try:
        with _exact():
            logits = _logits(model, x_test, dev, batch_size)
        fields, per = top2_fields("dtd", model, x_eval, dev, batch_size, PAPER_CONVENTIONS)
    finally:
        model.train(was)
    per["accuracy"] = (logits.argmax(1) == y_test.cpu()).double()
    per["test_loss"] = torch.nn.functional.cross_entropy(logits, y_test.cpu().long(), reduction="none")
    inblock = regularization.inblock_share(model, n_blocks)
    per["inblock"] = torch.tensor(inblock, dtype=torch.float64)
    return {"accuracy": float(per["accuracy"].mean()), "test_loss": float(per["test_loss"].mean()),
            "n_test": int(x_test.shape[0]), **fields,
            "inblock": [v if math.isfinite(v) else None for v in inblock]}, per


@torch.no_grad()
def beyond_fields(model: nn.Module, x_eval: torch.Tensor, candidates: twoobject.TwoObjectSet, *,
                  methods: Sequence[str], max_scored: int, batch_size: int = 500,
                  device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """The ``"beyond"`` measurement of one network (chapters 9-10).

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    x_eval : torch.Tensor
        Real test images: Eq. 7 (:data:`BEYOND_CONVENTIONS`), cosine, |cosine| and logit signs per method.
    candidates : TwoObjectSet
        Two-object images; the ones whose top-2 classes are the two objects (:func:`sepdtd.twoobject.select`)
        are kept, and the first ``max_scored`` of those are scored.
    methods : sequence of str
        Names of :data:`sepdtd.attribution.METHODS`.
    max_scored : int
        At most this many recognised composites are scored.
    batch_size : int, optional
        Images per pass.
    device : str or torch.device, optional
        Where to compute.

    Returns
    -------
    fields : dict
        ``recognized`` (share of the candidates), ``n_recognized``, ``n_pairs``, ``two_object`` (the
        candidates' mode and the shares of pixels in both masks and in any) and ``methods``: per
        method the diffusion fields and ``mass``, ``pointing``, ``mass_objects``, ``pointing_objects``
        ([top-1, top-2], means over the scored composites with a defined value), ``mass_sd``,
        ``mass_nan`` and ``covered`` (undefined counts) and ``n_scored``.
    per_image : dict
        The per-image values behind the fields.
    """
    dev = utils.resolve_device(device)
    was = model.training
    model.to(dev).eval()
    try:
        kept, shares = twoobject.select(candidates, model)
        scored = kept.subset(torch.arange(min(len(kept), max_scored)))
        out: dict[str, Any] = {
            "recognized": shares["all"], "n_recognized": shares["kept"], "n_pairs": shares["n"],
            "two_object": {"mode": candidates.mode,
                           "both_mask_share": float((candidates.mask_a & candidates.mask_b).double().mean()),
                           "object_mask_share": float(candidates.masks.double().mean())},
            "methods": {}}
        per: dict[str, torch.Tensor] = {"recognized": torch.tensor([shares["all"]], dtype=torch.float64)}
        for method in methods:
            f1, p1 = top2_fields(method, model, x_eval, dev, batch_size, BEYOND_CONVENTIONS)
            with _exact():
                f2, p2 = _ground_truth(method, model, scored, dev, batch_size)
            out["methods"][method] = {**f1, **f2}
            per.update({f"methods.{method}.{k}": v for k, v in {**p1, **p2}.items()})
    finally:
        model.train(was)
    return out, per


def _logit_parts(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """``(B, K, 6)``: the logits of ``classes`` split into the output layer's in-block positive, in-block
    negative, off-block positive and off-block negative contributions, its bias, and their sum."""
    from sepdtd import regularization

    out = list(models.dense_layers(model))[-1]
    seen: list[torch.Tensor] = []
    handle = out.register_forward_hook(lambda m, inp, o: seen.append(inp[0].detach()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    a = seen[0].double()                                                   # (B, D)
    w = out.weight.detach().double()[classes]                              # (B, K, D)
    off = regularization.block_mask(out.out_features, out.in_features, n_blocks, device=w.device)[classes]
    c = w * a[:, None, :]
    pos, neg = (w > 0), (w < 0)
    parts = [(c * (m & s)).sum(-1) for m in (~off, off) for s in (pos, neg)]
    bias = out.bias.detach().double()[classes] if out.bias is not None else torch.zeros_like(parts[0])
    return torch.stack([*parts, bias, sum(parts) + bias], dim=-1)


#: The parts of a logit in the ``"mechanism"`` measurement (:func:`mechanism_fields`).
LOGIT_PARTS = ("in_pos", "in_neg", "off_pos", "off_neg", "bias", "logit")


@torch.no_grad()
def mechanism_fields(model: nn.Module, x_eval: torch.Tensor, candidates: twoobject.TwoObjectSet, *,
                     max_scored: int, n_blocks: int | None = None, batch_size: int = 500,
                     device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """The ``"mechanism"`` measurement: why fine-tuned logits are negative, and what that does to DTD.

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    x_eval : torch.Tensor
        Real test images: the logits' parts and the top-1/top-2 DTD heatmaps.
    candidates : TwoObjectSet
        Two-object images; the first ``max_scored`` the network recognises are scored.
    max_scored : int
        At most this many recognised composites are scored.
    n_blocks : int, optional
        Blocks of Eq. 6 (default: the model's classes).
    batch_size : int, optional
        Images per pass.
    device : str or torch.device, optional
        Where to compute.

    Returns
    -------
    fields : dict
        ``logit_parts``: for ``top1`` and ``top2``, the means over ``x_eval`` of the output layer's
        contributions to the logit (:data:`LOGIT_PARTS`: in-block positive and negative weights,
        off-block positive and negative weights, the bias, and the logit); ``logit_nonpositive`` and
        ``centered_logit_nonpositive`` (shares of top-1 / top-2 logits <= 0, before and after
        subtracting each image's mean logit); ``cosine``, ``abs_cosine``, ``sc_cosine`` and
        ``centered_cosine`` of the DTD heatmaps started at the logits, their absolute values, the
        logits' signs and the centred logits; ``pointing2``: the top-2 class's pointing game on the
        composites with the heatmap as DTD returns it (``signed``), sign-corrected (``corrected``) and
        started at the centred logit (``centered``), with ``pointing2_nan`` (undefined counts) and
        ``n_scored``.
    per_image : dict
        The per-image values behind the fields.
    """
    dev = utils.resolve_device(device)
    was = model.training
    model.to(dev).eval()
    n_blocks = n_blocks or model.n_classes
    per: dict[str, list[torch.Tensor]] = {}

    def keep(name: str, v: torch.Tensor) -> None:
        per.setdefault(name, []).append(v.detach().double().cpu())

    try:
        with _exact():
            for sl in _batches(x_eval.shape[0], batch_size):
                xb = _floats(x_eval[sl], model, dev)
                h, logits, classes = _top2_heatmaps("dtd", model, xb, dev)
                values = logits.gather(1, classes)
                keep("logit_parts", _logit_parts(model, xb, classes.to(dev), n_blocks))
                centered = values - logits.mean(1, keepdim=True)
                keep("logit_nonpositive", (values <= 0).double())
                keep("centered_logit_nonpositive", (centered <= 0).double())
                for name, v in top2_cosines(h, values, centered).items():
                    keep(name, v)
            kept, _ = twoobject.select(candidates, model)
            scored = kept.subset(torch.arange(min(len(kept), max_scored)))
            for sl in _batches(len(scored), batch_size):
                part = scored.subset(torch.arange(sl.start, sl.stop))
                h, logits, classes = _top2_heatmaps("dtd", model, part.images, dev)
                values = logits.gather(1, classes)
                own, other = (m[:, 1] for m in part.regions(classes))
                centered = values - logits.mean(1, keepdim=True)
                for name, hk in (("signed", h), ("corrected", metrics.sign_corrected(h, values)),
                                 ("centered", metrics.sign_corrected(h, centered * values.sign()))):
                    keep(f"pointing2.{name}", metrics.pointing_game(hk[:, 1], own, other))
    finally:
        model.train(was)
    out = {k: torch.cat(v) for k, v in per.items()}
    parts = out["logit_parts"].mean(0)                                      # (2, 6)
    fields = {"logit_parts": {f"top{k + 1}": dict(zip(LOGIT_PARTS, parts[k].tolist())) for k in range(2)},
              **{k: out[k].mean(0).tolist() for k in ("logit_nonpositive", "centered_logit_nonpositive")},
              **{k: _nanmean(out[k]) for k in ("cosine", "abs_cosine", "sc_cosine", "centered_cosine")},
              "n_eval": int(x_eval.shape[0])}
    names = ("signed", "corrected", "centered")
    fields["pointing2"] = {n: _nanmean(out[f"pointing2.{n}"]) if f"pointing2.{n}" in out else None for n in names}
    fields["pointing2_nan"] = {n: int(out[f"pointing2.{n}"].isnan().sum()) if f"pointing2.{n}" in out else 0
                               for n in names}
    fields["n_scored"] = len(scored)
    out["logit_parts.top1"], out["logit_parts.top2"] = out["logit_parts"][:, 0], out["logit_parts"][:, 1]
    return fields, out


def flatten(fields: dict, prefix: str = "") -> dict[str, Any]:
    """Nested fields as ``{"diffusion.raw": ..., "methods.dtd.mass": ...}`` (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, name + "."))
        else:
            out[name] = v
    return out


# ------------------------------------------------------------------------------------------- stage
def load_network(root: str | os.PathLike, entry: dict, *, device: str | torch.device = "cpu") -> nn.Module:
    """The network of a train-record entry: built from its configuration, kept weights checked and loaded
    (as float32), in eval mode."""
    from sepdtd.pipeline.config import TrainConfig

    model = TrainConfig.from_dict(entry["config"]).build()
    state = store.load_state(root, entry["file"], entry["sha256"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model.to(utils.resolve_device(device)).eval()


def status(entry: dict | None, sha256: str, config: MeasureConfig) -> list[dict]:
    """Why a measure-record entry is not what the current code would measure (empty: current).

    Each reason is a dict with ``text`` and, for a changed field (its fingerprint in
    :func:`sepdtd.pipeline.fingerprint.measure_fields`), ``stage`` ("measure"), ``field`` and the
    ``from`` / ``to`` fingerprints. Without an entry the one reason is ``{"text": "not measured"}``;
    a network that changed since, another configuration, or a field not measured are reasons too.
    """
    from sepdtd.pipeline import fingerprint

    if entry is None:
        return [{"text": "not measured"}]
    reasons = []
    if entry.get("sha256") != sha256:
        reasons.append({"text": "the network changed since it was measured"})
    if entry.get("config_hash") != config.key():
        reasons.append({"text": f"measurement configuration {entry.get('config_hash')} is not the current "
                                f"{config.key()}"})
    current = fingerprint.measure_fields(config.kind)
    stored = entry.get("fingerprints", {})
    for name in current:
        if not _applies(name, config) or stored.get(name) == current[name]:
            continue
        was = stored.get(name)
        text = f"measure code '{name}' changed ({was} -> {current[name]})" if was else f"field '{name}' not measured"
        reasons.append({"stage": "measure", "field": name, "from": was, "to": current[name], "text": text})
    return reasons


def _applies(name: str, config: MeasureConfig) -> bool:
    """Whether the field ``name`` of the probe is one that ``config`` measures (its methods only)."""
    if not name.startswith("methods."):
        return True
    return name.split(".")[1] in config.methods


def measure(root: str | os.PathLike, dataset: str, seed: int, plan: dict[str, MeasureConfig], *,
            device: str | torch.device = "auto", force: bool = False, progress: bool = True,
            on_network: Callable[[str], None] | None = None, profile: str | None = None) -> dict:
    """Measure kept networks of one (data set, seed) folder; keep each entry as soon as it is done.

    Parameters
    ----------
    root : path
        The profile's folder.
    dataset, seed
        The folder of networks (``networks/<dataset>/seed<seed>/``) and its train record.
    plan : dict
        Network tag -> the measurement it gets; every measurement of one call has the same ``kind``.
    device : str or torch.device, optional
        Where to compute.
    force : bool, optional
        Measure again even where the entry is current (same network digest, configuration and field
        fingerprints).
    progress : bool, optional
        A progress bar over the networks.
    on_network : callable, optional
        Called with each tag after its entry is written.
    profile : str, optional
        The profile's name, for the record (default: the folder's name).

    Returns
    -------
    dict
        The measure record after the call.

    Raises
    ------
    FileNotFoundError
        If the train record or a network of the plan is missing.
    """
    from tqdm.auto import tqdm

    from sepdtd.pipeline import fingerprint

    root = Path(root)
    kinds = {c.kind for c in plan.values()}
    if len(kinds) != 1:
        raise ValueError(f"one measurement kind per call, got {sorted(kinds)}")
    kind = kinds.pop()
    utils.git_commit()                                  # the commit of the code this process loaded
    dev = utils.resolve_device(device)
    trained = store.read_record(store.record_path(root, "train", dataset, seed))["networks"]
    missing = [t for t in plan if t not in trained]
    if missing:
        raise FileNotFoundError(f"no kept network {missing} in {root}/networks/{dataset}/seed{seed}: train them first "
                                "(python -m sepdtd reproduce ...)")
    path = store.record_path(root, "measure", dataset, seed, kind)
    done = store.read_record(path)["networks"] if path.exists() else {}
    fps = fingerprint.measure_fields(kind)
    todo = [t for t, c in plan.items() if force or status(done.get(t), trained[t]["sha256"], c)]
    header = {"stage": "measure", "kind": kind, "profile": profile or root.name, "dataset": dataset, "seed": seed}
    cache: dict[str, Any] = {}
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), disable=not progress, unit="network",
               desc=f"measure {kind} {dataset} seed{seed}")
    try:
        for tag in todo:
            config = plan[tag]
            t0 = time.time()
            model = load_network(root, trained[tag], device=dev)
            key = config.key()
            if kind == "paper":
                if key not in cache:
                    cache[key] = test_images(config)
                imgs = cache[key]
                fields, _ = paper_fields(model, imgs["x_test"], imgs["y_test"], imgs["x_eval"],
                                         n_blocks=trained[tag]["config"].get("n_blocks"), batch_size=config.batch_size,
                                         device=dev)
            else:
                if key not in cache:
                    cache[key] = beyond_images(config)
                x_eval, cands = cache[key]
                if kind == "beyond":
                    fields, _ = beyond_fields(model, x_eval, cands, methods=config.methods,
                                              max_scored=config.max_scored, batch_size=config.batch_size, device=dev)
                else:
                    fields, _ = mechanism_fields(model, x_eval, cands, max_scored=config.max_scored,
                                                 n_blocks=trained[tag]["config"].get("n_blocks"),
                                                 batch_size=config.batch_size, device=dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t1 = time.time()
            names = flatten(fields)
            entry = {"sha256": trained[tag]["sha256"], "config": config.as_dict(), "config_hash": key,
                     "fingerprints": {k: fps[k] for k in names if k in fps}, "fields": fields,
                     "wall_s": t1 - t0, "provenance": store.provenance(dev, t0, t1)}
            store.update_record(path, header, lambda nets, tag=tag, entry=entry: nets.__setitem__(tag, entry))
            bar.update(1)
            if on_network is not None:
                on_network(tag)
    finally:
        bar.close()
    return store.read_record(path)

