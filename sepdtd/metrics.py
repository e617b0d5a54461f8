r"""The diffusion metric of Section 5.1 (Eq. 7) and its variants.

Eq. 7 measures how different the explanations of the two highest-scoring classes are:

.. math:: d_k = \frac{1}{N} \sum_{n} \| R_{n,c_1} - R_{n,c_2} \|_F

with :math:`c_1, c_2` the classes with the highest and second-highest output and :math:`R_{n,c}` the
DTD heatmap (relevance at the input, summed over colour channels) of image ``n`` for class ``c``. A
*larger* value means *less* diffusion.

The raw metric depends on the heatmaps' scale, which DTD ties to the logit the relevance starts from
(Section 2.2: "the relevance R_k ... is the output of that neuron"). The paper does not say how its
heatmaps were scaled, so :func:`diffusion_variants` reports four conventions (:data:`CONVENTIONS`):

- ``"raw"``: heatmaps as DTD gives them (relevance starts at the logit :math:`f_k(x)`);
- ``"max"``: each heatmap divided by its largest :math:`|R|`;
- ``"sum"``: each heatmap divided by its total :math:`\sum |R|`;
- ``"softmax"``: relevance starts at the softmax probability :math:`p_k` instead of the logit. DTD's
  rules (Eq. 3-4) are linear in the starting relevance, so this heatmap is the logit heatmap times
  :math:`p_k / f_k(x)` (:func:`softmax_scale`).

plus the scale-free mean cosine similarity of the two heatmaps (:func:`cosine`).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "CONVENTIONS", "diffusion", "frobenius", "cosine", "cosines", "normalize", "softmax_scale", "diffusion_variants",
    "relevance_mass_accuracy", "pointing_game",
]

#: Heatmap scaling conventions of :func:`diffusion_variants`; ``"softmax"`` acts at relevance time.
CONVENTIONS = ("raw", "max", "sum", "softmax")

_ArrayLike = torch.Tensor | np.ndarray


def _pair(h1: _ArrayLike, h2: _ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Both heatmap batches as float64 ``(N, D)`` tensors, after checking their shapes."""
    a, b = torch.as_tensor(h1), torch.as_tensor(h2)
    if a.shape != b.shape:
        raise ValueError(f"heatmap shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}; pass two (N, ...) "
                         "batches of the same images")
    if a.ndim < 1 or a.shape[0] == 0:
        raise ValueError(f"need a batch of at least one heatmap, shape (N, ...); got {tuple(a.shape)}")
    b = b.to(a.device)
    return a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()


def frobenius(h1: _ArrayLike, h2: _ArrayLike) -> torch.Tensor:
    """Per-sample Frobenius norm ``||h1[n] - h2[n]||_F`` (the summand of Eq. 7).

    Parameters
    ----------
    h1, h2 : torch.Tensor or numpy.ndarray
        Heatmap batches of the same shape ``(N, ...)`` (typically ``(N, H, W)``); everything after the
        first axis is one heatmap.

    Returns
    -------
    torch.Tensor
        float64 ``(N,)``.

    Raises
    ------
    ValueError
        If the shapes differ or the batch is empty.
    """
    a, b = _pair(h1, h2)
    return torch.linalg.vector_norm(a - b, dim=1)


def diffusion(h1: _ArrayLike, h2: _ArrayLike) -> float:
    """The diffusion metric of Eq. 7: mean over samples of ``||h1[n] - h2[n]||_F``.

    Parameters
    ----------
    h1, h2 : torch.Tensor or numpy.ndarray
        Heatmaps ``(N, H, W)`` (any ``(N, ...)`` is flattened per sample) for the top-1 and top-2 class
        of the same ``N`` images.

    Returns
    -------
    float
        ``d = 1/N sum_n ||h1[n] - h2[n]||_F``, computed in float64. Larger means less diffusion.

    Raises
    ------
    ValueError
        If the shapes differ or the batch is empty.
    """
    return float(frobenius(h1, h2).mean())


