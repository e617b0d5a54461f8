r"""Explanations beside DTD, class-batched like :mod:`sepdtd.dtd`: which rule causes diffusion?

The paper explains with Deep Taylor Decomposition (DTD; Montavon et al. 2017, Pattern Recognition 65):
the :math:`z^B` rule (Eq. 4) at the first layer and the :math:`z^+` rule (Eq. 3) above it, which
passes relevance only along *positive* weights. Its Discussion (Section 6) suspects that "only
considering positive weights during the relevance propagation" is a second cause of diffusion, next
to the dense layers. To test that, this module computes, with the same interface as
:func:`sepdtd.dtd.relevance` — ``method(model, x, classes, *, low, high, ...) -> (B, K, *x.shape[1:])``,
one forward pass shared by the K explained classes of every image —

- **LRP-ε** (Bach et al. 2015, PLoS ONE 10(7)): :math:`R_i = \sum_j \frac{x_i w_{ij}}{z_j +
  \epsilon\,\mathrm{sign}(z_j)} R_j` with :math:`z_j = \sum_i x_i w_{ij} + b_j`: signed
  contributions, negative weights included (:func:`lrp_epsilon`);
- **LRP-α2β1** (Bach et al. 2015): :math:`R_i = \sum_j \big(\alpha \frac{(x_i w_{ij})^+}{z^+_j}
  - \beta \frac{(x_i w_{ij})^-}{z^-_j}\big) R_j` with :math:`\alpha = 2, \beta = 1`: evidence
  *against* a class is kept as negative relevance (:func:`lrp_alphabeta`);
- **gradient × input** :math:`x \odot \partial f_c / \partial x` (Simonyan et al. 2013 style
  sensitivity, times the input; :func:`gradient_x_input`);
- two **contrastive** explanations that subtract what speaks for the *other* classes:
  contrastive LRP (CLRP; Gu, Yang and Tresp 2018, "Understanding individual decisions of CNNs via
  contrastive backpropagation", ACCV), :math:`\max(0, \hat R_c - \hat R_{\text{dual}})`
  (:func:`clrp`), and softmax-gradient LRP (SGLRP; Iwana, Kuroki and Uchida 2019, "Explaining
  convolutional neural networks using softmax gradient layer-wise relevance propagation", ICCV
  Workshops), which starts the propagation at :math:`\partial p_c / \partial f` instead of the
  one-hot logit (:func:`sglrp`). Both are built on DTD's :math:`z^+`/:math:`z^B` propagation, as in
  their papers (Gu et al. propagate with :math:`z^+` and :math:`z^B`; Iwana et al. call SGLRP "a
  class discriminate extension to DTD").

The rule under test is used at every weighted layer *above the first*; the first layer keeps the
paper's :math:`z^B` rule (``first="zb"``, the default), so that a comparison with DTD changes exactly
what Section 6 suspects: how relevance flows through the upper layers. ``first="rule"`` applies the
rule at the first layer too.

The engine
----------
Every rule here is, for a fixed input, a *linear* map of the upper-layer relevance (the denominators
depend on the input only), so the K explanations of an image share one forward pass that records, per
layer, the input and the stabilised denominators; the ``(B, K, ...)`` relevance then travels down,
each rule being ``R_in = sum_t coef_t * f_t ⊙ Wt_t^T (R_out ⊙ inv_t)`` with per-image factors
``f_t`` (the input, or the box bounds of :math:`z^B`) and weights ``Wt_t`` (:math:`w`, :math:`w^+` or
:math:`w^-`). Max-pooling is winner-take-all (the gradient), average pooling proportional to its
inputs (zennit's ``Norm`` rule), ReLU/Dropout (evaluation mode)/Flatten pass relevance on. For
gradient × input the same pass applies the transposed weights, the ReLU masks and the pooling's
adjoint, and the input is multiplied at the end. Denominators are stabilised as
:math:`z + \epsilon\,\mathrm{sign}(z)`, :math:`\mathrm{sign}(0) = +1` (zennit's convention).

Biases follow zennit 0.5.1 so that the tests can compare with it: LRP-ε's :math:`z_j` contains
:math:`b_j`; α-β puts :math:`b^+_j` into :math:`z^+_j` and :math:`b^-_j` into :math:`z^-_j`;
:math:`z^+` (and so CLRP/SGLRP) leaves them out, as :mod:`sepdtd.dtd` does (with :math:`b \le 0` that
is zennit's ``ZPlus``); in :math:`z^B` they cancel. Hence LRP-ε conserves :math:`\sum_i R_i = f_c`
up to the ε terms and α2β1 exactly, *for zero biases* (a negative bias in the denominator absorbs
relevance) and, for α2β1, only where both :math:`z^+_j` and :math:`z^-_j` of a neuron are non-zero
(where one of them is 0 its term vanishes and the neuron passes on :math:`\alpha R_j` or
:math:`-\beta R_j` instead of :math:`R_j`); :math:`z^+` conserves for any :math:`b \le 0`
(:mod:`sepdtd.dtd`).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sepdtd import dtd

__all__ = [
    "RULES", "EPSILON", "METHODS", "LABELS", "CONTRASTIVE", "lrp", "lrp_epsilon", "lrp_alphabeta",
    "gradient_x_input", "clrp", "sglrp", "relevance", "heatmap",
]

Bound = float | Tensor

#: Rules of :func:`lrp` for the weighted layers above the first.
RULES = ("zplus", "epsilon", "alphabeta", "gradient")

#: Default ε of LRP-ε. The layers' pre-activations of the Table 1 networks are of order 1, so 0.01 keeps
#: the rule close to LRP-0 (signed contributions) while absorbing near-zero denominators.
EPSILON = 0.01


# ----------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------
def _flat_layers(model: nn.Module) -> list[nn.Module]:
    """The model's layers in computation order, after :func:`sepdtd.dtd.check_model` validated them."""
    dtd.check_model(model)
    out: list[nn.Module] = []

    def walk(m: nn.Module) -> None:
        if isinstance(m, nn.Sequential):
            for child in m:
                walk(child)
        else:
            out.append(m)

    walk(model)
    return out


