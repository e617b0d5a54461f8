"""``scripts/cosine_signs.py``: its split of the cosine agrees with the package's measures."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sepdtd import metrics, models

_PATH = Path(__file__).resolve().parent.parent / "scripts" / "cosine_signs.py"


@pytest.fixture(scope="module")
def cosine_signs():
    spec = importlib.util.spec_from_file_location("cosine_signs", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_sign_split_adds_up_to_the_package_cosine(cosine_signs):
    net = models.build("mnist", seed=0).eval()
    x = torch.rand(24, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # shift every logit so that the second ones straddle 0 (none sits on it)
        second = net(x).topk(2, dim=1).values[:, 1]
        net[-1].bias.copy_(net[-1].bias - second.quantile(0.5) - net[-1].bias.max())
    y = torch.randint(0, 10, (24,), generator=torch.Generator().manual_seed(2))
    m = cosine_signs._measure(net, x, y, batch=10)
    ref = metrics.diffusion_variants(net, x, low=0.0, high=1.0, batch_size=10)
    assert m["n"] == 24 and m["cosine"] == pytest.approx(ref["cosine"], abs=1e-6)
    with torch.no_grad():
        logits = net(x)
    top = logits.topk(2, dim=1).values
    assert m["accuracy"] == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert m["top1_logit_le0"] == pytest.approx(float((top[:, 0] <= 0).double().mean()))
    assert m["top2_logit_le0"] == pytest.approx(float((top[:, 1] <= 0).double().mean()))
    differ = float(((top[:, 0] > 0) != (top[:, 1] > 0)).double().mean())
    assert 0.2 < differ < 0.8                   # both kinds of images are there
    assert m["opposite_signs"] == pytest.approx(differ)
    parts = [(1 - differ, m["cosine_same_signs"]), (differ, m["cosine_opposite_signs"])]
    assert sum(w * c for w, c in parts if c is not None) == pytest.approx(m["cosine"], abs=1e-9)
    le0 = m["top2_logit_le0"]
    parts = [(1 - le0, m["cosine_top2_pos"]), (le0, m["cosine_top2_le0"])]
    assert sum(w * c for w, c in parts if c is not None) == pytest.approx(m["cosine"], abs=1e-9)
    # the premise: a heatmap has the sign of its logit, so opposite logits give a cosine <= 0
    from sepdtd import dtd
    with torch.no_grad():
        idx = logits.topk(2, dim=1).indices
    h = dtd.heatmap(net, x, idx, low=0.0, high=1.0).flatten(2)
    assert (h[top[:, 1] <= 0, 1] <= 0).all() and (h[top[:, 0] > 0, 0] >= 0).all()
    assert m["cosine_below0"] <= differ and m["cosine_opposite_signs"] < 0 < m["cosine_same_signs"]