def cosines(h1: _ArrayLike, h2: _ArrayLike, *, eps: float = 1e-12) -> torch.Tensor:
    """Per-sample cosine similarity of flattened heatmaps: the terms whose mean is :func:`cosine`.

    Parameters
    ----------
    h1, h2 : torch.Tensor or numpy.ndarray
        Heatmap batches of the same shape ``(N, ...)``.
    eps : float, optional
        Each norm is clamped to at least ``eps`` (see :func:`cosine`).

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64, ``<h1[n], h2[n]> / (max(||h1[n]||, eps) max(||h2[n]||, eps))`` in ``[-1, 1]``.

    Raises
    ------
    ValueError
        If the shapes differ or the batch is empty.
    """
    a, b = _pair(h1, h2)
    na = torch.linalg.vector_norm(a, dim=1).clamp(min=eps)
    nb = torch.linalg.vector_norm(b, dim=1).clamp(min=eps)
    return (a * b).sum(dim=1) / (na * nb)


def cosine(h1: _ArrayLike, h2: _ArrayLike, *, eps: float = 1e-12) -> float:
    """Mean cosine similarity of per-sample flattened heatmaps (a scale-free companion of Eq. 7).

    Parameters
    ----------
    h1, h2 : torch.Tensor or numpy.ndarray
        Heatmap batches of the same shape ``(N, ...)``.
    eps : float, optional
        Each norm is clamped to at least ``eps``: a zero heatmap has similarity 0 with anything
        (including another zero heatmap) instead of ``nan``.

    Returns
    -------
    float
        ``1/N sum_n <h1[n], h2[n]> / (max(||h1[n]||, eps) max(||h2[n]||, eps))`` in ``[-1, 1]``; 1 means
        the two explanations are identical up to a positive scale (complete diffusion).

    Raises
    ------
    ValueError
        If the shapes differ or the batch is empty.
    """
    return float(cosines(h1, h2, eps=eps).mean())


def normalize(h: torch.Tensor, convention: str, *, heatmap_dims: int = 2) -> torch.Tensor:
    """Rescale each heatmap by a convention of :data:`CONVENTIONS`.

    Parameters
    ----------
    h : torch.Tensor
        Heatmaps ``(..., H, W)``, e.g. ``(N, H, W)`` or ``(B, K, H, W)``.
    convention : str
        ``"raw"``: unchanged; ``"max"``: each heatmap divided by its largest ``|R|``; ``"sum"``: divided
        by its ``sum |R|``. All-zero heatmaps stay zero. ``"softmax"`` changes where the relevance
        starts, so it needs the logits: use :func:`softmax_scale` (or :func:`diffusion_variants`).
    heatmap_dims : int, optional
        How many trailing axes form one heatmap (2 for ``(H, W)``, 3 for relevance ``(C, H, W)``).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``h`` (``"raw"`` returns ``h`` itself).

    Raises
    ------
    ValueError
        For an unknown convention, for ``"softmax"``, or if ``h`` has fewer than ``heatmap_dims`` axes.
    """
    if convention == "raw":
        return h
    if convention == "softmax":
        raise ValueError('"softmax" acts at relevance time (start at p_k instead of the logit f_k): multiply '
                         "the logit heatmaps by softmax_scale(logits, classes), or use diffusion_variants")
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")
    if h.ndim < heatmap_dims:
        raise ValueError(f"heatmaps of shape {tuple(h.shape)} have fewer than heatmap_dims={heatmap_dims} axes")
    dims = tuple(range(h.ndim - heatmap_dims, h.ndim))
    a = h.abs()
    scale = a.amax(dim=dims, keepdim=True) if convention == "max" else a.sum(dim=dims, keepdim=True)
    return h / torch.where(scale > 0, scale, torch.ones_like(scale))


