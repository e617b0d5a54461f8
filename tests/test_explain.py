"""The face (sepdtd.Explainer), its rules and composites, canonizer, targets and errors; sepdtd.pretrained.

Oracles: zennit 0.5.1 (rules and composites by layer type), autograd (gradient × input), the same
network with a distinct module object at each position, a batch norm folded by hand in float64, the
engine called directly, and conservation.
"""
from __future__ import annotations

import copy
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sepdtd
from sepdtd import attribution, experiments, models, training
from sepdtd.explain import engine
from sepdtd.explain.rules import METHODS, AlphaBeta, Composite, Epsilon, GradientXInput, ZBox, ZPlus, explain

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import SpecialFirstLayerMapComposite  # noqa: E402
from zennit.rules import AlphaBeta as ZAlphaBeta  # noqa: E402
from zennit.rules import Epsilon as ZEpsilon  # noqa: E402
from zennit.rules import Norm, Pass  # noqa: E402
from zennit.rules import ZBox as ZZBox  # noqa: E402
from zennit.rules import ZPlus as ZZPlus  # noqa: E402

D = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def small_net(bias: str = "negative", seed: int = 0) -> nn.Sequential:
    """Conv, max- and average pooling, dropout, two dense layers; float64, eval; 5 classes of 2 x 12 x 12."""
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
                m.bias.copy_(-0.05 * torch.rand_like(m.bias) if bias == "negative" else 0 * m.bias)
    return net


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 2, 12, 12, dtype=D, generator=torch.Generator().manual_seed(seed))


CLS = torch.tensor([[0, 1], [2, 3], [4, 0], [1, 1]])


def zennit_relevance(net: nn.Module, x: torch.Tensor, cls: torch.Tensor, layer_map: list, first) -> torch.Tensor:
    """zennit's relevance for each column of ``cls``, started at the logit."""
    comp = SpecialFirstLayerMapComposite(layer_map=[(nn.ReLU, Pass()), (nn.AvgPool2d, Norm(stabilizer=1e-9)),
                                                    *layer_map], first_map=[((nn.Conv2d, nn.Linear), first)])
    out = []
    for k in range(cls.shape[1]):
        c = cls[:, k:k + 1]
        with Gradient(net, comp) as attributor:
            _, rel = attributor(x, lambda o, c=c: torch.zeros_like(o).scatter(1, c, o.gather(1, c)))
        out.append(rel)
    return torch.stack(out, dim=1)


def assert_rel_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-6) -> None:
    scale = float(b.abs().max())
    assert scale > 0
    err = float((a - b).abs().max()) / scale
    assert err < rtol, f"relative error {err:.2e}"


# -------------------------------------------------------------------------------- the face = the engine
@pytest.mark.parametrize("name", list(METHODS))
def test_the_face_equals_the_engine_and_the_functions(name):
    net, x = small_net(), images()
    e = sepdtd.Explainer(net, name, low=0.0, high=1.0)(x, target=CLS)
    direct = explain(net, x, CLS, METHODS[name], low=0.0, high=1.0)
    assert torch.equal(e.relevance, direct)
    assert torch.equal(e.relevance, attribution.relevance(name, net, x, CLS, low=0.0, high=1.0))
    assert e.relevance.shape == (4, 2, 2, 12, 12) and e.relevance.dtype == D
    assert torch.equal(e.classes, CLS)
    torch.testing.assert_close(e.logits, net(x).detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.heatmap, e.relevance.sum(2), rtol=0, atol=0)
    assert e.conservation_error.shape == (4, 2)


