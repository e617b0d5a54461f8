r"""Deep Taylor Decomposition (Section 2.2, Eq. 1-4), exact and class-batched.

DTD (Montavon et al. 2017, "Explaining nonlinear classification decisions with deep Taylor
decomposition", Pattern Recognition 65) explains one output :math:`f_c(x)` by starting the
relevance at that output (:math:`R_c = f_c(x)`, every other output 0, Section 2.2 and Section 3)
and redistributing it layer by layer down to the pixels:

- the **first** weighted layer (Conv2d or Linear, acting on the input box :math:`[l, h]`) uses the
  :math:`z^B` rule, Eq. 4:
  :math:`R_i = \sum_j \frac{x_i w_{ij} - l_i w^+_{ij} - h_i w^-_{ij}}{\sum_{i'} x_{i'} w_{i'j} - l_{i'} w^+_{i'j} - h_{i'} w^-_{i'j}} R_j`;
- every **later** weighted layer (its input is a ReLU output, so lies in :math:`\mathbb{R}^+`) uses
  the :math:`z^+` rule, Eq. 3: :math:`R_i = \sum_j \frac{x_i w^+_{ij}}{\sum_{i'} x_{i'} w^+_{i'j}} R_j`;
- max-pooling is winner-take-all (relevance goes to the input that won the window, as the gradient
  does); average pooling redistributes in proportion to the inputs,
  :math:`R_i = \sum_j \frac{x_i a_{ij}}{\sum_{i'} x_{i'} a_{i'j}} R_j` with the pooling weights
  :math:`a_{ij}`;
- ReLU, Dropout (evaluation mode: the identity) and Flatten pass relevance on unchanged.

Biases do not enter the rules: DTD derives Eq. 3 and 4 for :math:`b_j \le 0` (the root point at the
origin, Eq. 2) and they do not appear in the denominators. Every denominator :math:`z` is stabilised
as :math:`z + \epsilon\,\mathrm{sign}(z)` with :math:`\mathrm{sign}(0) = +1` (as zennit does).
The whole computation uses the weights as they are, in evaluation mode (dropout off), without hooks,
autograd or any change to the model.

One shared forward pass for all K classes
-----------------------------------------
Every rule above has the form :math:`R^{in} = x \odot T\big(R^{out} \oslash z\big)`, where the
input :math:`x`, the denominators :math:`z` and the linear map :math:`T` (the transposed layer with
weights :math:`w^+`, or :math:`[w^+, w^-]` for :math:`z^B`, the pooling's adjoint, or the max-pool
winner's scatter) depend only on the input image and the weights, never on the relevance. So each
layer's rule is a *linear* map of the upper-layer relevance, and the whole explanation is
:math:`R(x) = M(x)\, R^{top}` with one matrix :math:`M(x)` per image. The K explanations of the
classes :math:`c_1..c_K` are :math:`M(x) e_{c_k} f_{c_k}(x)`: one forward pass computes every
:math:`x` and :math:`z` once, and the K output-relevance vectors travel down together, as a
``(B, K, ...)`` tensor whose ``B*K`` rows share the per-image factors (broadcast, never copied).
Consecutive element-wise factors (:math:`x` of one layer, :math:`1/z` of the next, the max-pool
winner mask) are multiplied once per image before they touch the ``B*K`` relevance rows.

For the top dense layer the output relevance is one-hot, so its backward step is a gather:
:math:`R_i^{(k)} = x_i\, w^+_{c_k i}\, f_{c_k} / z_{c_k}`.

Execution (results do not depend on it; the tests check every path): the weight variants
(:math:`[w; w^+]` for the forward pass, :math:`w^+` or :math:`[w^+, w^-]` for the backward pass, the
bound term :math:`\sum_i l_i w^+_{ij} + h_i w^-_{ij}` of Eq. 4) are made once per call. The forward
pass computes :math:`w x` and :math:`z^+ = w^+ x` with one convolution against the stacked weights;
the backward pass uses functional transposed convolutions/matmuls, no autograd. The zB step computes
:math:`(x - l) \odot T_{w^+}(s) + (x - h) \odot T_{w^-}(s)` (equal to Eq. 4's three terms, since
:math:`w = w^+ + w^-`) with one transposed convolution producing both. Tiled pooling (kernel = stride)
is applied lazily and fused with the next element-wise factor. 4-D tensors are kept channels-last
(faster with oneDNN on CPUs and cuDNN on an H200). On the CPU the batch is processed in pieces of
whole samples so that no ``(rows, ...)`` tensor exceeds ``_CPU_CHUNK_BYTES`` (fresh pages from the OS
for larger tensors cost more than the arithmetic). :func:`heatmap` sums over channels inside the zB
step. On GPUs, float32 convolutions follow PyTorch's TF32 settings (``torch.backends.cudnn.allow_tf32``,
on by default), which cost about 1% relative accuracy; turn them off for float32-exact heatmaps.

Conservation (what holds exactly)
---------------------------------
Each rule conserves what reaches it: summing Eq. 3 over :math:`i` gives
:math:`\sum_i R_i = \sum_j R_j\, z_j / (z_j + \epsilon\,\mathrm{sign}\,z_j)`, i.e. every
:math:`R_j` is passed on in full wherever :math:`z_j \ne 0`, *whatever the biases* (they are not in
the rule). The same holds for Eq. 4, for average pooling (:math:`z` = the pooled value), and
trivially for max-pooling, ReLU, Dropout and Flatten. Relevance can only be lost at a neuron with
:math:`R_j \ne 0` and :math:`z_j = 0`. Below the top layer a neuron's relevance is proportional to
its activation, :math:`R_j = x_j\,g_j`, and with :math:`b_j \le 0`

- :math:`z^+`: :math:`x_j > 0 \Rightarrow \sum_i x_i w_{ij} > -b_j \ge 0 \Rightarrow
  z_j = \sum_i x_i w^+_{ij} > 0` (inputs are non-negative);
- :math:`z^B`: every term of :math:`z_j` is :math:`\ge 0` for :math:`l \le x \le h`, and with
  :math:`l \le 0 \le h` (the paper's box) :math:`z_j \ge \sum_i x_i w_{ij} > -b_j \ge 0` when
  :math:`x_j > 0`;
- average pooling: :math:`z_j = 0` means every input of the window is 0, so is the pooled value, so
  :math:`R_j = 0`.

Hence, for :math:`b \le 0`, :math:`l \le 0 \le h` and :math:`\epsilon \to 0`,
:math:`\sum_i R_i(x) = f_c(x)` exactly for every input and class with :math:`z^+_c \ne 0` at the top
layer (if :math:`z^+_c = 0`, all of :math:`f_c \le 0` is lost), with zero *and* with negative
biases. Negative biases do change the heatmap (they switch neurons off, and relevance never flows
through a neuron that is off) but not the total. With a positive bias a neuron can be on while
:math:`z^+_j = 0`; its relevance is then absorbed, which is why DTD asks for :math:`b \le 0`. With
:math:`\epsilon > 0` each layer keeps the fraction :math:`z_j / (z_j + \epsilon)` of its relevance.
The tests check the total, the layer-wise identity, and a positive-bias counterexample.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["relevance", "heatmap", "check_model", "SUPPORTED_LAYERS"]

Bound = float | Tensor

#: Layer types the engine explains (subclasses are accepted when they keep the parent's ``forward``).
SUPPORTED_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout,
)
_WEIGHTED = (nn.Conv2d, nn.Linear)


# ----------------------------------------------------------------------------------------------------
# Model checks
# ----------------------------------------------------------------------------------------------------
def _keeps_forward(module: nn.Module, cls: type[nn.Module]) -> bool:
    return isinstance(module, cls) and type(module).forward is cls.forward


def _leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """Flatten (nested) Sequentials into ``(position, layer)`` pairs, position as in ``named_modules``."""
    if _keeps_forward(model, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        # _modules, not named_children(): that lists a module object used at two positions only once
        for name, child in model._modules.items():
            if child is not None:
                out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    if isinstance(model, nn.Sequential):
        raise TypeError(
            f"{type(model).__name__} at position {prefix or '<model>'} overrides Sequential.forward; "
            "DTD needs a plain nn.Sequential so that the layer order is the computation order"
        )
    return [(prefix or "<model>", model)]


def _unsupported(name: str, layer: nn.Module, why: str) -> TypeError:
    return TypeError(f"layer at position {name} ({type(layer).__name__}: {layer}) {why}")


def _hint(layer: nn.Module) -> str:
    """What to do instead of an unsupported layer, where there is a standard answer."""
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return ("; where it directly follows a Conv2d/Linear, fold it into that layer (in eval mode it is an "
                "affine map: w' = w γ/σ, b' = (b - μ) γ/σ + β) and explain the folded network, whose biases "
                "must then be <= 0 (Section 2.2)")
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


def _layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Validate ``model`` (see :func:`check_model`) and return its layers in order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = _leaves(model)
    for name, layer in layers:
        cls = next((c for c in SUPPORTED_LAYERS if _keeps_forward(layer, c)), None)
        if cls is None:
            allowed = ", ".join(c.__name__ for c in SUPPORTED_LAYERS)
            raise _unsupported(name, layer, f"is not supported by DTD; supported layers: {allowed}{_hint(layer)}")
        if cls is nn.Conv2d and (layer.groups != 1 or layer.padding_mode != "zeros"):
            raise _unsupported(name, layer, "is supported only with groups=1 and padding_mode='zeros'")
        if cls is nn.Conv2d:
            _conv_padding(name, layer)
        if cls is nn.MaxPool2d and layer.return_indices:
            raise _unsupported(name, layer, "returns indices; use return_indices=False")
        if cls is nn.Flatten and (layer.start_dim != 1 or layer.end_dim != -1):
            raise _unsupported(name, layer, "must flatten all but the batch dimension (start_dim=1, end_dim=-1)")
    weighted = [i for i, (_, m) in enumerate(layers) if isinstance(m, _WEIGHTED)]
    if not weighted:
        raise ValueError("model has no Conv2d or Linear layer: there is nothing for DTD to explain")
    for name, layer in layers[:weighted[0]]:
        if not isinstance(layer, (nn.Flatten, nn.Dropout)):
            raise ValueError(
                f"layer at position {name} ({type(layer).__name__}) comes before the first weighted layer; "
                "the zB rule (Eq. 4) must act on the input box itself, so only Flatten/Dropout may precede it"
            )
    nonnegative = False
    for i, (name, layer) in enumerate(layers[weighted[0]:]):
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
    return layers


def check_model(model: nn.Module) -> None:
    """Raise early if :func:`relevance` cannot explain ``model``.

    Parameters
    ----------
    model : torch.nn.Module
        An :class:`torch.nn.Sequential` (nesting allowed) of Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d,
        Flatten and Dropout, e.g. a :class:`sepdtd.models.PaperNet`; or one such layer.

    Raises
    ------
    TypeError
        For a layer type (or configuration: grouped or non-zero-padded convolutions, pooling that
        returns indices, partial Flatten) the engine does not support; the message names the layer
        and its position.
    ValueError
        If the architecture leaves the rules undefined: no weighted layer, a layer other than
        Flatten/Dropout before the first weighted layer (zB, Eq. 4, acts on the input box), or a later
        weighted layer whose input is not a ReLU output (z+, Eq. 3, assumes inputs >= 0).
    """
    _layers(model)


# ----------------------------------------------------------------------------------------------------
# Argument checks
# ----------------------------------------------------------------------------------------------------
def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating point tensor (float32 or float64), got {x.dtype}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, C, H, W) or (B, D), got shape {tuple(x.shape)}")


def _check_input_shape(layers: list[tuple[str, nn.Module]], x: Tensor) -> None:
    """Name the input shape the first weighted layer expects, where ``x`` does not have it."""
    i = next(i for i, (_, m) in enumerate(layers) if isinstance(m, _WEIGHTED))
    name, first = layers[i]
    if isinstance(first, nn.Conv2d):
        if x.ndim != 4 or x.shape[1] != first.in_channels:
            raise ValueError(f"x has shape {tuple(x.shape)}, but the first weighted layer, at position {name} "
                             f"({first}), expects (B, {first.in_channels}, H, W)")
        return
    flattened = any(isinstance(m, nn.Flatten) for _, m in layers[:i])
    values = math.prod(x.shape[1:]) if flattened else (x.shape[1] if x.ndim == 2 else None)
    if values != first.in_features:
        expected = (f"(B, ...) with {first.in_features} values per input" if flattened
                    else f"(B, {first.in_features})")
        raise ValueError(f"x has shape {tuple(x.shape)}, but the first weighted layer, at position {name} "
                         f"({first}), expects {expected}")


def _box(x: Tensor, low: Bound, high: Bound) -> tuple[Tensor, Tensor]:
    """``low``/``high`` as tensors of one input's shape; check ``low <= x <= high`` exactly."""
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
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("the box [low, high] of the zB rule (Eq. 4) must be finite (and contain no NaN); "
                         "for images in [0, 1] use low=0.0, high=1.0")
    if (lo > 0).any() or (hi < 0).any():
        raise ValueError(
            "the box [low, high] of the zB rule (Eq. 4) must hold 0, l <= 0 <= h (Section 2.2: the root point of "
            f"a neuron with b <= 0 then lies in the box); got low up to {float(lo.max()):.6g} and "
            f"high down to {float(hi.min()):.6g}. Widen the box, or shift the inputs so that 0 is admissible"
        )
    if lo.stride() == hi.stride() == (0,) * lo.ndim:        # scalar box: compare with min and max of x
        x_min, x_max = (float(v) for v in torch.aminmax(x))
        below, above = float(lo.flatten()[0]) - x_min, x_max - float(hi.flatten()[0])
    else:
        below, above = float((lo - x).max()), float((x - hi).max())
    if math.isnan(below) or math.isnan(above):
        raise ValueError("x contains NaN")
    if below > 0 or above > 0:
        raise ValueError(
            f"x lies outside the box [low, high] required by the zB rule (Eq. 4): up to {max(below, 0.0):.6g} "
            f"below low and {max(above, 0.0):.6g} above high; clip x or widen the box"
        )
    return lo, hi


