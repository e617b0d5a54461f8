"""Deep Taylor Decomposition (Section 2.2, Eq. 1-4) as two functions of ``(B, K)`` classes.

:func:`relevance` and :func:`heatmap` run the paper's composite, :math:`z^B` (Eq. 4) at the first weighted
layer and :math:`z^+` (Eq. 3) above it (``Composite(ZPlus(), first=ZBox())``,
:mod:`sepdtd.explain.rules`), on the engine :mod:`sepdtd.explain.engine`, whose docstring derives the
rules, how all K classes share one forward pass, and what is conserved. :class:`sepdtd.Explainer` does
the same with targets such as ``"top2"``, batch-norm folding and the conservation error.
"""
from __future__ import annotations

from torch import Tensor, nn

from sepdtd.explain import rules
from sepdtd.explain.engine import SUPPORTED_LAYERS, Bound, check_model
from sepdtd.explain.rules import explain

__all__ = ["relevance", "heatmap", "check_model", "SUPPORTED_LAYERS"]


def _composite(stabilizer: float) -> rules.Composite:
    return rules.METHODS["dtd"] if stabilizer == 1e-9 else rules._dtd(stabilizer)


def relevance(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound, high: Bound,
              stabilizer: float = 1e-9) -> Tensor:
    r"""DTD relevance of each input element for K classes per sample (Section 2.2, Eq. 1-4).

    The relevance of class :math:`c` starts at its logit, :math:`R_c = f_c(x)`, all other outputs 0
    (Section 3), and is propagated with the :math:`z^B` rule (Eq. 4) at the first weighted layer and
    the :math:`z^+` rule (Eq. 3) at every later Conv2d/Linear layer (Montavon et al. 2017); max-pooling
    is winner-take-all, average pooling proportional to its inputs, ReLU/Dropout/Flatten pass relevance
    on. Biases are left out of the rules. All K classes share one forward pass.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`torch.nn.Sequential` of Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout
        (e.g. :class:`sepdtd.models.PaperNet`), see :func:`check_model`. DTD assumes biases ``<= 0``
        (Eq. 2; :func:`sepdtd.models.clamp_biases_`). The model is only read: evaluation-mode
        semantics are used (dropout off) without touching its mode, parameters or hooks. Its weights
        are used in ``x``'s dtype.
    x : torch.Tensor
        float32 or float64 inputs ``(B, C, H, W)`` or ``(B, D)`` inside the box ``[low, high]``, on the
        model's device.
    classes : torch.Tensor
        Integer class indices of shape ``(B, K)``, e.g. ``logits.topk(2).indices``.
    low, high : float or torch.Tensor
        The box :math:`[l, h]` of Eq. 4 (for images in ``[0, 1]``: ``low=0.0, high=1.0``), broadcastable
        to one input ``x.shape[1:]``: finite, :math:`l \le 0 \le h` and :math:`l < h`.
    stabilizer : float, optional
        :math:`s > 0`: each denominator :math:`z` becomes :math:`z + s\,\mathrm{sign}(z)`,
        :math:`\mathrm{sign}(0) = +1`.

    Returns
    -------
    torch.Tensor
        Relevance of shape ``(B, K, *x.shape[1:])`` in ``x``'s dtype, not attached to any autograd
        graph. For :math:`b \le 0` and :math:`l \le 0 \le h`, ``R[b, k].sum()`` equals
        ``f_{classes[b, k]}(x[b])`` up to the stabiliser (:mod:`sepdtd.explain.engine`).

    Raises
    ------
    TypeError
        Unsupported layer (named with its position), ``x`` not float32/float64, non-integer ``classes``.
    ValueError
        ``x`` with NaN/infinite values or outside the box (says how far), a bad box, bad ``classes``
        shape or range, ``stabilizer <= 0``, or an architecture the rules do not cover (see
        :func:`check_model`).
    """
    return explain(model, x, classes, _composite(stabilizer), low=low, high=high)


def heatmap(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound, high: Bound,
            stabilizer: float = 1e-9) -> Tensor:
    """The paper's heatmap: DTD relevance (Eq. 1-4) summed over colour channels (end of Section 2.2).

    Parameters
    ----------
    model, x, classes, low, high, stabilizer
        As for :func:`relevance`; ``x`` must be images ``(B, C, H, W)``.

    Returns
    -------
    torch.Tensor
        ``(B, K, H, W)``: ``relevance(...).sum(dim=2)``.
    """
    if isinstance(x, Tensor) and x.ndim != 4:
        raise ValueError(f"heatmap needs images (B, C, H, W), got shape {tuple(x.shape)}; use relevance()")
    return explain(model, x, classes, _composite(stabilizer), low=low, high=high, channel_sum=True)