def test_dtd_face_equals_dtd_relevance_and_its_fused_heatmap():
    net = models.build("cifar10", seed=0).double().eval()
    x = torch.rand(3, 3, 32, 32, dtype=D, generator=torch.Generator().manual_seed(2))
    e = sepdtd.Explainer(net, low=0.0, high=1.0)(x, target="top2")
    classes = net(x).topk(2).indices
    assert torch.equal(e.classes, classes)
    assert torch.equal(e.relevance, sepdtd.dtd.relevance(net, x, classes, low=0.0, high=1.0))
    torch.testing.assert_close(e.heatmap, sepdtd.dtd.heatmap(net, x, classes, low=0.0, high=1.0),
                               rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------------------- rules against zennit
RULE_CASES = {
    "zplus": (ZPlus(), lambda: ZZPlus(stabilizer=1e-9)),
    "epsilon": (Epsilon(0.05), lambda: ZEpsilon(epsilon=0.05)),
    "alphabeta": (AlphaBeta(2.0, 1.0), lambda: ZAlphaBeta(2.0, 1.0, stabilizer=1e-9)),
    "alpha1beta0": (AlphaBeta(1.0, 0.0), lambda: ZAlphaBeta(1.0, 0.0, stabilizer=1e-9)),
}


@pytest.mark.parametrize("first_box", [True, False])
@pytest.mark.parametrize("rule", list(RULE_CASES))
def test_every_rule_matches_zennit(rule, first_box):
    mine, theirs = RULE_CASES[rule]
    net, x = small_net(), images()
    composite = Composite(mine, first=ZBox() if first_box else None)
    got = sepdtd.Explainer(net, composite, low=0.0, high=1.0)(x, target=CLS).relevance
    first = ZZBox(0.0, 1.0, stabilizer=1e-9) if first_box else theirs()
    want = zennit_relevance(net, x, CLS, [((nn.Conv2d, nn.Linear), theirs())], first)
    assert_rel_close(got, want)


def test_a_composite_assigns_rules_by_layer_type_like_zennit():
    net, x = small_net(), images()
    composite = Composite({nn.Conv2d: ZPlus(), nn.Linear: Epsilon(0.05)}, first=ZBox())
    got = sepdtd.Explainer(net, composite, low=0.0, high=1.0)(x, target=CLS).relevance
    want = zennit_relevance(net, x, CLS, [(nn.Conv2d, ZZPlus(stabilizer=1e-9)), (nn.Linear, ZEpsilon(epsilon=0.05))],
                            ZZBox(0.0, 1.0, stabilizer=1e-9))
    assert_rel_close(got, want)
    everywhere_zplus = sepdtd.Explainer(net, Composite(ZPlus(), first=ZBox()), low=0.0, high=1.0)(x, target=CLS)
    assert float((got - everywhere_zplus.relevance).abs().max()) > 1e-3 * float(got.abs().max())


def test_zplus_and_alphabeta_on_inputs_of_both_signs_match_zennit():
    net = small_net()
    x = images() * 2 - 1
    for mine, theirs in (RULE_CASES["zplus"], RULE_CASES["alphabeta"]):
        got = sepdtd.Explainer(net, Composite(mine))(x, target=CLS).relevance
        assert_rel_close(got, zennit_relevance(net, x, CLS, [((nn.Conv2d, nn.Linear), theirs())], theirs()))


def test_gradient_x_input_matches_zennits_gradient_times_the_input():
    net, x = small_net(), images()
    got = sepdtd.Explainer(net, GradientXInput())(x, target=CLS).relevance
    want = []
    for k in range(2):
        c = CLS[:, k:k + 1]
        with Gradient(net) as attributor:
            _, grad = attributor(x, lambda o, c=c: torch.zeros_like(o).scatter(1, c, 1.0))
        want.append(grad * x)
    assert_rel_close(got, torch.stack(want, 1), rtol=1e-12)


@pytest.mark.parametrize("name", ["dtd", "zplus", "epsilon", "alphabeta", "gradient_x_input", "sglrp"])
def test_rules_that_conserve_do_with_zero_biases(name):
    """Σ R = f_c (SGLRP: 0) for zero biases; LRP-ε to its ε; CLRP's shares conserve nothing (NaN)."""
    net = models.build("mnist", seed=0).double().eval()          # Keras init: zero biases
    x = torch.rand(3, 1, 28, 28, dtype=D, generator=torch.Generator().manual_seed(2))
    method = Composite(Epsilon(1e-9), first=ZBox()) if name == "epsilon" else name
    e = sepdtd.Explainer(net, method, low=0.0, high=1.0)(x, target="top2")
    f = e.logits.gather(1, e.classes).abs()
    assert float(e.conservation_error.abs().max()) < 1e-7 * float(f.max())
    assert float(f.min()) > 1e-3
    clrp = sepdtd.Explainer(net, "clrp", low=0.0, high=1.0)(x, target="top2")
    assert bool(clrp.conservation_error.isnan().all())


def test_negative_biases_show_as_a_conservation_error_of_epsilon_not_of_dtd():
    """DTD conserves every f_c > 0 whatever the biases <= 0; LRP-ε's denominators hold them and absorb."""
    net = models.build("mnist", seed=0).double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.copy_(-0.01 * torch.rand(m.bias.shape, dtype=D, generator=torch.Generator().manual_seed(3)))
    x = torch.rand(4, 1, 28, 28, dtype=D, generator=torch.Generator().manual_seed(2))
    tiny = 1e-30
    dtd = sepdtd.Explainer(net, Composite(ZPlus(tiny), first=ZBox(tiny), stabilizer=tiny), low=0.0, high=1.0)
    eps = sepdtd.Explainer(net, Composite(Epsilon(tiny), first=ZBox(tiny), stabilizer=tiny), low=0.0, high=1.0)
    d, e = dtd(x, target="all"), eps(x, target="all")
    f = d.logits.gather(1, d.classes)
    on = f > 0
    assert on.sum() >= 10
    assert float(d.conservation_error[on].abs().max()) < 1e-9 * float(f.abs().max())
    assert float(e.conservation_error[on].abs().max()) > 1e-2 * float(f.abs().max())


# -------------------------------------------------------------------------------- shared module objects
def test_a_module_object_used_twice_is_explained_at_both_positions():
    relu, hidden = nn.ReLU(), nn.Linear(5, 5)
    torch.manual_seed(3)
    shared = nn.Sequential(nn.Linear(6, 5), relu, hidden, relu, hidden, relu, nn.Linear(5, 4)).double().eval()
    with torch.no_grad():
        for m in shared.modules():
            if isinstance(m, nn.Linear):
                m.bias.copy_(-0.05 * torch.rand_like(m.bias))
    distinct = nn.Sequential(*[copy.deepcopy(m) for m in shared]).double().eval()
    assert shared[2] is shared[4] and distinct[2] is not distinct[4]
    x = torch.rand(3, 6, dtype=D, generator=torch.Generator().manual_seed(4))
    for name in METHODS:
        one = sepdtd.Explainer(shared, name, low=0.0, high=1.0)(x, target="all").relevance
        two = sepdtd.Explainer(distinct, name, low=0.0, high=1.0)(x, target="all").relevance
        torch.testing.assert_close(one, two, rtol=1e-12, atol=1e-14, msg=name)
        assert float(one.abs().max()) > 0
    mine = sepdtd.Explainer(shared, Composite(Epsilon(0.05), first=ZBox()), low=0.0, high=1.0)(x, target=[1, 2, 3])
    want = zennit_relevance(distinct, x, torch.tensor([[1], [2], [3]]), [((nn.Conv2d, nn.Linear), ZEpsilon(0.05))],
                            ZZBox(0.0, 1.0, stabilizer=1e-9))
    assert_rel_close(mine.relevance, want)


# ------------------------------------------------------------------------------------------- targets
@pytest.mark.parametrize("target, expect", [
    (3, lambda logits: torch.full((4, 1), 3)),
    (torch.tensor(2), lambda logits: torch.full((4, 1), 2)),
    (torch.tensor([4, 3, 2, 1]), lambda logits: torch.tensor([[4], [3], [2], [1]])),
    ([0, 1, 2, 3], lambda logits: torch.tensor([[0], [1], [2], [3]])),
    (CLS, lambda logits: CLS),
    ("top1", lambda logits: logits.topk(1).indices),
    ("top2", lambda logits: logits.topk(2).indices),
    ("topk:4", lambda logits: logits.topk(4).indices),
    ("all", lambda logits: torch.arange(5).expand(4, 5)),
])
def test_targets_of_every_form(target, expect):
    net, x = small_net(), images()
    explainer = sepdtd.Explainer(net, low=0.0, high=1.0)
    e = explainer(x, target=target)
    classes = expect(net(x).detach())
    assert torch.equal(e.classes, classes)
    assert torch.equal(e.relevance, explainer(x, target=classes).relevance)
    assert e.relevance.shape == (4, classes.shape[1], 2, 12, 12)


def test_targets_chosen_from_the_logits_in_pieces_equal_one_pass():
    net, x = small_net(), images(6)
    dtd = METHODS["dtd"]
    layers = engine.layers(net)
    for target in (engine.TopK(3), engine.AllClasses()):
        whole = dtd._explain(layers, x, target, low=0.0, high=1.0, chunk_bytes=0)
        pieces = dtd._explain(layers, x, target, low=0.0, high=1.0, chunk_bytes=1)
        for a, b in zip(whole, pieces):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------------------- batch norm
def bn_net() -> nn.Sequential:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 5)).double()
    g = torch.Generator().manual_seed(6)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features, dtype=D, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, dtype=D, generator=g))
                m.weight.copy_(0.5 + torch.rand(m.num_features, dtype=D, generator=g))
                m.bias.copy_(-0.2 * torch.rand(m.num_features, dtype=D, generator=g))
    return net


