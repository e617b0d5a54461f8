"""sepdtd.attribution: agreement with zennit 0.5.1 and autograd, conservation, class batching, CLRP/SGLRP."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from sepdtd import attribution as A
from sepdtd import dtd, models

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import SpecialFirstLayerMapComposite  # noqa: E402
from zennit.rules import AlphaBeta, Epsilon, Norm, Pass, ZBox, ZPlus  # noqa: E402
from zennit.types import Activation, AvgPool  # noqa: E402
from zennit.types import Linear as ZLinear  # noqa: E402

RTOL = 1e-6


def small_net(bias: str = "negative", seed: int = 0) -> nn.Sequential:
    """Conv ('same' and 'valid'), max- and average pooling, dropout, two dense layers; float64, eval."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(8 * 2 * 2, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5),
    ).double().eval()
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(2.0)
                if bias == "zero":
                    m.bias.zero_()
                elif bias == "negative":
                    m.bias.copy_(-0.05 * torch.rand_like(m.bias))
    return net


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(4, 2, 12, 12, generator=g, dtype=torch.float64)
    cls = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1]])
    return x, cls


def zennit_relevance(net: nn.Module, x: torch.Tensor, cls: torch.Tensor, rule, first_zb: bool = True) -> torch.Tensor:
    """zennit's relevance for each column of ``cls``, started at the logit (one-hot times f_c)."""
    layer_map = [(Activation, Pass()), (AvgPool, Norm(stabilizer=1e-9)), (ZLinear, rule)]
    first = [(ZLinear, ZBox(0.0, 1.0, stabilizer=1e-9))] if first_zb else [(ZLinear, copy.deepcopy(rule))]
    comp = SpecialFirstLayerMapComposite(layer_map=layer_map, first_map=first)
    out = []
    for k in range(cls.shape[1]):
        c = cls[:, k:k + 1]
        with Gradient(net, comp) as attributor:
            _, rel = attributor(x, lambda o, c=c: torch.zeros_like(o).scatter(1, c, o.gather(1, c)))
        out.append(rel)
    return torch.stack(out, dim=1)


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> None:
    scale = float(b.abs().max())
    assert scale > 0
    err = float((a - b).abs().max()) / scale
    assert err < rtol, f"relative error {err:.2e}"


# ------------------------------------------------------------------------------------ against zennit
@pytest.mark.parametrize("bias", ["zero", "negative"])
@pytest.mark.parametrize("first_zb", [True, False])
def test_epsilon_matches_zennit(data, bias, first_zb):
    x, cls = data
    net = small_net(bias)
    mine = A.lrp_epsilon(net, x, cls, low=0.0, high=1.0, epsilon=0.05, first="zb" if first_zb else "rule")
    assert_close(mine, zennit_relevance(net, x, cls, Epsilon(epsilon=0.05), first_zb))


@pytest.mark.parametrize("bias", ["zero", "negative"])
@pytest.mark.parametrize("first_zb", [True, False])
def test_alphabeta_matches_zennit(data, bias, first_zb):
    x, cls = data
    net = small_net(bias)
    mine = A.lrp_alphabeta(net, x, cls, low=0.0, high=1.0, first="zb" if first_zb else "rule")
    assert_close(mine, zennit_relevance(net, x, cls, AlphaBeta(2.0, 1.0, stabilizer=1e-9), first_zb))