def _check_inputs(x: Tensor, classes: Tensor, low: Bound | None, high: Bound | None,
                  need_box: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """The engine's checks (:mod:`sepdtd.dtd`): ``x``, ``classes`` and, where a rule needs it, the box."""
    dtd._check_x(x)
    c = dtd._check_classes(classes, x.shape[0], x.device)
    if not need_box:
        return c, None, None
    if low is None or high is None:
        raise ValueError("low and high (the input box of the zB rule, Eq. 4) are required; images in [0, 1] "
                         "use low=0.0, high=1.0")
    lo, hi = dtd._box(x, low, high)
    return c, lo, hi


def _check_classes_range(classes: Tensor, n_out: int) -> None:
    if int(classes.min()) < 0 or int(classes.max()) >= n_out:
        raise ValueError(f"classes must lie in [0, {n_out}), got values in [{int(classes.min())}, "
                         f"{int(classes.max())}]")


# ----------------------------------------------------------------------------------------------------
# Engine
# ----------------------------------------------------------------------------------------------------
def _stab_inv(z: Tensor, eps: float) -> Tensor:
    """``1 / (z + eps * sign(z))`` with ``sign(0) = +1`` (zennit's stabilizer)."""
    return torch.where(z >= 0, z + eps, z - eps).reciprocal()


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)  # type: ignore[return-value]


def _rows(r: Tensor) -> Tensor:
    """``(B, K, ...)`` -> ``(B*K, ...)``."""
    return r.reshape(r.shape[0] * r.shape[1], *r.shape[2:])


