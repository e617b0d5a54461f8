r"""Rules, composites and the contrastive methods: what the engine propagates.

A **rule** says how a Conv2d/Linear layer passes relevance down (:mod:`sepdtd.explain.engine` gives the
common form); a **composite** assigns rules to the weighted layers by type and position (the first
one); a **method** is a composite started at the output in a given way. The paper's DTD (Section 2.2,
Montavon et al. 2017, Pattern Recognition 65) is ``Composite(ZPlus(), first=ZBox())``, started at the
explained logit, :math:`R_c = f_c(x)` (Section 3). Beside it, to test the Discussion's suspicion that
"only considering positive weights during the relevance propagation" causes diffusion (Section 6):

- :class:`Epsilon`, LRP-ε (Bach et al. 2015, PLoS ONE 10(7)): :math:`R_i = \sum_j \frac{x_i w_{ij}}{z_j +
  \epsilon\,\mathrm{sign}(z_j)} R_j`, :math:`z_j = \sum_i x_i w_{ij} + b_j`: signed contributions,
  negative weights included;
- :class:`AlphaBeta`, LRP-αβ (Bach et al. 2015): :math:`R_i = \sum_j \big(\alpha \frac{(x_i
  w_{ij})^+}{z^+_j} - \beta \frac{(x_i w_{ij})^-}{z^-_j}\big) R_j`: evidence against a class is kept as
  negative relevance;
- :class:`GradientXInput`: :math:`x \odot \partial f_c / \partial x` (the gradient through every layer);
- :class:`CLRP` (Gu, Yang and Tresp 2018, ACCV), :math:`\max(0, \hat R_c - \hat R_{\text{dual}})` of
  shares, and :class:`SGLRP` (Iwana, Kuroki and Uchida 2019, ICCV Workshops), started at
  :math:`\partial p_c / \partial f`; both on DTD's propagation by default, as in their papers.

Biases follow zennit 0.5.1: LRP-ε's :math:`z_j` contains :math:`b_j`; α-β puts :math:`b^+_j` into
:math:`z^+_j` and :math:`b^-_j` into :math:`z^-_j`; :math:`z^+` leaves them out (with :math:`b \le 0`
that is zennit's ``ZPlus``); in :math:`z^B` they cancel. Hence LRP-ε conserves :math:`\sum_i R_i = f_c`
up to the ε terms and α2β1 exactly for zero biases only (a negative bias in a denominator absorbs
relevance), α2β1 only where both :math:`z^+_j` and :math:`z^-_j` of a neuron are non-zero, and
:math:`z^+`/:math:`z^B` for any :math:`b \le 0` (:mod:`sepdtd.explain.engine`). Every denominator is
stabilised as :math:`z + s\,\mathrm{sign}(z)`, :math:`\mathrm{sign}(0) = +1`, with the rule's
``stabilizer`` :math:`s` (LRP-ε's is its ε).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from sepdtd.explain import engine
from sepdtd.explain.engine import Group, LinearMap, OneHot, Prepared, stab_inv

__all__ = ["Rule", "ZPlus", "ZBox", "Epsilon", "AlphaBeta", "GradientXInput", "Composite", "CLRP", "SGLRP",
           "Method", "METHODS", "EPSILON", "CONTRASTIVE", "explain"]

#: Default ε of LRP-ε. The layers' pre-activations of the Table 1 networks are of order 1, so 0.01 keeps
#: the rule close to LRP-0 (signed contributions) while absorbing near-zero denominators.
EPSILON = 0.01

#: Variants of :class:`CLRP`: the dual's starting relevance.
CONTRASTIVE = ("others", "negated")


def _positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 (it keeps 0/0 out of the denominators), got {value!r}")


# ----------------------------------------------------------------------------------------------------
# Rules
# ----------------------------------------------------------------------------------------------------
class Rule:
    """A propagation rule for Conv2d/Linear layers; use one of its subclasses."""

    needs_box: ClassVar[bool] = False
    gradient: ClassVar[bool] = False

    def _prepare(self, w: Tensor, b: Tensor | None, lin: LinearMap, *, first: bool, nonneg: bool,
                 box: tuple[Tensor, Tensor] | None) -> Prepared:
        raise NotImplementedError

    def _forward(self, h: Tensor, prep: Prepared) -> tuple[Tensor, list[Tensor | None], list[tuple]]:
        raise NotImplementedError


def _bias(out: Tensor, b: Tensor | None) -> Tensor:
    return out if b is None else out + b


@dataclass(frozen=True)
class ZPlus(Rule):
    r"""The :math:`z^+` rule (Eq. 3): relevance flows along positive contributions, biases left out.

    :math:`R_i = \sum_j \frac{x_i w^+_{ij}}{\sum_{i'} x_{i'} w^+_{i'j}} R_j` for inputs :math:`x \ge 0`
    (a ReLU output); for an input of both signs (a first layer) zennit's form,
    :math:`\frac{x^+_i w^+_{ij} + x^-_i w^-_{ij}}{\sum_{i'} x^+_{i'} w^+_{i'j} + x^-_{i'} w^-_{i'j}}`.

    Parameters
    ----------
    stabilizer : float
        :math:`s > 0` of the denominators :math:`z + s\,\mathrm{sign}(z)`.
    """

    stabilizer: float = 1e-9

    def __post_init__(self) -> None:
        _positive("stabilizer", self.stabilizer)

    def _prepare(self, w, b, lin, *, first, nonneg, box):
        wp = w.clamp(min=0)
        if nonneg:
            return Prepared(self, lin, w, b, fwd=lin.weight(torch.cat([w, wp])), groups=[Group(wp)])
        wn = w.clamp(max=0)
        return Prepared(self, lin, w, b, fwd=lin.weight(w), groups=[Group(torch.cat([wp, wn], 1))],
                        extra={"wp": lin.weight(wp), "wn": lin.weight(wn)})

    def _forward(self, h, prep):
        if "wp" not in prep.extra:
            c = prep.cout
            both = prep.lin(h, prep.fwd)                                 # w x and w+ x in one pass
            # z+ >= 0 exactly (inputs >= 0, w+ >= 0), so sign(z) = +1.
            return _bias(both[:, :c], prep.bias), [both[:, c:].add(self.stabilizer).reciprocal_()], [(h,)]
        hp, hn = h.clamp(min=0), h.clamp(max=0)
        z = prep.lin(hp, prep.extra["wp"]) + prep.lin(hn, prep.extra["wn"])
        return _bias(prep.lin(h, prep.fwd), prep.bias), [stab_inv(z, self.stabilizer)], [(hp, hn)]


@dataclass(frozen=True)
class ZBox(Rule):
    r"""The :math:`z^B` rule (Eq. 4) of a first layer, whose inputs lie in the box :math:`[l, h]`.

    :math:`R_i = \sum_j \frac{x_i w_{ij} - l_i w^+_{ij} - h_i w^-_{ij}}{\sum_{i'} x_{i'} w_{i'j} - l_{i'}
    w^+_{i'j} - h_{i'} w^-_{i'j}} R_j`. The box is the explainer's ``low`` and ``high``; it must hold 0
    (:math:`l \le 0 \le h`, Section 2.2), be finite and not degenerate (:math:`l < h`).

    Parameters
    ----------
    stabilizer : float
        :math:`s > 0` of the denominators :math:`z + s\,\mathrm{sign}(z)`.
    """

    stabilizer: float = 1e-9
    needs_box: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _positive("stabilizer", self.stabilizer)

    def _prepare(self, w, b, lin, *, first, nonneg, box):
        lo, hi = box
        wpn = lin.weight(torch.cat([w.clamp(min=0), w.clamp(max=0)], dim=1))     # [w+, w-] along inputs
        bounds = torch.cat([lo, hi], dim=0).unsqueeze(0)                          # [l, h] along inputs
        bound = lin(lin.weight(bounds), wpn)
        return Prepared(self, lin, w, b, fwd=lin.weight(w), groups=[Group(wpn)],
                        extra={"bound": bound, "lo": lo, "hi": hi})

    def _forward(self, h, prep):
        z0 = prep.lin(h, prep.fwd)
        if prep.lin.conv is not None:      # a 1-channel input is ambiguous about its memory format
            z0 = z0.contiguous(memory_format=prep.lin.fmt)
        inv = stab_inv(z0 - prep.extra["bound"], self.stabilizer)
        return _bias(z0, prep.bias), [inv], [(h - prep.extra["lo"], h - prep.extra["hi"])]


@dataclass(frozen=True)
class Epsilon(Rule):
    r"""LRP-ε (Bach et al. 2015): :math:`R_i = \sum_j \frac{x_i w_{ij}}{z_j + \epsilon\,\mathrm{sign}(z_j)} R_j`.

    :math:`z_j = \sum_i x_i w_{ij} + b_j`: every weight, positive or negative, carries relevance in
    proportion to its contribution.

    Parameters
    ----------
    epsilon : float
        ε > 0, the rule's stabiliser (:data:`EPSILON` by default).
    """

    epsilon: float = EPSILON

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)

    def _prepare(self, w, b, lin, *, first, nonneg, box):
        return Prepared(self, lin, w, b, fwd=lin.weight(w), groups=[Group(w)])

    def _forward(self, h, prep):
        z = _bias(prep.lin(h, prep.fwd), prep.bias)
        return z, [stab_inv(z, self.epsilon)], [(h,)]


@dataclass(frozen=True)
class AlphaBeta(Rule):
    r"""LRP-αβ (Bach et al. 2015): :math:`R_i = \sum_j (\alpha\, z^+_{ij} / z^+_j - \beta\, z^-_{ij} / z^-_j) R_j`.

    :math:`z_{ij} = x_i w_{ij}` split by sign, with :math:`b^+_j` in :math:`z^+_j` and :math:`b^-_j` in
    :math:`z^-_j`. Unlike :math:`z^+` (:math:`\alpha = 1, \beta = 0`), negative contributions are
    propagated as negative relevance. Relevance is conserved where :math:`\alpha - \beta = 1`.

    Parameters
    ----------
    alpha, beta : float
        Weights of the positive and negative parts, >= 0 (default α2β1).
    stabilizer : float
        :math:`s > 0` of the denominators.
    """

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-9

    def __post_init__(self) -> None:
        _positive("stabilizer", self.stabilizer)
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def _prepare(self, w, b, lin, *, first, nonneg, box):
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        extra = {} if b is None else {"bp": b.clamp(min=0), "bn": b.clamp(max=0)}
        if nonneg:
            return Prepared(self, lin, w, b, fwd=lin.weight(torch.cat([w, wp, wn])), extra=extra,
                            groups=[Group(wp, self.alpha), Group(wn, -self.beta)])
        extra.update(wp=lin.weight(wp), wn=lin.weight(wn), signed=True)
        return Prepared(self, lin, w, b, fwd=lin.weight(w), extra=extra,
                        groups=[Group(torch.cat([wp, wn], 1), self.alpha), Group(torch.cat([wn, wp], 1), -self.beta)])

    def _forward(self, h, prep):
        e, c = prep.extra, prep.cout
        if "signed" not in e:
            z = prep.lin(h, prep.fwd)
            out, zp, zn = z[:, :c], z[:, c:2 * c], z[:, 2 * c:]
            factors = [(h,), (h,)]
        else:
            hp, hn = h.clamp(min=0), h.clamp(max=0)
            out = prep.lin(h, prep.fwd)
            zp = prep.lin(hp, e["wp"]) + prep.lin(hn, e["wn"])
            zn = prep.lin(hp, e["wn"]) + prep.lin(hn, e["wp"])
            factors = [(hp, hn), (hp, hn)]
        if prep.bias is not None:
            out, zp, zn = out + prep.bias, zp + e["bp"], zn + e["bn"]
        return out, [stab_inv(zp, self.stabilizer), stab_inv(zn, self.stabilizer)], factors


@dataclass(frozen=True)
class GradientXInput(Rule):
    r"""Gradient × input, :math:`x \odot \partial f_c / \partial x`: every layer passes the gradient.

    Used at every weighted layer of a composite (a ReLU then applies its derivative and average pooling
    its adjoint); the input multiplies the result. For a ReLU network with zero biases it equals LRP-0.
    """

    gradient: ClassVar[bool] = True

    def _prepare(self, w, b, lin, *, first, nonneg, box):
        return Prepared(self, lin, w, b, fwd=lin.weight(w), groups=[Group(w)])

    def _forward(self, h, prep):
        return _bias(prep.lin(h, prep.fwd), prep.bias), [None], [(None,)]


# ----------------------------------------------------------------------------------------------------
# Composites and methods
# ----------------------------------------------------------------------------------------------------
class Method:
    """Something an :class:`sepdtd.Explainer` can compute: a :class:`Composite`, :class:`CLRP` or :class:`SGLRP`."""

    needs_box: bool = False
    composite: Composite

    def _explain(self, layers: engine.Layers, x: Tensor, targets: engine.Targets, *, channel_sum: bool = False,
                 **kw) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(relevance, logits, classes, started)``: ``started`` ``(B, K)`` is the relevance put at the
        output (what a conserving propagation returns in total; NaN where nothing is conserved)."""
        raise NotImplementedError


