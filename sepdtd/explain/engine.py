r"""The explanation engine: one layer walker, one forward pass and one class-batched backward pass.

Every explanation here — DTD (Section 2.2, Eq. 1-4) and the rules beside it (:mod:`sepdtd.explain.rules`)
— starts a relevance vector at the output and redistributes it layer by layer down to the input. For a
weighted layer (Conv2d or Linear) each rule has the form

.. math:: R^{in} = \sum_g c_g \sum_s f_{g,s} \odot W_{g,s}^\top \big(R^{out} \odot v_g\big)

with per-image factors :math:`f_{g,s}` (the layer's input, its positive or negative part, or
:math:`x - l` and :math:`x - h` for the box rule :math:`z^B`), per-image inverse denominators
:math:`v_g = 1 / (z_g + \epsilon\,\mathrm{sign}\,z_g)` (:math:`\mathrm{sign}(0) = +1`, as zennit does;
none for the gradient), weights :math:`W_{g,s}` (:math:`w`, :math:`w^+` or :math:`w^-`) and constants
:math:`c_g` (:math:`\alpha` and :math:`-\beta` of LRP-αβ, else 1). DTD (Montavon et al. 2017) uses

- :math:`z^B` (Eq. 4) at the **first** weighted layer, which acts on the input box :math:`[l, h]`:
  :math:`R_i = \sum_j \frac{x_i w_{ij} - l_i w^+_{ij} - h_i w^-_{ij}}{\sum_{i'} x_{i'} w_{i'j} - l_{i'}
  w^+_{i'j} - h_{i'} w^-_{i'j}} R_j`, computed as :math:`(x - l) \odot W^{+\top} s + (x - h) \odot
  W^{-\top} s` (equal, since :math:`w = w^+ + w^-`);
- :math:`z^+` (Eq. 3) at every **later** weighted layer (its input is a ReLU output, so
  :math:`\ge 0`): :math:`R_i = \sum_j \frac{x_i w^+_{ij}}{\sum_{i'} x_{i'} w^+_{i'j}} R_j`.

Max-pooling is winner-take-all (relevance goes to the input that won the window, as the gradient
does); average pooling is proportional to its inputs, :math:`R_i = \sum_j \frac{x_i a_{ij}}{\sum_{i'}
x_{i'} a_{i'j}} R_j` with the pooling weights :math:`a_{ij}` (zennit's ``Norm``); ReLU, Dropout
(evaluation mode: the identity) and Flatten pass relevance on. For gradient × input the weighted layers
apply :math:`W^\top`, a ReLU its derivative and average pooling its adjoint, and the input multiplies
the result. The whole computation uses the weights as they are, in evaluation mode (dropout off,
batch-norm running statistics), without hooks, autograd or any change to the model.

One shared forward pass for all K classes
-----------------------------------------
The factors and denominators depend on the input image and the weights, never on the relevance, so
each layer's rule is a *linear* map of the upper-layer relevance and the whole explanation is
:math:`R(x) = M(x)\, R^{top}` with one matrix per image. One forward pass computes every factor and
denominator once, and the K output-relevance vectors of an image travel down together as a
``(B, K, ...)`` tensor whose ``B*K`` rows share the per-image factors (broadcast, never copied).
Consecutive element-wise factors (the input of one layer, the inverse denominator of the next, a
max-pool winner mask) are multiplied once per image before they touch the ``B*K`` relevance rows.
Where the start is one-hot (:math:`R_c = f_c(x)`, every other output 0) and the top layer is dense,
its backward step is a gather of weight rows: :math:`R_i^{(k)} = x_i\, w^+_{c_k i}\, f_{c_k} / z_{c_k}`.

Execution (results do not depend on it; the tests check every path): the weight variants (e.g.
:math:`[w; w^+]` for the forward pass, :math:`w^+` or :math:`[w^+, w^-]` for the backward pass, the
bound term :math:`\sum_i l_i w^+_{ij} + h_i w^-_{ij}` of Eq. 4) are made once per call; a forward pass
computes :math:`w x` and :math:`w^+ x` with one convolution against stacked weights; the backward pass
uses transposed convolutions and matmuls, no autograd. Tiled pooling (kernel = stride) is applied
lazily and fused with the next element-wise factor. 4-D tensors are kept channels-last (faster with
oneDNN on CPUs and cuDNN on an H200). On the CPU a transposed convolution producing at most
``_FOLD_MAX_CHANNELS`` channels goes through one matmul and ``F.fold``, and the batch is processed in
pieces of whole samples so that no ``(rows, ...)`` tensor exceeds ``_CPU_CHUNK_BYTES`` (fresh pages
from the OS for larger tensors cost more than the arithmetic). A heatmap sums over channels inside the
first layer's step. On GPUs, float32 convolutions follow PyTorch's TF32 settings
(``torch.backends.cudnn.allow_tf32``, on by default), which cost about 1% relative accuracy.

Conservation (what holds exactly)
---------------------------------
Each DTD rule conserves what reaches it: summing Eq. 3 over :math:`i` gives :math:`\sum_i R_i =
\sum_j R_j\, z_j / (z_j + \epsilon\,\mathrm{sign}\,z_j)`, i.e. every :math:`R_j` is passed on in full
wherever :math:`z_j \ne 0`, *whatever the biases* (they are not in the rule). The same holds for
Eq. 4, for average pooling (:math:`z` = the pooled value), and trivially for max-pooling, ReLU,
Dropout and Flatten. Relevance can only be lost at a neuron with :math:`R_j \ne 0` and :math:`z_j =
0`. Below the top layer a neuron's relevance is proportional to its activation, :math:`R_j = x_j
g_j`, and with :math:`b_j \le 0`

- :math:`z^+`: :math:`x_j > 0 \Rightarrow \sum_i x_i w_{ij} > -b_j \ge 0 \Rightarrow z_j = \sum_i
  x_i w^+_{ij} > 0` (inputs are non-negative);
- :math:`z^B`: every term of :math:`z_j` is :math:`\ge 0` for :math:`l \le x \le h`, and with
  :math:`l \le 0 \le h` (the paper's box) :math:`z_j \ge \sum_i x_i w_{ij} > -b_j \ge 0` when
  :math:`x_j > 0`;
- average pooling: :math:`z_j = 0` means every input of the window is 0, so is the pooled value, so
  :math:`R_j = 0`.

Hence, for :math:`b \le 0`, :math:`l \le 0 \le h` and :math:`\epsilon \to 0`, :math:`\sum_i R_i(x) =
f_c(x)` exactly for every input and class with :math:`z^+_c \ne 0` at the top layer (if :math:`z^+_c
= 0`, all of :math:`f_c \le 0` is lost), with zero *and* with negative biases. Negative biases change
the heatmap (they switch neurons off) but not the total. With a positive bias a neuron can be on while
:math:`z^+_j = 0`; its relevance is then absorbed, which is why DTD asks for :math:`b \le 0`. With
:math:`\epsilon > 0` each layer keeps the fraction :math:`z_j / (z_j + \epsilon)` of its relevance.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SUPPORTED_LAYERS", "check_model", "layers", "propagate", "OneHot", "TopK", "AllClasses", "Result"]

Bound = float | Tensor
Layers = list[tuple[str, nn.Module]]

#: Layer types the engine explains (subclasses are accepted when they keep the parent's ``forward``).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout,
)
_WEIGHTED = (nn.Conv2d, nn.Linear)
_DTYPES = (torch.float32, torch.float64)


# ----------------------------------------------------------------------------------------------------
# The layer walker
# ----------------------------------------------------------------------------------------------------
def _keeps_forward(module: nn.Module, cls: type[nn.Module]) -> bool:
    return isinstance(module, cls) and type(module).forward is cls.forward


def _leaves(model: nn.Module, prefix: str = "") -> Layers:
    """Flatten (nested) Sequentials into ``(position, layer)`` pairs, position as in ``named_modules``."""
    if _keeps_forward(model, nn.Sequential):
        out: Layers = []
        # _modules, not named_children(): that lists a module object used at two positions only once
        for name, child in model._modules.items():
            if child is not None:
                out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    if isinstance(model, nn.Sequential):
        raise TypeError(
            f"{type(model).__name__} at position {prefix or '<model>'} overrides Sequential.forward; "
            "the engine needs a plain nn.Sequential so that the layer order is the computation order"
        )
    return [(prefix or "<model>", model)]


def _unsupported(name: str, layer: nn.Module, why: str) -> TypeError:
    return TypeError(f"layer at position {name} ({type(layer).__name__}: {layer}) {why}")


def _hint(layer: nn.Module) -> str:
    """What to do instead of an unsupported layer, where there is a standard answer."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return ("; where it directly follows a Conv2d/Linear, sepdtd.Explainer folds it into that layer (its "
                "MergeBatchNorm canonizer; in eval mode it is an affine map: w' = w γ/σ, b' = (b - μ) γ/σ + β); "
                "DTD then needs the folded biases <= 0 (Section 2.2)")
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return "; replace it by the AvgPool2d it amounts to for your input size (fixed kernel_size and stride)"
    if isinstance(layer, nn.AdaptiveMaxPool2d):
        return "; replace it by the MaxPool2d it amounts to for your input size (fixed kernel_size and stride)"
    if isinstance(layer, (nn.Tanh, nn.Sigmoid, nn.GELU, nn.ELU, nn.LeakyReLU, nn.SiLU, nn.Softplus, nn.PReLU)):
        return "; the z+ rule (Eq. 3) is derived for ReLU activations"
    return ""


