r"""Fine-tuning settings for Eq. 5: which of them keep the baseline's accuracy (Table 3)?

The paper reports that fine-tuning with the block-wise penalty (Eq. 5-6) costs no accuracy: every λ
stays within 0.01 of its baseline (Table 3). This module fine-tunes the kept baseline of a unit — a
(profile, data set, seed) of :mod:`sepdtd.experiments` — with other fine-tuning settings
(:class:`~sepdtd.pipeline.config.Stage`: learning rate, optimizer, batch size, stopping) and measures
every network exactly as the unit's own fine-tunes are measured (the ``"paper"`` measurement).

Everything else stays the unit's: its data split, its kept baseline, its fine-tuning seed
(:func:`~sepdtd.pipeline.config.finetune_seed`) and the stack of :func:`sepdtd.training.fit_stacked`.
A candidate with the unit's own fine-tuning stage and λ therefore repeats the unit's fine-tunes. Its
networks are kept beside the unit's as ``tune-<name>-lam<λ>``. Results whose networks were not kept
(the first layout, under ``legacy/tuning/``) are read too, marked so.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import torch

from sepdtd import experiments
from sepdtd.pipeline import measure, store, train, view
from sepdtd.pipeline.config import Stage, check_name, dataset_name, lam_tag

__all__ = ["CANDIDATES", "jobs", "run", "search", "unit", "load_results", "summary"]

#: The fine-tuning settings searched, by name. ``paper`` is the ``full`` profile's own stage (Section
#: 5.1 as we read it). Adam normalises each weight's step, so once Eq. 6's gradient dominates, a positive
#: off-block weight moves by about ``lr`` per step whatever λ is: the learning rate sets how fast the
#: penalty removes them. ``lr3e-5`` and ``lr1e-5`` remove them 3 and 10 times more slowly;
#: ``patience10`` stops later (the fit may recover further); ``lr1e-5-patience10`` does both; ``sgd``
#: (momentum 0.9, lr 1e-3) makes the step proportional to λ again.
CANDIDATES: dict[str, Stage] = {
    "paper": Stage(lr=1e-4, batch_size=128, max_epochs=200, patience=3),
    "lr3e-5": Stage(lr=3e-5, batch_size=128, max_epochs=200, patience=3),
    "lr1e-5": Stage(lr=1e-5, batch_size=128, max_epochs=200, patience=3),
    "patience10": Stage(lr=1e-4, batch_size=128, max_epochs=200, patience=10),
    "lr1e-5-patience10": Stage(lr=1e-5, batch_size=128, max_epochs=200, patience=10),
    "sgd": Stage(lr=1e-3, batch_size=128, max_epochs=200, patience=3, optimizer="sgd"),
}


def jobs(profile: str, dataset: str, seed: int, name: str, stage: Stage,
         lams: Sequence[float] | None = None) -> list[train.Job]:
    """The unit's baseline job and the candidate's stack of fine-tunes from it (tags ``tune-<name>-lam<λ>``)."""
    check_name(name, "a candidate name")
    if not isinstance(stage, Stage):
        raise TypeError(f"stage must be a Stage, got {type(stage).__name__}")
    base, fine = experiments.jobs(profile, dataset, seed)
    cfg = dataclasses.replace(fine.config, stage=stage, lams=tuple(fine.config.lams if lams is None else lams))
    return [base, train.Job(tuple(f"tune-{name}-{lam_tag(lam)}" for lam in cfg.lams), cfg)]


def _plan(profile: str, dataset: str, seed: int, js: list[train.Job]) -> dict:
    m = experiments.measurements(profile, dataset, seed)
    return {t: m for j in js for t in j.tags}


def unit(profile: str, dataset: str, seed: int, name: str, stage: Stage, lams: Sequence[float] | None = None, *,
         results_dir: str | os.PathLike | None = None) -> dict | None:
    """The stored results of one candidate (None when a network of it is not kept or not measured).

    Returns
    -------
    dict or None
        ``kind`` ("tuning"), ``name``, ``profile``, ``dataset``, ``seed``, ``stage``, ``config``,
        ``baseline`` (the baseline's setting, as in :func:`sepdtd.experiments.unit`), ``finetunes`` (one
        setting per λ), ``provenance``, ``run_wall_s``, ``networks_kept`` and ``stale``.
    """
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    js = jobs(profile, ds, seed, name, stage, lams)
    nets = view.networks(root, ds, seed, js, {"paper": _plan(profile, ds, seed, js)})
    if any(n["train"] is None or n["measured"]["paper"] is None for n in nets.values()):
        return None
    settings = [{"lam": n["lam"], "tag": t, **n["measured"]["paper"], **n["train"]["training"],
                 "network": {k: n["train"][k] for k in ("file", "sha256")}, "stale": n["stale"]}
                for t, n in nets.items()]
    provs = [nets[t]["train"]["provenance"] for t in js[1].tags]
    return {"kind": "tuning", "name": name, "profile": profile, "dataset": ds, "seed": seed,
            "stage": dataclasses.asdict(stage), "config": js[1].config.as_dict(),
            "baseline": settings[0], "finetunes": settings[1:],
            "provenance": {"commit": "; ".join(sorted({p["commit"] for p in provs})),
                           "device": "; ".join(sorted({p["device"] for p in provs})),
                           "t_start": min(p["t_start"] for p in provs), "t_end": max(p["t_end"] for p in provs)},
            "run_wall_s": max(p["t_end"] for p in provs) - min(p["t_start"] for p in provs),
            "networks_kept": True, "stale": bool([r for s in settings for r in s["stale"]])}


def run(profile: str, dataset: str, seed: int, name: str, stage: Stage | None = None, *,
        lams: Sequence[float] | None = None, device: str | torch.device = "auto",
        results_dir: str | os.PathLike | None = None, retrain: str = "missing", progress: bool = True,
        checkpoints_dir: str | os.PathLike | None = None) -> dict:
    """Fine-tune the unit's kept baseline with one candidate stage (training it first when missing),
    measure the networks and return :func:`unit`.

    Parameters
    ----------
    profile, dataset, seed
        The unit whose baseline, split and fine-tuning seed are used.
    name : str
        The candidate's name (a key of :data:`CANDIDATES`, or any name when ``stage`` is given).
    stage : Stage, optional
        The fine-tuning settings; default ``CANDIDATES[name]``.
    lams : sequence of float, optional
        λ of the fine-tunes (one stack); default the unit's.
    device, results_dir, retrain, progress, checkpoints_dir
        As for :func:`sepdtd.experiments.run`.
    """
    if stage is None:
        if name not in CANDIDATES:
            raise ValueError(f"unknown candidate {name!r}: choose one of {', '.join(CANDIDATES)} or give a stage")
        stage = CANDIDATES[name]
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    js = jobs(profile, ds, seed, name, stage, lams)
    imgs = measure.test_images(experiments.measurements(profile, ds, seed))
    train.ensure(root, ds, seed, js, device=device, retrain=retrain, progress=progress,
                 checkpoints_dir=checkpoints_dir, profile=profile, test=(imgs["x_test"], imgs["y_test"]))
    measure.measure(root, ds, seed, _plan(profile, ds, seed, js), device=device, progress=progress, profile=profile)
    return unit(profile, ds, seed, name, stage, lams, results_dir=root)


def search(profile: str, dataset: str, seed: int = 0, names: Sequence[str] | str | None = None, *,
           lams: Sequence[float] | None = None, max_epochs: int | None = None,
           device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None,
           progress: bool = True, checkpoints_dir: str | os.PathLike | None = None) -> list[dict]:
    """Run candidates of :data:`CANDIDATES` (default all) on a profile's unit, one after the other.

    ``max_epochs`` caps every candidate's fine-tune (a *pilot*: the cap is part of each candidate's
    stage, and the name gets ``-cap<max_epochs>``). Every name is checked before the first run.
    """
    names = list(CANDIDATES) if names is None else [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}: choose from {', '.join(CANDIDATES)}")
    out = []
    for name in names:
        stage, label = CANDIDATES[name], name
        if max_epochs is not None:
            stage, label = dataclasses.replace(stage, max_epochs=int(max_epochs)), f"{name}-cap{int(max_epochs)}"
        out.append(run(profile, dataset, seed, label, stage, lams=lams, device=device, results_dir=results_dir,
                       progress=progress, checkpoints_dir=checkpoints_dir))
    return out


def load_results(results_dir: str | os.PathLike) -> list[dict]:
    """Every candidate stored in a profile's folder: kept ones (``tune-*`` networks) and legacy files.

    A kept candidate is found from its networks' tags and configurations; a legacy file
    (``legacy/tuning/<dataset>/*.json``, the first layout) is read as it is, with ``networks_kept``
    False and ``stale`` False.
    """
    from pathlib import Path

    from sepdtd.pipeline.config import TrainConfig

    root = Path(results_dir)
    out = []
    for path in sorted((root / "train").glob("*/seed*.json")):
        rec = store.read_record(path)
        groups: dict[str, dict] = {}
        for tag, e in rec["networks"].items():
            if tag.startswith("tune-"):
                groups.setdefault(tag[len("tune-"):].rsplit("-lam", 1)[0], e)
        for name, e in groups.items():
            cfg = TrainConfig.from_dict(e["config"])
            u = unit(rec.get("profile", root.name), rec["dataset"], rec["seed"], name, cfg.stage, cfg.lams,
                     results_dir=root)
            if u is not None:
                out.append(u)
    for path in sorted((root / "legacy" / "tuning").glob("*/*.json")):
        try:
            res = json.loads(path.read_text())
        except ValueError as e:
            raise store.RecordError(f"{path} is not valid JSON ({e}); restore it with git") from e
        if isinstance(res, dict) and res.get("kind") == "tuning" and "finetunes" in res:
            out.append({**res, "stale": False, "networks_kept": False})
    return out


def _inblock_mean(entry: dict) -> float | None:
    vals = [v for v in entry.get("inblock", []) if v is not None]
    return sum(vals) / len(vals) if vals else None


def summary(results: Sequence[dict], *, convention: str = "raw", tolerance: float = 0.01) -> list[dict]:
    """One row per (candidate, λ): the fine-tune against the baseline it started from.

    Returns
    -------
    list of dict
        ``dataset``, ``seed``, ``name``, ``lr``, ``optimizer``, ``batch_size``, ``patience``, ``max_epochs``,
        ``lam``, ``accuracy``, ``baseline_accuracy``, ``delta`` (fine-tune minus baseline), ``keeps``
        (``delta >= -tolerance``: Table 3's claim), ``epochs``, ``best_epoch``, ``stopped_early``
        (False: the cap ended it), ``inblock`` (mean over the dense layers), ``diffusion`` (Eq. 7 under
        ``convention``), ``baseline_diffusion``, ``cosine``, ``device``, ``stale``.
    """
    rows = []
    for res in results:
        base, st = res["baseline"], res["stage"]
        for e in res["finetunes"]:
            delta = e["accuracy"] - base["accuracy"]
            rows.append({
                "dataset": res["dataset"], "seed": res["seed"], "name": res["name"], "lr": st["lr"],
                "optimizer": st["optimizer"], "batch_size": st["batch_size"], "patience": st["patience"],
                "max_epochs": st["max_epochs"], "lam": e["lam"], "accuracy": e["accuracy"],
                "baseline_accuracy": base["accuracy"], "delta": delta, "keeps": delta >= -tolerance - 1e-12,
                "epochs": e["epochs"], "best_epoch": e["best_epoch"], "stopped_early": e["stopped_early"],
                "inblock": _inblock_mean(e), "diffusion": e["diffusion"].get(convention),
                "baseline_diffusion": base["diffusion"].get(convention), "cosine": e["cosine"],
                "device": res.get("provenance", {}).get("device"), "stale": bool(res.get("stale", False)),
            })
    rows.sort(key=lambda r: (r["dataset"], r["seed"], list(CANDIDATES).index(r["name"].split("-cap")[0])
                             if r["name"].split("-cap")[0] in CANDIDATES else 99, r["name"], r["lam"]))
    return rows
