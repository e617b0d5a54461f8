"""Measure every kept network of a profile again: ``python -m sepdtd measure --profile full``.

The measurements each network gets are the ones its protocol gives it: the ``"paper"`` measurement
for every network, the ``"beyond"`` one for the networks of :mod:`sepdtd.beyond`, and the
``"mechanism"`` one for those of :mod:`sepdtd.mechanism`. The paper's networks of a seed that chapters
9-10 study get all three, so that those chapters read them as soon as they are kept.

An entry that is current (same network digest, measurement configuration and field fingerprints) is
kept unless ``force`` is given, so a run that was interrupted resumes where it stopped, and a run after a
change of the measurement code redoes exactly the stale entries. Nothing is trained.
"""
from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from sepdtd import beyond, experiments, mechanism, utils
from sepdtd.pipeline import measure, store
from sepdtd.pipeline.config import MeasureConfig, dataset_name

__all__ = ["plans", "run"]


def plans(profile: str, dataset: str, seed: int, tags: Sequence[str]) -> dict[str, dict[str, MeasureConfig]]:
    """Measurement kind -> (tag -> measurement) for the kept networks ``tags`` of a (data set, seed) folder."""
    paper = experiments.measurements(profile, dataset, seed)
    out: dict[str, dict[str, MeasureConfig]] = {"paper": {t: paper for t in tags}}
    if seed in beyond.PROFILES[profile].seeds:
        out["beyond"] = {t: c for t, c in beyond.measurements(profile, dataset, seed)["beyond"].items() if t in tags}
    if seed in mechanism.SEEDS.get(profile, ()) or any(t.startswith(("abl-", "sweep-")) for t in tags):
        out["mechanism"] = {t: c for t, c in mechanism.measurements(profile, dataset, seed)["mechanism"].items()
                            if t in tags}
    return {kind: plan for kind, plan in out.items() if plan}


def run(profile: str, *, datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
        device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None, force: bool = False,
        progress: bool = True) -> dict:
    """Measure the kept networks of a profile (all of them, or those of ``datasets`` and ``seeds``).

    Parameters
    ----------
    profile : str
        A profile of :data:`sepdtd.experiments.PROFILES`.
    datasets, seeds : sequence, optional
        Only these folders; default every folder with a train record.
    device : str or torch.device, optional
        Where to compute.
    results_dir : path, optional
        The profile's folder (default ``results/<profile>``).
    force : bool, optional
        Measure every network again, also where its entry is current.
    progress : bool, optional
        One progress bar over every (network, measurement).

    Returns
    -------
    dict
        ``networks`` (measured now), ``current`` (kept as they were), ``kept`` (the number of train
        records, one per data set and seed), ``wall_s`` and ``device``.

    A profile without train records has no kept networks: nothing is measured (``kept`` is 0).

    Raises
    ------
    FileNotFoundError
        If the profile's folder does not exist.
    """
    root = store.profile_root(profile, results_dir)
    want_ds = None if datasets is None else {dataset_name(d) for d in datasets}
    want_seeds = None if seeds is None else {int(s) for s in seeds}
    if not Path(root).is_dir():
        raise FileNotFoundError(f"no results folder {root}: check --results-dir, or train with `python -m sepdtd "
                                f"reproduce --profile {profile}`")
    records = sorted((root / "train").glob("*/seed*.json"))
    dev = utils.resolve_device(device)
    work = []
    for path in records:
        rec = store.read_record(path)
        if (want_ds is not None and rec["dataset"] not in want_ds) or (want_seeds is not None and
                                                                       rec["seed"] not in want_seeds):
            continue
        for kind, plan in plans(profile, rec["dataset"], rec["seed"], list(rec["networks"])).items():
            work.append((rec["dataset"], rec["seed"], kind, plan))
    total = sum(len(plan) for *_, plan in work)
    bar = tqdm(total=total, disable=not progress, unit="network", desc=f"measure {profile}")
    t0 = time.time()
    measured = []
    try:
        for dataset, seed, kind, plan in work:
            bar.set_postfix_str(f"{kind} {dataset} seed{seed}")
            before = len(measured)
            measure.measure(root, dataset, seed, plan, device=dev, force=force, progress=False, profile=profile,
                            on_network=lambda tag, ds=dataset, s=seed, k=kind: (measured.append((ds, s, k, tag)),
                                                                               bar.update(1)))
            bar.update(len(plan) - (len(measured) - before))
    finally:
        bar.close()
    return {"networks": measured, "current": total - len(measured), "kept": len(records), "wall_s": time.time() - t0,
            "device": utils.device_name(dev), "root": str(Path(root))}