def _check_classes(classes: Tensor, batch: int, device: torch.device) -> Tensor:
    c = torch.as_tensor(classes, device=device)
    if c.dtype == torch.bool or c.is_floating_point() or c.is_complex():
        raise TypeError(f"classes must hold integer class indices, got dtype {c.dtype}")
    if c.ndim != 2 or c.shape[0] != batch or c.shape[1] == 0:
        raise ValueError(
            f"classes must have shape (B, K) = ({batch}, K>=1) (e.g. logits.topk(K).indices, or "
            f"labels[:, None]), got {tuple(c.shape)}"
        )
    return c.long()


# ----------------------------------------------------------------------------------------------------
# Forward pass: record what each rule needs
# ----------------------------------------------------------------------------------------------------
def _inv_stab(z: Tensor, eps: float) -> Tensor:
    """``1 / (z + eps * sign(z))`` with ``sign(0) = +1``."""
    return torch.where(z >= 0, z + eps, z - eps).reciprocal_()


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)  # type: ignore[return-value]


@dataclass
class _Weighted:
    """z+ (Eq. 3) or zB (Eq. 4) step; ``w`` is w+ (z+) or [w+, w-] stacked along inputs (zB)."""
    w: Tensor
    inv: Tensor                 # 1 / stab(z), per image
    x: Tensor | None            # input (z+); None for zB
    xl: Tensor | None = None    # x - l (zB)
    xh: Tensor | None = None    # x - h (zB)
    conv: dict | None = None    # conv_transpose2d arguments; None for Linear
    fold: dict | None = None    # zB on CPU with few input channels: matmul + F.fold arguments
    fold_w: Tensor | None = None


