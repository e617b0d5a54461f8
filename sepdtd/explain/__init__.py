"""Explanations: the engine, its rules and composites, and the face (:class:`Explainer`).

- :mod:`sepdtd.explain.engine`: one layer walker, one forward pass and one class-batched backward pass
  for every rule (the derivation of DTD's rules and what they conserve is in its docstring);
- :mod:`sepdtd.explain.rules`: the rules (:class:`ZPlus`, :class:`ZBox`, :class:`Epsilon`,
  :class:`AlphaBeta`, :class:`GradientXInput`), :class:`Composite` and the contrastive :class:`CLRP`
  and :class:`SGLRP`; :data:`METHODS` names the methods of the book;
- :mod:`sepdtd.explain.explainer`: :class:`Explainer`, :class:`Explanation` and the canonizer
  :class:`MergeBatchNorm`.
"""
from sepdtd.explain.engine import SUPPORTED_LAYERS, check_model
from sepdtd.explain.explainer import TARGETS, Explainer, Explanation, MergeBatchNorm
from sepdtd.explain.rules import (
    CLRP,
    METHODS,
    SGLRP,
    AlphaBeta,
    Composite,
    Epsilon,
    GradientXInput,
    Method,
    Rule,
    ZBox,
    ZPlus,
)

__all__ = ["Explainer", "Explanation", "MergeBatchNorm", "TARGETS", "Rule", "ZPlus", "ZBox", "Epsilon", "AlphaBeta",
           "GradientXInput", "Composite", "CLRP", "SGLRP", "Method", "METHODS", "check_model", "SUPPORTED_LAYERS"]
