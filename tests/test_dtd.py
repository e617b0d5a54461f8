"""Tests of DTD (Section 2.2, Eq. 1-4) on the engine (:mod:`sepdtd.explain.engine`) and :mod:`sepdtd.dtd`, in float64.

Oracles: a naive per-neuron DTD written directly from Eq. 3 and Eq. 4 with Python loops over explicit
(i, j) connections (convolutions unfolded to their taps), zennit 0.5.1's composite, and the
conservation property derived in the module docstring.
"""
from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from sepdtd import dtd, models
from sepdtd.explain import engine as E
from sepdtd.explain import rules
from sepdtd.explain.rules import explain

D = torch.float64
EPS_TINY = 1e-30                        # eps -> 0 for exact identities (float64)


def _rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(shape, dtype=D, generator=torch.Generator().manual_seed(seed))


def _randomize_(model: nn.Module, seed: int, bias: str = "negative") -> nn.Module:
    """Random weights; biases ``"zero"``, ``"negative"`` (b <= 0) or ``"positive"``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, dtype=D, generator=gen) / math.sqrt(fan_in))
                if m.bias is not None:
                    b = 0.1 * torch.rand(m.bias.shape, dtype=D, generator=gen)
                    m.bias.copy_({"zero": 0 * b, "negative": -b, "positive": b}[bias])
    return model.double().eval()


def _paper_net(name: str, seed: int = 0) -> nn.Module:
    model = models.build(name, seed=seed).double()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, dtype=D, generator=gen))
    return models.clamp_biases_(model).eval()


def _engine(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, *, low, high, stabilizer: float,
            **execution) -> torch.Tensor:
    """DTD on the engine with its execution choices (memory format, pieces) set."""
    return explain(model, x, classes, rules._dtd(stabilizer), low=low, high=high, **execution)


# ----------------------------------------------------------------------------------------------------
# Naive reference: explicit neurons and connections, Python loops
# ----------------------------------------------------------------------------------------------------
def _connections(layer: nn.Module, in_shape: tuple[int, ...]) -> tuple[list[tuple[int, int, float]], tuple]:
    """All (input index, output index, weight) triples of a layer, by flat index; and the output shape."""
    conns = []
    if isinstance(layer, nn.Linear):
        w = layer.weight.tolist()
        for j in range(layer.out_features):
            for i in range(layer.in_features):
                conns.append((i, j, w[j][i]))
        return conns, (layer.out_features,)
    c_in, h_in, w_in = in_shape
    if isinstance(layer, nn.Conv2d):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        c_out, weights = layer.out_channels, layer.weight.tolist()
    else:  # average pooling as a fixed-weight layer: a_ij = 1 / window size (count_include_pad)
        k = layer.kernel_size if isinstance(layer.kernel_size, tuple) else (layer.kernel_size,) * 2
        s = layer.stride if isinstance(layer.stride, tuple) else (layer.stride,) * 2
        p = layer.padding if isinstance(layer.padding, tuple) else (layer.padding,) * 2
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = k, s, p, (1, 1)
        c_out = c_in
    h_out = (h_in + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w_in + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    for co, oy, ox in itertools.product(range(c_out), range(h_out), range(w_out)):
        j = (co * h_out + oy) * w_out + ox
        for ci, ky, kx in itertools.product(range(c_in), range(kh), range(kw)):
            iy, ix = oy * sh - ph + ky * dh, ox * sw - pw + kx * dw
            if not (0 <= iy < h_in and 0 <= ix < w_in):
                continue                                   # zero padding: no neuron, no relevance
            if isinstance(layer, nn.Conv2d):
                weight = weights[co][ci][ky][kx]
            elif ci == co:
                weight = 1.0 / (kh * kw)
            else:
                continue
            conns.append(((ci * h_in + iy) * w_in + ix, j, weight))
    return conns, (c_out, h_out, w_out)


def _stab(z: float, eps: float) -> float:
    return z + eps if z >= 0 else z - eps


def _naive_rule(x: list[float], conns, n_out: int, r_out: list[float], eps: float, rule: str,
                low: list[float] | None = None, high: list[float] | None = None) -> tuple[list[float], list[float]]:
    """Eq. 3 (``"z+"``), Eq. 4 (``"zB"``) or the proportional average-pool rule (``"prop"``).

    Returns the relevance of the inputs and the (unstabilised) denominators z_j.
    """
    def term(i: int, w: float) -> float:
        if rule == "z+":
            return x[i] * max(w, 0.0)
        if rule == "zB":
            return x[i] * w - low[i] * max(w, 0.0) - high[i] * min(w, 0.0)
        return x[i] * w
    z = [0.0] * n_out
    for i, j, w in conns:
        z[j] += term(i, w)
    r_in = [0.0] * len(x)
    for i, j, w in conns:
        r_in[i] += term(i, w) / _stab(z[j], eps) * r_out[j]
    return r_in, z


def _avgpool_connections(layer: nn.AvgPool2d, in_shape: tuple[int, ...]) -> tuple[list[tuple[int, int, float]], tuple]:
    """Average pooling with ``ceil_mode``, ``count_include_pad=False`` or ``divisor_override``, whose
    divisors are PyTorch's to define: its weights a_ij read off PyTorch's pooling of one-hot inputs."""
    n = math.prod(in_shape)
    with torch.no_grad():
        a = layer(torch.eye(n, dtype=D).view(n, *in_shape))
    out_shape = tuple(a.shape[1:])
    a = a.flatten(1)
    return [(i, j, float(a[i, j])) for i, j in a.nonzero().tolist()], out_shape


def _naive_maxpool(x: torch.Tensor, layer: nn.MaxPool2d, r_out: list[float]) -> list[float]:
    """Winner-take-all: each window's relevance goes to its (first) maximal input."""
    c_in, h_in, w_in = x.shape
    k, s, p, d = layer.kernel_size, layer.stride, layer.padding, layer.dilation
    with torch.no_grad():
        h_out, w_out = layer(x[None]).shape[-2:]            # ceil_mode may add a last, clipped window
    xs = x.tolist()
    r_in = [0.0] * x.numel()
    for c, oy, ox in itertools.product(range(c_in), range(h_out), range(w_out)):
        best, arg = -math.inf, None
        for ky, kx in itertools.product(range(k), range(k)):
            iy, ix = oy * s - p + ky * d, ox * s - p + kx * d
            if 0 <= iy < h_in and 0 <= ix < w_in and xs[c][iy][ix] > best:
                best, arg = xs[c][iy][ix], (c * h_in + iy) * w_in + ix
        r_in[arg] += r_out[(c * h_out + oy) * w_out + ox]
    return r_in