@dataclass
class _Pool:
    """Max-pool (``idx`` = winners) or average pool (``x``, ``inv``) step."""
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


#: CPU only: the zB step's transposed convolution goes through one matmul and ``F.fold`` (col2im)
#: when it produces at most this many channels ([G+, G-] of a grey-scale input); measured faster
#: there than oneDNN's transposed convolution, and slower for RGB inputs.
_FOLD_MAX_CHANNELS = 4


def _prepare(name: str, layer: nn.Module, first: bool, nhwc: tuple[int, ...] | None, lo: Tensor, hi: Tensor,
             in_shape: tuple[int, ...], dtype: torch.dtype, fmt: torch.memory_format) -> dict:
    """Weight variants of one Conv2d/Linear layer, computed once per call (shared by all pieces)."""
    w = layer.weight.to(dtype=dtype)
    b = None if layer.bias is None else layer.bias.to(dtype=dtype)
    if nhwc is not None:               # same sums, inputs in (H, W, C) order
        w = w.view(w.shape[0], *nhwc).permute(0, 2, 3, 1).reshape(w.shape[0], -1)
    wp = w.clamp(min=0)
    prep: dict = {"cout": w.shape[0], "bias": b}
    is_conv = isinstance(layer, nn.Conv2d)
    if is_conv:
        pad = _conv_padding(name, layer)
        prep["cargs"] = dict(stride=layer.stride, padding=pad, dilation=layer.dilation)
        prep["bias_shape"] = (1, -1, 1, 1)
        if b is not None:
            prep["bias"] = b.view(1, -1, 1, 1)
    if first:
        wpn = torch.cat([wp, w.clamp(max=0)], dim=1)                    # [w+, w-] along inputs
        bounds = torch.cat([lo, hi], dim=0).unsqueeze(0)                # [l, h] along inputs
        if is_conv:
            prep["fwd"] = w.contiguous(memory_format=fmt)
            wpn = wpn.contiguous(memory_format=fmt)
            prep["bound"] = F.conv2d(bounds.contiguous(memory_format=fmt), wpn, None, **prep["cargs"])
            if wpn.shape[1] <= _FOLD_MAX_CHANNELS and lo.device.type == "cpu":
                prep["fold"] = dict(output_size=tuple(in_shape[1:]), kernel_size=layer.kernel_size,
                                    dilation=layer.dilation, padding=pad, stride=layer.stride)
                prep["fold_w"] = wpn.permute(1, 2, 3, 0).reshape(-1, w.shape[0]).contiguous()
        else:
            prep["fwd"] = w
            prep["bound"] = F.linear(bounds, wpn)
        prep["back"] = wpn
    else:
        both = torch.cat([w, wp], dim=0)                                # [w; w+] along outputs
        prep["fwd"] = both.contiguous(memory_format=fmt) if is_conv else both
        prep["back"] = wp.contiguous(memory_format=fmt) if is_conv else wp
    return prep