def _conv_padding(name: str, conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(t % 2 for t in total):
            raise _unsupported(name, conv, "has asymmetric padding='same'; pad explicitly instead")
        return (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)  # type: ignore[return-value]


def _validate(layers_: Layers) -> None:
    for name, layer in layers_:
        cls = next((c for c in SUPPORTED_LAYERS if _keeps_forward(layer, c)), None)
        if cls is None:
            allowed = ", ".join(c.__name__ for c in SUPPORTED_LAYERS)
            raise _unsupported(name, layer, f"is not supported; supported layers: {allowed}{_hint(layer)}")
        if cls is nn.Conv2d and (layer.groups != 1 or layer.padding_mode != "zeros"):
            raise _unsupported(name, layer, "is supported only with groups=1 and padding_mode='zeros'")
        if cls is nn.Conv2d:
            _conv_padding(name, layer)
        if cls is nn.MaxPool2d and layer.return_indices:
            raise _unsupported(name, layer, "returns indices; use return_indices=False")
        if cls is nn.Flatten and (layer.start_dim != 1 or layer.end_dim != -1):
            raise _unsupported(name, layer, "must flatten all but the batch dimension (start_dim=1, end_dim=-1)")
    weighted = [i for i, (_, m) in enumerate(layers_) if isinstance(m, _WEIGHTED)]
    if not weighted:
        raise ValueError("model has no Conv2d or Linear layer: there is nothing to explain")
    for name, layer in layers_[:weighted[0]]:
        if not isinstance(layer, (nn.Flatten, nn.Dropout)):
            raise ValueError(
                f"layer at position {name} ({type(layer).__name__}) comes before the first weighted layer; "
                "the zB rule (Eq. 4) must act on the input box itself, so only Flatten/Dropout may precede it"
            )
    nonnegative = False
    for i, (name, layer) in enumerate(layers_[weighted[0]:]):
        if isinstance(layer, _WEIGHTED):
            if i > 0 and not nonnegative:
                raise ValueError(
                    f"layer at position {name} ({type(layer).__name__}) does not follow a ReLU; the z+ rule "
                    "(Eq. 3) is derived for non-negative inputs, so every weighted layer after the first "
                    "must be fed by a ReLU (possibly through pooling, Dropout or Flatten)"
                )
            nonnegative = False
        elif isinstance(layer, nn.ReLU):
            nonnegative = True


def layers(model: nn.Module, canonizers: Sequence[Callable[[Layers], Layers]] = ()) -> Layers:
    """The model's layers in computation order as ``(position, layer)`` pairs, checked.

    A module object used at several positions appears at each. ``canonizers`` rewrite the list first
    (e.g. :class:`sepdtd.explain.explainer.MergeBatchNorm`). Raises as :func:`check_model`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    out = _leaves(model)
    for canonize in canonizers:
        out = canonize(out)
    _validate(out)
    return out


def check_model(model: nn.Module) -> None:
    """Raise early if the engine cannot explain ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        An :class:`torch.nn.Sequential` (nesting allowed; a module object may appear at several
        positions) of Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten and Dropout, e.g. a
        :class:`sepdtd.models.PaperNet`; or one such layer. :class:`sepdtd.Explainer` also folds a
        BatchNorm that follows a Conv2d/Linear.

    Raises
    ------
    TypeError
        For a layer type (or configuration: grouped or non-zero-padded convolutions, pooling that
        returns indices, partial Flatten) the engine does not support; the message names the layer
        and its position, and what to use instead where there is a standard answer.
    ValueError
        If the architecture leaves the rules undefined: no weighted layer, a layer other than
        Flatten/Dropout before the first weighted layer (zB, Eq. 4, acts on the input box), or a later
        weighted layer whose input is not a ReLU output (z+, Eq. 3, assumes inputs >= 0).
    """
    layers(model)


def with_params(layer: nn.Module, weight: Tensor, bias: Tensor | None) -> nn.Module:
    """A shallow copy of a Conv2d/Linear ``layer`` with other parameters; ``layer`` is not touched."""
    new = copy.copy(layer)
    new._parameters = {"weight": nn.Parameter(weight.detach(), requires_grad=False),
                       "bias": None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)}
    return new


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------
def check_x(x: Tensor) -> tuple[float, float]:
    """Check the input batch; return its smallest and largest value."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in _DTYPES:
        todo = ("convert it with x.float(): the rules divide by sums that half precision rounds away"
                if x.is_floating_point() else "convert integer images to floats in the box, e.g. x.float() / 255")
        raise TypeError(f"x must be float32 or float64, got {x.dtype}; {todo}")
    if x.ndim < 2 or x.shape[0] == 0 or x.numel() == 0:
        raise ValueError(f"x must be a non-empty batch (B, C, H, W) or (B, D), got shape {tuple(x.shape)}")
    x_min, x_max = (float(v) for v in torch.aminmax(x))
    if not (math.isfinite(x_min) and math.isfinite(x_max)):
        bad = ~torch.isfinite(x)
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"x contains {int(bad.sum())} NaN or infinite values (the first at index {first}); "
                         "an explanation of such an input is undefined: clean or drop those inputs")
    return x_min, x_max