def naive_relevance(model: nn.Sequential, x: torch.Tensor, c: int, low, high, eps: float):
    """DTD for one input ``x`` (no batch dimension) and class ``c``, neuron by neuron.

    Returns the input relevance (shape of ``x``) and, per layer, (sum of relevance out of the layer's
    neurons where z != 0, sum of relevance into its inputs) for the layer-wise identity.
    """
    layers = list(model)
    acts = [x.unsqueeze(0)]
    with torch.no_grad():
        for layer in layers:
            acts.append(layer(acts[-1]))
    f = acts[-1][0]
    r = [0.0] * f.numel()
    r[c] = float(f[c])                                     # R_c = f_c(x), all other outputs 0
    first = next(i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear)))
    lo = torch.broadcast_to(torch.as_tensor(low, dtype=x.dtype), x.shape).flatten().tolist()
    hi = torch.broadcast_to(torch.as_tensor(high, dtype=x.dtype), x.shape).flatten().tolist()
    sums = []
    for idx in reversed(range(len(layers))):
        layer, a_in = layers[idx], acts[idx][0]
        xin = a_in.flatten().tolist()
        if isinstance(layer, (nn.Conv2d, nn.Linear, nn.AvgPool2d)):
            special = isinstance(layer, nn.AvgPool2d) and (
                layer.ceil_mode or not layer.count_include_pad or layer.divisor_override is not None)
            conns, out_shape = (_avgpool_connections if special else _connections)(layer, tuple(a_in.shape))
            n_out = math.prod(out_shape)
            rule = "prop" if isinstance(layer, nn.AvgPool2d) else ("zB" if idx == first else "z+")
            new, z = _naive_rule(xin, conns, n_out, r, eps, rule, lo, hi)
            sums.append((sum(r[j] for j in range(n_out) if z[j] != 0), sum(new)))
            r = new
        elif isinstance(layer, nn.MaxPool2d):
            r = _naive_maxpool(a_in, layer, r)
        # ReLU, Dropout, Flatten: relevance passes on (flat indices are unchanged)
    return torch.tensor(r, dtype=D).view(x.shape), sums