def _forward(layers: list[tuple[str, nn.Module]], x: Tensor, lo: Tensor, hi: Tensor, eps: float,
             fmt: torch.memory_format, cache: dict[int, dict]) -> tuple[Tensor, list]:
    """Evaluation-mode forward pass computing every activation and denominator once.

    ``cache`` holds the prepared weights by layer position; it is filled on the first piece.
    """
    steps: list = []
    h = x.contiguous(memory_format=fmt) if x.ndim == 4 else x
    first = True
    nhwc: tuple[int, ...] | None = None     # (C, H, W) when the next Linear sees an (H, W, C)-flattened input
    for pos, (name, layer) in enumerate(layers):
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
                cache[pos] = _prepare(name, layer, first, nhwc, lo, hi, tuple(h.shape[1:]), x.dtype, fmt)
            prep = cache[pos]
            nhwc = None
            if is_conv:
                def op(inp: Tensor, weight: Tensor, cargs: dict = prep["cargs"]) -> Tensor:
                    return F.conv2d(inp, weight, None, **cargs)
            else:
                op = F.linear
            b = prep["bias"]
            if first:
                z0 = op(h, prep["fwd"])
                if is_conv:    # a 1-channel input is ambiguous about its memory format
                    z0 = z0.contiguous(memory_format=fmt)
                step = _Weighted(w=prep["back"], inv=_inv_stab(z0 - prep["bound"], eps), x=None,
                                 xl=h - lo, xh=h - hi)
                if "fold" in prep:
                    step.fold, step.fold_w = prep["fold"], prep["fold_w"]
                out = z0 if b is None else z0 + b
                first = False
            else:
                cout = prep["cout"]
                both = op(h, prep["fwd"])                                 # w x and w+ x in one pass
                out = both[:, :cout] if b is None else both[:, :cout] + b
                # z+ >= 0 exactly (inputs >= 0 after a ReLU, w+ >= 0), so sign(z) = +1.
                step = _Weighted(w=prep["back"], inv=both[:, cout:].add(eps).reciprocal_(), x=h)
            if is_conv:
                cargs = prep["cargs"]
                step.conv = dict(
                    **cargs,
                    output_padding=tuple(
                        i - ((o - 1) * s - 2 * p + d * (k - 1) + 1) for i, o, s, p, d, k in zip(
                            h.shape[2:], out.shape[2:], cargs["stride"], cargs["padding"], cargs["dilation"],
                            layer.kernel_size)
                    ),
                )
            steps.append(step)
            h = out
        elif isinstance(layer, nn.ReLU):
            h = h.relu_()     # h is a fresh layer output that no recorded step holds
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
                step.x, step.inv = h, _inv_stab(out, eps)
            steps.append(step)
            h = out
        elif isinstance(layer, nn.Flatten):
            # With channels-last memory, flatten as (H, W, C) for free when only Dropout/ReLU lie between
            # here and a Linear layer, whose weight columns are permuted to match.
            rest = [m for _, m in layers[pos + 1:]]
            until = next((i for i, m in enumerate(rest) if not isinstance(m, (nn.Dropout, nn.ReLU))), len(rest))
            step = _Reshape(in_shape=tuple(h.shape[1:]))
            if (h.ndim == 4 and fmt == torch.channels_last and until < len(rest)
                    and isinstance(rest[until], nn.Linear)):
                step.nhwc, nhwc = True, tuple(h.shape[1:])
                h = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
                if first:
                    lo, hi = lo.permute(1, 2, 0).reshape(-1), hi.permute(1, 2, 0).reshape(-1)
            else:
                h = h.flatten(1)
                if first:
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

    def scale(self, factor: Tensor) -> None:
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


