"""Tests of sepdtd.stacked (G networks as one grouped network) and training.fit_stacked."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from sepdtd import models, training
from sepdtd.stacked import StackedSequential


def small_net(seed: int = 1, dropout: float = 0.0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers = [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 6, 2, padding=1), nn.ReLU(),
              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 2 * 2, 12), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Linear(12, 3))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_forward_equals_each_member(name):
    nets = [models.build(name, seed=s).double().eval() for s in range(3)]
    stack = StackedSequential(nets).double().eval()
    x = torch.rand(5, *nets[0].input_shape, dtype=torch.float64)
    out = stack(x)
    assert out.shape == (3, 5, 10)
    for g, net in enumerate(nets):
        torch.testing.assert_close(out[g], net(x), rtol=1e-12, atol=1e-12)


def test_dense_only_and_dropout_first():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 2)) for _ in range(2)]
    x = torch.rand(4, 7)
    out = StackedSequential(nets)(x)
    for g, net in enumerate(nets):
        torch.testing.assert_close(out[g], net(x))
    drop = [nn.Sequential(nn.Dropout(0.5), nn.Linear(7, 2)) for _ in range(2)]
    for d in drop:
        d[1].load_state_dict(drop[0][1].state_dict())
    stack = StackedSequential(drop).train()
    out = stack(torch.ones(64, 7))
    assert not torch.equal(out[0], out[1])          # every member draws its own mask
    stack.eval()
    out = stack(x)
    torch.testing.assert_close(out[0], out[1])


def test_members_draw_their_own_dropout_masks_and_gradients_stay_apart():
    nets = [small_net(1, dropout=0.5) for _ in range(3)]
    stack = StackedSequential(nets).train()
    x = torch.rand(16, 1, 10, 10)
    out = stack(x)
    assert not torch.equal(out[0], out[1])
    out[1].sum().backward()
    for w in list(stack.weights) + list(stack.biases):
        assert w.grad[0].abs().sum() == 0 and w.grad[2].abs().sum() == 0 and w.grad[1].abs().sum() > 0


def test_member_state_dicts_round_trip():
    nets = [small_net(s) for s in range(3)]
    stack = StackedSequential(nets)
    for g, net in enumerate(nets):
        sd = stack.member_state_dict(g)
        assert sd.keys() == net.state_dict().keys()
        for k in sd:
            assert torch.equal(sd[k], net.state_dict()[k])
    stack.load_member_state_dict(0, nets[2].state_dict())
    assert all(torch.equal(a, b) for a, b in zip(stack.member_state_dict(0).values(), nets[2].state_dict().values()))
    with pytest.raises(KeyError, match="do not match"):
        stack.load_member_state_dict(0, {"0.weight": torch.zeros(1)})
    with pytest.raises(IndexError):
        stack.member_state_dict(3)
    # the source networks are copied, not shared
    with torch.no_grad():
        stack.weights[0].zero_()
    assert nets[0][0].weight.abs().sum() > 0


def test_a_module_object_used_twice():
    def net(seed):
        torch.manual_seed(seed)
        relu = nn.ReLU()                                         # one object at two positions
        return nn.Sequential(nn.Linear(7, 6), relu, nn.Linear(6, 5), relu, nn.Linear(5, 2)).double()

    nets = [net(s) for s in range(2)]
    x = torch.randn(4, 7, dtype=torch.float64)
    out = StackedSequential(nets).double()(x)
    for g, n in enumerate(nets):
        torch.testing.assert_close(out[g], n(x), rtol=1e-12, atol=1e-12)
    lin = nn.Linear(4, 4)
    with pytest.raises(TypeError, match="cannot share weights"):
        StackedSequential([nn.Sequential(lin, nn.ReLU(), lin)])


def test_refuses_what_it_cannot_stack():
    with pytest.raises(TypeError, match="BatchNorm2d"):
        StackedSequential([nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))])
    with pytest.raises(TypeError, match="BlockDiagonalLinear"):
        StackedSequential([models.build_separate("fashion_mnist", seed=0)])
    with pytest.raises(ValueError, match="another architecture"):
        StackedSequential([small_net(), models.build("mnist", seed=0)])
    with pytest.raises(ValueError, match="at least one"):
        StackedSequential([])
    with pytest.raises(TypeError, match="no bias"):
        StackedSequential([nn.Sequential(nn.Linear(3, 2, bias=False))])


# -------------------------------------------------------------------------------------- fit_stacked
@pytest.fixture
def toy_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (200, 1, 10, 10), dtype=torch.uint8, generator=g)
    xv = torch.randint(0, 256, (60, 1, 10, 10), dtype=torch.uint8, generator=g)

    def label(x):  # learnable: brighter top half, plus a bright corner pixel
        top, bottom = x[:, 0, :5].float().mean((1, 2)), x[:, 0, 5:].float().mean((1, 2))
        return (top > bottom).long() + (x[:, 0, 0, 0] > 128).long()

    return x, label(x), xv, label(xv)


KW = dict(n_blocks=3, lr=1e-2, batch_size=32, max_epochs=8, patience=1, seed=3, progress=False, device="cpu")


def test_each_member_follows_its_own_fit(toy_data):
    """Without dropout, member g of the stack trains exactly as fit(models[g], lam=lams[g]) would."""
    lams = [0.0, 1e-3, 50.0]
    nets = [small_net() for _ in lams]
    hists = training.fit_stacked(nets, lams, *toy_data, **KW)
    epochs = set()
    for lam, net, h in zip(lams, nets, hists):
        ref = small_net()
        hr = training.fit(ref, *toy_data, lam=lam, **KW)
        assert (h.epochs, h.best_epoch, h.stopped_early) == (hr.epochs, hr.best_epoch, hr.stopped_early)
        epochs.add(h.epochs)
        for a, b in zip(net.state_dict().values(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(torch.tensor(h.val_loss), torch.tensor(hr.val_loss), rtol=1e-4, atol=1e-6)
        assert all((net[i].bias <= 0).all() for i in (0, 3, 7, 9))       # b <= 0 projected
    assert len(epochs) > 1, "the members should stop at different epochs in this test"


def test_resume_gives_the_uninterrupted_run(toy_data, tmp_path):
    lams = [0.1, 1.0]
    nets = [small_net(dropout=0.3) for _ in lams]
    full = training.fit_stacked(nets, lams, *toy_data, **{**KW, "patience": 3})
    ck = tmp_path / "stack.pt"
    parts = [small_net(dropout=0.3) for _ in lams]
    training.fit_stacked(parts, lams, *toy_data, **{**KW, "max_epochs": 2, "patience": 3}, checkpoint=ck,
                         checkpoint_every_s=0)
    parts = [small_net(dropout=0.3) for _ in lams]
    resumed = training.fit_stacked(parts, lams, *toy_data, **{**KW, "patience": 3}, checkpoint=ck,
                                   checkpoint_every_s=0)
    for a, b, ha, hb in zip(nets, parts, full, resumed):
        assert hb.resumed_from == 2
        assert ha.val_loss == hb.val_loss and ha.epochs == hb.epochs
        for p, q in zip(a.state_dict().values(), b.state_dict().values()):
            assert torch.equal(p, q)


def test_fit_stacked_errors(toy_data):
    with pytest.raises(ValueError, match="one λ per model"):
        training.fit_stacked([small_net()], [0.1, 0.2], *toy_data, **KW)
    with pytest.raises(ValueError, match=">= 0"):
        training.fit_stacked([small_net()], [-1.0], *toy_data, **KW)
    with pytest.raises(ValueError, match="every λ must be a finite number >= 0 .*got '0.1'"):
        training.fit_stacked([small_net()], ["0.1"], *toy_data, **KW)
    x, y, xv, yv = toy_data
    xf = x.float() / 255
    xf[5] = float("nan")
    with pytest.raises(ValueError, match="x_train holds NaN"):
        training.fit_stacked([small_net()], [0.5], xf, y, xv, yv, **KW)
    broken = small_net()
    with torch.no_grad():
        broken[-1].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=rf"model 1 \(λ = 0.5\)'s parameter {len(broken) - 1}.weight holds NaN"):
        training.fit_stacked([small_net(), broken], [0.0, 0.5], x, y, xv, yv, **KW)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_stacked_on_cuda_with_and_without_graph(toy_data):
    lams = [0.0, 1e-3, 50.0]
    kw = {**KW, "device": "cuda", "max_epochs": 4, "patience": 3}
    a = [small_net(dropout=0.3) for _ in lams]
    b = [small_net(dropout=0.3) for _ in lams]
    ha = training.fit_stacked(a, lams, *toy_data, cuda_graph=True, **kw)
    hb = training.fit_stacked(b, lams, *toy_data, cuda_graph=False, **kw)
    assert all(h.cuda_graph for h in ha) and not any(h.cuda_graph for h in hb)
    for x, y in zip(ha, hb):
        assert x.train_loss == pytest.approx(y.train_loss, rel=1e-4)
        assert x.val_loss == pytest.approx(y.val_loss, rel=1e-4)
    for n, m in zip(a, b):
        for p, q in zip(n.parameters(), m.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-5)
    # the stack on CUDA still follows the members' own fits (dropout off)
    c = [small_net() for _ in lams]
    hc = training.fit_stacked(c, lams, *toy_data, **kw)
    for lam, h in zip(lams, hc):
        ref = small_net()
        hr = training.fit(ref, *toy_data, lam=lam, **kw)
        assert h.val_loss == pytest.approx(hr.val_loss, rel=1e-3)


def test_augmented_members_follow_their_own_fit(toy_data):
    """With flips and shifts on, the stack's members still see what fit would show them."""
    lams = [0.0, 5.0]
    kw = {**KW, "augment": True, "max_epochs": 3, "patience": 3}
    nets = [small_net() for _ in lams]
    hists = training.fit_stacked(nets, lams, *toy_data, **kw)
    for lam, net, h in zip(lams, nets, hists):
        ref = small_net()
        hr = training.fit(ref, *toy_data, lam=lam, **kw)
        torch.testing.assert_close(torch.tensor(h.train_loss), torch.tensor(hr.train_loss), rtol=1e-4, atol=1e-6)
        for a, b in zip(net.state_dict().values(), ref.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_a_nan_in_one_member_names_that_member(toy_data):
    nets = [small_net() for _ in range(3)]
    with torch.no_grad():
        nets[1][-1].weight.fill_(1e38)                             # member 1's logits overflow
    with pytest.raises(training.NaNLossError, match="lam=0.5"):
        training.fit_stacked(nets, [0.1, 0.5, 1.0], *toy_data, **KW)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_grouped_forward_on_cuda_equals_each_member(name):
    nets = [models.build(name, seed=s).eval() for s in range(3)]
    stack = StackedSequential(nets).cuda().eval()
    x = torch.rand(7, *nets[0].input_shape, device="cuda")
    out = stack(x)
    for g, net in enumerate(nets):
        torch.testing.assert_close(out[g], net.cuda()(x), rtol=1e-4, atol=1e-5)
