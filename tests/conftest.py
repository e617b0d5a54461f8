"""Fixtures shared by the pipeline tests (test_experiments.py, test_tuning.py)."""
from __future__ import annotations

import pytest
import torch

from sepdtd import data, experiments


@pytest.fixture
def synthetic(monkeypatch):
    """Replace data.load with a small random MNIST-shaped data set (no files needed)."""
    g = torch.Generator().manual_seed(123)

    def fake_load(name, **_):
        name = name.replace("-", "_")
        return data.Dataset(name=name, x_train=torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8, generator=g),
                            y_train=torch.arange(200) % 10, x_test=torch.randint(0, 256, (60, 1, 28, 28),
                                                                                 dtype=torch.uint8, generator=g),
                            y_test=torch.arange(60) % 10, classes=tuple(str(i) for i in range(10)))

    cache: dict = {}
    monkeypatch.setattr(data, "load", lambda name, **kw: cache.setdefault(name, fake_load(name)))


@pytest.fixture
def fixed_code(monkeypatch):
    """Pin code_hash: other people may edit the sources while the tests run."""
    monkeypatch.setattr(experiments, "code_hash", lambda: "c0dec0dec0de")


@pytest.fixture
def dirs(tmp_path):
    return {"results_dir": tmp_path / "results", "checkpoints_dir": tmp_path / "ckpt"}