class Composite(Method):
    r"""Rules assigned to the Conv2d/Linear layers by type and by position (the first weighted layer).

    Started at the explained logit, :math:`R_c = f_c(x)` (Section 3), all other outputs 0; with
    :class:`GradientXInput` at 1. Pooling and ReLU follow: max-pooling is winner-take-all, average
    pooling proportional to its inputs (stabilised with ``stabilizer``), ReLU passes relevance on; for
    gradient × input they apply their derivatives.

    Parameters
    ----------
    rules : Rule or mapping of layer type to Rule
        The rule of every weighted layer, or one per layer type (``{nn.Conv2d: ZPlus(), nn.Linear:
        Epsilon()}``; the first type the layer is an instance of wins).
    first : Rule, optional
        The rule of the first weighted layer (default: as ``rules``). :class:`ZBox` may only be here.
    stabilizer : float
        :math:`s > 0` of average pooling's denominators.

    Examples
    --------
    The paper's DTD: ``Composite(ZPlus(), first=ZBox())``.
    """

    def __init__(self, rules: Rule | Mapping[type[nn.Module] | tuple[type[nn.Module], ...], Rule], *,
                 first: Rule | None = None, stabilizer: float = 1e-9):
        mapping = dict(rules) if isinstance(rules, Mapping) else {engine._WEIGHTED: rules}
        for key, rule in mapping.items():
            types = key if isinstance(key, tuple) else (key,)
            if not all(isinstance(t, type) and issubclass(t, engine._WEIGHTED) for t in types):
                raise ValueError(f"a composite assigns rules to Conv2d/Linear layer types, got the key {key!r}")
            if not isinstance(rule, Rule):
                raise TypeError(f"the rule for {key!r} must be a Rule (ZPlus(), Epsilon(), ...), got {rule!r}")
            if isinstance(rule, ZBox):
                raise ValueError("ZBox (Eq. 4) acts on the input box, so only the first layer can use it: pass it "
                                 "as first=ZBox()")
        if first is not None and not isinstance(first, Rule):
            raise TypeError(f"first must be a Rule (ZBox(), ZPlus(), ...), got {first!r}")
        _positive("stabilizer", stabilizer)
        every = [*mapping.values(), *([first] if first is not None else [])]
        if any(r.gradient for r in every) and not all(r.gradient for r in every):
            raise ValueError("GradientXInput passes gradients, not relevance: use it at every layer "
                             "(Composite(GradientXInput())), not beside relevance rules")
        self._rules, self.first, self.stabilizer = mapping, first, float(stabilizer)
        self.gradient = all(r.gradient for r in every)
        self.needs_box = any(r.needs_box for r in every)

    @property
    def composite(self) -> Composite:
        """The composite itself (what every method propagates with)."""
        return self

    @property
    def rules(self) -> dict:
        """The rules of the weighted layers by type (a copy)."""
        return dict(self._rules)

    def __repr__(self) -> str:
        rules = next(iter(self._rules.values())) if list(self._rules) == [engine._WEIGHTED] else self._rules
        first = "" if self.first is None else f", first={self.first!r}"
        stab = "" if self.stabilizer == 1e-9 else f", stabilizer={self.stabilizer!r}"
        return f"Composite({rules!r}{first}{stab})"

    def rule_for(self, layer: nn.Module, first: bool, name: str = "?") -> Rule:
        """The rule of the weighted ``layer`` at position ``name`` (``first``: the first weighted layer)."""
        if first and self.first is not None:
            return self.first
        for key, rule in self._rules.items():
            if isinstance(layer, key):
                return rule
        raise TypeError(f"the composite has no rule for the layer at position {name} ({type(layer).__name__}); "
                        "add its type to the composite's rules")

    def _explain(self, layers, x, targets, *, channel_sum=False, **kw):
        def start(logits: Tensor, classes: Tensor) -> OneHot:
            f = logits.gather(1, classes)
            return OneHot(classes, torch.ones_like(f) if self.gradient else f)

        res = engine.propagate(layers, x, targets, self, start, channel_sum=channel_sum, **kw)
        return res.relevance, res.logits, res.classes, res.logits.gather(1, res.classes)


