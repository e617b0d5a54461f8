"""Block-wise L1 regularization (Eq. 6): mask, penalty value and gradient, in-block share."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sepdtd import models
from sepdtd.regularization import block_l1, block_mask, expected_inblock_share, inblock_share


def _oracle_mask(out_f: int, in_f: int, n: int) -> list[list[bool]]:
    return [[(j * n) // out_f != (i * n) // in_f for i in range(in_f)] for j in range(out_f)]


@pytest.mark.parametrize("out_f,in_f,n", [(7, 5, 3), (5, 7, 3), (10, 512, 10), (6, 6, 2), (4, 9, 4), (3, 3, 1)])
def test_block_mask_matches_formula_entry_by_entry(out_f, in_f, n):
    m = block_mask(out_f, in_f, n)
    assert m.dtype == torch.bool and m.shape == (out_f, in_f)
    assert m.tolist() == _oracle_mask(out_f, in_f, n)


def test_block_mask_7x5_n3_by_hand():
    # floor(j*3/7): outputs 0-2 | 3-4 | 5-6 ; floor(i*3/5): inputs 0-1 | 2-3 | 4
    in_blocks = [[1, 1, 0, 0, 0]] * 3 + [[0, 0, 1, 1, 0]] * 2 + [[0, 0, 0, 0, 1]] * 2
    assert (~block_mask(7, 5, 3)).int().tolist() == in_blocks


def test_block_mask_single_block_and_diagonal():
    assert not block_mask(4, 6, 1).any()
    assert torch.equal(~block_mask(5, 5, 5), torch.eye(5, dtype=torch.bool))


def test_block_mask_is_cached():
    assert block_mask(7, 5, 3) is block_mask(7, 5, 3)


@pytest.mark.parametrize("args,exc", [((7, 5, 0), ValueError), ((7, 5, 6), ValueError), ((3, 5, 4), ValueError),
                                      ((0, 5, 1), ValueError), ((7, 5, 2.0), TypeError), ((7, 5, True), TypeError)])
def test_block_mask_rejects_bad_arguments(args, exc):
    with pytest.raises(exc):
        block_mask(*args)


def _net() -> nn.Sequential:
    g = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 2 * 2, 7), nn.ReLU(),
                        nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        net[3].weight[0, 5] = 0.0  # an exact zero off the blocks: no gradient
        net[5].weight[:, 0] = 0.0
    return net


def _oracle_penalty(net: nn.Module, n: int) -> float:
    total = 0.0
    for layer in (m for m in net.modules() if isinstance(m, nn.Linear)):
        w = layer.weight.tolist()  # w[j][i]: input i (layer l-1) -> output j (layer l)
        out_f, in_f = len(w), len(w[0])
        for j in range(out_f):
            for i in range(in_f):
                if (j * n) // out_f != (i * n) // in_f:
                    total += max(0.0, w[j][i])
    return total


def test_block_l1_value_matches_loop_oracle():
    net = _net()
    assert block_l1(net, 3).item() == pytest.approx(_oracle_penalty(net, 3), rel=1e-5)
    assert block_l1(net, 2).item() == pytest.approx(_oracle_penalty(net, 2), rel=1e-5)
    assert block_l1(net, 1).item() == 0.0


def test_block_l1_gradient_is_one_on_positive_off_block_weights_only():
    net = _net()
    block_l1(net, 3).backward()
    for layer in (m for m in net.modules() if isinstance(m, nn.Linear)):
        w = layer.weight.detach()
        off = block_mask(*w.shape, 3)
        expected = ((w > 0) & off).float()
        assert torch.equal(layer.weight.grad, expected)
        assert layer.bias.grad is None
    assert net[0].weight.grad is None  # convolutions are not regularized


def test_block_l1_ignores_convolutions():
    net = _net()
    before = block_l1(net, 3).item()
    with torch.no_grad():
        net[0].weight.fill_(100.0)
    assert block_l1(net, 3).item() == before
    conv_only = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    assert block_l1(conv_only, 3).item() == 0.0


def test_block_l1_defaults_to_n_classes_and_needs_it_otherwise():
    model = models.build("fashion_mnist", seed=0)
    assert block_l1(model).item() == pytest.approx(block_l1(model, 10).item())
    with pytest.raises(ValueError, match="n_blocks"):
        block_l1(_net())
    with pytest.raises(ValueError, match="larger than the layer"):
        block_l1(_net(), 4)  # the last layer has only 3 outputs


def test_inblock_share_extremes_and_reference():
    layer = nn.Linear(5, 7)
    net = nn.Sequential(layer)
    off = block_mask(7, 5, 3)
    with torch.no_grad():
        layer.weight.copy_((~off).float() * 2.0 - off.float())  # positive only in the blocks
    assert inblock_share(net, 3) == [1.0]
    with torch.no_grad():
        layer.weight.copy_(off.float())
    assert inblock_share(net, 3) == [0.0]
    with torch.no_grad():
        layer.weight.fill_(-1.0)
    assert math.isnan(inblock_share(net, 3)[0])
    with torch.no_grad():
        layer.weight.fill_(1.0)
    assert inblock_share(net, 3) == [pytest.approx(expected_inblock_share(7, 5, 3))]
    inside = sum(not v for row in _oracle_mask(7, 5, 3) for v in row)
    assert expected_inblock_share(7, 5, 3) == pytest.approx(inside / 35)


def test_inblock_share_of_glorot_init_is_about_one_over_n():
    model = models.build("cifar10", seed=0)
    shares = inblock_share(model)
    assert len(shares) == 2
    assert shares[0] == pytest.approx(expected_inblock_share(512, 2304, 10), abs=0.01)
    assert expected_inblock_share(512, 2304, 10) == pytest.approx(0.1, abs=1e-3)
