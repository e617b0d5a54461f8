r"""Block-wise L1 regularization of the dense layers (Section 4, Eq. 5-6).

Every dense layer is cut into ``n_blocks`` diagonal blocks (``n_blocks`` = the number of classes C in
the paper, Figure 3). Output neuron ``j`` of a layer with ``out`` neurons belongs to block
``floor(j * n / out)`` and input neuron ``i`` of a layer with ``in`` inputs to block
``floor(i * n / in)``; a weight is *off* the diagonal blocks when these two blocks differ. This contiguous
split covers layer sizes that ``n`` does not divide (e.g. 512 neurons in 10 blocks of 51 or 52) and maps
the last layer's outputs one class per block.

The paper describes the block of a neuron as "integer division with the number of classes" of its
index; read literally (``i // C``) that would give ``ceil(size / C)`` blocks of C neurons instead of C
blocks, contradicting Figure 3 and the text ("a number of blocks equal to the number of classes"). We
follow Figure 3.

Eq. 6 penalises only *positive* off-block weights, because only positive weights carry relevance in the
z+ rule (Eq. 3):

.. math:: S(W) = \sum_l \sum_{i,j} \max(0, w^l_{ij}) \, 1[\mathrm{block}(i) \ne \mathrm{block}(j)]

and the training objective is Eq. 5, cross-entropy + ``lam * S(W)`` (see :mod:`sepdtd.training`).
Convolutions are never regularized. Note that :class:`torch.nn.Linear` stores its weight as
``(out, in)``, i.e. ``weight[j, i]`` is the paper's :math:`w_{ij}`.
"""
from __future__ import annotations

import torch
from torch import nn

from sepdtd.models import dense_layers

__all__ = ["PENALTY_LAYERS", "PENALTY_REDUCTIONS", "block_mask", "block_l1", "penalized_layers", "off_block_count",
           "inblock_share", "expected_inblock_share", "clear_mask_cache"]

_MASKS: dict[tuple, torch.Tensor] = {}