def _check_input_shape(layers_: Layers, x: Tensor) -> None:
    """Name the input shape the first weighted layer expects, where ``x`` does not have it."""
    i = next(i for i, (_, m) in enumerate(layers_) if isinstance(m, _WEIGHTED))
    name, first = layers_[i]
    if isinstance(first, nn.Conv2d):
        if x.ndim != 4 or x.shape[1] != first.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}, but the first weighted layer, at position {name} "
                             f"({first}), expects (B, {first.in_channels}, H, W)")
        return
    flattened = any(isinstance(m, nn.Flatten) for _, m in layers_[:i])
    values = math.prod(x.shape[1:]) if flattened else (x.shape[1] if x.ndim == 2 else None)
    if values != first.in_features:
        expected = (f"(B, ...) with {first.in_features} values per input" if flattened
                    else f"(B, {first.in_features})")
        raise ValueError(f"x has shape {tuple(x.shape)}, but the first weighted layer, at position {name} "
                         f"({first}), expects {expected}")


def _check_box_values(lo: Tensor, hi: Tensor) -> None:
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("the box [low, high] of the zB rule (Eq. 4) must be finite (and contain no NaN): an "
                         "infinite bound makes its denominators infinite; for images in [0, 1] use low=0.0, high=1.0")
    if (lo > 0).any() or (hi < 0).any():
        raise ValueError(
            "the box [low, high] of the zB rule (Eq. 4) must hold 0, l <= 0 <= h (Section 2.2: the root point of "
            f"a neuron with b <= 0 then lies in the box); got low up to {float(lo.max()):.6g} and "
            f"high down to {float(hi.min()):.6g}. Widen the box, or shift the inputs so that 0 is admissible"
        )
    if (lo >= hi).any():
        raise ValueError(
            f"the box [low, high] of the zB rule (Eq. 4) is degenerate (low == high) at {int((lo >= hi).sum())} "
            "input elements: such an input has no room to vary and Eq. 4 gives it no relevance; give every "
            "element low < high (for images in [0, 1]: low=0.0, high=1.0)"
        )


def check_box(low: Bound, high: Bound) -> None:
    """The checks of the box that need no input: finite, ``low <= 0 <= high``, ``low < high``, broadcastable."""
    lo, hi = (torch.as_tensor(v).detach().to(torch.float64) for v in (low, high))
    try:
        lo, hi = torch.broadcast_tensors(lo, hi.to(lo.device))
    except RuntimeError:
        raise ValueError(f"low of shape {tuple(lo.shape)} and high of shape {tuple(hi.shape)} do not broadcast "
                         "to each other") from None
    _check_box_values(lo, hi)


