r"""Fine-tuning settings for Eq. 5: which of them keep the baseline's accuracy (Table 3)?

The paper reports that fine-tuning with the block-wise penalty (Eq. 5-6) costs no accuracy: every λ
stays within 0.01 of its baseline (Table 3). With the fine-tuning stage of the ``full`` profile (Adam at
lr 1e-4, early stopping with patience 3) that holds on MNIST and Fashion-MNIST, but CIFAR-10 loses
0.9-1.8 points. This module re-runs the fine-tunes of one unit — a (profile, data set, seed) of
:mod:`sepdtd.experiments` — with other fine-tuning settings (:class:`sepdtd.experiments.Stage`: learning
rate, optimizer, batch size, stopping) from the *same* baseline network, and measures each exactly as
the unit's own fine-tunes are measured (test accuracy, Eq. 7, in-block share, histories).

Everything else stays the unit's: its data split, its baseline (read from the unit's checkpoint folder,
or pre-trained there first with the unit's own recipe when missing), its fine-tuning seed
(:func:`sepdtd.experiments.finetune_seed`) and the stack of :func:`sepdtd.training.fit_stacked`. A
candidate with the unit's own fine-tuning stage and λ therefore repeats the unit's fine-tunes.

Results are one JSON file per candidate,
``results/<profile>/tuning/<dataset>/seed<seed>-<name>-<config_hash>.json``, written atomically with
their provenance; they carry ``tuning_schema`` (no ``settings`` key), so :func:`sepdtd.experiments.load_results`
and the report of Tables 2-3 never mistake them for a unit. The stacked fine-tune checkpoints, so an
interrupted candidate resumes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Sequence

import torch

from sepdtd import experiments, models, utils
from sepdtd.experiments import Config, Stage

__all__ = ["SCHEMA", "CANDIDATES", "candidate_config", "code_hash", "result_path", "run", "search",
           "load_results", "summary"]

SCHEMA = 1

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

#: Sources behind the numbers, on top of :data:`sepdtd.experiments.SOURCES`.
SOURCES = ("tuning",)


def candidate_config(unit: Config, stage: Stage, lams: Sequence[float] | None = None) -> Config:
    """The unit's configuration with its fine-tuning stage (and optionally its λ) replaced."""
    if not isinstance(stage, Stage):
        raise TypeError(f"stage must be a sepdtd.experiments.Stage, got {type(stage).__name__}")
    return dataclasses.replace(unit, finetune=stage, lams=tuple(unit.lams if lams is None else lams))


def code_hash() -> str:
    """Hash of :func:`sepdtd.experiments.code_hash` and this module's source (12 hex digits)."""
    h = hashlib.sha256(experiments.code_hash().encode())
    here = Path(__file__).resolve().parent
    for name in SOURCES:
        path = here / f"{name}.py"
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"<missing>") + b"\0")
    return h.hexdigest()[:12]


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not experiments._NAME_RE.match(name):
        raise ValueError(f"a candidate name must be letters, digits, '_' or '-', got {name!r}")
    return name


