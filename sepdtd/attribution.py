r"""Explanations beside DTD as functions of ``(B, K)`` classes: which rule causes diffusion?

The paper's Discussion (Section 6) suspects that "only considering positive weights during the
relevance propagation" is a second cause of diffusion, next to the dense layers. To test it, this
module runs, with the interface of :func:`sepdtd.dtd.relevance` — ``method(model, x, classes, *, low,
high, ...) -> (B, K, *x.shape[1:])`` — the rules of :mod:`sepdtd.explain.rules` on the one engine
(:mod:`sepdtd.explain.engine`): LRP-ε (:func:`lrp_epsilon`), LRP-α2β1 (:func:`lrp_alphabeta`), gradient
× input (:func:`gradient_x_input`), and the contrastive CLRP (:func:`clrp`) and SGLRP (:func:`sglrp`),
built on DTD's propagation as in their papers. The rule under test is used at every weighted layer
*above the first*; the first layer keeps the paper's :math:`z^B` rule (``first="zb"``, the default), so
that a comparison with DTD changes exactly what Section 6 suspects. ``first="rule"`` applies the rule
at the first layer too. :data:`METHODS` names the methods the book compares, :data:`LABELS` their
display names.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from sepdtd import dtd
from sepdtd.explain import rules as R
from sepdtd.explain.engine import Bound
from sepdtd.explain.rules import CONTRASTIVE, EPSILON, explain

__all__ = [
    "RULES", "EPSILON", "METHODS", "LABELS", "CONTRASTIVE", "lrp", "zplus", "lrp_epsilon", "lrp_alphabeta",
    "gradient_x_input", "clrp", "sglrp", "relevance", "heatmap",
]

#: Rules of :func:`lrp` for the weighted layers above the first.
RULES = ("zplus", "epsilon", "alphabeta", "gradient")


def _composite(rule: str, first: str, epsilon: float = EPSILON, alpha: float = 2.0, beta: float = 1.0,
               stabilizer: float = 1e-9) -> R.Composite:
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    if first not in ("zb", "rule"):
        raise ValueError(f"first must be 'zb' (the paper's Eq. 4 at the first layer) or 'rule', got {first!r}")
    if rule == "gradient":
        return R.Composite(R.GradientXInput(), stabilizer=stabilizer)
    made = {"zplus": lambda: R.ZPlus(stabilizer), "epsilon": lambda: R.Epsilon(epsilon),
            "alphabeta": lambda: R.AlphaBeta(alpha, beta, stabilizer)}[rule]()
    return R.Composite(made, first=R.ZBox(stabilizer) if first == "zb" else None, stabilizer=stabilizer)


def lrp(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
        rule: str = "zplus", first: str = "zb", epsilon: float = EPSILON, alpha: float = 2.0,
        beta: float = 1.0, stabilizer: float = 1e-9) -> Tensor:
    r"""Layer-wise relevance of K classes per image, one rule for the upper layers (Bach et al. 2015).

    The relevance starts at the explained logit, :math:`R_c = f_c(x)`, every other output 0 (the
    paper's Section 3), and is propagated with ``rule`` through every weighted layer above the first
    and with ``first`` at the first one.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`torch.nn.Sequential` that :func:`sepdtd.check_model` accepts (e.g.
        :class:`sepdtd.models.PaperNet`). Only read; evaluation-mode semantics (dropout off).
    x : torch.Tensor
        float32 or float64 inputs ``(B, C, H, W)`` or ``(B, D)``, finite, on the model's device.
    classes : torch.Tensor
        Integer ``(B, K)`` class indices, e.g. ``logits.topk(2).indices``.
    low, high : float or torch.Tensor
        Input box of the :math:`z^B` rule (Eq. 4), broadcastable to one input; ``0.0, 1.0`` for images in
        ``[0, 1]``. Unused (may be None) with ``first="rule"`` or ``rule="gradient"``.
    rule : {"zplus", "epsilon", "alphabeta", "gradient"}
        :math:`z^+` (Eq. 3: DTD's rule, = :func:`sepdtd.dtd.relevance` with ``first="zb"``), LRP-ε,
        LRP-αβ, or the gradient (then the result is gradient × input at every layer, whatever ``first``).
    first : {"zb", "rule"}
        The first weighted layer's rule: the paper's :math:`z^B` (default) or ``rule``.
    epsilon : float
        ε of LRP-ε (``rule="epsilon"``), > 0.
    alpha, beta : float
        α and β of LRP-αβ (``rule="alphabeta"``), :math:`\alpha - \beta = 1` for conservation.
    stabilizer : float
        :math:`s > 0` of the other rules' denominators, :math:`z + s\,\mathrm{sign}(z)`.

    Returns
    -------
    torch.Tensor
        ``(B, K, *x.shape[1:])`` in ``x``'s dtype, not attached to an autograd graph.

    Raises
    ------
    TypeError, ValueError
        For an unsupported model (see :func:`sepdtd.check_model`), bad ``x``/``classes``/box, or
        unknown ``rule``/``first``.
    """
    composite = _composite(rule, first, epsilon, alpha, beta, stabilizer)
    return explain(model, x, classes, composite, low=low, high=high)


def zplus(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None = None, high: Bound | None = None,
          stabilizer: float = 1e-9) -> Tensor:
    r""":math:`z^+` (Eq. 3) at every weighted layer, the first included: DTD with a different first-layer rule.

    Pixel intensities are never negative, so :math:`z^+` is a valid DTD rule at the first layer too
    (Montavon et al. 2017). Unlike :math:`z^B` (Eq. 4) it gives black pixels no relevance. ``low`` and
    ``high`` are accepted so that every method of :data:`METHODS` has the same signature, and ignored.
    Returns ``(B, K, *x.shape[1:])``.
    """
    return lrp(model, x, classes, low=low, high=high, rule="zplus", first="rule", stabilizer=stabilizer)


def lrp_epsilon(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
                epsilon: float = EPSILON, first: str = "zb", stabilizer: float = 1e-9) -> Tensor:
    r"""LRP-ε (:class:`sepdtd.explain.rules.Epsilon`) above the first layer, :math:`z^B` (Eq. 4) at the first.

    See :func:`lrp` for the parameters; returns ``(B, K, *x.shape[1:])``.
    """
    return lrp(model, x, classes, low=low, high=high, rule="epsilon", first=first, epsilon=epsilon,
               stabilizer=stabilizer)


def lrp_alphabeta(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
                  alpha: float = 2.0, beta: float = 1.0, first: str = "zb", stabilizer: float = 1e-9) -> Tensor:
    r"""LRP-α2β1 (:class:`sepdtd.explain.rules.AlphaBeta`) above the first layer, :math:`z^B` at the first.

    See :func:`lrp` for the parameters; returns ``(B, K, *x.shape[1:])``.
    """
    return lrp(model, x, classes, low=low, high=high, rule="alphabeta", first=first, alpha=alpha, beta=beta,
               stabilizer=stabilizer)


def gradient_x_input(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None = None,
                     high: Bound | None = None) -> Tensor:
    r""":math:`x \odot \partial f_c / \partial x` for K classes per image, one shared forward pass.

    For a ReLU network with zero biases this equals LRP-0 (Bach et al. 2015). ``low`` and ``high`` are
    accepted so that every method of :data:`METHODS` has the same signature, and ignored. Returns
    ``(B, K, *x.shape[1:])``.
    """
    return lrp(model, x, classes, low=low, high=high, rule="gradient")


def clrp(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
         variant: str = "others", rule: str = "zplus", first: str = "zb", stabilizer: float = 1e-9) -> Tensor:
    r"""Contrastive LRP (:class:`sepdtd.explain.rules.CLRP`; Gu, Yang and Tresp 2018).

    :math:`\max\big(0,\ R_c / \sum R_c - R_{\text{dual}} / \sum R_{\text{dual}}\big)` with the dual
    ``variant`` (``"others"`` or ``"negated"``) and the propagation ``rule``/``first`` of :func:`lrp`
    (not ``"gradient"``). Returns ``(B, K, *x.shape[1:])``, non-negative.
    """
    if variant not in CONTRASTIVE:
        raise ValueError(f"unknown CLRP variant {variant!r}: choose one of {', '.join(CONTRASTIVE)}")
    return explain(model, x, classes, R.CLRP(_composite(rule, first, stabilizer=stabilizer), variant),
                   low=low, high=high)


def sglrp(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
          rule: str = "zplus", first: str = "zb", stabilizer: float = 1e-9) -> Tensor:
    r"""Softmax-gradient LRP (:class:`sepdtd.explain.rules.SGLRP`; Iwana, Kuroki and Uchida 2019).

    The propagation ``rule``/``first`` of :func:`lrp` (not ``"gradient"``) started at
    :math:`\partial p_c / \partial f`. Returns ``(B, K, *x.shape[1:])``, signed; it sums to 0 when the
    rule conserves.
    """
    return explain(model, x, classes, R.SGLRP(_composite(rule, first, stabilizer=stabilizer)), low=low, high=high)


#: The methods compared in the book, name -> ``method(model, x, classes, *, low, high) -> (B, K, ...)``
#: (:data:`sepdtd.explain.rules.METHODS` as functions).
METHODS: dict[str, Callable[..., Tensor]] = {
    "dtd": dtd.relevance,
    "zplus": zplus,
    "epsilon": lrp_epsilon,
    "alphabeta": lrp_alphabeta,
    "gradient_x_input": gradient_x_input,
    "clrp": clrp,
    "sglrp": sglrp,
}

#: Display names of :data:`METHODS`.
LABELS: dict[str, str] = {
    "dtd": "DTD z+/zB (the paper)",
    "zplus": "DTD z+/z+ (z+ at the first layer)",
    "epsilon": f"LRP-ε (ε = {EPSILON:g})",
    "alphabeta": "LRP-α2β1",
    "gradient_x_input": "gradient × input",
    "clrp": "CLRP (Gu et al. 2018)",
    "sglrp": "SGLRP (Iwana et al. 2019)",
}


def relevance(method: str | Callable[..., Tensor], model: nn.Module, x: Tensor, classes: Tensor, *,
              low: Bound | None, high: Bound | None, **kwargs) -> Tensor:
    """Relevance ``(B, K, *x.shape[1:])`` of a method of :data:`METHODS` (by name) or a callable."""
    return _method(method)(model, x, classes, low=low, high=high, **kwargs)


def heatmap(method: str | Callable[..., Tensor], model: nn.Module, x: Tensor, classes: Tensor, *,
            low: Bound | None, high: Bound | None, **kwargs) -> Tensor:
    """Heatmaps ``(B, K, H, W)``: :func:`relevance` summed over colour channels (as the paper's, Section 2.2)."""
    if x.ndim != 4:
        raise ValueError(f"heatmap needs images (B, C, H, W), got shape {tuple(x.shape)}; use relevance()")
    return relevance(method, model, x, classes, low=low, high=high, **kwargs).sum(dim=2)


def _method(method: str | Callable[..., Tensor]) -> Callable[..., Tensor]:
    if callable(method):
        return method
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    return METHODS[method]