def _relevance_composite(composite: Composite, what: str) -> Composite:
    if not isinstance(composite, Composite):
        raise TypeError(f"{what} is built on a Composite, got {composite!r}")
    if composite.gradient:
        raise ValueError(f"{what} is defined on LRP rules, not on the gradient; use e.g. "
                         "Composite(ZPlus(), first=ZBox()), Composite(Epsilon(), first=ZBox())")
    return composite


class CLRP(Method):
    r"""Contrastive LRP (Gu, Yang and Tresp 2018): what speaks for class c and not for its dual.

    :math:`\mathrm{CLRP}_c = \max\big(0,\ R_c / \textstyle\sum R_c - R_{\text{dual}} / \sum
    R_{\text{dual}}\big)`, where :math:`R_c` explains :math:`|f_c|` and :math:`R_\text{dual}` a *dual
    virtual class*, both with ``composite``. Each is divided by its total first, as the authors'
    reference implementation does, so the map is scale-free (shares); it conserves nothing.

    Parameters
    ----------
    composite : Composite
        The propagation (default: DTD, ``Composite(ZPlus(), first=ZBox())``, as in the authors' code).
    variant : {"others", "negated"}
        The dual: ``"others"`` (the authors' CLRP1) starts at :math:`|f_n|` for every other class
        :math:`n \ne c`; ``"negated"`` (CLRP2) starts at :math:`|f_c|` on a virtual output whose
        weights are :math:`-w_c` (the model must end in a Linear layer).
    """

    def __init__(self, composite: Composite | None = None, variant: str = "others"):
        if variant not in CONTRASTIVE:
            raise ValueError(f"unknown CLRP variant {variant!r}: choose one of {', '.join(CONTRASTIVE)}")
        self.composite = _relevance_composite(composite if composite is not None else _dtd(), "CLRP")
        self.variant = variant
        self.needs_box = self.composite.needs_box

    def __repr__(self) -> str:
        return f"CLRP({self.composite!r}, variant={self.variant!r})"

    def _explain(self, layers, x, targets, *, channel_sum=False, **kw):
        def target(logits: Tensor, classes: Tensor) -> OneHot:
            return OneHot(classes, logits.gather(1, classes).abs())

        if self.variant == "others":
            def both(logits: Tensor, classes: Tensor) -> Tensor:
                t = logits.new_zeros(*classes.shape, logits.shape[1])
                t.scatter_(2, classes.unsqueeze(-1), logits.gather(1, classes).abs().unsqueeze(-1))
                dual = logits.abs().unsqueeze(1).expand_as(t).clone().scatter_(2, classes.unsqueeze(-1), 0.0)
                return torch.cat([t, dual], dim=1)

            res = engine.propagate(layers, x, targets, self.composite, both, rows_per_class=2, **kw)
            k = res.classes.shape[1]
            r_c, r_d = res.relevance[:, :k], res.relevance[:, k:]
        else:
            top = max(i for i, (_, m) in enumerate(layers) if not isinstance(m, nn.Dropout))
            name, layer = layers[top]
            if not isinstance(layer, nn.Linear):
                raise ValueError(f"CLRP 'negated' needs a Linear output layer, got {type(layer).__name__} at "
                                 f"position {name}")
            res = engine.propagate(layers, x, targets, self.composite, target, **kw)
            neg = engine.with_params(layer, -layer.weight, None if layer.bias is None else -layer.bias)
            negated = [*layers[:top], (name, neg), *layers[top + 1:]]
            r_c = res.relevance
            r_d = engine.propagate(negated, x, res.classes, self.composite, target, **kw).relevance
        dims = tuple(range(2, r_c.ndim))

        def share(r: Tensor) -> Tensor:
            s = r.sum(dim=dims, keepdim=True)
            return r / torch.where(s != 0, s, torch.ones_like(s))

        out = (share(r_c) - share(r_d)).clamp(min=0)
        nan = torch.full(res.classes.shape, math.nan, dtype=out.dtype, device=out.device)
        return (out.sum(2) if channel_sum else out), res.logits, res.classes, nan