class _Weighted:
    """One Conv2d/Linear layer: ``R_in = sum_g coef_g * sum_t f_t ⊙ W_t^T (R_out ⊙ inv_g)``."""

    def __init__(self, h: Tensor, w: Tensor, b: Tensor | None, conv: dict | None, rule: str, *, eps: float,
                 epsilon: float = EPSILON, alpha: float = 2.0, beta: float = 1.0, lo: Tensor | None = None,
                 hi: Tensor | None = None):
        self.h, self.conv, self.rule, self.lo, self.hi = h, conv, rule, lo, hi
        self.in_shape = tuple(h.shape[1:])
        w = w.to(h.dtype)
        b = None if b is None else b.to(h.dtype)
        self.w, self.b = w, b
        wp, wn = w.clamp(min=0), w.clamp(max=0)
        bp = None if b is None else b.clamp(min=0)
        bn = None if b is None else b.clamp(max=0)
        self.out = self.op(h, w, b)
        nonneg = bool((h >= 0).all())
        hp, hn = (h, None) if nonneg else (h.clamp(min=0), h.clamp(max=0))
        # groups: (coef, inv or None, [(factor or None, weight), ...])
        if rule == "zb":
            lo_, hi_ = lo.unsqueeze(0), hi.unsqueeze(0)
            z = self.op(h, w) - self.op(lo_, wp) - self.op(hi_, wn)
            self.groups = [(1.0, _stab_inv(z, eps), [(h, w), (-lo_, wp), (-hi_, wn)])]
        elif rule == "zplus":
            z = self.op(hp, wp) if nonneg else self.op(hp, wp) + self.op(hn, wn)
            terms = [(hp, wp)] + ([] if nonneg else [(hn, wn)])
            self.groups = [(1.0, _stab_inv(z, eps), terms)]
        elif rule == "epsilon":
            self.groups = [(1.0, _stab_inv(self.out, epsilon), [(h, w)])]
        elif rule == "alphabeta":
            zp = self.op(hp, wp, bp) + (0 if nonneg else self.op(hn, wn))
            zn = self.op(hp, wn, bn) + (0 if nonneg else self.op(hn, wp))
            tp = [(hp, wp)] + ([] if nonneg else [(hn, wn)])
            tn = [(hp, wn)] + ([] if nonneg else [(hn, wp)])
            self.groups = [(alpha, _stab_inv(zp, eps), tp), (-beta, _stab_inv(zn, eps), tn)]
        elif rule == "gradient":
            self.groups = [(1.0, None, [(None, w)])]
        else:  # pragma: no cover - checked by the callers
            raise ValueError(f"unknown rule {rule!r}")

    @classmethod
    def of(cls, layer: nn.Module, h: Tensor, rule: str, **kwargs) -> _Weighted:
        """The step of a Conv2d/Linear ``layer`` with input ``h``."""
        conv = None
        if isinstance(layer, nn.Conv2d):
            conv = dict(stride=layer.stride, padding=_conv_padding(layer), dilation=layer.dilation)
        return cls(h, layer.weight, layer.bias, conv, rule, **kwargs)

    def op(self, inp: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        if self.conv is not None:
            return F.conv2d(inp, w, b, **self.conv)
        return F.linear(inp, w, b)

    def adjoint(self, r: Tensor, w: Tensor) -> Tensor:
        """``W^T r`` for ``(N, *out)`` rows -> ``(N, *in)``."""
        if self.conv is not None:
            return torch.nn.grad.conv2d_input((r.shape[0], *self.in_shape), w, r, **self.conv)
        return r.matmul(w)

    def backward(self, r: Tensor) -> Tensor:
        bsz, k = r.shape[:2]
        total = None
        for coef, inv, terms in self.groups:
            s = _rows(r if inv is None else r * inv.unsqueeze(1))
            for factor, w in terms:
                g = self.adjoint(s, w).view(bsz, k, *self.in_shape)
                if factor is not None:
                    g = g * factor.unsqueeze(1)
                g = g if coef == 1.0 else coef * g
                total = g if total is None else total + g
        return total


class _Pool:
    """Max-pool (winner-take-all) or average pool (proportional for LRP, the adjoint for the gradient)."""

    def __init__(self, layer: nn.Module, h: Tensor, gradient: bool, eps: float):
        self.in_shape = tuple(h.shape[1:])
        k, s = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
        self.args = dict(kernel_size=k, stride=s, padding=_pair(layer.padding), ceil_mode=layer.ceil_mode)
        self.x = self.inv = self.idx = None
        if isinstance(layer, nn.MaxPool2d):
            self.out, self.idx = F.max_pool2d(h, dilation=_pair(layer.dilation), return_indices=True, **self.args)
        else:
            self.args.update(count_include_pad=layer.count_include_pad, divisor_override=layer.divisor_override)
            self.out = F.avg_pool2d(h, **self.args)
            if not gradient:
                self.x, self.inv = h, _stab_inv(self.out, eps)

    def backward(self, r: Tensor) -> Tensor:
        bsz, k = r.shape[:2]
        c, hh, ww = self.in_shape
        if self.idx is not None:
            idx = self.idx.reshape(bsz, 1, c, -1).expand(bsz, k, c, self.idx[0, 0].numel())
            out = r.new_zeros(bsz, k, c, hh * ww)
            out.scatter_add_(3, idx, r.reshape(bsz, k, c, -1))
            return out.view(bsz, k, c, hh, ww)
        if self.inv is not None:
            r = r * self.inv.unsqueeze(1)
        a = self.args
        rr = _rows(r)
        g = torch.ops.aten.avg_pool2d_backward(
            rr, rr.new_empty(()).expand(rr.shape[0], c, hh, ww), list(a["kernel_size"]), list(a["stride"]),
            list(a["padding"]), a["ceil_mode"], a["count_include_pad"], a["divisor_override"])
        g = g.view(bsz, k, c, hh, ww)
        return g if self.x is None else g * self.x.unsqueeze(1)


class _Mask:
    """ReLU in gradient mode: the derivative ``1[x > 0]``."""

    def __init__(self, out: Tensor):
        self.mask = (out > 0).to(out.dtype)

    def backward(self, r: Tensor) -> Tensor:
        return r * self.mask.unsqueeze(1)


class _Reshape:
    def __init__(self, in_shape: tuple[int, ...]):
        self.in_shape = in_shape

    def backward(self, r: Tensor) -> Tensor:
        return r.reshape(*r.shape[:2], *self.in_shape)


def _forward(layers: list[nn.Module], x: Tensor, rule: str, first: str, lo: Tensor | None,
             hi: Tensor | None, *, eps: float, epsilon: float, alpha: float, beta: float) -> tuple[Tensor, list]:
    """Evaluation-mode forward pass recording each layer's backward step."""
    gradient = rule == "gradient"
    steps: list = []
    h = x
    is_first = True
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            if layer.weight.device != h.device:
                raise ValueError(f"model is on {layer.weight.device} but x is on {h.device}; move one of them")
            r = rule if gradient or not (is_first and first == "zb") else "zb"
            step = _Weighted.of(layer, h, r, eps=eps, epsilon=epsilon, alpha=alpha, beta=beta, lo=lo, hi=hi)
            steps.append(step)
            h = step.out
            is_first = False
        elif isinstance(layer, nn.ReLU):
            h = F.relu(h)
            if gradient:
                steps.append(_Mask(h))
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            step = _Pool(layer, h, gradient, eps)
            steps.append(step)
            h = step.out
        elif isinstance(layer, nn.Flatten):
            steps.append(_Reshape(tuple(h.shape[1:])))
            h = h.flatten(1)
            if lo is not None and is_first:
                lo, hi = lo.flatten(), hi.flatten()
        # Dropout: the identity in evaluation mode.
    if h.ndim != 2:
        raise ValueError(f"model output must be logits of shape (B, n_classes), got {tuple(h.shape)}")
    return h, steps


def _propagate(steps: list, r: Tensor) -> Tensor:
    for step in reversed(steps):
        r = step.backward(r)
    return r


def _setup(model: nn.Module, x: Tensor, classes: Tensor, low: Bound | None, high: Bound | None,
           rule: str, first: str, eps: float, epsilon: float = EPSILON, alpha: float = 2.0, beta: float = 1.0
           ) -> tuple[Tensor, Tensor, list]:
    """Checks, then the shared forward pass: ``(classes, logits, steps)``."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: choose one of {', '.join(RULES)}")
    if first not in ("zb", "rule"):
        raise ValueError(f"first must be 'zb' (the paper's Eq. 4 at the first layer) or 'rule', got {first!r}")
    if not eps > 0:
        raise ValueError(f"the stabilizer must be > 0, got {eps}")
    if rule == "epsilon" and not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    layers = _flat_layers(model)
    need_box = rule != "gradient" and first == "zb"
    cls, lo, hi = _check_inputs(x, classes, low, high, need_box)
    logits, steps = _forward(layers, x.detach(), rule, first, lo, hi, eps=eps, epsilon=epsilon, alpha=alpha,
                             beta=beta)
    _check_classes_range(cls, logits.shape[1])
    return cls, logits, steps


def _onehot_start(logits: Tensor, classes: Tensor, values: Tensor) -> Tensor:
    """``(B, K, n_out)`` relevance: ``values[b, k]`` at ``classes[b, k]``, 0 elsewhere."""
    r = logits.new_zeros(*classes.shape, logits.shape[1])
    return r.scatter_(2, classes.unsqueeze(-1), values.unsqueeze(-1))


# ----------------------------------------------------------------------------------------------------
# Public methods
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
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
        A :class:`torch.nn.Sequential` that :func:`sepdtd.dtd.check_model` accepts (e.g.
        :class:`sepdtd.models.PaperNet`). Only read; evaluation-mode semantics (dropout off).
    x : torch.Tensor
        Floating point inputs ``(B, C, H, W)`` or ``(B, D)``, on the model's device.
    classes : torch.Tensor
        Integer ``(B, K)`` class indices, e.g. ``logits.topk(2).indices``.
    low, high : float or torch.Tensor
        Input box of the :math:`z^B` rule (Eq. 4), broadcastable to one input; ``0.0, 1.0`` for images in
        ``[0, 1]``. Unused (may be None) with ``first="rule"`` or ``rule="gradient"``.
    rule : {"zplus", "epsilon", "alphabeta", "gradient"}
        :math:`z^+` (Eq. 3: DTD's rule, = :func:`sepdtd.dtd.relevance` with ``first="zb"``), LRP-ε,
        LRP-αβ, or the plain gradient (then the result is gradient × input, see
        :func:`gradient_x_input`).
    first : {"zb", "rule"}
        The first weighted layer's rule: the paper's :math:`z^B` (default) or ``rule``.
    epsilon : float
        ε of LRP-ε (``rule="epsilon"``), > 0.
    alpha, beta : float
        α and β of LRP-αβ (``rule="alphabeta"``), :math:`\alpha - \beta = 1` for conservation.
    stabilizer : float
        ε added (with the sign of :math:`z`) to the other rules' denominators, > 0.

    Returns
    -------
    torch.Tensor
        ``(B, K, *x.shape[1:])`` in ``x``'s dtype, not attached to an autograd graph.

    Raises
    ------
    TypeError, ValueError
        For an unsupported model (see :func:`sepdtd.dtd.check_model`), bad ``x``/``classes``/box, or
        unknown ``rule``/``first``.
    """
    cls, logits, steps = _setup(model, x, classes, low, high, rule, first, stabilizer, epsilon, alpha, beta)
    if rule == "gradient":
        start = _onehot_start(logits, cls, torch.ones_like(cls, dtype=logits.dtype))
        return _propagate(steps, start) * x.detach().unsqueeze(1)
    return _propagate(steps, _onehot_start(logits, cls, logits.gather(1, cls)))


def lrp_epsilon(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
                epsilon: float = EPSILON, first: str = "zb", stabilizer: float = 1e-9) -> Tensor:
    r"""LRP-ε (Bach et al. 2015) above the first layer, :math:`z^B` (Eq. 4) at the first.

    :math:`R_i = \sum_j x_i w_{ij} R_j / (z_j + \epsilon\,\mathrm{sign}\,z_j)`,
    :math:`z_j = \sum_i x_i w_{ij} + b_j`: every weight, positive or negative, carries relevance in
    proportion to its contribution. See :func:`lrp` for the parameters; returns ``(B, K, *x.shape[1:])``.
    """
    return lrp(model, x, classes, low=low, high=high, rule="epsilon", first=first, epsilon=epsilon,
               stabilizer=stabilizer)


def lrp_alphabeta(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
                  alpha: float = 2.0, beta: float = 1.0, first: str = "zb", stabilizer: float = 1e-9) -> Tensor:
    r"""LRP-α2β1 (Bach et al. 2015) above the first layer, :math:`z^B` (Eq. 4) at the first.

    :math:`R_i = \sum_j (\alpha\, z^+_{ij} / z^+_j - \beta\, z^-_{ij} / z^-_j) R_j` with
    :math:`z_{ij} = x_i w_{ij}` split by sign: unlike :math:`z^+` (:math:`\alpha=1, \beta=0`), the
    negative contributions — evidence against the class — are propagated as negative relevance. See
    :func:`lrp` for the parameters; returns ``(B, K, *x.shape[1:])``.
    """
    return lrp(model, x, classes, low=low, high=high, rule="alphabeta", first=first, alpha=alpha, beta=beta,
               stabilizer=stabilizer)


def gradient_x_input(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None = None,
                     high: Bound | None = None) -> Tensor:
    r""":math:`x \odot \partial f_c / \partial x` for K classes per image, one shared forward pass.

    For a ReLU network with zero biases this equals LRP-0 (Bach et al. 2015); it is the baseline
    "sensitivity times input" explanation. ``low`` and ``high`` are accepted so that every method of
    :data:`METHODS` has the same signature, and ignored. Returns ``(B, K, *x.shape[1:])``.
    """
    return lrp(model, x, classes, low=low, high=high, rule="gradient")


#: Variants of :func:`clrp`: the dual's starting relevance.
CONTRASTIVE = ("others", "negated")


@torch.no_grad()
def clrp(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
         variant: str = "others", rule: str = "zplus", first: str = "zb", stabilizer: float = 1e-9) -> Tensor:
    r"""Contrastive LRP (Gu, Yang and Tresp 2018): what speaks for class c and not for its dual.

    :math:`\mathrm{CLRP}_c = \max\big(0,\ R_c / \textstyle\sum R_c - R_{\text{dual}} / \sum R_{\text{dual}}\big)`
    where :math:`R_c` is the explanation of :math:`|f_c|` and :math:`R_\text{dual}` that of a *dual
    virtual class*, both with the same propagation (DTD's :math:`z^+`/:math:`z^B` by default, as in the
    authors' code). Each is divided by its total before the difference, as the authors' reference
    implementation does, so CLRP is scale-free: its entries are shares of the explanation.

    Parameters
    ----------
    model, x, classes, low, high, first, stabilizer
        As for :func:`lrp`.
    variant : {"others", "negated"}
        The dual: ``"others"`` (the authors' CLRP1, used in their reference run) starts at
        :math:`|f_n|` for every other class :math:`n \ne c`; ``"negated"`` (CLRP2) starts at
        :math:`|f_c|` on a virtual output whose weights are :math:`-w_c`.
    rule : str
        The propagation rule above the first layer (see :func:`lrp`; not ``"gradient"``).

    Returns
    -------
    torch.Tensor
        ``(B, K, *x.shape[1:])``, non-negative.
    """
    if variant not in CONTRASTIVE:
        raise ValueError(f"unknown CLRP variant {variant!r}: choose one of {', '.join(CONTRASTIVE)}")
    if rule == "gradient":
        raise ValueError("CLRP is defined on an LRP rule, not on the gradient; use rule='zplus', 'epsilon' or "
                         "'alphabeta'")
    cls, logits, steps = _setup(model, x, classes, low, high, rule, first, stabilizer)
    k = cls.shape[1]
    target = _onehot_start(logits, cls, logits.gather(1, cls).abs())
    if variant == "others":
        dual = logits.abs().unsqueeze(1).expand_as(target).clone().scatter_(2, cls.unsqueeze(-1), 0.0)
        r = _propagate(steps, torch.cat([target, dual], dim=1))
        r_c, r_d = r[:, :k], r[:, k:]
    else:
        top = steps[-1]
        if not isinstance(top, _Weighted):
            raise ValueError("CLRP 'negated' needs a Conv2d/Linear output layer")
        r_c = _propagate(steps, target)
        neg = _Weighted(top.h, -top.w, None if top.b is None else -top.b, top.conv, top.rule, eps=stabilizer,
                        lo=top.lo, hi=top.hi)
        r_d = _propagate(steps[:-1] + [neg], target)
    dims = tuple(range(2, r_c.ndim))

    def share(r: Tensor) -> Tensor:
        s = r.sum(dim=dims, keepdim=True)
        return r / torch.where(s != 0, s, torch.ones_like(s))

    return (share(r_c) - share(r_d)).clamp(min=0)


@torch.no_grad()
def sglrp(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound | None, high: Bound | None,
          rule: str = "zplus", first: str = "zb", stabilizer: float = 1e-9) -> Tensor:
    r"""Softmax-gradient LRP (Iwana, Kuroki and Uchida 2019): start at the softmax's gradient.

    The output relevance of class :math:`c` is :math:`\partial p_c / \partial f_n = p_c(\delta_{cn} -
    p_n)` for every output :math:`n`: :math:`p_c(1 - p_c)` on the class and :math:`-p_c p_n` on each
    other class, in proportion to how likely it is. Propagated with a linear rule (DTD's
    :math:`z^+`/:math:`z^B` by default, "a class discriminate extension to DTD"), the result is the
    class's explanation minus the probability-weighted explanations of its competitors, in one pass.

    Parameters
    ----------
    model, x, classes, low, high, rule, first, stabilizer
        As for :func:`lrp` (``rule`` not ``"gradient"``).

    Returns
    -------
    torch.Tensor
        ``(B, K, *x.shape[1:])``, signed; it sums to :math:`\partial p_c/\partial f \cdot 1 = 0` when the
        rule conserves (the softmax's gradient sums to zero).
    """
    if rule == "gradient":
        raise ValueError("SGLRP is defined on an LRP rule; use rule='zplus', 'epsilon' or 'alphabeta'")
    cls, logits, steps = _setup(model, x, classes, low, high, rule, first, stabilizer)
    p = torch.softmax(logits, dim=1)
    pc = p.gather(1, cls)                                              # (B, K)
    start = -pc.unsqueeze(-1) * p.unsqueeze(1)                         # -p_c p_n
    start.scatter_add_(2, cls.unsqueeze(-1), pc.unsqueeze(-1))         # + p_c on n = c
    return _propagate(steps, start)


def _dtd(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound, high: Bound) -> Tensor:
    """The paper's DTD (:func:`sepdtd.dtd.relevance`)."""
    return dtd.relevance(model, x, classes, low=low, high=high)


#: The methods compared in the book, name -> ``method(model, x, classes, *, low, high) -> (B, K, ...)``.
METHODS: dict[str, Callable[..., Tensor]] = {
    "dtd": _dtd,
    "epsilon": lrp_epsilon,
    "alphabeta": lrp_alphabeta,
    "gradient_x_input": gradient_x_input,
    "clrp": clrp,
    "sglrp": sglrp,
}

#: Display names of :data:`METHODS`.
LABELS: dict[str, str] = {
    "dtd": "DTD z+/zB (the paper)",
    "epsilon": f"LRP-ε (ε = {EPSILON:g})",
    "alphabeta": "LRP-α2β1",
    "gradient_x_input": "gradient × input",
    "clrp": "CLRP (Gu et al. 2018)",
    "sglrp": "SGLRP (Iwana et al. 2019)",
}


def relevance(method: str | Callable[..., Tensor], model: nn.Module, x: Tensor, classes: Tensor, *,
              low: Bound | None, high: Bound | None, **kwargs) -> Tensor:
    """Relevance ``(B, K, *x.shape[1:])`` of a method of :data:`METHODS` (by name) or a callable."""
    fn = _method(method)
    return fn(model, x, classes, low=low, high=high, **kwargs)


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