# ----------------------------------------------------------------------------------------------------
# Each rule against the naive reference
# ----------------------------------------------------------------------------------------------------
SMALL_NETS = {
    "linear_zB": (lambda: nn.Sequential(nn.Linear(6, 4)), (6,)),
    "conv_zB_stride_pad": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten()), (2, 6, 5)),
    "linear_zplus": (lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Dropout(0.5), nn.Linear(5, 4)), (6,)),
    "conv_zplus_stride_pad": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Flatten()), (2, 5, 6)),
    "pools": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 2), nn.ReLU(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(4 * 1 * 1, 6), nn.ReLU(), nn.Linear(6, 5)), (2, 7, 7)),
    "overlapping_pools": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Dropout(),
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, stride=2, padding=1), nn.Flatten(),
        nn.Linear(4 * 2 * 2, 5)), (2, 7, 8)),
    "pools_ceil_mode_no_pad_count": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2, ceil_mode=True),
        nn.Conv2d(3, 4, 2, padding=1), nn.ReLU(),
        nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False, ceil_mode=True), nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5)), (2, 8, 7)),
    "pools_dilation_divisor": (lambda: nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, stride=1, dilation=2), nn.Conv2d(3, 4, 3),
        nn.ReLU(), nn.AvgPool2d(2, divisor_override=3), nn.Flatten(), nn.Linear(4 * 2 * 2, 5)), (2, 8, 9)),
    "flatten_then_zB_linear": (lambda: nn.Sequential(
        nn.Flatten(), nn.Linear(2 * 3 * 4, 6), nn.ReLU(), nn.Linear(6, 4)), (2, 3, 4)),
}


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("net", list(SMALL_NETS))
def test_rules_match_naive_per_neuron_reference(net: str, channels_last: bool, fold: bool, monkeypatch):
    """Eq. 3, Eq. 4 and the pooling rules, via every execution path (memory format, zB by fold or not)."""
    monkeypatch.setattr(E, "_FOLD_MAX_CHANNELS", 4 if fold else 0)
    build, shape = SMALL_NETS[net]
    model = _randomize_(build(), seed=1)
    gen = torch.Generator().manual_seed(2)
    low = -torch.rand(shape, dtype=D, generator=gen)       # per-element box, l <= 0 <= h
    high = torch.rand(shape, dtype=D, generator=gen) + 0.5
    x = low + (high - low) * torch.rand((3, *shape), dtype=D, generator=gen)
    with torch.no_grad():
        n_out = model(x).shape[1]
    classes = torch.stack([torch.randperm(n_out, generator=gen)[:2] for _ in range(3)])
    got = _engine(model, x, classes, low=low, high=high, stabilizer=1e-6, channels_last=channels_last)
    assert got.shape == (3, 2, *shape) and got.dtype == torch.float64
    for b, k in itertools.product(range(3), range(2)):
        want, _ = naive_relevance(model, x[b], int(classes[b, k]), low, high, eps=1e-6)
        torch.testing.assert_close(got[b, k], want, rtol=1e-10, atol=1e-12 * float(want.abs().max()))