class SGLRP(Method):
    r"""Softmax-gradient LRP (Iwana, Kuroki and Uchida 2019): start at the softmax's gradient.

    The output relevance of class :math:`c` is :math:`\partial p_c / \partial f_n = p_c(\delta_{cn} -
    p_n)`: :math:`p_c(1 - p_c)` on the class and :math:`-p_c p_n` on each other class. Propagated with
    ``composite`` (default: DTD, "a class discriminate extension to DTD"), the map is the class's
    explanation minus the probability-weighted explanations of its competitors, in one pass. It sums to
    0 where the composite conserves (the softmax's gradient sums to 0).

    Parameters
    ----------
    composite : Composite
        The propagation (default: DTD, ``Composite(ZPlus(), first=ZBox())``).
    """

    def __init__(self, composite: Composite | None = None):
        self.composite = _relevance_composite(composite if composite is not None else _dtd(), "SGLRP")
        self.needs_box = self.composite.needs_box

    def __repr__(self) -> str:
        return f"SGLRP({self.composite!r})"

    def _explain(self, layers, x, targets, *, channel_sum=False, **kw):
        def start(logits: Tensor, classes: Tensor) -> Tensor:
            p = torch.softmax(logits, dim=1)
            pc = p.gather(1, classes)                                          # (B, K)
            s = -pc.unsqueeze(-1) * p.unsqueeze(1)                             # -p_c p_n
            return s.scatter_add_(2, classes.unsqueeze(-1), pc.unsqueeze(-1))  # + p_c on n = c

        res = engine.propagate(layers, x, targets, self.composite, start, channel_sum=channel_sum, **kw)
        return res.relevance, res.logits, res.classes, torch.zeros_like(res.classes, dtype=res.logits.dtype)