def box(x: Tensor, low: Bound, high: Bound, x_range: tuple[float, float]) -> tuple[Tensor, Tensor]:
    """``low``/``high`` as tensors of one input's shape; check them and ``low <= x <= high`` exactly."""
    bounds = []
    for label, value in (("low", low), ("high", high)):
        t = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        try:
            bounds.append(torch.broadcast_to(t, x.shape[1:]))
        except RuntimeError:
            raise ValueError(
                f"{label} of shape {tuple(t.shape)} does not broadcast to one input of shape {tuple(x.shape[1:])}"
            ) from None
    lo, hi = bounds
    _check_box_values(lo, hi)
    if lo.stride() == hi.stride() == (0,) * lo.ndim:        # scalar box: compare with min and max of x
        below, above = float(lo.flatten()[0]) - x_range[0], x_range[1] - float(hi.flatten()[0])
    else:
        below, above = float((lo - x).max()), float((x - hi).max())
    if below > 0 or above > 0:
        raise ValueError(
            f"x lies outside the box [low, high] required by the zB rule (Eq. 4): up to {max(below, 0.0):.6g} "
            f"below low and {max(above, 0.0):.6g} above high; clip x or widen the box"
        )
    return lo, hi


def check_classes(classes: Any, batch: int, device: torch.device) -> Tensor:
    """``classes`` as a ``(B, K)`` int64 tensor on ``device``."""
    c = torch.as_tensor(classes, device=device)
    if c.dtype == torch.bool or c.is_floating_point() or c.is_complex():
        raise TypeError(f"classes must hold integer class indices, got dtype {c.dtype}")
    if c.ndim != 2 or c.shape[0] != batch or c.shape[1] == 0:
        raise ValueError(
            f"classes must have shape (B, K) = ({batch}, K>=1) (e.g. logits.topk(K).indices, or "
            f"labels[:, None]), got {tuple(c.shape)}"
        )
    return c.long()


def _check_range(classes: Tensor, n_out: int) -> None:
    if int(classes.min()) < 0 or int(classes.max()) >= n_out:
        raise ValueError(
            f"classes must lie in [0, {n_out}), got values in [{int(classes.min())}, {int(classes.max())}]")


@dataclass(frozen=True)
class TopK:
    """Targets chosen from the logits: the ``k`` largest, in decreasing order (``logits.topk(k)``)."""
    k: int

    def select(self, logits: Tensor) -> Tensor:
        return logits.topk(self.k, dim=1).indices

    def check(self, n_out: int) -> None:
        if self.k > n_out:
            raise ValueError(f"target asks for the top {self.k} classes, but the model has {n_out} outputs")


@dataclass(frozen=True)
class AllClasses:
    """Every output, in order."""

    def select(self, logits: Tensor) -> Tensor:
        return torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)

    def check(self, n_out: int) -> None:
        pass


Targets = Tensor | TopK | AllClasses