def test_alphabeta_handles_negative_inputs_like_zennit():
    """With first='rule' and inputs of both signs, the x- terms of zennit's AlphaBeta must be used."""
    net = small_net("negative")
    x = torch.rand(3, 2, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 2 - 1
    cls = torch.tensor([[0, 1], [2, 3], [4, 0]])
    mine = A.lrp_alphabeta(net, x, cls, low=None, high=None, first="rule")
    assert_close(mine, zennit_relevance(net, x, cls, AlphaBeta(2.0, 1.0, stabilizer=1e-9), first_zb=False))


def test_zplus_matches_zennit_and_dtd(data):
    x, cls = data
    net = small_net("negative")
    mine = A.lrp(net, x, cls, low=0.0, high=1.0, rule="zplus")
    assert_close(mine, zennit_relevance(net, x, cls, ZPlus(stabilizer=1e-9)))
    assert_close(mine, dtd.relevance(net, x, cls, low=0.0, high=1.0), rtol=1e-10)


def test_zplus_at_the_first_layer_matches_zennit_and_conserves(data):
    """first='rule': z+ at the input too (chapter 10's first-layer factor); inputs >= 0, biases <= 0."""
    x, cls = data
    net = small_net("negative")
    mine = A.lrp(net, x, cls, low=None, high=None, rule="zplus", first="rule")
    assert_close(mine, zennit_relevance(net, x, cls, ZPlus(stabilizer=1e-9), first_zb=False))
    assert torch.equal(A.relevance("zplus", net, x, cls, low=None, high=None), mine)   # the method of chapter 10
    zb = A.lrp(net, x, cls, low=0.0, high=1.0, rule="zplus")
    assert float((mine - zb).abs().max()) > 1e-3 * float(zb.abs().max())      # a different map...
    torch.testing.assert_close(mine.flatten(2).sum(-1), zb.flatten(2).sum(-1), rtol=1e-8, atol=1e-10)  # same sums


def test_gradient_x_input_matches_autograd(data):
    x, cls = data
    net = small_net("negative")
    xg = x.clone().requires_grad_()
    out = net(xg)
    ref = []
    for k in range(cls.shape[1]):
        (g,) = torch.autograd.grad(out.gather(1, cls[:, k:k + 1]).sum(), xg, retain_graph=True)
        ref.append(g * x)
    assert_close(A.gradient_x_input(net, x, cls), torch.stack(ref, dim=1), rtol=1e-12)


def test_paper_network_matches_zennit():
    net = models.build("cifar10", seed=0).double().eval()
    models.clamp_biases_(net)
    with torch.no_grad():
        for m in models.dense_layers(net):
            m.bias.copy_(-0.01 * torch.rand_like(m.bias))
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cls = net(x).topk(2).indices
    assert_close(A.lrp_epsilon(net, x, cls, low=0.0, high=1.0),
                 zennit_relevance(net, x, cls, Epsilon(epsilon=A.EPSILON)))
    assert_close(A.lrp_alphabeta(net, x, cls, low=0.0, high=1.0),
                 zennit_relevance(net, x, cls, AlphaBeta(2.0, 1.0, stabilizer=1e-9)))


# --------------------------------------------------------------------------------------- conservation
def _top2_and_f(net, x):
    logits = net(x)
    cls = logits.topk(2).indices
    return cls, logits.gather(1, cls)


@pytest.mark.parametrize("name", models.MODELS)
def test_conservation_with_zero_biases(name):
    net = models.build(name, seed=0).double().eval()      # Keras init: zero biases
    x = torch.rand(3, *net.input_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cls, f = _top2_and_f(net, x)
    tot = lambda r: r.flatten(2).sum(-1)
    torch.testing.assert_close(tot(A.lrp_alphabeta(net, x, cls, low=0.0, high=1.0)), f, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(tot(A.lrp(net, x, cls, low=0.0, high=1.0, rule="zplus")), f, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(tot(A.lrp_epsilon(net, x, cls, low=0.0, high=1.0, epsilon=1e-9)), f,
                               rtol=1e-6, atol=1e-7)
    # a finite epsilon absorbs a little (these untrained logits are only ~0.05-0.1): approximately conserved
    r = tot(A.lrp_epsilon(net, x, cls, low=0.0, high=1.0, epsilon=1e-3))
    assert torch.allclose(r, f, rtol=0.1) and not torch.allclose(r, f, rtol=1e-6)
    # gradient x input is LRP-0 for zero biases and ReLU networks (no zB): sums to f too
    torch.testing.assert_close(tot(A.gradient_x_input(net, x, cls)), f, rtol=1e-6, atol=1e-7)


def test_negative_biases_break_epsilon_conservation():
    """The bias sits in LRP-eps's denominator (as in zennit): relevance is absorbed, the sum is not f."""
    net = small_net("zero")
    with torch.no_grad():
        net[8].bias.fill_(-0.02)
    x = torch.rand(4, 2, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    cls, f = _top2_and_f(net, x)
    assert (f.abs() > 1e-3).all()
    r = A.lrp_epsilon(net, x, cls, low=0.0, high=1.0, epsilon=1e-9).flatten(2).sum(-1)
    assert not torch.allclose(r, f, rtol=1e-3)


# ------------------------------------------------------------------------------------ class batching
@pytest.mark.parametrize("method", list(A.METHODS))
def test_class_batched_equals_one_class_at_a_time(data, method):
    x, cls = data
    net = small_net("negative")
    both = A.relevance(method, net, x, cls, low=0.0, high=1.0)
    assert both.shape == (4, 2, 2, 12, 12) and both.dtype == x.dtype
    for k in range(2):
        one = A.relevance(method, net, x, cls[:, k:k + 1], low=0.0, high=1.0)
        torch.testing.assert_close(both[:, k:k + 1], one, rtol=1e-10, atol=1e-12)
    h = A.heatmap(method, net, x, cls, low=0.0, high=1.0)
    torch.testing.assert_close(h, both.sum(dim=2))


def test_model_is_only_read(data):
    x, cls = data
    net = small_net("negative").train()
    before = copy.deepcopy(net.state_dict())
    r1 = A.lrp_alphabeta(net, x, cls, low=0.0, high=1.0)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    torch.testing.assert_close(r1, A.lrp_alphabeta(net.eval(), x, cls, low=0.0, high=1.0))


# --------------------------------------------------------------------------------- CLRP and SGLRP
def test_clrp_others_is_the_contrast_of_shares(data):
    x, cls = data
    net = small_net("negative")
    logits = net(x).detach()
    got = A.clrp(net, x, cls, low=0.0, high=1.0, variant="others")
    assert (got >= 0).all()
    per_class = A.lrp(net, x, torch.arange(5).repeat(4, 1), low=0.0, high=1.0)   # starts at f_n
    share = lambda r: r / r.flatten(1).sum(-1).view(-1, 1, 1, 1)
    for b in range(4):
        for k in range(2):
            c = int(cls[b, k])
            target = per_class[b, c] * torch.sign(logits[b, c])                   # started at |f_c|
            dual = sum(per_class[b, n] * torch.sign(logits[b, n]) for n in range(5) if n != c)
            want = (share(target[None]) - share(dual[None])).clamp(min=0)[0]
            torch.testing.assert_close(got[b, k], want, rtol=1e-9, atol=1e-12)


def test_clrp_negated_uses_the_negated_output_weights(data):
    x, cls = data
    net = small_net("negative")
    neg = copy.deepcopy(net)
    with torch.no_grad():
        neg[-1].weight.neg_()
        neg[-1].bias.neg_()
    got = A.clrp(net, x, cls, low=0.0, high=1.0, variant="negated")
    r = A.lrp(net, x, cls, low=0.0, high=1.0)
    d = A.lrp(neg, x, cls, low=0.0, high=1.0)
    share = lambda t: t / t.flatten(2).sum(-1)[..., None, None, None]
    torch.testing.assert_close(got, (share(r) - share(d)).clamp(min=0), rtol=1e-9, atol=1e-12)


def test_sglrp_is_dtd_started_at_the_softmax_gradient(data):
    x, cls = data
    net = small_net("zero")
    logits = net(x).detach()
    p = torch.softmax(logits, dim=1)
    got = A.sglrp(net, x, cls, low=0.0, high=1.0)
    per_class = A.lrp(net, x, torch.arange(5).repeat(4, 1), low=0.0, high=1.0)
    for b in range(4):
        for k in range(2):
            c = int(cls[b, k])
            want = sum((p[b, c] * (float(n == c) - p[b, n]) / logits[b, n]) * per_class[b, n] for n in range(5))
            torch.testing.assert_close(got[b, k], want, rtol=1e-8, atol=1e-12)
    # the softmax's gradient sums to 0, and z+/zB conserve: the SGLRP map sums to ~0
    net0 = models.build("mnist", seed=0).double().eval()
    x0 = torch.rand(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    s = A.sglrp(net0, x0, net0(x0).topk(2).indices, low=0.0, high=1.0).flatten(2).sum(-1)
    assert s.abs().max() < 1e-6


# ----------------------------------------------------------------------------------------- errors
def test_errors(data):
    x, cls = data
    net = small_net()
    with pytest.raises(ValueError, match="unknown rule"):
        A.lrp(net, x, cls, low=0.0, high=1.0, rule="zminus")
    with pytest.raises(ValueError, match="shape"):
        A.lrp_epsilon(net, x, cls[:, 0], low=0.0, high=1.0)
    with pytest.raises(ValueError, match="outside the box"):
        A.lrp_alphabeta(net, x + 1.0, cls, low=0.0, high=1.0)
    with pytest.raises(ValueError, match="low and high"):
        A.lrp_epsilon(net, x, cls, low=None, high=None)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        A.sglrp(net, x, cls + 5, low=0.0, high=1.0)
    with pytest.raises(ValueError, match="gradient"):
        A.clrp(net, x, cls, low=0.0, high=1.0, rule="gradient")
    with pytest.raises(ValueError, match="variant"):
        A.clrp(net, x, cls, low=0.0, high=1.0, variant="all")
    with pytest.raises(ValueError, match="unknown method"):
        A.heatmap("lime", net, x, cls, low=0.0, high=1.0)
    with pytest.raises(TypeError, match="not supported"):
        A.lrp_epsilon(nn.Sequential(nn.Flatten(), nn.Linear(288, 5), nn.Tanh(), nn.Linear(5, 5)).double(), x, cls,
                      low=0.0, high=1.0)