def _dtd(stabilizer: float = 1e-9) -> Composite:
    """The paper's DTD: z^B (Eq. 4) at the first weighted layer, z+ (Eq. 3) above it."""
    return Composite(ZPlus(stabilizer), first=ZBox(stabilizer), stabilizer=stabilizer)


def explain(model: nn.Module, x: Tensor, classes: Tensor, method: Method, *, low: engine.Bound | None,
            high: engine.Bound | None, channel_sum: bool = False, **kw) -> Tensor:
    """The relevance ``(B, K, ...)`` (``channel_sum``: ``(B, K, H, W)``) of ``method`` for ``(B, K)`` classes.

    No canonizers; :mod:`sepdtd.dtd` and :mod:`sepdtd.attribution` are this with fixed methods, and
    :class:`sepdtd.Explainer` adds targets, canonizers and the conservation error.
    """
    return method._explain(engine.layers(model), x, classes, low=low, high=high, channel_sum=channel_sum, **kw)[0]


#: The methods compared in the book, by name: the paper's DTD; DTD with z+ at the first layer too (the
#: first layer's rule); LRP-ε and LRP-α2β1 above DTD's first layer (so that a comparison changes what
#: Section 6 suspects: the upper layers); gradient × input; CLRP and SGLRP on DTD.
METHODS: dict[str, Method] = {
    "dtd": _dtd(),
    "zplus": Composite(ZPlus()),
    "epsilon": Composite(Epsilon(), first=ZBox()),
    "alphabeta": Composite(AlphaBeta(), first=ZBox()),
    "gradient_x_input": Composite(GradientXInput()),
    "clrp": CLRP(),
    "sglrp": SGLRP(),
}
