r"""The diffusion metric of Section 5.1 (Eq. 7), its conventions, and ground-truth metrics.

Eq. 7 measures how different the explanations of the two highest-scoring classes are:

.. math:: d_k = \frac{1}{N} \sum_{n} \| R_{n,c_1} - R_{n,c_2} \|_F

with :math:`c_1, c_2` the classes with the highest and second-highest output and :math:`R_{n,c}` the
DTD heatmap (relevance at the input, summed over colour channels) of image ``n`` for class ``c``. A
*larger* value means *less* diffusion.

Every function here works per image (it returns ``(N,)``); :func:`diffusion`, :func:`cosine` and
:func:`diffusion_variants` are the documented means over the images.

**Scale.** The raw metric depends on the heatmaps' scale, which DTD ties to the logit the relevance
starts from (Section 2.2: "the relevance R_k ... is the output of that neuron"). The paper does not say
how its heatmaps were scaled, so there are several conventions (:data:`CONVENTIONS`, :func:`scaled`):
``"raw"`` (as DTD gives them), ``"max"`` (divided by the largest :math:`|R|`), ``"sum"`` (divided by
:math:`\sum |R|`) and ``"softmax"`` (relevance started at the probability :math:`p_k` instead of the
logit; DTD is linear in the start, so this is the logit heatmap times :math:`p_k / f_k`).

**Sign.** A heatmap started at the logit :math:`f_c` carries its sign: where :math:`f_c < 0`, DTD
returns the pattern of :math:`|f_c|` negated. A signed comparison then reads a sign flip as a different
explanation. The ``"sc-"`` conventions compare the *sign-corrected* heatmaps :math:`R \cdot
\mathrm{sign}(f_c)` (:func:`sign_corrected`), in which positive relevance always speaks for the class;
``"softmax"`` is sign-corrected by construction. :func:`cosines` is the signed cosine; its absolute
value, and the cosine of the sign-corrected heatmaps, are reported beside it.

**Undefined cases are NaN**, never a number: the cosine of a heatmap without any relevance, the mass
accuracy or pointing game of a heatmap without positive relevance, and any metric of a heatmap that
holds NaN. Means leave them out and report how many there were.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = [
    "CONVENTIONS", "SCALES", "diffusion", "frobenius", "cosine", "cosines", "normalize", "sign_corrected", "scaled",
    "softmax_scale", "top2", "top2_values", "diffusion_variants", "relevance_mass_accuracy", "pointing_game",
]

#: How each heatmap is scaled before Eq. 7 (:func:`normalize`).
SCALES = ("raw", "max", "sum")

#: The conventions of Eq. 7 (:func:`scaled`): the scales, ``"softmax"``, and the scales of the
#: sign-corrected heatmaps (``"sc-raw"``, ``"sc-max"``, ``"sc-sum"``).
CONVENTIONS = (*SCALES, "softmax", *(f"sc-{c}" for c in SCALES))

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
        float64 ``(N,)``; ``nan`` where a heatmap holds ``nan``.

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
        ``d = 1/N sum_n ||h1[n] - h2[n]||_F``, computed in float64. Larger means less diffusion; ``nan``
        if a heatmap holds ``nan``.

    Raises
    ------
    ValueError
        If the shapes differ or the batch is empty.
    """
    return float(frobenius(h1, h2).mean())


def cosines(h1: _ArrayLike, h2: _ArrayLike) -> torch.Tensor:
    """Per-sample cosine similarity of flattened heatmaps.

    Each heatmap is first divided by its largest ``|R|``, so the cosine does not depend on the scale,
    however small (a tiny heatmap's cosine with itself is 1).

    Parameters
    ----------
    h1, h2 : torch.Tensor or numpy.ndarray
        Heatmap batches of the same shape ``(N, ...)``.

    Returns
    -------
    torch.Tensor
        ``(N,)`` float64 in ``[-1, 1]``: ``<h1[n], h2[n]> / (||h1[n]|| ||h2[n]||)``; 1 means the same
        explanation up to a positive scale. ``nan`` where either heatmap is all zero (it has no
        direction) or holds ``nan``/``inf``.

    Raises
    ------
    ValueError
        If the shapes differ or the batch is empty.
    """
    a, b = _pair(h1, h2)
    sa = a.abs().amax(dim=1, keepdim=True)
    sb = b.abs().amax(dim=1, keepdim=True)
    ok = (sa > 0) & (sb > 0) & torch.isfinite(sa) & torch.isfinite(sb)
    a = a / torch.where(ok, sa, torch.ones_like(sa))
    b = b / torch.where(ok, sb, torch.ones_like(sb))
    c = (a * b).sum(dim=1) / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1))
    return torch.where(ok[:, 0], c.clamp(-1.0, 1.0), torch.full_like(c, float("nan")))