def result_path(unit: Config, name: str, config: Config, results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/tuning/<dataset>/seed<seed>-<name>-<config_hash>.json`` (default ``results/<profile>``)."""
    root = Path(results_dir) if results_dir is not None else experiments.default_results_dir(unit.profile)
    chash = experiments.config_hash(config)
    return root / "tuning" / unit.dataset / f"seed{unit.seed}-{_check_name(name)}-{chash}.json"


def _baseline(unit: Config, arrays: dict, dev: torch.device, checkpoints_dir: str | os.PathLike | None,
              progress: bool) -> tuple[Path, dict]:
    """The unit's baseline: its weights file and its measured entry (pre-trained here when missing)."""
    chash, ccode = experiments.config_hash(unit), experiments.code_hash()
    ckdir = experiments.checkpoint_dir(unit, checkpoints_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    done = experiments._read_partial(ckdir, chash, ccode)
    path = ckdir / "baseline.state.pt"
    if "baseline" not in done or not path.exists():
        done["baseline"] = experiments._train_baseline(unit, arrays, ckdir, dev, progress, f"{chash}/{ccode}")
        experiments._write_partial(ckdir, unit, chash, ccode, done)
    return path, done["baseline"]


def _read(path: Path, chash: str, ccode: str) -> dict | None:
    try:
        res = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and rerun") from e
    if res.get("config_hash") == chash and res.get("code_hash") == ccode:
        return res
    return None


def run(unit: Config, name: str, stage: Stage | None = None, *, lams: Sequence[float] | None = None,
        device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None,
        checkpoints_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Fine-tune the unit's baseline with one candidate stage; load the result when it exists.

    Parameters
    ----------
    unit : sepdtd.experiments.Config
        The unit whose baseline, split and fine-tuning seed are used (e.g.
        ``experiments.make_config("full", "cifar10", 0)``).
    name : str
        The candidate's name (a key of :data:`CANDIDATES`, or any name when ``stage`` is given).
    stage : sepdtd.experiments.Stage, optional
        The fine-tuning settings; default ``CANDIDATES[name]``.
    lams : sequence of float, optional
        λ of the fine-tunes (one stack); default the unit's.
    device, results_dir, checkpoints_dir, progress
        As for :func:`sepdtd.experiments.run`; the checkpoints of a candidate live under
        ``<checkpoint root>/<profile>/tuning/<dataset>/seed<seed>-<config_hash>/``.

    Returns
    -------
    dict
        ``name``, ``config`` (the unit's with the candidate's ``finetune`` and ``lams``), ``config_hash``,
        ``code_hash`` (:func:`code_hash`), ``unit_config_hash``, ``baseline`` (the baseline's entry, as in
        the unit's results), ``finetunes`` (one entry per λ, as the unit's ``settings``),
        ``provenance`` and ``run_wall_s`` (from the loaded baseline to the written result: the
        fine-tunes and their measurement, not a baseline pre-trained first). A file written by other code
        or for another configuration is recomputed, never read as this candidate's result.
    """
    if stage is None:
        if name not in CANDIDATES:
            raise ValueError(f"unknown candidate {name!r}: choose one of {', '.join(CANDIDATES)} or give a stage")
        stage = CANDIDATES[name]
    config = candidate_config(unit, stage, lams)
    chash, ccode = experiments.config_hash(config), code_hash()
    path = result_path(unit, name, config, results_dir)
    if path.exists():
        res = _read(path, chash, ccode)
        if res is not None:
            return res

    dev = utils.resolve_device(device)
    arrays_cpu = experiments._prepare_arrays(unit)
    arrays = experiments._to_device(arrays_cpu, dev)
    base_path, base_entry = _baseline(unit, arrays, dev, checkpoints_dir, progress)
    base_state = torch.load(base_path, map_location="cpu", weights_only=True)
    t_start = time.time()

    root = Path(checkpoints_dir) if checkpoints_dir is not None else experiments.checkpoint_root()
    ckdir = root / unit.profile / "tuning" / unit.dataset / f"seed{unit.seed}-{chash}"
    ckdir.mkdir(parents=True, exist_ok=True)
    nets = []
    for _ in config.lams:
        m = models.build(unit.dataset, seed=unit.seed)
        m.load_state_dict(base_state)
        nets.append(m)
    seed = experiments.finetune_seed(unit.seed)
    from sepdtd import training

    hists = training.fit_stacked(
        nets, list(config.lams), arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
        n_blocks=config.n_blocks, lr=stage.lr, batch_size=stage.batch_size, max_epochs=stage.max_epochs,
        patience=stage.patience, augment=config.augment, clamp_bias=config.clamp_bias, device=dev, seed=seed,
        checkpoint=ckdir / "finetunes.pt", checkpoint_key=f"{chash}/{ccode}/{name}", progress=progress,
        optimizer=stage.optimizer, weight_decay=stage.weight_decay, eval_batch_size=1000)
    t_trained = time.time()
    entries = [experiments._measure(config, lam, net, hist, arrays, ckdir, dev, seed, t_start, t_trained)
               for lam, net, hist in zip(config.lams, nets, hists)]
    t_end = time.time()
    result = {
        "tuning_schema": SCHEMA, "kind": "tuning", "name": name, "profile": unit.profile,
        "dataset": unit.dataset, "seed": unit.seed, "stage": dataclasses.asdict(stage),
        "config": config.as_dict(), "config_hash": chash, "code_hash": ccode,
        "unit_config_hash": experiments.config_hash(unit), "baseline": base_entry, "finetunes": entries,
        "provenance": {"commit": utils.git_commit(), "versions": utils.package_versions(),
                       "device": utils.device_name(dev), "started": experiments._iso(t_start),
                       "finished": experiments._iso(t_end), "t_start": t_start, "t_end": t_end,
                       "host": platform.node(), "threads": torch.get_num_threads()},
        "run_wall_s": t_end - t_start,
    }
    utils.atomic_write_json(path, result)
    return result


def search(profile: str, dataset: str, seed: int = 0, names: Sequence[str] | None = None, *,
           lams: Sequence[float] | None = None, max_epochs: int | None = None,
           device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None,
           checkpoints_dir: str | os.PathLike | None = None, progress: bool = True) -> list[dict]:
    """Run candidates of :data:`CANDIDATES` (default all) on a profile's unit, one after the other.

    ``max_epochs`` caps every candidate's fine-tune (a *pilot*: the cap is part of each candidate's
    stage and of its results, and the name gets ``-cap<max_epochs>``).
    """
    unit = experiments.make_config(profile, dataset, seed)
    names = list(CANDIDATES) if names is None else [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in CANDIDATES]
    if unknown:  # before the first candidate runs
        raise ValueError(f"unknown candidate(s) {', '.join(map(repr, unknown))}: choose from {', '.join(CANDIDATES)}")
    out = []
    for name in names:
        stage, label = CANDIDATES[name], name
        if max_epochs is not None:
            stage, label = dataclasses.replace(stage, max_epochs=int(max_epochs)), f"{name}-cap{int(max_epochs)}"
        out.append(run(unit, label, stage, lams=lams, device=device, results_dir=results_dir,
                       checkpoints_dir=checkpoints_dir, progress=progress))
    return out


def load_results(results_dir: str | os.PathLike) -> list[dict]:
    """Every candidate file under ``<results_dir>/tuning/``, each with ``stale`` set.

    ``stale`` is True when the file's ``code_hash`` is not the current :func:`code_hash` (the code
    that produced it has changed since). An empty list when there is no such folder.
    """
    root = Path(results_dir) / "tuning"
    out = []
    for path in sorted(root.rglob("*.json")) if root.is_dir() else []:
        if ".tmp" in path.name:
            continue
        try:
            res = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it and rerun") from e
        if isinstance(res, dict) and res.get("kind") == "tuning" and "finetunes" in res:
            res["stale"] = res.get("code_hash") != code_hash()
            out.append(res)
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