def softmax_scale(logits: torch.Tensor, classes: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Factors turning logit-started heatmaps into probability-started ones (convention ``"softmax"``).

    DTD's rules (Eq. 3-4) are linear in the relevance the output neuron starts with, so the heatmap
    started at the probability ``p_k = softmax(f(x))_k`` equals the heatmap started at the logit
    ``f_k(x)`` times ``p_k / f_k(x)``.

    Parameters
    ----------
    logits : torch.Tensor
        ``(B, n_classes)`` model outputs.
    classes : torch.Tensor
        ``(B, K)`` int64 class indices whose heatmaps are rescaled.
    eps : float, optional
        Guard for ``f_k ~ 0``: where ``|f_k| < eps`` the logit is replaced by ``+-eps`` (its sign kept,
        ``+`` for 0). Such a logit heatmap is (almost) zero, and the guard keeps it finite rather than
        turning it into ``inf``/``nan``; the probability-started heatmap is not recoverable there.

    Returns
    -------
    torch.Tensor
        ``(B, K)`` factors ``p_k / f_k``. A negative logit gives a negative factor, which flips the
        heatmap's sign: the probability is positive, so its heatmap sums to a positive relevance.
    """
    f = logits.gather(1, classes)
    p = torch.softmax(logits.double(), dim=1).gather(1, classes).to(f.dtype)
    safe = torch.where(f.abs() < eps, torch.where(f < 0, -eps, eps).to(f.dtype), f)
    return p / safe


def _dtd_heatmap() -> Callable:
    try:
        return importlib.import_module("sepdtd.dtd").heatmap
    except ModuleNotFoundError as e:  # pragma: no cover - only before sepdtd.dtd exists
        raise RuntimeError("sepdtd.dtd is not available; pass heatmap_fn=... explicitly") from e


@torch.no_grad()
def diffusion_variants(
    model: nn.Module,
    x: torch.Tensor,
    *,
    low: float,
    high: float,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    eps: float = 1e-6,
    heatmap_fn: Callable | None = None,
    conventions: Sequence[str] = CONVENTIONS,
) -> dict:
    """Eq. 7 between the top-1 and top-2 class heatmaps of ``x``, under every convention.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits; it is put in eval mode for the computation and its mode restored.
    x : torch.Tensor
        Images ``(N, C, H, W)``: ``uint8`` (divided by 255) or float in ``[low, high]``.
    low, high : float
        DTD's input box for the z^B rule (Eq. 4); ``0.0, 1.0`` for images in ``[0, 1]``.
    batch_size : int, optional
        Images per DTD pass.
    device : str or torch.device, optional
        Where to compute (``"auto"``: CUDA when available). The model is moved there.
    eps : float, optional
        Guard of :func:`softmax_scale`.
    heatmap_fn : callable, optional
        ``heatmap_fn(model, x, classes, *, low, high) -> (B, K, H, W)`` with ``classes`` a ``(B, K)``
        int64 tensor and relevance started at the logits; defaults to :func:`sepdtd.dtd.heatmap`.
    conventions : str or sequence of str, optional
        Subset of :data:`CONVENTIONS` to compute (one name: that convention only).

    Returns
    -------
    dict
        ``{"raw": d, "max": d, "sum": d, "softmax": d, "cosine": c, "abs_cosine": a,
        "top1_nonpositive": p1, "top2_nonpositive": p2, "n": N}`` (one ``d`` per requested convention)
        where ``d`` is Eq. 7 for that convention, ``c`` the mean cosine similarity of the raw heatmaps
        (:func:`cosine`), ``a`` the mean of its absolute per-image terms (:func:`cosines`), and ``p1``,
        ``p2`` the shares of images whose top-1 / top-2 logit is <= 0. A DTD heatmap carries the sign of
        the logit it starts from, so where exactly one of the two logits is <= 0 the cosine is negative
        however alike the two patterns are; ``a`` measures the patterns alone.
    """
    from sepdtd.utils import resolve_device

    conventions = (conventions,) if isinstance(conventions, str) else tuple(conventions)
    unknown = [c for c in conventions if c not in CONVENTIONS]
    if unknown:
        raise ValueError(f"unknown conventions {unknown}: choose from {', '.join(CONVENTIONS)}")
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty (N, C, H, W) batch, got shape {tuple(x.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    heatmap_fn = heatmap_fn or _dtd_heatmap()
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    sums = {c: torch.zeros((), dtype=torch.float64, device=dev) for c in conventions}
    cos_sum = torch.zeros((), dtype=torch.float64, device=dev)
    abs_cos_sum = torch.zeros((), dtype=torch.float64, device=dev)
    nonpositive = torch.zeros(2, dtype=torch.float64, device=dev)
    # cuDNN's TF32 convolutions (on by default on GPUs) cost DTD about 1e-3 relative accuracy: measure in fp32.
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(dev)
            xb = xb.float() / 255 if xb.dtype == torch.uint8 else xb.float()
            logits = model(xb)
            if logits.ndim != 2 or logits.shape[1] < 2:
                raise ValueError(f"the model must return (B, n_classes >= 2) logits, got {tuple(logits.shape)}")
            top2 = logits.topk(2, dim=1).indices
            with torch.enable_grad():
                h = heatmap_fn(model, xb, top2, low=low, high=high)
            h = h.detach()
            if h.shape[:2] != top2.shape:
                raise ValueError(f"heatmap_fn returned shape {tuple(h.shape)}; expected ({xb.shape[0]}, 2, H, W)")
            for c in conventions:
                hc = h * softmax_scale(logits, top2, eps=eps)[:, :, None, None] if c == "softmax" else normalize(h, c)
                sums[c] += frobenius(hc[:, 0], hc[:, 1]).sum()
            cos = cosines(h[:, 0], h[:, 1])
            cos_sum += cos.sum()
            abs_cos_sum += cos.abs().sum()
            nonpositive += (logits.gather(1, top2) <= 0).sum(dim=0)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        model.train(was_training)
    n = int(x.shape[0])
    out: dict = {c: float(sums[c]) / n for c in conventions}
    out["cosine"] = float(cos_sum) / n
    out["abs_cosine"] = float(abs_cos_sum) / n
    out["top1_nonpositive"], out["top2_nonpositive"] = (float(v) / n for v in nonpositive)
    out["n"] = n
    return out


# ----------------------------------------------------------------------------------------------------
# Ground-truth metrics for images with known object regions (see sepdtd.twoobject)
# ----------------------------------------------------------------------------------------------------
def _region_args(h: _ArrayLike, mask_own: _ArrayLike, mask_other: _ArrayLike | None, objects_only: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(h, own, allowed)`` as float64 ``(N, D)`` / bool ``(N, D)``, after checking the shapes."""
    a = torch.as_tensor(h)
    own = torch.as_tensor(mask_own, device=a.device)
    if a.ndim < 2 or a.shape[0] == 0:
        raise ValueError(f"need a batch of heatmaps (N, H, W), got shape {tuple(a.shape)}")
    if own.dtype != torch.bool:
        raise TypeError(f"mask_own must be a bool tensor, got {own.dtype}")
    if own.shape != a.shape:
        raise ValueError(f"mask_own has shape {tuple(own.shape)} but the heatmaps {tuple(a.shape)}: pass one "
                         "mask per heatmap, (N, H, W)")
    allowed = torch.ones_like(own)
    if mask_other is not None:
        other = torch.as_tensor(mask_other, device=a.device)
        if other.dtype != torch.bool:
            raise TypeError(f"mask_other must be a bool tensor, got {other.dtype}")
        if other.shape != a.shape:
            raise ValueError(f"mask_other has shape {tuple(other.shape)} but the heatmaps {tuple(a.shape)}")
        allowed = ~(own & other)
        if objects_only:
            allowed &= own | other
    elif objects_only:
        raise ValueError("objects_only=True needs mask_other (the pixels of the other object)")
    n = a.shape[0]
    return a.reshape(n, -1).double(), own.reshape(n, -1), allowed.reshape(n, -1)


def relevance_mass_accuracy(h: _ArrayLike, mask_own: _ArrayLike, mask_other: _ArrayLike | None = None, *,
                            objects_only: bool = False) -> torch.Tensor:
    r"""Share of a heatmap's positive relevance that lies on the explained object (relevance mass accuracy).

    For the heatmap :math:`R` of class :math:`c` and the pixels :math:`O_c` of the object of class
    :math:`c` (Arras, Osman and Samek 2022, "CLEVR-XAI: a benchmark dataset for the ground truth
    evaluation of neural network explanations", Information Fusion 81; here with positive relevance only,
    as a share):

    .. math:: \mathrm{mass}(R, O_c) = \frac{\sum_{p \in O_c \setminus B} R_p^+}{\sum_{p \notin B} R_p^+}

    where :math:`B = O_c \cap O_{c'}` are the pixels that belong to *both* objects (left out of the
    numerator and the denominator: no explanation can be right or wrong there). Pixels of neither object
    (background) stay in the denominator. 1 means all positive evidence lies on the object of class c.

    Parameters
    ----------
    h : torch.Tensor or numpy.ndarray
        Heatmaps ``(N, H, W)`` (any ``(N, ...)``).
    mask_own : bool tensor
        Pixels of the explained object, same shape as ``h``.
    mask_other : bool tensor, optional
        Pixels of the other object; None leaves no pixel out.
    objects_only : bool, optional
        Also leave out the background (pixels of neither object): the share of the positive relevance
        on the two objects that goes to the right one, :math:`\sum_{O_c \setminus B} R^+ /
        \sum_{(O_c \cup O_{c'}) \setminus B} R^+`. Rules that give relevance to black background pixels
        (:math:`z^B` does, gradient × input cannot) are then compared on the objects alone.

    Returns
    -------
    torch.Tensor
        float64 ``(N,)``; ``nan`` for a heatmap without positive relevance outside ``B``, and where the
        object has no pixel outside ``B`` (aggregate with :func:`torch.nanmean` and report how many were
        ``nan``).

    Raises
    ------
    TypeError, ValueError
        For non-bool masks or shapes that differ from ``h``'s.
    """
    a, own, allowed = _region_args(h, mask_own, mask_other, objects_only)
    pos = a.clamp(min=0) * allowed
    num = (pos * own).sum(dim=1)
    den = pos.sum(dim=1)
    defined = (den > 0) & (own & allowed).any(dim=1)
    return torch.where(defined, num / torch.where(den > 0, den, torch.ones_like(den)),
                       torch.full_like(den, float("nan")))


def pointing_game(h: _ArrayLike, mask_own: _ArrayLike, mask_other: _ArrayLike | None = None, *,
                  objects_only: bool = False) -> torch.Tensor:
    r"""Does the heatmap's maximum lie on the explained object? (the pointing game)

    The pointing game of Zhang et al. ("Top-down neural attention by excitation backprop", ECCV 2016,
    the paper's reference [13]; IJCV 2018), as used for LRP by Kohlbrenner et al. 2020 ("Towards best
    practice in explaining neural network decisions with LRP", IJCNN): a *hit* when the largest
    positive relevance lies on the object of the explained class; a strict variant, without Zhang's
    15-pixel tolerance. Pixels of both objects are left out, as in :func:`relevance_mass_accuracy`. The
    game is played on :math:`R^+`, so that a heatmap without positive relevance points nowhere (a miss)
    instead of at its least negative pixel; and to be well defined with ties, a hit needs the maximum
    of :math:`R^+` over the object's own pixels to be positive and *strictly* larger than its maximum
    over every other pixel left in.

    Parameters
    ----------
    h, mask_own, mask_other, objects_only
        As for :func:`relevance_mass_accuracy`.

    Returns
    -------
    torch.Tensor
        float64 ``(N,)`` of 1.0 (hit) and 0.0 (miss); ``nan`` where the object has no pixel outside ``B``.
    """
    a, own, allowed = _region_args(h, mask_own, mask_other, objects_only)
    a = a.clamp(min=0)
    inside = own & allowed
    rest = allowed & ~own
    neg_inf = torch.tensor(float("-inf"), dtype=a.dtype, device=a.device)
    best_in = torch.where(inside, a, neg_inf).amax(dim=1)
    best_out = torch.where(rest, a, neg_inf).amax(dim=1)
    hit = ((best_in > best_out) & (best_in > 0)).double()
    return torch.where(inside.any(dim=1), hit, torch.full_like(hit, float("nan")))