def cosine(h1: _ArrayLike, h2: _ArrayLike) -> float:
    """Mean cosine similarity of per-sample flattened heatmaps (a scale-free companion of Eq. 7).

    Parameters
    ----------
    h1, h2 : torch.Tensor or numpy.ndarray
        Heatmap batches of the same shape ``(N, ...)``.

    Returns
    -------
    float
        The mean of :func:`cosines` over the images where it is defined; ``nan`` if it is defined for
        none. Count the undefined ones with ``cosines(h1, h2).isnan().sum()``.

    Raises
    ------
    ValueError
        If the shapes differ or the batch is empty.
    """
    return float(cosines(h1, h2).nanmean())


def normalize(h: torch.Tensor, convention: str, *, heatmap_dims: int = 2) -> torch.Tensor:
    """Rescale each heatmap by a scale of :data:`SCALES`.

    Parameters
    ----------
    h : torch.Tensor
        Heatmaps ``(..., H, W)``, e.g. ``(N, H, W)`` or ``(B, K, H, W)``.
    convention : str
        ``"raw"``: unchanged; ``"max"``: each heatmap divided by its largest ``|R|``; ``"sum"``: divided
        by its ``sum |R|``. All-zero heatmaps stay zero. The other conventions need the logits: use
        :func:`scaled`.
    heatmap_dims : int, optional
        How many trailing axes form one heatmap (2 for ``(H, W)``, 3 for relevance ``(C, H, W)``).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``h`` (``"raw"`` returns ``h`` itself).

    Raises
    ------
    ValueError
        For a convention outside :data:`SCALES`, or if ``h`` has fewer than ``heatmap_dims`` axes.
    """
    if convention == "raw":
        return h
    if convention in CONVENTIONS and convention not in SCALES:
        raise ValueError(f"{convention!r} needs the logits the relevance starts from: use scaled(h, {convention!r}, "
                         "logits=..., classes=...)")
    if convention not in SCALES:
        raise ValueError(f"unknown convention {convention!r}: choose one of {', '.join(CONVENTIONS)}")
    if h.ndim < heatmap_dims:
        raise ValueError(f"heatmaps of shape {tuple(h.shape)} have fewer than heatmap_dims={heatmap_dims} axes")
    dims = tuple(range(h.ndim - heatmap_dims, h.ndim))
    a = h.abs()
    scale = a.amax(dim=dims, keepdim=True) if convention == "max" else a.sum(dim=dims, keepdim=True)
    return h / torch.where(scale > 0, scale, torch.ones_like(scale))