def fold_by_hand(net: nn.Sequential) -> nn.Sequential:
    """w' = w γ/σ, b' = (b - μ) γ/σ + β, written out in float64."""
    out = []
    for m in copy.deepcopy(net):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            layer = out[-1]
            s = m.weight / torch.sqrt(m.running_var + m.eps)
            with torch.no_grad():
                layer.weight.mul_(s.view(-1, *[1] * (layer.weight.ndim - 1)))
                layer.bias.copy_((layer.bias - m.running_mean) * s + m.bias)
        else:
            out.append(m)
    return nn.Sequential(*out).eval()


@pytest.mark.parametrize("name", ["dtd", "epsilon", "gradient_x_input"])
def test_a_batchnorm_model_equals_its_folded_version_and_is_left_untouched(name):
    net = bn_net().train()
    net[6].training = False                          # a mixed state must survive too
    before = copy.deepcopy(net.state_dict())
    modes = [m.training for m in net.modules()]
    folded = fold_by_hand(net)
    x = images(3, seed=7)
    e = sepdtd.Explainer(net, name, low=0.0, high=1.0)(x, target="top2")
    want = sepdtd.Explainer(folded, name, low=0.0, high=1.0)(x, target="top2")
    assert torch.equal(e.classes, want.classes)
    torch.testing.assert_close(e.relevance, want.relevance, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(e.logits, copy.deepcopy(net).eval()(x).detach(), rtol=1e-10, atol=1e-12)
    assert [m.training for m in net.modules()] == modes
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)       # running statistics not updated
    assert all(p.grad is None for p in net.parameters())
    for m in net.modules():
        assert not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks)