def stab_inv(z: Tensor, stabilizer: float) -> Tensor:
    """``1 / (z + stabilizer * sign(z))`` with ``sign(0) = +1`` (zennit's stabiliser)."""
    return torch.where(z >= 0, z + stabilizer, z - stabilizer).reciprocal_()


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# What a rule prepares and records (see sepdtd.explain.rules)
# ----------------------------------------------------------------------------------------------------
@dataclass
class LinearMap:
    """The linear part of a Conv2d (``conv``: ``F.conv2d`` arguments) or Linear (``conv`` None) layer."""
    conv: dict | None
    fmt: torch.memory_format

    def __call__(self, inp: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
        if self.conv is None:
            return F.linear(inp, w, b)
        return F.conv2d(inp, w, b, **self.conv)

    def weight(self, w: Tensor) -> Tensor:
        """``w`` in the memory format of the pass."""
        return w.contiguous(memory_format=self.fmt) if self.conv is not None else w


@dataclass
class Group:
    """One term of a rule: ``coef * sum_s f_s ⊙ W_s^T (R ⊙ v)``; ``w`` stacks the ``W_s`` along inputs."""
    w: Tensor
    coef: float = 1.0
    fold_w: Tensor | None = None     # set by the engine: ``w`` as a matrix for the fold path


@dataclass
class Prepared:
    """A weighted layer's weight variants, made once per call by its rule and shared by all pieces."""
    rule: Any
    lin: LinearMap
    w: Tensor                      # the layer's weight (columns permuted for an (H, W, C) flattening)
    bias: Tensor | None
    fwd: Tensor                    # forward weight(s), stacked along outputs
    groups: list[Group]
    extra: dict = field(default_factory=dict)
    fold: dict | None = None       # F.fold arguments where the backward pass folds
    conv_t: dict | None = None     # conv_transpose2d arguments, set on the first forward pass

    @property
    def cout(self) -> int:
        return self.w.shape[0]


@dataclass
class Weighted:
    """A Conv2d/Linear step: per group the inverse denominators ``inv`` (None: none) and the factors
    (one per input slice of the group's weight; None: 1), per image."""
    prep: Prepared
    inv: list[Tensor | None]
    factors: list[tuple[Tensor | None, ...]]


@dataclass
class _Pool:
    """Max-pool (``idx`` = winners) or average pool (``x``, ``inv``; both None for the adjoint) step."""
    args: dict
    in_shape: tuple[int, ...]
    tiled: bool                 # windows tile the input: kernel == stride, no padding/dilation/ceil
    idx: Tensor | None = None
    x: Tensor | None = None
    inv: Tensor | None = None


@dataclass
class _Reshape:
    in_shape: tuple[int, ...]
    nhwc: bool = False          # flattened in (H, W, C) order (channels-last memory, no copy)


@dataclass
class _Scale:
    """An element-wise per-image factor: a ReLU's derivative, or the input of gradient × input."""
    factor: Tensor


#: CPU only: a transposed convolution producing at most this many channels goes through one matmul
#: and ``F.fold`` (col2im): measured faster there than oneDNN's transposed convolution for the [G+, G-]
#: of a grey-scale input, and slower for RGB inputs.
_FOLD_MAX_CHANNELS = 4


def _prepare(name: str, layer: nn.Module, rule: Any, first: bool, nhwc: tuple[int, ...] | None,
             lo: Tensor | None, hi: Tensor | None, in_shape: tuple[int, ...], nonneg: bool, dtype: torch.dtype,
             fmt: torch.memory_format) -> Prepared:
    w = layer.weight.to(dtype=dtype)
    b = None if layer.bias is None else layer.bias.to(dtype=dtype)
    if nhwc is not None:               # same sums, inputs in (H, W, C) order
        w = w.view(w.shape[0], *nhwc).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
    conv = None
    if isinstance(layer, nn.Conv2d):
        conv = dict(stride=layer.stride, padding=_conv_padding(name, layer), dilation=layer.dilation)
        if b is not None:
            b = b.view(1, -1, 1, 1)
    lin = LinearMap(conv, fmt)
    prep = rule._prepare(w, b, lin, first=first, nonneg=nonneg, box=(lo, hi) if first else None)
    if conv is not None:
        for g in prep.groups:
            g.w = lin.weight(g.w)
        if w.device.type == "cpu" and all(g.w.shape[1] <= _FOLD_MAX_CHANNELS for g in prep.groups):
            prep.fold = dict(output_size=tuple(in_shape[1:]), kernel_size=layer.kernel_size,
                             dilation=layer.dilation, padding=conv["padding"], stride=layer.stride)
            for g in prep.groups:
                g.fold_w = g.w.permute(1, 2, 3, 0).reshape(-1, w.shape[0]).contiguous()
    return prep


# ----------------------------------------------------------------------------------------------------
# Forward pass: record what each rule needs
# ----------------------------------------------------------------------------------------------------
def _forward(layers_: Layers, rules: dict[int, Any], x: Tensor, lo: Tensor | None, hi: Tensor | None,
             composite: Any, nonneg_x: bool, fmt: torch.memory_format, cache: dict[int, Prepared]
             ) -> tuple[Tensor, list]:
    """Evaluation-mode forward pass computing every activation, factor and denominator once.

    ``cache`` holds the prepared weights by layer position; it is filled on the first piece.
    """
    gradient = composite.gradient
    steps: list = []
    h = x.contiguous(memory_format=fmt) if x.ndim == 4 else x
    if gradient:
        steps.append(_Scale(h))         # gradient × input: the input multiplies last
    first = True
    nhwc: tuple[int, ...] | None = None     # (C, H, W) when the next Linear sees an (H, W, C)-flattened input
    for pos, (name, layer) in enumerate(layers_):
        if isinstance(layer, _WEIGHTED):
            is_conv = isinstance(layer, nn.Conv2d)
            if h.ndim != (4 if is_conv else 2):
                raise ValueError(
                    f"layer at position {name} ({type(layer).__name__}) got an input of shape {tuple(h.shape)}; "
                    f"expected {4 if is_conv else 2} dimensions"
                )
            if not is_conv and h.shape[1] != layer.in_features:
                raise ValueError(
                    f"layer at position {name} ({layer}) expects {layer.in_features} inputs but gets {h.shape[1]} "
                    f"from x of shape {tuple(x.shape)}: is the input's height and width the one the network "
                    "was built for?")
            if layer.weight.device != x.device:
                raise ValueError(f"model is on {layer.weight.device} but x is on {x.device}; move one of them")
            if pos not in cache:
                cache[pos] = _prepare(name, layer, rules[pos], first, nhwc, lo, hi, tuple(h.shape[1:]),
                                      nonneg_x or not first, x.dtype, fmt)
            prep = cache[pos]
            nhwc = None
            out, inv, factors = prep.rule._forward(h, prep)
            if is_conv and prep.conv_t is None:
                cargs = prep.lin.conv
                prep.conv_t = dict(
                    **cargs,
                    output_padding=tuple(
                        i - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for i, o, s, p, d, k in zip(
                            h.shape[2:], out.shape[2:], cargs["stride"], cargs["padding"], cargs["dilation"],
                            layer.kernel_size)
                    ),
                )
            steps.append(Weighted(prep, inv, factors))
            h = out
            first = False
        elif isinstance(layer, nn.ReLU):
            h = h.relu_()     # h is a fresh layer output that no recorded step holds
            if gradient:
                steps.append(_Scale((h > 0).to(h.dtype)))
        elif isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
            k, s = _pair(layer.kernel_size), _pair(layer.stride or layer.kernel_size)
            args = dict(kernel_size=k, stride=s, padding=_pair(layer.padding), ceil_mode=layer.ceil_mode)
            tiled = s == k and args["padding"] == (0, 0) and not layer.ceil_mode
            step = _Pool(args=args, in_shape=tuple(h.shape[1:]), tiled=tiled)
            if isinstance(layer, nn.MaxPool2d):
                args["dilation"] = _pair(layer.dilation)
                step.tiled = tiled and args["dilation"] == (1, 1)
                out, step.idx = F.max_pool2d(h, return_indices=True, **args)
            else:
                args.update(count_include_pad=layer.count_include_pad, divisor_override=layer.divisor_override)
                step.tiled = tiled and layer.divisor_override is None
                out = F.avg_pool2d(h, **args)
                if not gradient:
                    step.x, step.inv = h, stab_inv(out, composite.stabilizer)
            steps.append(step)
            h = out
        elif isinstance(layer, nn.Flatten):
            # With channels-last memory, flatten as (H, W, C) for free when only Dropout/ReLU lie between
            # here and a Linear layer, whose weight columns are permuted to match.
            rest = [m for _, m in layers_[pos + 1:]]
            until = next((i for i, m in enumerate(rest) if not isinstance(m, (nn.Dropout, nn.ReLU))), len(rest))
            step = _Reshape(in_shape=tuple(h.shape[1:]))
            if (h.ndim == 4 and fmt == torch.channels_last and until < len(rest)
                    and isinstance(rest[until], nn.Linear)):
                step.nhwc, nhwc = True, tuple(h.shape[1:])
                h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
                if first and lo is not None:
                    lo, hi = lo.permute(1, 2, 0).reshape(-1), hi.permute(1, 2, 0).reshape(-1)
            else:
                h = h.flatten(1)
                if first and lo is not None:
                    lo, hi = lo.flatten(), hi.flatten()
            steps.append(step)
        # Dropout (evaluation mode) is the identity.
    return h, steps


# ----------------------------------------------------------------------------------------------------
# Backward pass: K relevance rows per image against shared per-image factors
# ----------------------------------------------------------------------------------------------------
class _Rows:
    """Relevance of B*K rows, kept as ``up(r) * pending``.

    ``r`` has shape ``(B*K, ...)``; ``pending`` is a per-image factor ``(B, ...)`` not yet applied
    (``None`` = 1) and ``up`` an optional nearest-neighbour upsampling ``(kernel, size)`` of ``r`` not
    yet applied (a tiled pooling's adjoint). Keeping both lazy lets one element-wise pass over the
    B*K rows do the work of several.
    """

    def __init__(self, r: Tensor, bsz: int, k: int, fmt: torch.memory_format):
        self.r, self.bsz, self.k, self.fmt = r, bsz, k, fmt
        self.pending: Tensor | None = None
        self.up: tuple[tuple[int, int], tuple[int, int]] | None = None

    def scale(self, factor: Tensor | None) -> None:
        if factor is not None:
            self.pending = factor if self.pending is None else self.pending * factor

    def _empty(self, shape: tuple[int, ...]) -> Tensor:
        fmt = self.fmt if len(shape) == 4 else torch.contiguous_format
        return torch.empty(shape, dtype=self.r.dtype, device=self.r.device, memory_format=fmt)

    def flush(self) -> Tensor:
        """Apply ``pending`` and ``up``; return the ``(B*K, ...)`` relevance."""
        r, p, b, k = self.r, self.pending, self.bsz, self.k
        if self.up is None:
            if p is not None:
                fmt = self.fmt if r.ndim == 4 else torch.contiguous_format
                if r.is_contiguous(memory_format=fmt):      # r is always a temporary of this pass
                    r.view(b, k, *r.shape[1:]).mul_(p.unsqueeze(1))
                else:
                    out = self._empty(r.shape)
                    torch.mul(r.view(b, k, *r.shape[1:]), p.unsqueeze(1), out=out.view(b, k, *r.shape[1:]))
                    r = out
        else:
            (kh, kw), (hh, ww) = self.up
            n, c, h, w = r.shape
            out = self._empty((n, c, hh, ww))
            if (hh, ww) != (h * kh, w * kw):                      # rows/columns no window covers
                out[:, :, h * kh:].zero_()
                out[:, :, :, w * kw:].zero_()
            dst = out.view(b, k, c, hh, ww)[..., :h * kh, :w * kw].view(b, k, c, h, kh, w, kw)
            src = r.view(b, k, c, h, 1, w, 1)
            if p is None:
                dst.copy_(src.expand(dst.shape))
            else:
                torch.mul(src, p[..., :h * kh, :w * kw].view(b, 1, c, h, kh, w, kw), out=dst)
            r = out
        self.r, self.pending, self.up = r, None, None
        return r


def _upsample(p: Tensor, kernel: tuple[int, int], size: tuple[int, int], fmt: torch.memory_format) -> Tensor:
    """Nearest upsampling of per-image ``(B, C, h, w)`` into zeros of spatial ``size``."""
    rows = _Rows(p, p.shape[0], 1, fmt)
    rows.up = (kernel, size)
    return rows.flush()


def _adjoint(prep: Prepared, g: Group, r: Tensor) -> Tensor:
    """``W^T r`` for ``(N, *out)`` rows -> ``(N, *in)`` (stacked inputs)."""
    if prep.lin.conv is None:
        return r.matmul(g.w)
    if prep.fold is not None:
        n, c, hh, ww = r.shape
        cols = g.fold_w.matmul(r.permute(0, 2, 3, 1).reshape(n, hh * ww, c).transpose(1, 2))
        return F.fold(cols, **prep.fold)
    return F.conv_transpose2d(r, g.w, None, **prep.conv_t)


def _combine(g: Tensor, factors: tuple[Tensor | None, ...], bsz: int, k: int) -> Tensor:
    """``sum_s f_s ⊙ g_s`` for ``(B, K, S*C, ...)`` ``g`` split into S slices along dimension 2."""
    if len(factors) == 1:
        return g if factors[0] is None else g * factors[0].unsqueeze(1)
    c = g.shape[2] // len(factors)
    if len(factors) == 2:
        return torch.addcmul(g[:, :, :c] * factors[0].unsqueeze(1), g[:, :, c:], factors[1].unsqueeze(1))
    out = g[:, :, :c] * factors[0].unsqueeze(1)
    for s, f in enumerate(factors[1:], 1):
        out.addcmul_(g[:, :, s * c:(s + 1) * c], f.unsqueeze(1))
    return out


@dataclass(frozen=True)
class OneHot:
    """A start relevance that is ``values[b, k]`` at output ``classes[b, k]`` and 0 elsewhere."""
    classes: Tensor
    values: Tensor


def _start(steps: list, start: OneHot | Tensor, bsz: int, n_out: int, fmt: torch.memory_format
           ) -> tuple[_Rows, list]:
    """The relevance rows at the top, and the steps left; a one-hot start on a dense top is a gather."""
    if isinstance(start, OneHot):
        classes, values = start.classes, start.values
        k = classes.shape[1]
        top = steps[-1] if steps else None
        if isinstance(top, Weighted) and top.prep.lin.conv is None:
            # One-hot output relevance: the top step is a gather of weight rows.
            parts = []
            for g, inv, factors in zip(top.prep.groups, top.inv, top.factors):
                s = values if inv is None else values * inv.gather(1, classes)
                if g.coef != 1.0:
                    s = s * g.coef
                parts.append((g.w[classes].mul_(s.unsqueeze(-1)), factors))   # (B, K, S * in)
            if len(parts) == 1 and len(parts[0][1]) == 1:
                rows = _Rows(parts[0][0].view(bsz * k, -1), bsz, k, fmt)
                rows.scale(parts[0][1][0])
            else:
                r = sum(_combine(p, f, bsz, k) for p, f in parts)
                rows = _Rows(r.reshape(bsz * k, -1), bsz, k, fmt)
            return rows, steps[:-1]
        start = values.new_zeros(bsz, k, n_out).scatter_(2, classes.unsqueeze(-1), values.unsqueeze(-1))
    k = start.shape[1]
    return _Rows(start.reshape(bsz * k, *start.shape[2:]), bsz, k, fmt), steps


def _backward(steps: list, start: OneHot | Tensor, bsz: int, n_out: int, fmt: torch.memory_format,
              channel_sum: bool = False) -> tuple[Tensor, bool]:
    """Relevance ``(B, K, ...)`` of the inputs; with ``channel_sum`` the first layer's step of a Conv2d
    sums over the input channels at once (the heatmap), and the flag returned says whether it did."""
    summed = False
    rows, steps = _start(steps, start, bsz, n_out, fmt)
    k = rows.k
    for i in range(len(steps) - 1, -1, -1):
        step = steps[i]
        if isinstance(step, Weighted):
            prep = step.prep
            if len(prep.groups) == 1 and prep.groups[0].coef == 1.0:
                g, factors = prep.groups[0], step.factors[0]
                rows.scale(step.inv[0])
                out = _adjoint(prep, g, rows.flush())
                if len(factors) == 1:
                    rows.r = out
                    rows.scale(factors[0])
                    continue
                out = _combine(out.view(bsz, k, *out.shape[1:]), factors, bsz, k)
            else:
                r = rows.flush()
                r = r.view(bsz, k, *r.shape[1:])
                out = None
                for g, inv, factors in zip(prep.groups, step.inv, step.factors):
                    s = r if inv is None else r * inv.unsqueeze(1)
                    part = _adjoint(prep, g, s.reshape(bsz * k, *s.shape[2:]))
                    part = _combine(part.view(bsz, k, *part.shape[1:]), factors, bsz, k) * g.coef
                    out = part if out is None else out.add_(part)
            if channel_sum and i == 0 and prep.lin.conv is not None:
                out, summed = out.sum(2), True
            rows = _Rows(out.reshape(bsz * k, *out.shape[2:]), bsz, k, fmt)
        elif isinstance(step, _Scale):
            rows.scale(step.factor)
        elif isinstance(step, _Reshape):
            r = rows.flush()
            if step.nhwc:
                c, hh, ww = step.in_shape
                rows.r = r.view(bsz * k, hh, ww, c).permute(0, 3, 1, 2)
            else:
                rows.r = r.reshape(bsz * k, *step.in_shape)
        elif isinstance(step, _Pool):
            a = step.args
            c, hh, ww = step.in_shape
            rows.scale(step.inv)
            if step.tiled and rows.up is None:
                # Disjoint windows: the per-image factor moves below the pooling's adjoint.
                p = rows.pending
                if step.idx is not None:       # winner-take-all: the factor lands on the winners
                    p = p if p is not None else rows.r.new_ones(bsz, *rows.r.shape[1:])
                    p = F.max_unpool2d(p, step.idx, a["kernel_size"], a["stride"], output_size=(hh, ww))
                    p = p.contiguous(memory_format=fmt)
                else:                          # proportional: x / (window size); the adjoint: 1 / (window size)
                    kh, kw = a["kernel_size"]
                    if p is None and step.x is not None:
                        p = step.x / (kh * kw)
                    else:
                        p = p if p is not None else rows.r.new_ones(bsz, *rows.r.shape[1:])
                        p = _upsample(p / (kh * kw), a["kernel_size"], (hh, ww), fmt)
                        if step.x is not None:
                            p.mul_(step.x)
                rows.pending, rows.up = p, (a["kernel_size"], (hh, ww))
            else:
                r = rows.flush()
                if step.idx is not None:
                    idx = step.idx.reshape(bsz, 1, c, -1).expand(bsz, k, c, step.idx[0, 0].numel())
                    out = r.new_zeros(bsz, k, c, hh * ww)
                    out.scatter_add_(3, idx, r.reshape(bsz, k, c, -1))
                    rows.r = out.view(bsz * k, c, hh, ww)
                else:
                    rows.r = torch.ops.aten.avg_pool2d_backward(
                        r, r.new_empty(()).expand(bsz * k, c, hh, ww), list(a["kernel_size"]), list(a["stride"]),
                        list(a["padding"]), a["ceil_mode"], a["count_include_pad"], a["divisor_override"],
                    )
                    rows.scale(step.x)
    out = rows.flush()
    return out.reshape(bsz, k, *out.shape[1:]).contiguous(), summed


# ----------------------------------------------------------------------------------------------------
# The pass over a batch
# ----------------------------------------------------------------------------------------------------
#: CPU only: rows per piece are chosen so that the largest (rows, ...) tensor stays below this size.
#: Larger tensors come from fresh pages of the OS (mmap) on every call, which costs more than the
#: arithmetic; below it glibc reuses freed memory. GPUs process the whole batch at once.
_CPU_CHUNK_BYTES = 16 * 2**20


def _shapes(layers_: Layers, in_shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]] | None:
    """Largest per-sample layer output (elements) and the output shape, from shapes only; None if unknown."""
    try:
        h = torch.empty((1, *in_shape), device="meta")
        widest = 2 * h.numel()                                          # a first step's [G+, G-]
        for _, layer in layers_:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                args = () if isinstance(layer, nn.Linear) else (
                    layer.stride, _conv_padding("", layer), layer.dilation)
                fn = F.linear if isinstance(layer, nn.Linear) else F.conv2d
                h = fn(h, layer.weight.to("meta"), None, *args)
            elif isinstance(layer, nn.MaxPool2d):
                h = F.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode)
            elif isinstance(layer, nn.AvgPool2d):
                h = F.avg_pool2d(h, layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode)
            elif isinstance(layer, nn.Flatten):
                h = h.flatten(1)
            widest = max(widest, h.numel())
        return widest, tuple(h.shape[1:])
    except (RuntimeError, TypeError, ValueError):
        return None                      # the real forward pass will raise a clear error