def sign_corrected(h: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """Heatmaps times the sign of the relevance they start from: ``R * sign(f_c)``.

    Parameters
    ----------
    h : torch.Tensor
        Heatmaps ``(B, K, H, W)`` (or relevance ``(B, K, C, H, W)``) started at the values ``start``.
    start : torch.Tensor
        ``(B, K)``: what each explanation started from (the logits :math:`f_c` for DTD).

    Returns
    -------
    torch.Tensor
        ``h`` with every heatmap whose start is negative negated (and zeroed where it is 0), so that
        positive relevance speaks for the class whatever the sign of its logit.
    """
    if start.shape != h.shape[:2]:
        raise ValueError(f"start has shape {tuple(start.shape)}; expected {tuple(h.shape[:2])} (one value per heatmap)")
    sign = torch.sign(start).to(h.dtype)
    return h * sign.view(*sign.shape, *([1] * (h.ndim - 2)))


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


def scaled(h: torch.Tensor, convention: str, *, logits: torch.Tensor, classes: torch.Tensor,
           starts_at_logit: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Heatmaps ``(B, K, H, W)`` of the classes ``classes`` under a convention of :data:`CONVENTIONS`.

    Parameters
    ----------
    h : torch.Tensor
        Heatmaps ``(B, K, H, W)``.
    convention : str
        One of :data:`CONVENTIONS`.
    logits, classes : torch.Tensor
        ``(B, n_classes)`` outputs and ``(B, K)`` explained classes.
    starts_at_logit : bool, optional
        Whether the explanation started at the logit (DTD, LRP-ε/α-β, gradient × input). For methods
        that start elsewhere (CLRP, SGLRP) the sign correction is the identity and ``"softmax"`` is refused.
    eps : float, optional
        Guard of :func:`softmax_scale`.
    """
    if convention == "softmax":
        if not starts_at_logit:
            raise ValueError('"softmax" rescales heatmaps started at the logit; this explanation starts elsewhere')
        return h * softmax_scale(logits, classes, eps=eps).to(h.dtype)[:, :, None, None]
    if convention.startswith("sc-"):
        if starts_at_logit:
            h = sign_corrected(h, logits.gather(1, classes))
        convention = convention[3:]
    return normalize(h, convention)


def _dtd_heatmap() -> Callable:
    try:
        return importlib.import_module("sepdtd.dtd").heatmap
    except ModuleNotFoundError as e:  # pragma: no cover - only before sepdtd.dtd exists
        raise RuntimeError("sepdtd.dtd is not available; pass heatmap_fn=... explicitly") from e


def top2_values(h: torch.Tensor, logits: torch.Tensor, classes: torch.Tensor, *,
                conventions: Sequence[str] | str = CONVENTIONS, starts_at_logit: bool = True,
                eps: float = 1e-6) -> dict[str, torch.Tensor]:
    """Per image, how given top-1 and top-2 heatmaps differ: the values of :func:`top2` for one batch.

    Parameters
    ----------
    h : torch.Tensor
        ``(B, 2, H, W)`` heatmaps of ``classes``.
    logits : torch.Tensor
        ``(B, n_classes)`` outputs of the pass that explained them.
    classes : torch.Tensor
        ``(B, 2)`` int64: the top-1 and top-2 classes.
    conventions, starts_at_logit, eps
        As in :func:`top2`.

    Returns
    -------
    dict of torch.Tensor
        The keys of :func:`top2`, float64 ``(B,)`` (``"logits"``: ``(B, 2)``).
    """
    conventions = (conventions,) if isinstance(conventions, str) else tuple(conventions)
    unknown = [c for c in conventions if c not in CONVENTIONS]
    if unknown:
        raise ValueError(f"unknown conventions {unknown}: choose from {', '.join(CONVENTIONS)}")
    h, logits = h.detach().double(), logits.detach().double()
    values = logits.gather(1, classes)
    out = {}
    for c in conventions:
        hc = scaled(h, c, logits=logits, classes=classes, starts_at_logit=starts_at_logit, eps=eps)
        out[f"diffusion.{c}"] = frobenius(hc[:, 0], hc[:, 1])
    cos = cosines(h[:, 0], h[:, 1])
    out["cosine"], out["abs_cosine"] = cos, cos.abs()
    out["sc_cosine"] = cos * (torch.sign(values[:, 0] * values[:, 1]) if starts_at_logit else 1.0)
    out["logits"] = values
    return out


@torch.no_grad()
def top2(
    model: nn.Module,
    x: torch.Tensor,
    *,
    low: float,
    high: float,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    heatmap_fn: Callable | None = None,
    conventions: Sequence[str] | str = CONVENTIONS,
    starts_at_logit: bool = True,
    eps: float = 1e-6,
) -> dict[str, torch.Tensor]:
    """Per image, how the top-1 and top-2 class heatmaps of ``x`` differ (Eq. 7 and its companions).

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits; it is put in eval mode for the computation and its mode restored.
        Its parameters' dtype is the dtype of the computation; the heatmaps are compared in float64.
    x : torch.Tensor
        Images ``(N, C, H, W)``: ``uint8`` (divided by 255) or float in ``[low, high]``.
    low, high : float
        DTD's input box for the z^B rule (Eq. 4); ``0.0, 1.0`` for images in ``[0, 1]``.
    batch_size : int, optional
        Images per pass.
    device : str or torch.device, optional
        Where to compute (``"auto"``: CUDA when available). The model is moved there.
    heatmap_fn : callable, optional
        ``heatmap_fn(model, x, classes, *, low, high) -> (B, K, H, W)`` with ``classes`` a ``(B, K)``
        int64 tensor; defaults to :func:`sepdtd.dtd.heatmap`.
    conventions : str or sequence of str, optional
        Conventions of Eq. 7 (:data:`CONVENTIONS`; one name: that one only).
    starts_at_logit : bool, optional
        See :func:`scaled`.
    eps : float, optional
        Guard of :func:`softmax_scale`.

    Returns
    -------
    dict of torch.Tensor
        ``"diffusion.<convention>"``: the summand of Eq. 7 per image; ``"cosine"`` (:func:`cosines` of
        the heatmaps as they are), ``"abs_cosine"`` (its absolute value), ``"sc_cosine"`` (the cosine of
        the sign-corrected heatmaps); ``"logits"``: the top-1 and top-2 logits ``(N, 2)``. All float64
        on the CPU; the cosines are ``nan`` where a heatmap is blank.
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
    dtype = next(model.parameters()).dtype
    parts: dict[str, list[torch.Tensor]] = {}

    def keep(name: str, value: torch.Tensor) -> None:
        parts.setdefault(name, []).append(value.detach().double().cpu())

    # cuDNN's TF32 convolutions (on by default on GPUs) cost DTD about 1e-3 relative accuracy: measure in fp32.
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(dev)
            xb = xb.to(dtype) / 255 if xb.dtype == torch.uint8 else xb.to(dtype)
            logits = model(xb)
            if logits.ndim != 2 or logits.shape[1] < 2:
                raise ValueError(f"the model must return (B, n_classes >= 2) logits, got {tuple(logits.shape)}")
            top = logits.topk(2, dim=1)
            with torch.enable_grad():
                h = heatmap_fn(model, xb, top.indices, low=low, high=high)
            if h.shape[:2] != top.indices.shape:
                raise ValueError(f"heatmap_fn returned shape {tuple(h.shape)}; expected ({xb.shape[0]}, 2, H, W)")
            for name, value in top2_values(h, logits, top.indices, conventions=conventions,
                                           starts_at_logit=starts_at_logit, eps=eps).items():
                keep(name, value)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
        model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def diffusion_variants(model: nn.Module, x: torch.Tensor, *, low: float, high: float, batch_size: int = 256,
                       device: str | torch.device = "auto", eps: float = 1e-6, heatmap_fn: Callable | None = None,
                       conventions: Sequence[str] | str = CONVENTIONS) -> dict:
    """Eq. 7 between the top-1 and top-2 class heatmaps of ``x``, under every convention: the means of :func:`top2`.

    Parameters are those of :func:`top2`.

    Returns
    -------
    dict
        One ``d`` per requested convention (Eq. 7, the mean over the images), ``"cosine"``,
        ``"abs_cosine"``, ``"sc_cosine"`` (means over the images where they are defined),
        ``"undefined"`` (images with a blank heatmap, where they are not), ``"top1_nonpositive"`` and
        ``"top2_nonpositive"`` (the shares of images whose top-1 / top-2 logit is <= 0) and ``"n"``.
        A DTD heatmap carries the sign of the logit it starts from, so where exactly one of the two
        logits is <= 0 the cosine is negative however alike the two patterns are; ``"abs_cosine"`` and
        ``"sc_cosine"`` compare the patterns.
    """
    per = top2(model, x, low=low, high=high, batch_size=batch_size, device=device, heatmap_fn=heatmap_fn,
               conventions=conventions, eps=eps)
    out: dict = {k.split(".", 1)[1]: float(v.mean()) for k, v in per.items() if k.startswith("diffusion.")}
    out.update({k: float(per[k].nanmean()) for k in ("cosine", "abs_cosine", "sc_cosine")})
    out["undefined"] = int(per["cosine"].isnan().sum())
    out["top1_nonpositive"], out["top2_nonpositive"] = (float(v) for v in (per["logits"] <= 0).double().mean(0))
    out["n"] = int(x.shape[0])
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
        float64 ``(N,)``; ``nan`` for a heatmap without positive relevance outside ``B``, with a ``nan``
        pixel outside ``B``, and where the object has no pixel outside ``B`` (aggregate with
        :func:`torch.nanmean` and report how many were ``nan``).

    Raises
    ------
    TypeError, ValueError
        For non-bool masks or shapes that differ from ``h``'s.
    """
    a, own, allowed = _region_args(h, mask_own, mask_other, objects_only)
    pos = torch.where(allowed, a.clamp(min=0), torch.zeros_like(a))
    num = torch.where(own, pos, torch.zeros_like(pos)).sum(dim=1)
    den = pos.sum(dim=1)
    defined = (den > 0) & (own & allowed).any(dim=1)                 # nan pixels make den nan: undefined
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
    game is played on :math:`R^+`: a heatmap without positive relevance points nowhere, so its game is
    undefined (``nan``), not a hit at its least negative pixel. With ties, a hit needs the maximum of
    :math:`R^+` over the object's own pixels to be *strictly* larger than its maximum over every other
    pixel left in. Explain sign-corrected heatmaps (:func:`sign_corrected`) when logits can be negative.

    Parameters
    ----------
    h, mask_own, mask_other, objects_only
        As for :func:`relevance_mass_accuracy`.

    Returns
    -------
    torch.Tensor
        float64 ``(N,)`` of 1.0 (hit) and 0.0 (miss); ``nan`` where the object has no pixel outside
        ``B``, where the heatmap has no positive relevance outside ``B``, and where it holds ``nan`` there.
    """
    a, own, allowed = _region_args(h, mask_own, mask_other, objects_only)
    bad = (torch.isnan(a) & allowed).any(dim=1)
    a = a.clamp(min=0)
    inside = own & allowed
    rest = allowed & ~own
    neg_inf = torch.tensor(float("-inf"), dtype=a.dtype, device=a.device)
    best_in = torch.where(inside, a, neg_inf).amax(dim=1)
    best_out = torch.where(rest, a, neg_inf).amax(dim=1)
    hit = (best_in > best_out).double()
    blank = torch.where(allowed, a, torch.zeros_like(a)).amax(dim=1) <= 0
    hit = torch.where(blank | bad, torch.full_like(hit, float("nan")), hit)
    return torch.where(inside.any(dim=1), hit, torch.full_like(hit, float("nan")))