def _check(out_features: int, in_features: int, n_blocks: int) -> None:
    for name, v in (("out_features", out_features), ("in_features", in_features), ("n_blocks", n_blocks)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if out_features < 1 or in_features < 1:
        raise ValueError(f"layer size must be positive, got out_features={out_features}, in_features={in_features}")
    if n_blocks < 1:
        raise ValueError(f"n_blocks must be >= 1 (the number of classes), got {n_blocks}")
    if n_blocks > min(out_features, in_features):
        raise ValueError(
            f"n_blocks={n_blocks} is larger than the layer ({out_features} out x {in_features} in): every "
            f"block needs at least one input and one output neuron; use n_blocks <= {min(out_features, in_features)}"
        )


def _mask(out_features: int, in_features: int, n_blocks: int, device: torch.device,
          dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Cached mask (bool, or 0/1 in ``dtype``) on ``device``; shared, so never modify it in place."""
    key = (out_features, in_features, n_blocks, str(device), dtype)
    m = _MASKS.get(key)
    if m is None:
        if dtype is torch.bool:
            j = torch.arange(out_features, device=device) * n_blocks // out_features
            i = torch.arange(in_features, device=device) * n_blocks // in_features
            m = j[:, None] != i[None, :]
        else:
            m = _mask(out_features, in_features, n_blocks, device).to(dtype)
        _MASKS[key] = m
    return m


def clear_mask_cache() -> None:
    """Forget the cached masks (e.g. to free GPU memory)."""
    _MASKS.clear()


def block_mask(out_features: int, in_features: int, n_blocks: int, *,
               device: str | torch.device = "cpu") -> torch.Tensor:
    """Where a dense weight lies off the diagonal blocks (the indicator of Eq. 6).

    Parameters
    ----------
    out_features, in_features : int
        Layer size; the mask has the shape of :attr:`torch.nn.Linear.weight`, ``(out, in)``.
    n_blocks : int
        Number of diagonal blocks (the number of classes C in Eq. 6), ``1 <= n_blocks <= min(out, in)``
        so that every block holds at least one input and one output neuron.
    device : str or torch.device, optional
        Where the mask lives.

    Returns
    -------
    torch.Tensor
        ``bool`` tensor ``(out_features, in_features)``: ``mask[j, i]`` is True iff
        ``floor(j * n / out) != floor(i * n / in)``. Masks are cached per ``(out, in, n, device)``, so the
        returned tensor is shared: do not modify it in place.

    Raises
    ------
    TypeError, ValueError
        For non-integer or out-of-range arguments.
    """
    _check(out_features, in_features, n_blocks)
    return _mask(out_features, in_features, n_blocks, torch.device(device))


def _resolve_n_blocks(model: nn.Module, n_blocks: int | None) -> int:
    if n_blocks is not None:
        return n_blocks
    n = getattr(model, "n_classes", None)
    if n is None:
        raise ValueError("n_blocks is None and the model has no n_classes attribute: pass n_blocks")
    return int(n)


#: Which dense layers Eq. 6 covers: every dense layer (the paper) or only the output layer.
PENALTY_LAYERS = ("dense", "output")

#: How the positive off-block weights are combined: their sum (Eq. 6) or their mean.
PENALTY_REDUCTIONS = ("sum", "mean")


def penalized_layers(model: nn.Module, layers: str = "dense") -> list[nn.Linear]:
    """The dense layers whose weights Eq. 6 covers: all of them (``"dense"``) or the last (``"output"``)."""
    if layers not in PENALTY_LAYERS:
        raise ValueError(f"unknown penalty layers {layers!r}: choose one of {', '.join(PENALTY_LAYERS)}")
    dense = list(dense_layers(model))
    return dense[-1:] if layers == "output" else dense


def off_block_count(model: nn.Module, n_blocks: int | None = None, *, layers: str = "dense") -> int:
    """Number of off-block weights in the layers of :func:`penalized_layers` (the divisor of ``"mean"``)."""
    n = _resolve_n_blocks(model, n_blocks)
    return sum(int(block_mask(d.out_features, d.in_features, n).sum()) for d in penalized_layers(model, layers))


def block_l1(model: nn.Module, n_blocks: int | None = None, *, layers: str = "dense",
             reduction: str = "sum") -> torch.Tensor:
    """The block-wise L1 penalty S(W) of Eq. 6 over the dense layers of ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        Its :class:`torch.nn.Linear` layers are regularized; convolutions contribute nothing.
    n_blocks : int, optional
        Number of diagonal blocks (C in Eq. 6); defaults to ``model.n_classes``.
    layers : {"dense", "output"}, optional
        Every dense layer (Eq. 6), or only the output layer.
    reduction : {"sum", "mean"}, optional
        The sum of Eq. 6, or that sum divided by the number of off-block weights
        (:func:`off_block_count`), which makes λ a per-weight rate.

    Returns
    -------
    torch.Tensor
        Differentiable scalar on the weights' device. With ``"sum"`` its gradient is exactly 1 on
        strictly positive off-block weights and 0 elsewhere (also at ``w == 0``; it uses
        :func:`torch.relu`). A model without dense layers gives a constant 0.
    """
    if reduction not in PENALTY_REDUCTIONS:
        raise ValueError(f"unknown penalty reduction {reduction!r}: choose one of {', '.join(PENALTY_REDUCTIONS)}")
    n = _resolve_n_blocks(model, n_blocks)
    total, count = None, 0
    for layer in penalized_layers(model, layers):
        w = layer.weight
        out_f, in_f = w.shape
        _check(out_f, in_f, n)
        m = _mask(out_f, in_f, n, w.device, w.dtype)
        term = torch.dot(torch.relu(w).reshape(-1), m.reshape(-1))
        total = term if total is None else total + term
        count += int(_mask(out_f, in_f, n, w.device).sum()) if reduction == "mean" else 0
    if total is None:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else "cpu")
    return total / count if reduction == "mean" and count else total


@torch.no_grad()
def inblock_share(model: nn.Module, n_blocks: int | None = None) -> list[float]:
    """Share of positive dense weight mass inside the diagonal blocks, per dense layer (Figure 6).

    Parameters
    ----------
    model : torch.nn.Module
        The model; its :class:`torch.nn.Linear` layers are measured, input to output.
    n_blocks : int, optional
        Number of blocks; defaults to ``model.n_classes``.

    Returns
    -------
    list of float
        For each dense layer ``sum(max(0, w) in blocks) / sum(max(0, w))`` in ``[0, 1]``; ``nan`` for a
        layer without positive weights. Eq. 6 drives this towards 1; a block-agnostic network gives about
        :func:`expected_inblock_share`.
    """
    n = _resolve_n_blocks(model, n_blocks)
    shares = []
    for layer in dense_layers(model):
        w = layer.weight.detach().double().clamp(min=0)
        out_f, in_f = w.shape
        mask = block_mask(out_f, in_f, n, device=w.device)
        total = float(w.sum())
        shares.append(float(w[~mask].sum()) / total if total > 0 else float("nan"))
    return shares


def expected_inblock_share(out_features: int, in_features: int, n_blocks: int) -> float:
    """Fraction of a layer's weights that lie in the diagonal blocks (about ``1 / n_blocks``).

    This is the in-block share (see :func:`inblock_share`) that a network ignoring the blocks would
    show, the reference against which Eq. 6's effect is judged.
    """
    mask = block_mask(out_features, in_features, n_blocks)
    return float((~mask).sum()) / mask.numel()