def test_naive_reference_can_fail():
    """The oracle distinguishes the rules: z+ at the first layer instead of zB differs."""
    build, shape = SMALL_NETS["linear_zB"]
    model = _randomize_(build(), seed=1)
    x = _rand(1, *shape, seed=0)
    got = dtd.relevance(model, x, torch.tensor([[0]]), low=-1.0, high=1.0)
    zplus, _ = _naive_rule(x[0].tolist(), _connections(model[0], shape)[0], 4,
                           [float(model(x)[0, 0].detach()), 0, 0, 0], 1e-9, "z+")
    assert not torch.allclose(got[0, 0], torch.tensor(zplus, dtype=D), rtol=1e-3)


# ----------------------------------------------------------------------------------------------------
# Conservation (module docstring): sum_i R_i = f_c for b <= 0, l <= 0 <= h, eps -> 0
# ----------------------------------------------------------------------------------------------------
def _top_zplus(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """z+_c = sum_i x_i w+_ic of every output c at the top weighted layer (flattened)."""
    layers = list(model)
    top = max(i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear)))
    with torch.no_grad():
        for m in layers[:top]:
            x = m.eval()(x)
        layer = layers[top]
        if isinstance(layer, nn.Linear):
            return nn.functional.linear(x, layer.weight.clamp(min=0))
        return nn.functional.conv2d(x, layer.weight.clamp(min=0), None, layer.stride, layer.padding).flatten(1)


def _assert_conserved(total: torch.Tensor, f: torch.Tensor, zplus: torch.Tensor) -> None:
    """sum_i R_i = f_c to 1e-9 wherever the top layer's z+_c > 0; where z+_c = 0 all of f_c is lost."""
    on = zplus > 0
    assert on.float().mean() >= 0.5, "test needs mostly non-zero top denominators"
    torch.testing.assert_close(total[on], f[on], rtol=1e-9, atol=0.0)
    assert bool((total[~on] == 0).all())


@pytest.mark.parametrize("bias", ["zero", "negative"])
@pytest.mark.parametrize("net", ["linear_zplus", "conv_zplus_stride_pad", "pools", "overlapping_pools"])
def test_conservation_small_nets(net: str, bias: str):
    build, shape = SMALL_NETS[net]
    model = _randomize_(build(), seed=3, bias=bias)
    x = _rand(4, *shape, seed=4)
    with torch.no_grad():
        logits = model(x)
    classes = torch.arange(logits.shape[1]).expand(4, -1)
    r = dtd.relevance(model, x, classes, low=0.0, high=1.0, stabilizer=EPS_TINY)
    _assert_conserved(r.flatten(2).sum(-1), logits, _top_zplus(model, x))


@pytest.mark.parametrize("name", models.MODELS)
def test_conservation_paper_nets(name: str):
    model = _paper_net(name)
    x = _rand(2, *model.input_shape, seed=5)
    with torch.no_grad():
        logits = model(x)
    classes = logits.topk(3).indices
    r = dtd.relevance(model, x, classes, low=0.0, high=1.0, stabilizer=EPS_TINY)
    _assert_conserved(r.flatten(2).sum(-1), logits.gather(1, classes), _top_zplus(model, x).gather(1, classes))


def test_layerwise_identity_with_negative_biases():
    """Each layer passes on exactly the relevance of its neurons with z != 0 (Eq. 3/4 summed over i)."""
    build, shape = SMALL_NETS["pools"]
    model = _randomize_(build(), seed=6, bias="negative")
    x = _rand(*shape, seed=7)
    r, sums = naive_relevance(model, x, 2, 0.0, 1.0, EPS_TINY)
    assert len(sums) == 5
    for into, out in sums:
        assert out == pytest.approx(into, rel=1e-12)
    engine = dtd.relevance(model, x[None], torch.tensor([[2]]), low=0.0, high=1.0, stabilizer=EPS_TINY)
    torch.testing.assert_close(engine[0, 0], r, rtol=1e-10, atol=1e-14)


