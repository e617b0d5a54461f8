r"""Images with two objects of known classes and regions: a ground truth for separable explanations.

Section 5.1 of the paper regrets that "it is not possible to obtain a ground truth" for a class's
explanation, so Eq. 7 only measures that the top-2 heatmaps *differ*. This module builds test images
for which the answer is known: each holds two real test images of *different* classes, with a pixel
mask per object, so the explanation of each class can be checked against the region of its object
(:func:`sepdtd.metrics.relevance_mass_accuracy`, :func:`sepdtd.metrics.pointing_game`).

- MNIST and Fashion-MNIST (``mode="overlay"``): the two items are overlaid by the pixel-wise maximum;
  an item's mask is its pixels brighter than ``threshold`` (default 0: every non-zero pixel). Pixels
  of both items are ambiguous and the metrics leave them out.
- CIFAR-10 (``mode="halves"``): the left half of one image beside the right half of another; the masks
  are the two halves (no pixel belongs to both).

Such composites are outside the training distribution (as in Arras, Osman and Samek 2022, whose
CLEVR-XAI scenes hold several objects by construction), so only images that the network *recognises as
holding both classes* — its two highest outputs are exactly the two classes present — are kept
(:func:`recognized`, :func:`select`); the kept share is reported.

Everything is vectorised and deterministic given the seed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

__all__ = ["MODES", "TwoObjectSet", "pair_indices", "overlay", "halves", "make", "top2", "recognized", "select"]

#: How two images are combined: ``"overlay"`` (pixel-wise maximum) or ``"halves"`` (left | right).
MODES = ("overlay", "halves")


@dataclass(frozen=True)
class TwoObjectSet:
    """Composite images with two objects of different classes.

    Attributes
    ----------
    dataset : str
        Source data set.
    mode : str
        ``"overlay"`` or ``"halves"`` (:data:`MODES`).
    images : torch.Tensor
        ``uint8 (N, C, H, W)``.
    labels : torch.Tensor
        ``int64 (N, 2)``: the classes of object a and object b (always different).
    masks : torch.Tensor
        ``bool (N, 2, H, W)``: the pixels of object a and of object b (they may overlap in ``"overlay"``).
    index : torch.Tensor
        ``int64 (N, 2)``: the source images' indices in the test set.
    seed : int
        Seed the pairs were drawn with.
    """

    dataset: str
    mode: str
    images: Tensor
    labels: Tensor
    masks: Tensor
    index: Tensor
    seed: int

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def label_a(self) -> Tensor:
        """Class of object a, ``(N,)``."""
        return self.labels[:, 0]

    @property
    def label_b(self) -> Tensor:
        """Class of object b, ``(N,)``."""
        return self.labels[:, 1]

    @property
    def mask_a(self) -> Tensor:
        """Pixels of object a, ``bool (N, H, W)``."""
        return self.masks[:, 0]

    @property
    def mask_b(self) -> Tensor:
        """Pixels of object b, ``bool (N, H, W)``."""
        return self.masks[:, 1]

    def subset(self, keep: Tensor) -> TwoObjectSet:
        """The images selected by a bool mask or an index tensor, in a new set."""
        keep = torch.as_tensor(keep)
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("images", "labels", "masks", "index"):
            kw[name] = kw[name][keep]
        return TwoObjectSet(**kw)

    def regions(self, classes: Tensor) -> tuple[Tensor, Tensor]:
        """The masks of the explained objects for classes ``(N, K)`` (each one of the two present).

        Returns
        -------
        own, other : torch.Tensor
            ``bool (N, K, H, W)``: for ``classes[n, k]``, the pixels of the object of that class and of
            the other object.

        Raises
        ------
        ValueError
            If a class is not one of the image's two classes (select the images first, :func:`select`).
        """
        classes = torch.as_tensor(classes, device=self.labels.device)
        if classes.ndim != 2 or classes.shape[0] != len(self):
            raise ValueError(f"classes must be (N, K) with N = {len(self)}, got {tuple(classes.shape)}")
        is_a = classes == self.labels[:, :1]
        is_b = classes == self.labels[:, 1:]
        if not bool((is_a | is_b).all()):
            raise ValueError("some explained classes are not among the two objects of their image; keep only the "
                             "images whose top-2 classes are the two present (twoobject.select)")
        a = self.masks[:, None, 0].expand(-1, classes.shape[1], -1, -1)
        b = self.masks[:, None, 1].expand(-1, classes.shape[1], -1, -1)
        sel = is_a[:, :, None, None]
        return torch.where(sel, a, b), torch.where(sel, b, a)


def pair_indices(labels: Tensor, n: int, *, n_classes: int | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Draw ``n`` pairs of indices whose labels differ, uniformly and vectorised.

    Object a is drawn uniformly from all images; the class of object b uniformly from the *other*
    classes; object b uniformly from the images of that class.

    Parameters
    ----------
    labels : torch.Tensor
        ``int64 (M,)`` labels of the pool (e.g. the test set).
    n : int
        Number of pairs, ``>= 1``.
    n_classes : int, optional
        Number of classes (default ``labels.max() + 1``); every class must occur in ``labels``.
    generator : torch.Generator, optional
        Source of randomness (CPU).

    Returns
    -------
    ia, ib : torch.Tensor
        ``int64 (n,)`` indices into ``labels`` with ``labels[ia] != labels[ib]``.
    """
    labels = torch.as_tensor(labels).long().cpu()
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    c = int(labels.max()) + 1 if n_classes is None else int(n_classes)
    counts = torch.bincount(labels, minlength=c)
    if c < 2 or bool((counts == 0).any()):
        raise ValueError(f"every one of the {c} classes (at least 2) must occur in labels; counts {counts.tolist()}")
    order = torch.argsort(labels, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    ia = torch.randint(labels.numel(), (n,), generator=generator)
    cb = (labels[ia] + torch.randint(1, c, (n,), generator=generator)) % c
    offset = (torch.rand(n, generator=generator, dtype=torch.float64) * counts[cb]).long().clamp(max=counts[cb] - 1)
    ib = order[starts[cb] + offset]
    return ia, ib


def _check_pair(xa: Tensor, xb: Tensor) -> None:
    if xa.shape != xb.shape or xa.ndim != 4:
        raise ValueError(f"need two image batches (N, C, H, W) of the same shape, got {tuple(xa.shape)} and "
                         f"{tuple(xb.shape)}")
    if xa.dtype != torch.uint8 or xb.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (the data layer's format), got {xa.dtype} and {xb.dtype}")


def overlay(xa: Tensor, xb: Tensor, *, threshold: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Overlay two image batches by the pixel-wise maximum (MNIST, Fashion-MNIST).

    Parameters
    ----------
    xa, xb : torch.Tensor
        ``uint8 (N, C, H, W)``.
    threshold : int, optional
        A pixel belongs to an object when any of its channels is ``> threshold`` (0: every non-zero
        pixel).

    Returns
    -------
    images, mask_a, mask_b : torch.Tensor
        ``uint8 (N, C, H, W)`` and two ``bool (N, H, W)``.
    """
    _check_pair(xa, xb)
    if not 0 <= int(threshold) < 255:
        raise ValueError(f"threshold must lie in [0, 255), got {threshold}")
    return torch.maximum(xa, xb), (xa > threshold).any(dim=1), (xb > threshold).any(dim=1)


def halves(xa: Tensor, xb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The left half of each image of ``xa`` beside the right half of ``xb`` (CIFAR-10).

    Returns
    -------
    images, mask_a, mask_b : torch.Tensor
        ``uint8 (N, C, H, W)``; ``mask_a`` the columns ``< W // 2``, ``mask_b`` the others.
    """
    _check_pair(xa, xb)
    n, _, h, w = xa.shape
    left = torch.zeros(n, h, w, dtype=torch.bool, device=xa.device)
    left[:, :, : w // 2] = True
    return torch.where(left[:, None], xa, xb), left, ~left


def make(dataset: str | object, n: int, *, seed: int = 0, mode: str | None = None, threshold: int = 0
         ) -> TwoObjectSet:
    """``n`` two-object test images of a data set, deterministic given ``seed``.

    Parameters
    ----------
    dataset : str or sepdtd.data.Dataset
        A data set name (loaded with :func:`sepdtd.data.load`) or a loaded data set; its *test* images
        are used.
    n : int
        Number of composites.
    seed : int, optional
        Seeds the pairs (:func:`pair_indices`).
    mode : {"overlay", "halves"}, optional
        Default: ``"halves"`` for colour images (CIFAR-10), ``"overlay"`` for grey ones.
    threshold : int, optional
        Mask threshold of :func:`overlay`.

    Returns
    -------
    TwoObjectSet
    """
    if isinstance(dataset, str):
        from sepdtd import data

        dataset = data.load(dataset)
    x, y = torch.as_tensor(dataset.x_test), torch.as_tensor(dataset.y_test).long()
    mode = mode or ("halves" if x.shape[1] == 3 else "overlay")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    gen = torch.Generator().manual_seed(int(seed))
    ia, ib = pair_indices(y, n, n_classes=len(dataset.classes), generator=gen)
    xa, xb = x[ia], x[ib]
    images, ma, mb = overlay(xa, xb, threshold=threshold) if mode == "overlay" else halves(xa, xb)
    return TwoObjectSet(dataset=dataset.name, mode=mode, images=images.contiguous(),
                        labels=torch.stack([y[ia], y[ib]], dim=1), masks=torch.stack([ma, mb], dim=1),
                        index=torch.stack([ia, ib], dim=1), seed=int(seed))


@torch.no_grad()
def top2(model: nn.Module, images: Tensor, *, batch_size: int = 500) -> Tensor:
    """The two highest-scoring classes ``(N, 2)`` of ``uint8`` images (on the model's device, eval mode)."""
    p = next(model.parameters())
    was = model.training
    model.eval()
    try:
        out = [model(images[i:i + batch_size].to(p.device, p.dtype) / 255).topk(2, dim=1).indices.cpu()
               for i in range(0, images.shape[0], batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def recognized(model: nn.Module, tset: TwoObjectSet, *, batch_size: int = 500) -> Tensor:
    """``bool (N,)``: the model's two highest outputs are exactly the image's two classes (any order)."""
    t = top2(model, tset.images, batch_size=batch_size)
    lab = tset.labels
    return ((t[:, 0] == lab[:, 0]) & (t[:, 1] == lab[:, 1])) | ((t[:, 0] == lab[:, 1]) & (t[:, 1] == lab[:, 0]))


def select(tset: TwoObjectSet, models: nn.Module | Mapping[str, nn.Module] | Sequence[nn.Module], *,
           batch_size: int = 500) -> tuple[TwoObjectSet, dict]:
    """Keep the images that *every* given model recognises as holding both classes.

    Parameters
    ----------
    tset : TwoObjectSet
        Candidate images.
    models : model, dict or sequence of models
        One model, or several (e.g. the baseline and every λ, so that all are compared on the same
        images).

    Returns
    -------
    kept : TwoObjectSet
        The images recognised by all models.
    shares : dict
        ``{"per_model": {name: share}, "all": share, "n": N, "kept": k}``: the share of the N candidates
        each model recognises, and the share kept.
    """
    if isinstance(models, nn.Module):
        models = {"model": models}
    elif not isinstance(models, Mapping):
        models = {str(i): m for i, m in enumerate(models)}
    if not models:
        raise ValueError("need at least one model to select the recognised images")
    keep = torch.ones(len(tset), dtype=torch.bool)
    per = {}
    for name, m in models.items():
        ok = recognized(m, tset, batch_size=batch_size)
        per[str(name)] = float(ok.double().mean())
        keep &= ok
    return tset.subset(keep), {"per_model": per, "all": float(keep.double().mean()), "n": len(tset),
                               "kept": int(keep.sum())}