def _backward(steps: list, logits: Tensor, classes: Tensor, fmt: torch.memory_format,
              channel_sum: bool = False) -> tuple[Tensor, bool]:
    """Relevance ``(B, K, ...)`` of the inputs; with ``channel_sum`` the zB step of a Conv2d sums over
    the input channels at once (the heatmap), and the flag returned says whether it did."""
    summed = False
    bsz, k = classes.shape
    f = logits.gather(1, classes)                                      # R_c = f_c(x), Section 2.2
    top = steps[-1] if steps else None
    if isinstance(top, _Weighted) and top.conv is None and top.x is not None:
        # One-hot output relevance: the top z+ step is a gather of w+ rows.
        r = top.w[classes]                                             # (B, K, in)
        r.mul_((f * top.inv.gather(1, classes)).unsqueeze(-1))
        rows = _Rows(r.view(bsz * k, -1), bsz, k, fmt)
        rows.scale(top.x)
        steps = steps[:-1]
    else:
        r = logits.new_zeros(bsz, k, logits.shape[1]).scatter_(2, classes.unsqueeze(-1), f.unsqueeze(-1))
        rows = _Rows(r.view(bsz * k, -1), bsz, k, fmt)

    for step in reversed(steps):
        if isinstance(step, _Weighted):
            rows.scale(step.inv)
            r = rows.flush()
            if step.conv is None:
                g = r.matmul(step.w)
            elif step.fold is not None:
                n, c, hh, ww = r.shape
                cols = step.fold_w.matmul(r.permute(0, 2, 3, 1).reshape(n, hh * ww, c).transpose(1, 2))
                g = F.fold(cols, **step.fold)
            else:
                g = F.conv_transpose2d(r, step.w, None, **step.conv)
            if step.x is None:                                         # zB: (x - l) G+ + (x - h) G-
                c = step.xl.shape[1]
                g = g.view(bsz, k, *g.shape[1:])
                out = torch.addcmul(g[:, :, :c] * step.xl.unsqueeze(1), g[:, :, c:], step.xh.unsqueeze(1))
                if channel_sum and step.conv is not None:
                    out, summed = out.sum(2), True
                rows = _Rows(out.reshape(bsz * k, *out.shape[2:]), bsz, k, fmt)
            else:
                rows.r = g
                rows.scale(step.x)
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
            if step.inv is not None:
                rows.scale(step.inv)
            if step.tiled and rows.up is None:
                # Disjoint windows: the per-image factor moves below the pooling's adjoint.
                p = rows.pending
                if step.idx is not None:       # winner-take-all: the factor lands on the winners
                    p = p if p is not None else rows.r.new_ones(bsz, *rows.r.shape[1:])
                    p = F.max_unpool2d(p, step.idx, a["kernel_size"], a["stride"], output_size=(hh, ww))
                    p = p.contiguous(memory_format=fmt)
                else:                          # proportional: x / (window size)
                    kh, kw = a["kernel_size"]
                    if p is None:
                        p = step.x / (kh * kw)
                    else:
                        p = _upsample(p / (kh * kw), a["kernel_size"], (hh, ww), fmt).mul_(step.x)
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
# Public API
# ----------------------------------------------------------------------------------------------------
def relevance(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound, high: Bound,
              eps: float = 1e-9) -> Tensor:
    r"""DTD relevance of each input element for K classes per sample (Section 2.2, Eq. 1-4).

    The relevance of class :math:`c` starts at its logit, :math:`R_c = f_c(x)`, all other outputs 0
    (Section 3), and is propagated with the :math:`z^B` rule (Eq. 4) at the first weighted layer and
    the :math:`z^+` rule (Eq. 3) at every later Conv2d/Linear layer (Montavon et al. 2017); max-pooling
    is winner-take-all, average pooling proportional to its inputs, ReLU/Dropout/Flatten pass relevance
    on. Biases are left out of the rules. All K classes share one forward pass (see the module
    docstring).

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`torch.nn.Sequential` of Conv2d, Linear, ReLU, MaxPool2d, AvgPool2d, Flatten, Dropout
        (e.g. :class:`sepdtd.models.PaperNet`), see :func:`check_model`. DTD assumes biases ``<= 0``
        (Eq. 2; :func:`sepdtd.models.clamp_biases_`). The model is only read: evaluation-mode
        semantics are used (dropout off) without touching its mode, parameters or hooks. Its weights
        are used in ``x``'s dtype.
    x : torch.Tensor
        Floating point inputs ``(B, C, H, W)`` or ``(B, D)`` inside the box ``[low, high]``, on the
        model's device.
    classes : torch.Tensor
        Integer class indices of shape ``(B, K)``, e.g. ``logits.topk(2).indices``.
    low, high : float or torch.Tensor
        The box :math:`[l, h]` of Eq. 4 (for images in ``[0, 1]``: ``low=0.0, high=1.0``), broadcastable
        to one input ``x.shape[1:]``. The paper's box has :math:`l \le 0 \le h`.
    eps : float, optional
        Stabiliser, ``> 0``: each denominator :math:`z` becomes :math:`z + \epsilon\,\mathrm{sign}(z)`,
        :math:`\mathrm{sign}(0) = +1`.

    Returns
    -------
    torch.Tensor
        Relevance of shape ``(B, K, *x.shape[1:])`` in ``x``'s dtype, not attached to any autograd
        graph. For :math:`b \le 0` and :math:`l \le 0 \le h`, ``R[b, k].sum()`` equals
        ``f_{classes[b, k]}(x[b])`` up to the :math:`\epsilon` terms (module docstring).

    Raises
    ------
    TypeError
        Unsupported layer (named with its position), non-float ``x``, non-integer ``classes``.
    ValueError
        ``x`` outside the box (says how far), a malformed box, bad ``classes`` shape or range,
        ``eps <= 0``, or an architecture the rules do not cover (see :func:`check_model`).
    """
    return _relevance(model, x, classes, low=low, high=high, eps=eps)


