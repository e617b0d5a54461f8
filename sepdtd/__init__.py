"""sepdtd — a reproducible companion to *Separable explanations of neural network decisions* (Rieger).

The face: :class:`Explainer` (``Explainer(model, rule="dtd", low=0.0, high=1.0)(x, target="top2")``
returns an :class:`Explanation`), its rules and composites (:class:`ZPlus`, :class:`ZBox`,
:class:`Epsilon`, :class:`AlphaBeta`, :class:`GradientXInput`, :class:`Composite`, :class:`CLRP`,
:class:`SGLRP`), the canonizer :class:`MergeBatchNorm`, :func:`check_model`, and :func:`pretrained` (a
kept network of the paper with its results). These names are imported on first use.

Modules, one concept each: :mod:`sepdtd.data` (data sets), :mod:`sepdtd.models` (Table 1),
:mod:`sepdtd.explain` (the explanation engine, rules and face; DTD of Eq. 1-4), :mod:`sepdtd.dtd` and
:mod:`sepdtd.attribution` (the methods as functions of ``(B, K)`` classes), :mod:`sepdtd.regularization`
(Eq. 5-6), :mod:`sepdtd.metrics` (Eq. 7), :mod:`sepdtd.training`, :mod:`sepdtd.experiments`,
:mod:`sepdtd.plots`, :mod:`sepdtd.report`. Importing the package imports neither torch nor torchvision.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Explainer": "sepdtd.explain.explainer",
    "Explanation": "sepdtd.explain.explainer",
    "MergeBatchNorm": "sepdtd.explain.explainer",
    "Rule": "sepdtd.explain.rules",
    "ZPlus": "sepdtd.explain.rules",
    "ZBox": "sepdtd.explain.rules",
    "Epsilon": "sepdtd.explain.rules",
    "AlphaBeta": "sepdtd.explain.rules",
    "GradientXInput": "sepdtd.explain.rules",
    "Composite": "sepdtd.explain.rules",
    "CLRP": "sepdtd.explain.rules",
    "SGLRP": "sepdtd.explain.rules",
    "check_model": "sepdtd.explain.engine",
    "pretrained": "sepdtd.experiments",
    "Pretrained": "sepdtd.experiments",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> object:
    """Import a public name of :data:`__all__` from its module on first use (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sepdtd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
