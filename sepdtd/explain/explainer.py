"""The face: ``Explainer(model, rule=..., low=..., high=...)(x, target=...) -> Explanation``.

Captum users call ``LRP(model).attribute(x, target=...)``; zennit users build rules, composites and
canonizers. Here an :class:`Explainer` holds the model, the method (a name of
:data:`sepdtd.explain.rules.METHODS`, a rule, a composite, CLRP or SGLRP), the input box and the
canonizers (by default :class:`MergeBatchNorm`, which folds a BatchNorm into the Conv2d/Linear before
it); calling it explains a batch for the targets asked and returns an :class:`Explanation`. The model is
only read: its mode, parameters, buffers and hooks are left as they are, and evaluation-mode semantics
are used (dropout off, batch-norm running statistics).
"""
from __future__ import annotations

import numbers
import re
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sepdtd.explain import engine
from sepdtd.explain.rules import METHODS, Composite, GradientXInput, Method, Rule, ZBox

__all__ = ["Explainer", "Explanation", "MergeBatchNorm", "TARGETS"]

#: The string targets: the most likely class, the two most likely, the K most likely, every class.
TARGETS = ("top1", "top2", "topk:K", "all")


@dataclass(frozen=True)
class MergeBatchNorm:
    r"""Canonizer: fold each BatchNorm1d/2d that directly follows a Conv2d/Linear into that layer.

    In evaluation mode a batch norm is the affine map :math:`y = \gamma (z - \mu) / \sigma + \beta`,
    :math:`\sigma = \sqrt{\mathrm{var} + \epsilon}`, so the pair equals one layer with :math:`w' = w
    \gamma / \sigma` and :math:`b' = (b - \mu) \gamma / \sigma + \beta` (computed in float64). The model
    is not touched: the folded layer is a copy. The folded biases may be positive, which DTD's
    conservation does not allow for (Section 2.2).
    """

    def __call__(self, layers: engine.Layers) -> engine.Layers:
        out: engine.Layers = []
        i = 0
        while i < len(layers):
            name, layer = layers[i]
            bn = layers[i + 1][1] if i + 1 < len(layers) else None
            if isinstance(layer, engine._WEIGHTED) and isinstance(bn, nn.modules.batchnorm._BatchNorm):
                out.append((name, self._fold(name, layer, layers[i + 1][0], bn)))
                i += 2
            else:
                out.append((name, layer))
                i += 1
        return out

    @staticmethod
    def _fold(name: str, layer: nn.Module, bn_name: str, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
        if bn.running_mean is None or bn.running_var is None:
            raise TypeError(f"the batch norm at position {bn_name} keeps no running statistics "
                            "(track_running_stats=False), so it normalises with each batch's own and cannot be "
                            "folded into the layer before it; build it with track_running_stats=True")
        expected = nn.BatchNorm2d if isinstance(layer, nn.Conv2d) else nn.BatchNorm1d
        cout = layer.weight.shape[0]
        if not isinstance(bn, expected) or bn.num_features != cout:
            raise TypeError(f"the batch norm at position {bn_name} ({bn}) does not fit the {type(layer).__name__} "
                            f"at position {name} ({cout} outputs): a {expected.__name__}({cout}) would")
        with torch.no_grad():
            d = torch.float64
            scale = (bn.running_var.to(d) + bn.eps).rsqrt()
            if bn.weight is not None:
                scale = scale * bn.weight.to(d)
            bias = -bn.running_mean.to(d) * scale
            if layer.bias is not None:
                bias = bias + layer.bias.to(d) * scale
            if bn.bias is not None:
                bias = bias + bn.bias.to(d)
            w = layer.weight.to(d) * scale.view(-1, *[1] * (layer.weight.ndim - 1))
            dtype = layer.weight.dtype
            return engine.with_params(layer, w.to(dtype), bias.to(dtype))


@dataclass(frozen=True)
class Explanation:
    r"""The explanations of a batch, K per input.

    Attributes
    ----------
    relevance : torch.Tensor
        ``(B, K, *x.shape[1:])``: the relevance of every input element for each explained class.
    classes : torch.Tensor
        ``(B, K)`` int64: the explained classes.
    logits : torch.Tensor
        ``(B, n_classes)``: the model's outputs (evaluation mode).
    conservation_error : torch.Tensor
        ``(B, K)``: the relevance summed over the input minus the relevance started at the output
        (:math:`f_c` for DTD, LRP and gradient × input, 0 for SGLRP; NaN for CLRP, whose shares conserve
        nothing). For DTD with biases <= 0 it is 0 up to the stabiliser, unless no positive evidence
        reaches the class at the top (then all of :math:`f_c \le 0` is lost).
    """

    relevance: Tensor
    classes: Tensor
    logits: Tensor
    conservation_error: Tensor

    @property
    def heatmap(self) -> Tensor:
        """``(B, K, H, W)``: the relevance summed over colour channels (the paper's heatmap, Section 2.2)."""
        if self.relevance.ndim != 5:
            raise ValueError(f"a heatmap needs image inputs (B, C, H, W); the relevance has shape "
                             f"{tuple(self.relevance.shape)}: use .relevance")
        return self.relevance.sum(dim=2)


def _method(rule: str | Rule | Method) -> Method:
    if isinstance(rule, str):
        if rule not in METHODS:
            raise ValueError(f"unknown method {rule!r}: choose one of {', '.join(METHODS)}, or pass a rule, a "
                             "Composite, CLRP or SGLRP")
        return METHODS[rule]
    if isinstance(rule, GradientXInput):
        return Composite(rule)
    if isinstance(rule, Rule):
        return Composite(rule, first=ZBox())
    if isinstance(rule, Method):
        return rule
    raise TypeError(f"rule must be a method name ({', '.join(METHODS)}), a Rule, a Composite, CLRP or SGLRP; "
                    f"got {type(rule).__name__}")


def _targets(target: object, batch: int) -> engine.Targets:
    """A target of :meth:`Explainer.__call__` as ``(B, K)`` classes or a choice from the logits."""
    forms = "an int class, a (B,) or (B, K) tensor of classes, 'top1', 'top2', 'topk:K' or 'all'"
    if isinstance(target, str):
        if target == "all":
            return engine.AllClasses()
        m = re.fullmatch(r"top([12])|topk:(\d+)", target)
        k = int(m.group(1) or m.group(2)) if m else 0
        if k < 1:
            raise ValueError(f"unknown target {target!r}: use {forms} (K >= 1)")
        return engine.TopK(k)
    if isinstance(target, bool) or target is None:
        raise TypeError(f"target must be {forms}; got {target!r}")
    if isinstance(target, numbers.Integral):
        return torch.full((batch, 1), int(target), dtype=torch.long)
    try:
        t = torch.as_tensor(target)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"target must be {forms}; got {type(target).__name__}") from None
    if t.ndim == 0:
        t = t.expand(batch)
    if t.ndim == 1 and t.shape[0] == batch:
        return t.unsqueeze(1)
    if t.ndim == 2 and t.shape[0] == batch:
        return t
    raise ValueError(f"a target tensor must have shape ({batch},) or ({batch}, K) for a batch of {batch}, "
                     f"got {tuple(t.shape)}")