#: CPU only: rows per piece are chosen so that the largest (rows, ...) tensor stays below this size.
#: Larger tensors come from fresh pages of the OS (mmap) on every call, which costs more than the
#: arithmetic; below it glibc reuses freed memory. GPUs process the whole batch at once.
_CPU_CHUNK_BYTES = 16 * 2**20


def _widest(layers: list[tuple[str, nn.Module]], in_shape: tuple[int, ...]) -> int | None:
    """Largest per-sample layer output (elements), from shapes only; None if unknown."""
    try:
        h = torch.empty((1, *in_shape), device="meta")
        widest = 2 * h.numel()                                          # the zB step's [G+, G-]
        for _, layer in layers:
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
        return widest
    except (RuntimeError, TypeError, ValueError):
        return None                      # the real forward pass will raise a clear error


def _relevance(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound, high: Bound, eps: float,
               channels_last: bool | None = None, chunk_bytes: int | None = None,
               channel_sum: bool = False) -> Tensor:
    """:func:`relevance` with the execution choices exposed (``None``: chosen by device).

    ``channels_last`` picks the memory format of the 4-D tensors; ``chunk_bytes`` bounds the largest
    ``(rows, ...)`` tensor by processing the batch in pieces of whole samples (0: never split);
    ``channel_sum`` returns the heatmap (relevance summed over dimension 2).
    """
    layers = _layers(model)
    _check_x(x)
    _check_input_shape(layers, x)
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps 0/0 out of the denominators), got {eps}")
    lo, hi = _box(x, low, high)
    cls = _check_classes(classes, x.shape[0], x.device)
    cpu = x.device.type == "cpu"
    if channels_last is None:    # measured faster on CPU (oneDNN) and on an H200 (cuDNN)
        channels_last = True
    fmt = torch.channels_last if channels_last and x.ndim == 4 else torch.contiguous_format
    if chunk_bytes is None:
        chunk_bytes = _CPU_CHUNK_BYTES if cpu else 0
    bsz, k = cls.shape
    piece = bsz
    widest = _widest(layers, tuple(x.shape[1:])) if chunk_bytes else None
    if widest:
        # K relevance rows per sample, or the fused forward output [w x, w+ x] (2 per sample)
        piece = max(1, min(bsz, chunk_bytes // (widest * max(k, 2) * x.element_size())))
        n_pieces = -(-bsz // piece)
        piece = -(-bsz // n_pieces)
    x = x.detach()
    out: Tensor | None = None
    cache: dict[int, dict] = {}
    with torch.no_grad():
        for start in range(0, bsz, piece):
            stop = min(start + piece, bsz)
            logits, steps = _forward(layers, x[start:stop], lo, hi, float(eps), fmt, cache)
            if start == 0:
                if logits.ndim != 2:
                    raise ValueError(
                        f"model output must be logits of shape (B, n_classes), got {tuple(logits.shape)}")
                n_out = logits.shape[1]
                if int(cls.min()) < 0 or int(cls.max()) >= n_out:
                    raise ValueError(
                        f"classes must lie in [0, {n_out}), got values in [{int(cls.min())}, {int(cls.max())}]")
            r, summed = _backward(steps, logits, cls[start:stop], fmt, channel_sum)
            if channel_sum and not summed:
                r = r.sum(2)
            if piece == bsz:
                return r
            if out is None:
                out = r.new_empty((bsz, *r.shape[1:]))
            out[start:stop] = r
    return out


def heatmap(model: nn.Module, x: Tensor, classes: Tensor, *, low: Bound, high: Bound,
            eps: float = 1e-9) -> Tensor:
    """The paper's heatmap: DTD relevance (Eq. 1-4) summed over colour channels (end of Section 2.2).

    Parameters
    ----------
    model, x, classes, low, high, eps
        As for :func:`relevance`; ``x`` must be images ``(B, C, H, W)``.

    Returns
    -------
    torch.Tensor
        ``(B, K, H, W)``: ``relevance(...).sum(dim=2)``.
    """
    if isinstance(x, Tensor) and x.ndim != 4:
        raise ValueError(f"heatmap needs images (B, C, H, W), got shape {tuple(x.shape)}; use relevance()")
    return _relevance(model, x, classes, low=low, high=high, eps=eps, channel_sum=True)
