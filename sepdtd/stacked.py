r"""G networks of one architecture evaluated as one grouped network (the fine-tunes of Section 5.1).

The four fine-tunes of a unit (λ ∈ {0.1, 0.5, 1.0, 5.0}, Eq. 5) start from the same baseline, have the
same architecture and see the same data. The Table 1 networks are so small that on a GPU a training
step is bound by the launch of its kernels, not by arithmetic, so training the fine-tunes one after
the other, or as concurrent processes, leaves the device mostly idle. :class:`StackedSequential` holds
the parameters of ``G`` such networks as tensors with a leading member dimension and runs all of them
in the kernels of one:

- the first convolution (or dense layer) sees the shared input and produces the ``G * O`` output
  channels of all members in one ordinary convolution;
- every later convolution is one grouped convolution (``groups = G``) over activations laid out as
  ``(B, G * C, H, W)``, member ``g`` owning channels ``g * C ... (g + 1) * C - 1`` (on a CPU, where
  grouped kernels are slower, ``G`` plain convolutions of the same layout);
- pooling, ReLU and dropout act channel- or element-wise and so apply unchanged;
- after ``Flatten`` the activations become ``(G, B, D)`` and every dense layer is one batched matrix
  product.

Nothing couples the members: the output of member ``g`` is exactly (up to floating-point summation
order) what network ``g`` computes on its own, and the gradient of ``sum_g loss_g`` with respect to
member ``g``'s parameters is the gradient of ``loss_g`` alone. Element-wise optimizers such as Adam
then update each member exactly as its own optimizer would. :func:`sepdtd.training.fit_stacked` trains
the fine-tunes this way.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["StackedSequential", "SUPPORTED"]

#: Layer types :class:`StackedSequential` accepts (exact types: subclasses may change the maths).
SUPPORTED = (nn.Conv2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Flatten)

_WEIGHTED = (nn.Conv2d, nn.Linear)


def _signature(model: nn.Module) -> list[tuple]:
    sig, weighted = [], {}
    # _modules, not named_children(): that lists a module object used at two positions only once
    for name, m in model._modules.items():
        if m is None:
            continue
        if isinstance(m, _WEIGHTED):
            if id(m) in weighted:
                raise TypeError(f"layer {name!r} is the module object of layer {weighted[id(m)]!r} again: "
                                "StackedSequential cannot share weights between positions")
            weighted[id(m)] = name
        if type(m) not in SUPPORTED:
            raise TypeError(f"layer {name!r} of type {type(m).__name__} is not supported by StackedSequential "
                            f"(supported: {', '.join(t.__name__ for t in SUPPORTED)})")
        if isinstance(m, nn.Conv2d) and (m.groups != 1 or m.padding_mode != "zeros"):
            raise TypeError(f"layer {name!r}: only Conv2d with groups=1 and zero padding can be stacked")
        if isinstance(m, nn.Flatten) and (m.start_dim != 1 or m.end_dim != -1):
            raise TypeError(f"layer {name!r}: only Flatten(start_dim=1, end_dim=-1) can be stacked")
        shapes = tuple((k, tuple(p.shape)) for k, p in m.named_parameters(recurse=False))
        sig.append((name, type(m), shapes, m.extra_repr()))
    return sig


class StackedSequential(nn.Module):
    """``G`` copies of one :class:`torch.nn.Sequential` architecture run as one grouped network.

    Parameters
    ----------
    models : sequence of torch.nn.Sequential
        ``G >= 1`` networks with the same layers (types, shapes and settings), made of
        :data:`SUPPORTED` layers, every ``Conv2d``/``Linear`` with a bias. Their current parameters
        are copied; the networks themselves are not modified or referenced afterwards.

    Attributes
    ----------
    weights, biases : torch.nn.ParameterList
        Per weighted layer (input to output) the parameters of all members, shapes
        ``(G, *weight.shape)`` and ``(G, out)``.
    n_members : int
        ``G``.

    Notes
    -----
    :meth:`forward` takes one batch ``x`` shared by all members and returns logits ``(G, B, K)``.
    Dropout draws independent masks for every member. :meth:`member_state_dict` and
    :meth:`load_member_state_dict` move one member's weights to and from the layout of the original
    networks' ``state_dict``.
    """

    def __init__(self, models: Sequence[nn.Sequential]):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("StackedSequential needs at least one model")
        sig = _signature(models[0])
        for i, m in enumerate(models[1:], 1):
            if _signature(m) != sig:
                raise ValueError(f"model {i} has another architecture than model 0: only networks with the "
                                 "same layers can be stacked")
        template = models[0]
        self.n_members = len(models)
        self._layers: list[tuple[str, dict]] = []   # (kind, settings) per layer: no modules are kept
        self._names: list[str] = []                  # names of the weighted layers
        weights, biases = [], []
        for name, m in template._modules.items():
            if m is None:
                continue
            if isinstance(m, _WEIGHTED):
                if m.bias is None:
                    raise TypeError(f"layer {name!r} has no bias: StackedSequential needs biases")
                per = [mm._modules[name] for mm in models]
                weights.append(nn.Parameter(torch.stack([p.weight.detach() for p in per]).clone()))
                biases.append(nn.Parameter(torch.stack([p.bias.detach() for p in per]).clone()))
                self._names.append(name)
                if isinstance(m, nn.Conv2d):
                    self._layers.append(("conv", dict(stride=m.stride, padding=m.padding, dilation=m.dilation)))
                else:
                    self._layers.append(("linear", {}))
            elif isinstance(m, nn.MaxPool2d):
                self._layers.append(("maxpool", dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                                     dilation=m.dilation, ceil_mode=m.ceil_mode)))
            elif isinstance(m, nn.AvgPool2d):
                self._layers.append(("avgpool", dict(kernel_size=m.kernel_size, stride=m.stride, padding=m.padding,
                                                     ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                                                     divisor_override=m.divisor_override)))
            elif isinstance(m, nn.Dropout):
                self._layers.append(("dropout", dict(p=m.p)))
            else:
                self._layers.append(("relu" if isinstance(m, nn.ReLU) else "flatten", {}))
        self.weights = nn.ParameterList(weights)
        self.biases = nn.ParameterList(biases)

    def extra_repr(self) -> str:
        return f"n_members={self.n_members}, weighted_layers={self._names}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(G, B, K)`` of every member for the shared batch ``x`` (``(B, C, H, W)`` or ``(B, D)``)."""
        G = self.n_members
        shared = True          # x is one input seen by every member
        grouped_dense = False  # layout (G, B, D) once flattened
        h = x
        k = 0
        for kind, spec in self._layers:
            if kind in ("conv", "linear"):
                w, b = self.weights[k], self.biases[k]
                k += 1
                if kind == "conv" and (shared or h.device.type != "cpu"):
                    o = w.shape[1]
                    h = F.conv2d(h, w.reshape(G * o, *w.shape[2:]), b.reshape(G * o),
                                 groups=1 if shared else G, **spec)
                    shared = False
                elif kind == "conv":  # CPU kernels run G plain convolutions faster than one grouped one
                    h = torch.cat([F.conv2d(hg, w[g], b[g], **spec)
                                   for g, hg in enumerate(h.chunk(G, dim=1))], dim=1)
                elif shared:
                    o = w.shape[1]
                    h = F.linear(h, w.reshape(G * o, w.shape[2]), b.reshape(G * o))
                    h = h.reshape(h.shape[0], G, o).transpose(0, 1)
                    shared, grouped_dense = False, True
                else:
                    h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            elif kind == "flatten":
                if shared:
                    h = h.flatten(1)
                elif not grouped_dense:
                    h = h.reshape(h.shape[0], G, -1).transpose(0, 1)
                    grouped_dense = True
            elif kind == "relu":
                h = F.relu(h)
            elif kind == "maxpool":
                h = F.max_pool2d(h, **spec)
            elif kind == "avgpool":
                h = F.avg_pool2d(h, **spec)
            else:  # dropout
                if shared and self.training:  # every member draws its own mask
                    if h.ndim == 2:
                        h, grouped_dense = h.unsqueeze(0).expand(G, *h.shape).contiguous(), True
                    else:
                        h = h.repeat(1, G, *([1] * (h.ndim - 2)))
                    shared = False
                h = F.dropout(h, spec["p"], training=self.training)
        if shared:
            raise ValueError("the stacked network has no weighted layer")
        if not grouped_dense:
            h = h.reshape(h.shape[0], G, -1).transpose(0, 1)
        return h

    @torch.no_grad()
    def member_state_dict(self, g: int) -> dict[str, torch.Tensor]:
        """Weights of member ``g`` keyed as the original network's ``state_dict`` (detached copies)."""
        self._check_member(g)
        out = {}
        for name, w, b in zip(self._names, self.weights, self.biases):
            out[f"{name}.weight"] = w[g].detach().clone()
            out[f"{name}.bias"] = b[g].detach().clone()
        return out

    @torch.no_grad()
    def load_member_state_dict(self, g: int, state: dict[str, torch.Tensor]) -> None:
        """Copy a network's ``state_dict`` (as :meth:`member_state_dict` returns it) into member ``g``."""
        self._check_member(g)
        want = {f"{n}.{p}" for n in self._names for p in ("weight", "bias")}
        if set(state) != want:
            raise KeyError(f"state dict keys {sorted(state)} do not match the stacked layers {sorted(want)}")
        for name, w, b in zip(self._names, self.weights, self.biases):
            w[g].copy_(state[f"{name}.weight"])
            b[g].copy_(state[f"{name}.bias"])

    def dense_weights(self) -> list[torch.Tensor]:
        """The stacked weights ``(G, out, in)`` of the dense layers (those Eq. 6 regularizes), input to output."""
        return [w for w in self.weights if w.ndim == 3]

    def _check_member(self, g: int) -> None:
        if isinstance(g, bool) or not isinstance(g, int) or not 0 <= g < self.n_members:
            raise IndexError(f"member index {g!r} out of range for {self.n_members} members")
