"""Fixtures shared by the protocol tests (test_experiments.py, test_tuning.py, test_beyond.py), and the
folder of the book's screenshots (test_book.py), named at the end of the run."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from sepdtd import beyond, data, experiments
from sepdtd.pipeline.config import Stage


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
def tiny(monkeypatch):
    """A profile ``tiny`` of two-epoch trainings on 96 images, with chapters 9-10 settings to match."""
    p = experiments.Profile(
        name="tiny", description="TINY, for tests", datasets=("mnist",), seeds=(0,), lams=(0.5, 5.0),
        n_train=96, n_val=48, n_test=40, n_eval=12, pretrain=Stage(lr=1e-3, batch_size=32, max_epochs=2),
        finetune=Stage(lr=1e-4, batch_size=32, max_epochs=2), eval_batch_size=16)
    monkeypatch.setitem(experiments.PROFILES, "tiny", p)
    monkeypatch.setitem(beyond.PROFILES, "tiny", beyond.BeyondProfile(
        name="tiny", seeds=(0,), n_pairs=64, max_scored=8, n_eval=8, method_lams=(0.0,), extra_datasets=("mnist",),
        depth_offsets=(-1,), separate_widths=("split",), batch_size=16))
    return p


@pytest.fixture
def dirs(tmp_path):
    return {"results_dir": tmp_path / "results", "checkpoints_dir": tmp_path / "ckpt"}


_SCREENSHOTS = pytest.StashKey[Path]()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory, request) -> Path:
    """Where test_book.py's screenshots go: the test run's temporary folder."""
    folder = tmp_path_factory.mktemp("screenshots")
    request.config.stash[_SCREENSHOTS] = folder
    return folder


def pytest_terminal_summary(terminalreporter, config):
    """Name the screenshots' folder, and copy them to ``$SEPDTD_SCREENSHOTS`` when it is set."""
    folder = config.stash.get(_SCREENSHOTS, None)
    if folder is None or not any(folder.glob("*.png")):
        return
    line = f"screenshots of the book: {folder}"
    if copy_to := os.environ.get("SEPDTD_SCREENSHOTS"):
        Path(copy_to).mkdir(parents=True, exist_ok=True)
        for png in sorted(folder.glob("*.png")):
            shutil.copy(png, Path(copy_to) / png.name)
        line += f" (copied to {copy_to})"
    terminalreporter.write_sep("-", line)