def test_positive_bias_absorbs_relevance():
    """Why DTD needs b <= 0: a neuron that is on only thanks to its bias has z+ = 0 and drops its relevance."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1.0], [1.0, 1.0]]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.tensor([[1.0, 1.0]]))
        model[2].bias.zero_()
    x = torch.tensor([[0.0, 0.0]], dtype=D)        # first layer off: z = 0 everywhere
    model[0].bias.data.fill_(0.5)                  # ... but the bias switches it on: f = 1
    r = dtd.relevance(model, x, torch.tensor([[0]]), low=0.0, high=1.0, stabilizer=EPS_TINY)
    assert float(model(x).detach()) == pytest.approx(1.0)
    assert float(r.sum()) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# zennit 0.5.1
# ----------------------------------------------------------------------------------------------------
def _zennit_relevance(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, low, high, eps: float):
    zennit_composites = pytest.importorskip("zennit.composites")
    from zennit.rules import Norm, Pass, ZBox, ZPlus

    composite = zennit_composites.SpecialFirstLayerMapComposite(
        layer_map=[
            (nn.ReLU, Pass()),
            ((nn.Conv2d, nn.Linear), ZPlus(stabilizer=eps, zero_params="bias")),
            (nn.AvgPool2d, Norm(stabilizer=eps)),
        ],
        first_map=[((nn.Conv2d, nn.Linear), ZBox(low, high, stabilizer=eps))],
    )
    out = []
    with composite.context(model) as modified:
        for k in range(classes.shape[1]):
            xr = x.clone().requires_grad_()
            y = modified(xr)
            c = classes[:, k:k + 1]
            r, = torch.autograd.grad(y, xr, torch.zeros_like(y).scatter_(1, c, y.gather(1, c)))
            out.append(r)
    return torch.stack(out, 1)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("name", models.MODELS)
def test_equals_zennit_paper_nets(name: str, channels_last: bool):
    model = _paper_net(name, seed=1)
    x = _rand(3, *model.input_shape, seed=8)
    with torch.no_grad():
        classes = model(x).topk(2).indices
    got = _engine(model, x, classes, low=0.0, high=1.0, stabilizer=1e-9, channels_last=channels_last)
    want = _zennit_relevance(model, x, classes, 0.0, 1.0, 1e-9)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


def test_equals_zennit_overlapping_pools_and_tensor_box():
    build, shape = SMALL_NETS["overlapping_pools"]
    model = _randomize_(build(), seed=9)
    gen = torch.Generator().manual_seed(10)
    low = -torch.rand(1, *shape[1:], dtype=D, generator=gen)
    high = 1 + torch.rand(shape[0], 1, 1, dtype=D, generator=gen)
    x = low + (high - low) * torch.rand(4, *shape, dtype=D, generator=gen)
    classes = torch.tensor([[0, 4], [1, 3], [2, 2], [4, 0]])
    got = dtd.relevance(model, x, classes, low=low, high=high)
    # zennit broadcasts a box by appending dimensions, so it gets the box at the batch's full shape
    want = _zennit_relevance(model, x, classes, low.expand(x.shape), high.expand(x.shape), 1e-9)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))


# ----------------------------------------------------------------------------------------------------
# Batching over classes and samples; the model is left as found
# ----------------------------------------------------------------------------------------------------
def test_k_classes_at_once_equal_separate_passes_and_batch_independent():
    model = _paper_net("cifar10", seed=2)
    x = _rand(7, *model.input_shape, seed=11)
    with torch.no_grad():
        classes = model(x).topk(4).indices
    together = dtd.relevance(model, x, classes, low=0.0, high=1.0)
    separate = torch.cat([dtd.relevance(model, x, classes[:, k:k + 1], low=0.0, high=1.0) for k in range(4)], 1)
    single = torch.cat([dtd.relevance(model, x[b:b + 1], classes[b:b + 1], low=0.0, high=1.0) for b in range(7)])
    scale = float(together.abs().max())
    torch.testing.assert_close(together, separate, rtol=1e-10, atol=1e-12 * scale)
    torch.testing.assert_close(together, single, rtol=1e-10, atol=1e-12 * scale)
    assert not torch.allclose(together[:, 0], together[:, 1])    # different classes, different maps


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_pieces_equal_one_pass(name: str):
    """Processing the batch in pieces (the CPU default bounds the largest tensor) changes nothing."""
    model = _paper_net(name, seed=5)
    x = _rand(5, *model.input_shape, seed=16)
    classes = torch.tensor([[0, 1, 2]] * 5)
    whole = _engine(model, x, classes, low=0.0, high=1.0, stabilizer=1e-9, chunk_bytes=0)
    per_sample = E._shapes(E.layers(model), model.input_shape)[0] * 3 * 8    # K=3 rows of float64
    for chunk_bytes in (1, 2 * per_sample):                            # one sample, then two per piece
        pieces = _engine(model, x, classes, low=0.0, high=1.0, stabilizer=1e-9, chunk_bytes=chunk_bytes)
        torch.testing.assert_close(pieces, whole, rtol=1e-12, atol=1e-14 * float(whole.abs().max()))


def test_model_left_as_found_and_dropout_off():
    model = _paper_net("cifar10", seed=3).train()
    model[2].training = False                       # a mixed state must survive too
    before = copy.deepcopy(model.state_dict())
    modes = [m.training for m in model.modules()]
    x = _rand(2, *model.input_shape, seed=12)
    classes = torch.tensor([[0, 1], [2, 3]])
    r_train = dtd.relevance(model, x, classes, low=0.0, high=1.0, stabilizer=EPS_TINY)
    assert [m.training for m in model.modules()] == modes
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    for m in model.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        f = model(x).gather(1, classes)
    torch.testing.assert_close(r_train, dtd.relevance(model, x, classes, low=0.0, high=1.0, stabilizer=EPS_TINY))
    torch.testing.assert_close(r_train.flatten(2).sum(-1), f, rtol=1e-9, atol=0.0)   # evaluation mode


def test_dtypes_and_heatmap():
    model64 = _paper_net("mnist", seed=4)
    model32 = copy.deepcopy(model64).float()
    x = _rand(3, *model64.input_shape, seed=13)
    classes = torch.tensor([[0, 1], [2, 3], [4, 5]])
    r64 = dtd.relevance(model64, x, classes, low=0.0, high=1.0)
    r32 = dtd.relevance(model32, x.float(), classes, low=0.0, high=1.0)
    assert r64.dtype == torch.float64 and r32.dtype == torch.float32
    torch.testing.assert_close(r32.double(), r64, rtol=1e-3, atol=1e-5 * float(r64.abs().max()))
    # weights follow x's dtype: a float32 model explained in float64
    torch.testing.assert_close(dtd.relevance(model32, x, classes, low=0.0, high=1.0), r64, rtol=1e-5, atol=1e-7)
    h = dtd.heatmap(model64, x, classes, low=0.0, high=1.0)
    assert h.shape == (3, 2, 28, 28)
    torch.testing.assert_close(h, r64.sum(2))
    flat_first = _randomize_(nn.Sequential(nn.Flatten(), nn.Linear(18, 4)), seed=0)   # summed after the zB step
    xf = _rand(2, 2, 3, 3, seed=17)
    cf = torch.tensor([[0, 3], [1, 2]])
    torch.testing.assert_close(dtd.heatmap(flat_first, xf, cf, low=0.0, high=1.0),
                               dtd.relevance(flat_first, xf, cf, low=0.0, high=1.0).sum(2))
    cifar = _paper_net("cifar10")
    xc = _rand(1, 3, 32, 32, seed=14)
    assert dtd.heatmap(cifar, xc, torch.tensor([[1, 2, 3]]), low=0.0, high=1.0).shape == (1, 3, 32, 32)


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------
def test_unsupported_layer_is_named_with_position():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Tanh()), nn.Flatten(), nn.Linear(8, 2))
    for call in (lambda: dtd.check_model(model),
                 lambda: dtd.relevance(model, torch.rand(1, 1, 4, 4), torch.tensor([[0]]), low=0.0, high=1.0)):
        with pytest.raises(TypeError, match=r"position 1\.1 \(Tanh"):
            call()
    with pytest.raises(TypeError, match="Dropout2d"):
        dtd.check_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Dropout2d()))
    with pytest.raises(TypeError, match="groups"):
        dtd.check_model(nn.Sequential(nn.Conv2d(2, 2, 3, groups=2)))

    class Custom(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * 2
    with pytest.raises(TypeError, match="overrides"):
        dtd.check_model(Custom(nn.Linear(2, 2)))


def test_unsupported_layers_with_a_standard_replacement_say_it():
    for layer, hint in ((nn.BatchNorm2d(2), "folds it into that layer"),
                        (nn.AdaptiveAvgPool2d(1), "AvgPool2d it amounts to"),
                        (nn.AdaptiveMaxPool2d(1), "MaxPool2d it amounts to"),
                        (nn.Tanh(), "derived for ReLU")):
        with pytest.raises(TypeError, match=hint):
            dtd.check_model(nn.Sequential(nn.Conv2d(1, 2, 3), layer, nn.Flatten(), nn.Linear(2, 2)))


def test_input_of_the_wrong_shape_names_the_expected_one():
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    dense = nn.Sequential(nn.Linear(6, 2))
    cases = ((conv, (2, 1, 8, 8), r"position 0 .*expects \(B, 3, H, W\)"),
             (conv, (2, 192), r"expects \(B, 3, H, W\)"),
             (flat, (2, 1, 8, 9), r"position 1 .*expects \(B, \.\.\.\) with 64 values per input"),
             (dense, (2, 5), r"expects \(B, 6\)"),
             (dense, (2, 1, 2, 3), r"expects \(B, 6\)"))
    for model, shape, message in cases:
        with pytest.raises(ValueError, match=message):
            dtd.relevance(model, torch.rand(shape, dtype=D), torch.zeros(shape[0], 1, dtype=torch.long),
                          low=0.0, high=1.0)
    with pytest.raises(ValueError, match=r"position 3 .*expects 144 inputs but gets 100 .*height and width"):
        dtd.relevance(conv, torch.rand(2, 3, 7, 7, dtype=D), torch.zeros(2, 1, dtype=torch.long), low=0.0, high=1.0)
    assert dtd.relevance(flat, torch.rand(2, 1, 8, 8, dtype=D), torch.zeros(2, 1, dtype=torch.long),
                         low=0.0, high=1.0).shape == (2, 1, 1, 8, 8)


def test_architectures_the_rules_do_not_cover():
    with pytest.raises(ValueError, match="does not follow a ReLU"):
        dtd.check_model(nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="before the first weighted layer"):
        dtd.check_model(nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(1, 2, 3)))
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        dtd.check_model(nn.Sequential(nn.ReLU()))
    dtd.check_model(models.build("cifar10"))
    dtd.check_model(nn.Sequential(nn.Flatten(), nn.Dropout(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))


def test_input_outside_box_says_how_far():
    model = _randomize_(SMALL_NETS["linear_zB"][0](), seed=0)
    x = torch.full((2, 6), 0.5, dtype=D)
    x[1, 3] = 1.25
    with pytest.raises(ValueError, match=r"0\.25 above high"):
        dtd.relevance(model, x, torch.tensor([[0], [1]]), low=0.0, high=1.0)
    x[1, 3] = -1e-12                                # exact comparison: no tolerance
    with pytest.raises(ValueError, match="below low"):
        dtd.relevance(model, x, torch.tensor([[0], [1]]), low=0.0, high=1.0)
    x[1, 3] = 0.0
    dtd.relevance(model, x, torch.tensor([[0], [1]]), low=0.0, high=1.0)   # the boundary is inside
    with pytest.raises(ValueError, match="must hold 0"):
        dtd.relevance(model, x, torch.tensor([[0], [1]]), low=1.0, high=0.0)
    with pytest.raises(ValueError, match="broadcast"):
        dtd.relevance(model, x, torch.tensor([[0], [1]]), low=torch.zeros(3), high=1.0)
    with pytest.raises(ValueError, match=r"0\.1 above high"):                 # per-element box
        dtd.relevance(model, x, torch.tensor([[0], [1]]), low=0.0, high=torch.linspace(0.4, 1.0, 6, dtype=D))
    x[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        dtd.relevance(model, x, torch.tensor([[0], [1]]), low=0.0, high=1.0)


def test_a_module_object_used_at_two_positions_is_explained_at_both():
    relu = nn.ReLU()
    model = _randomize_(nn.Sequential(nn.Linear(6, 5), relu, nn.Linear(5, 5), relu, nn.Linear(5, 4)), seed=3)
    x = _rand(2, 6, seed=4)
    got = dtd.relevance(model, x, torch.tensor([[0], [2]]), low=0.0, high=1.0, stabilizer=1e-6)
    for b, c in ((0, 0), (1, 2)):
        want, _ = naive_relevance(model, x[b], c, 0.0, 1.0, eps=1e-6)
        torch.testing.assert_close(got[b, 0], want, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("low, high", [(0.25, 1.0), (-1.0, -0.25), (-math.inf, math.inf)])
def test_a_box_that_does_not_hold_zero_or_is_infinite_is_refused(low: float, high: float):
    """Eq. 4 needs l <= 0 <= h (relevance is lost otherwise) and finite bounds (NaN otherwise)."""
    model = _randomize_(SMALL_NETS["linear_zB"][0](), seed=0)
    x = torch.full((1, 6), 0.5 * (max(low, -1.0) + min(high, 1.0)), dtype=D)
    with pytest.raises(ValueError, match="must hold 0|must be finite"):
        dtd.relevance(model, x, torch.tensor([[0]]), low=low, high=high)


def test_bad_classes_and_arguments():
    model = _randomize_(SMALL_NETS["linear_zB"][0](), seed=0)
    x = _rand(2, 6, seed=15)
    call = lambda c, **kw: dtd.relevance(model, x, c, low=0.0, high=1.0, **kw)
    with pytest.raises(ValueError, match=r"shape \(B, K\)"):
        call(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"shape \(B, K\)"):
        call(torch.tensor([[0], [1], [2]]))
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        call(torch.tensor([[0], [4]]))
    with pytest.raises(ValueError, match=r"in \[0, 4\)"):
        call(torch.tensor([[-1], [0]]))
    with pytest.raises(TypeError, match="integer"):
        call(torch.tensor([[0.0], [1.0]]))
    with pytest.raises(ValueError, match="stabilizer"):
        call(torch.tensor([[0], [1]]), stabilizer=0.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        dtd.relevance(model, x.mul(10).long(), torch.tensor([[0], [1]]), low=0, high=10)
    with pytest.raises(ValueError, match="heatmap needs images"):
        dtd.heatmap(model, x, torch.tensor([[0], [1]]), low=0.0, high=1.0)
    assert call([[0, 0], [3, 1]]).shape == (2, 2, 6)               # lists and repeated classes are fine