@dataclass
class Result:
    """What :func:`propagate` returns: input relevance ``(B, K', ...)``, logits ``(B, n)``, classes ``(B, K)``."""
    relevance: Tensor
    logits: Tensor
    classes: Tensor


def propagate(layers_: Layers, x: Tensor, targets: Targets, composite: Any,
              start: Callable[[Tensor, Tensor], OneHot | Tensor], *, low: Bound | None = None,
              high: Bound | None = None, channel_sum: bool = False, rows_per_class: int = 1,
              channels_last: bool | None = None, chunk_bytes: int | None = None) -> Result:
    """Propagate the relevance ``start(logits, classes)`` from the output down to ``x``, all at once.

    Parameters
    ----------
    layers_ : list of (str, torch.nn.Module)
        The checked layers (:func:`layers`).
    x : torch.Tensor
        float32/float64 inputs ``(B, ...)``, finite; inside the box where the composite uses it.
    targets : torch.Tensor, TopK or AllClasses
        ``(B, K)`` integer classes (a tensor or nested lists), or a choice made from the logits.
    composite : sepdtd.explain.rules.Composite
        The rule of each weighted layer (``rule_for``), ``gradient``, ``needs_box`` and the pooling's
        ``stabilizer``.
    start : callable
        ``start(logits, classes)`` for a piece of the batch: a :class:`OneHot` or a dense
        ``(B, K', n_out)`` output relevance.
    low, high : float or torch.Tensor, optional
        The input box of the zB rule (Eq. 4), broadcastable to one input; required where the
        composite uses it.
    channel_sum : bool
        Return the relevance summed over dimension 2 (heatmaps of images).
    rows_per_class : int
        ``K' / K`` of ``start`` (sizes the pieces on the CPU).
    channels_last : bool, optional
        Memory format of the 4-D tensors (None: channels-last).
    chunk_bytes : int, optional
        Bound on the largest ``(rows, ...)`` tensor, by processing the batch in pieces of whole samples
        (0: never split; None: ``_CPU_CHUNK_BYTES`` on the CPU, never on GPUs).
    """
    x_range = check_x(x)
    _check_input_shape(layers_, x)
    first = next(i for i, (_, m) in enumerate(layers_) if isinstance(m, _WEIGHTED))
    rules = {i: composite.rule_for(m, i == first, name)
             for i, (name, m) in enumerate(layers_) if isinstance(m, _WEIGHTED)}
    lo = hi = None
    if composite.needs_box:
        if low is None or high is None:
            raise ValueError("low and high (the input box of the zB rule, Eq. 4) are required; images in [0, 1] "
                             "use low=0.0, high=1.0")
        lo, hi = box(x, low, high, x_range)
    bsz = x.shape[0]
    shapes = _shapes(layers_, tuple(x.shape[1:]))
    n_out = math.prod(shapes[1]) if shapes is not None and len(shapes[1]) == 1 else None
    if isinstance(targets, (TopK, AllClasses)):
        cls = None
        if n_out is not None:
            targets.check(n_out)
        k = targets.k if isinstance(targets, TopK) else (n_out or 10)
    else:
        cls = check_classes(targets, bsz, x.device)
        if n_out is not None:
            _check_range(cls, n_out)
        k = cls.shape[1]
    fmt = torch.channels_last if (channels_last is None or channels_last) and x.ndim == 4 \
        else torch.contiguous_format
    if chunk_bytes is None:
        chunk_bytes = _CPU_CHUNK_BYTES if x.device.type == "cpu" else 0
    piece = bsz
    if chunk_bytes and shapes is not None:
        # K relevance rows per sample, or a fused forward output [w x, w+ x] (2 per sample)
        piece = max(1, min(bsz, chunk_bytes // (shapes[0] * max(k * rows_per_class, 2) * x.element_size())))
        n_pieces = -(-bsz // piece)
        piece = -(-bsz // n_pieces)
    x = x.detach()
    out: Tensor | None = None
    logits_all: list[Tensor] = []
    classes_all: list[Tensor] = []
    cache: dict[int, Prepared] = {}
    with torch.no_grad():
        for begin in range(0, bsz, piece):
            stop = min(begin + piece, bsz)
            logits, steps = _forward(layers_, rules, x[begin:stop], lo, hi, composite, x_range[0] >= 0, fmt, cache)
            if begin == 0:
                if logits.ndim != 2:
                    raise ValueError(
                        f"model output must be logits of shape (B, n_classes), got {tuple(logits.shape)}")
                if cls is not None:
                    _check_range(cls, logits.shape[1])
                else:
                    targets.check(logits.shape[1])
            c = cls[begin:stop] if cls is not None else targets.select(logits)
            logits_all.append(logits)
            classes_all.append(c)
            r, summed = _backward(steps, start(logits, c), stop - begin, logits.shape[1], fmt, channel_sum)
            if channel_sum and not summed:
                r = r.sum(2)
            if piece == bsz:
                return Result(r, logits, c)
            if out is None:
                out = r.new_empty((bsz, *r.shape[1:]))
            out[begin:stop] = r
    return Result(out, torch.cat(logits_all), torch.cat(classes_all))
