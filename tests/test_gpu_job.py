"""A dry run of the GPU job (scripts/gpu/job.sh) at the smoke profile on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from sepdtd import beyond, experiments

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_gpu_job_keeps_every_cifar10_network(tmp_path):
    results, out = tmp_path / "results", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "PROFILE": "smoke", "DEVICE": "cpu", "SEEDS": "0 1",
           "RESULTS": str(results),
           "OUT": str(out), "SEPDTD_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(["bash", "scripts/gpu/job.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr + (out / "job.log").read_text()
    log = (out / "job.log").read_text()
    assert "chapters 9-10: trained, kept and measured" in log and "packed" in log
    units = experiments.load_results(results, profile="smoke")
    assert sorted((u["dataset"], u["seed"]) for u in units) == [("cifar10", 0), ("cifar10", 1)]
    assert all(u["networks_kept"] and not u["stale"] for u in units)
    (b,) = beyond.load_results("smoke", results_dir=results)
    assert [e["model"] for e in b["entries"]][5:] == ["separate-split", "depth-3", "depth-6"]
    with tarfile.open(out / "cifar10-smoke.tar") as tar:
        names = set(tar.getnames())
    kept = {str(p.relative_to(results)) for p in (results / "networks" / "cifar10").rglob("*.safetensors")}
    assert len(kept) == 2 * 5 + 3 and kept <= names
    assert {"networks/MANIFEST.json", "train/cifar10/seed1.json", "measure/beyond/cifar10/seed0.json"} <= names