class Explainer:
    r"""Explain a classifier's decisions: ``Explainer(model, rule, low=, high=)(x, target=...)``.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`torch.nn.Sequential` (nesting allowed; a module object may be used at several
        positions) of Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten and Dropout, plus BatchNorm
        directly after a Conv2d/Linear (folded by :class:`MergeBatchNorm`); e.g. a
        :class:`sepdtd.models.PaperNet`. Checked here (:func:`sepdtd.check_model`). Only read: its
        mode, parameters and buffers are left as they are; evaluation-mode semantics are used. Its
        weights are used in the inputs' dtype.
    rule : str, Rule or Method
        ``"dtd"`` (the paper's: :math:`z^B` at the first weighted layer, :math:`z^+` above, Eq. 3-4),
        ``"zplus"`` (:math:`z^+` at every layer), ``"epsilon"``, ``"alphabeta"``, ``"gradient_x_input"``,
        ``"clrp"``, ``"sglrp"``
        (:data:`sepdtd.explain.rules.METHODS`); a :class:`~sepdtd.explain.rules.Rule` (used above the
        first layer, with :class:`~sepdtd.explain.rules.ZBox` at the first;
        :class:`~sepdtd.explain.rules.GradientXInput` everywhere); a
        :class:`~sepdtd.explain.rules.Composite`, :class:`~sepdtd.explain.rules.CLRP` or
        :class:`~sepdtd.explain.rules.SGLRP`.
    low, high : float or torch.Tensor, optional
        The input box :math:`[l, h]` of :math:`z^B` (Eq. 4), broadcastable to one input: finite,
        :math:`l \le 0 \le h`, :math:`l < h`; ``low=0.0, high=1.0`` for images in ``[0, 1]``. Required
        when the method uses :math:`z^B`.
    canonizers : sequence of callables
        Rewrite the list of ``(position, layer)`` pairs before explaining (default: fold BatchNorm).

    Raises
    ------
    TypeError, ValueError
        An unsupported layer (named, with its position), an unknown method, a bad box or a missing one.

    Examples
    --------
    >>> explainer = Explainer(net, low=0.0, high=1.0)                    # doctest: +SKIP
    >>> e = explainer(x, target="top2")                                  # doctest: +SKIP
    >>> e.heatmap.shape, e.conservation_error.abs().max()                # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, rule: str | Rule | Method = "dtd", low: engine.Bound | None = None,
                 high: engine.Bound | None = None, *, canonizers: tuple = (MergeBatchNorm(),)):
        self.model = model
        self.method = _method(rule)
        self.canonizers = tuple(canonizers)
        layers = engine.layers(model, self.canonizers)
        first = next(i for i, (_, m) in enumerate(layers) if isinstance(m, engine._WEIGHTED))
        for i, (name, layer) in enumerate(layers):
            if isinstance(layer, engine._WEIGHTED):
                self.method.composite.rule_for(layer, i == first, name)
        if (low is None) != (high is None):
            raise ValueError("give both low and high (the input box of Eq. 4), or neither")
        if low is not None:
            engine.check_box(low, high)
        elif self.method.needs_box:
            raise ValueError(f"{self.method!r} uses the zB rule (Eq. 4) at the first layer, which needs the input "
                             "box: pass low= and high= (for images in [0, 1]: low=0.0, high=1.0)")
        self.low, self.high = low, high

    def __repr__(self) -> str:
        return f"Explainer({type(self.model).__name__}, rule={self.method!r}, low={self.low!r}, high={self.high!r})"

    def __call__(self, x: Tensor, target: object = "top1") -> Explanation:
        """Explain the batch ``x`` for ``target``.

        Parameters
        ----------
        x : torch.Tensor
            float32 or float64 inputs ``(B, C, H, W)`` or ``(B, D)``, finite, on the model's device,
            inside the box where the method uses it.
        target : int, torch.Tensor or str
            An int (that class for every input), a ``(B,)`` or ``(B, K)`` integer tensor, ``"top1"``,
            ``"top2"``, ``"topk:K"`` (the K most likely classes, most likely first) or ``"all"``.

        Returns
        -------
        Explanation
            ``relevance`` ``(B, K, *x.shape[1:])``, ``heatmap`` ``(B, K, H, W)``, ``classes``,
            ``logits`` and ``conservation_error``, in ``x``'s dtype, not attached to autograd.

        Raises
        ------
        TypeError, ValueError
            Bad ``x`` (not float32/64, NaN or infinite values, outside the box, wrong shape) or a bad
            target (an unknown form, a class out of range, more classes than the model has), before any
            computation.
        """
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        targets = _targets(target, x.shape[0] if x.ndim else 0)
        layers = engine.layers(self.model, self.canonizers)
        r, logits, classes, started = self.method._explain(layers, x, targets, low=self.low, high=self.high)
        error = r.flatten(2).sum(-1) - started
        return Explanation(relevance=r, classes=classes, logits=logits, conservation_error=error)