def test_batchnorm_that_cannot_be_folded_is_refused_with_a_reason():
    with pytest.raises(TypeError, match="folds it into that layer"):
        sepdtd.Explainer(bn_net(), low=0.0, high=1.0, canonizers=())
    no_stats = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(TypeError, match="track_running_stats"):
        sepdtd.Explainer(no_stats, low=0.0, high=1.0)
    after_relu = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.BatchNorm1d(3), nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"position 2 \(BatchNorm1d"):
        sepdtd.Explainer(after_relu, low=0.0, high=1.0)
    mismatch = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3, 2))
    with pytest.raises(TypeError, match=r"BatchNorm2d\(3\) would"):
        sepdtd.Explainer(mismatch, low=0.0, high=1.0)


# -------------------------------------------------------------------------------------------- errors
@pytest.fixture
def no_work(monkeypatch):
    """Fail if the engine starts a forward pass: the errors below must come before any work."""
    def boom(*a, **k):
        raise AssertionError("the forward pass ran before the error")
    monkeypatch.setattr(engine, "_forward", boom)


def test_an_unsupported_layer_is_named_with_its_position():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Tanh()), nn.Flatten(), nn.Linear(8, 2))
    with pytest.raises(TypeError, match=r"position 1\.1 \(Tanh.*derived for ReLU"):
        sepdtd.Explainer(model, low=0.0, high=1.0)
    with pytest.raises(TypeError, match=r"position 1\.1 \(Tanh"):
        sepdtd.check_model(model)


@pytest.mark.parametrize("low, high, message", [
    (-math.inf, math.inf, "must be finite"),
    (0.0, math.nan, "must be finite"),
    (0.0, 0.0, "degenerate"),
    (torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), "degenerate"),
    (0.25, 1.0, "must hold 0"),
    (-1.0, -0.5, "must hold 0"),
    (torch.zeros(3), torch.ones(2), "do not broadcast"),
    (0.0, None, "give both"),
])
def test_a_bad_box_is_refused_when_the_explainer_is_made(low, high, message):
    with pytest.raises(ValueError, match=message):
        sepdtd.Explainer(small_net(), low=low, high=high)


def test_a_bad_box_is_refused_by_the_functions_too(no_work):
    net, x = small_net(), images()
    for low, high, message in ((0.0, 0.0, "degenerate"), (-math.inf, 1.0, "must be finite"),
                               (torch.zeros(3), 1.0, "broadcast")):
        with pytest.raises(ValueError, match=message):
            sepdtd.dtd.relevance(net, x, CLS, low=low, high=high)
    with pytest.raises(ValueError, match="needs the input box"):
        sepdtd.Explainer(net, "dtd")
    with pytest.raises(ValueError, match="outside the box"):
        sepdtd.Explainer(net, low=0.0, high=1.0)(x + 1, target=0)


@pytest.mark.parametrize("target, error, message", [
    ("top3", ValueError, "unknown target"),
    ("topk:0", ValueError, "unknown target"),
    ("topk:6", ValueError, "top 6 classes, but the model has 5"),
    ("best", ValueError, "unknown target"),
    (5, ValueError, r"in \[0, 5\)"),
    (-1, ValueError, r"in \[0, 5\)"),
    (torch.tensor([0, 1, 2]), ValueError, r"shape \(4,\) or \(4, K\)"),
    (torch.zeros(4, 2, 1, dtype=torch.long), ValueError, r"shape \(4,\) or \(4, K\)"),
    (torch.zeros(4, 0, dtype=torch.long), ValueError, r"shape \(B, K\)"),
    (torch.zeros(4, 1), TypeError, "integer class indices"),
    (True, TypeError, "target must be"),
    (None, TypeError, "target must be"),
    (object(), TypeError, "target must be"),
])
def test_bad_targets_are_refused_before_any_work(no_work, target, error, message):
    explainer = sepdtd.Explainer(small_net(), low=0.0, high=1.0)
    with pytest.raises(error, match=message):
        explainer(images(), target=target)


@pytest.mark.parametrize("name", list(METHODS))
def test_nan_infinite_and_half_precision_inputs_are_refused(no_work, name):
    """Issue 22: no NaN heatmap from a NaN input (gradient × input has no box to catch it), no float16."""
    net = small_net()
    explainer = sepdtd.Explainer(net, name, low=0.0, high=1.0)
    for bad in (math.nan, math.inf):
        x = images()
        x[2, 1, 3, 4] = bad
        with pytest.raises(ValueError, match=r"1 NaN or infinite values \(the first at index \(2, 1, 3, 4\)\)"):
            explainer(x, target="top1")
        with pytest.raises(ValueError, match="NaN or infinite"):
            attribution.relevance(name, net, x, CLS, low=0.0, high=1.0)
    for dtype, todo in ((torch.float16, r"x\.float\(\)"), (torch.bfloat16, r"x\.float\(\)"),
                        (torch.uint8, r"x\.float\(\) / 255")):
        with pytest.raises(TypeError, match=f"float32 or float64, got {dtype}; .*{todo}"):
            explainer(images().to(dtype), target=0)


def test_bad_methods_and_composites_are_refused():
    net = small_net()
    with pytest.raises(ValueError, match="unknown method 'lime'"):
        sepdtd.Explainer(net, "lime", low=0.0, high=1.0)
    with pytest.raises(TypeError, match="rule must be"):
        sepdtd.Explainer(net, 3, low=0.0, high=1.0)
    with pytest.raises(ValueError, match="only the first layer"):
        Composite(ZBox())
    with pytest.raises(ValueError, match="at every layer"):
        Composite(GradientXInput(), first=ZBox())
    with pytest.raises(ValueError, match="Conv2d/Linear layer types"):
        Composite({nn.ReLU: ZPlus()})
    with pytest.raises(TypeError, match="must be a Rule"):
        Composite({nn.Linear: "zplus"})
    with pytest.raises(TypeError, match=r"no rule for the layer at position 8 \(Linear\)"):
        sepdtd.Explainer(net, Composite({nn.Conv2d: ZPlus()}, first=ZBox()), low=0.0, high=1.0)
    with pytest.raises(ValueError, match="stabilizer must be a finite number > 0"):
        ZPlus(stabilizer=0.0)
    with pytest.raises(ValueError, match="epsilon must be"):
        Epsilon(epsilon=-1.0)
    with pytest.raises(ValueError, match="beta must be"):
        AlphaBeta(2.0, -1.0)
    with pytest.raises(ValueError, match="not on the gradient"):
        sepdtd.SGLRP(Composite(GradientXInput()))
    with pytest.raises(ValueError, match="variant"):
        sepdtd.CLRP(variant="both")
    with pytest.raises(ValueError, match="heatmap needs image inputs"):
        _ = sepdtd.Explainer(nn.Sequential(nn.Linear(3, 2)).double(), low=0.0, high=1.0)(
            torch.rand(2, 3, dtype=D), target=0).heatmap


# ----------------------------------------------------------------------------------- public names, README
def test_public_names_are_exported_lazily_with_docstrings():
    code = "import sys, sepdtd; assert 'torch' not in sys.modules; print(sorted(sepdtd.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT)}).stdout
    assert "Explainer" in out and "pretrained" in out
    for name in sepdtd.__all__:
        obj = getattr(sepdtd, name)
        assert obj.__doc__ and len(obj.__doc__) > 40, name
    with pytest.raises(AttributeError, match="no attribute 'explainer'"):
        _ = sepdtd.explainer


def test_the_readme_example_runs_as_written():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Using the package", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks and "sepdtd.Explainer" in blocks[0]
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["e"].heatmap.shape == (8, 2, 32, 32)


# ---------------------------------------------------------------------------------------- pretrained
def test_pretrained_returns_a_kept_network_with_its_results(synthetic, tiny, dirs):
    from sepdtd.pipeline import measure, train

    root = dirs["results_dir"]
    train.ensure(root, "mnist", 0, experiments.jobs("tiny", "mnist", 0), device="cpu", progress=False,
                 checkpoints_dir=dirs["checkpoints_dir"], profile="tiny")
    with pytest.raises(FileNotFoundError, match="is not complete.*reproduce --profile tiny"):
        sepdtd.pretrained("mnist", lam=0.5, profile="tiny", results_dir=root)
    experiments.run("tiny", "mnist", 0, device="cpu", progress=False, **dirs)
    net, record, unit = sepdtd.pretrained("mnist", lam=0.5, seed=0, profile="tiny", results_dir=root)
    assert unit == experiments.unit("tiny", "mnist", 0, results_dir=root)
    assert record is not None and record["lam"] == 0.5 and record["tag"] == "lam0.5"
    assert isinstance(net, models.PaperNet) and not net.training
    assert next(net.parameters()).dtype == torch.float32
    imgs = measure.test_images(experiments.measurements("tiny", "mnist"))
    assert training.evaluate(net, imgs["x_test"], imgs["y_test"], device="cpu")[1] == record["accuracy"]
    base = sepdtd.pretrained("mnist", profile="tiny", results_dir=root)
    assert base.record["lam"] == 0.0 and not torch.equal(base.model[0].weight, net[0].weight)
    with pytest.raises(ValueError, match="not one of profile"):
        sepdtd.pretrained("mnist", lam=0.3, profile="tiny", results_dir=root)


def test_pretrained_says_how_to_make_a_network_that_is_not_kept(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not kept.*reproduce --profile full --datasets cifar10 --seeds 2"):
        sepdtd.pretrained("cifar10", lam=1.0, seed=2, results_dir=tmp_path)
