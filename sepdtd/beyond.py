r"""Beyond the paper: a ground truth for separability, and what causes diffusion (book chapters 9-10).

For one unit — a (profile, data set, seed), the units of :mod:`sepdtd.experiments` — the protocol

1. uses the unit's kept networks (the baseline and every λ of Eq. 5; :func:`sepdtd.experiments.jobs`);
2. trains the extra networks of chapter 10 with the baseline's recipe (its pre-training stage and
   data): Table 1's network with separate dense layers per class (``separate-split``,
   :func:`sepdtd.models.build_separate`, the "intuitive approach" of Section 4) and with fewer and more
   convolutional layers (``depth-<n>``, :func:`sepdtd.models.build_depth`);
3. measures every network with the ``"paper"`` measurement (accuracy, Eq. 7; :mod:`sepdtd.experiments`)
   and the ``"beyond"`` one (:func:`sepdtd.pipeline.measure.beyond_fields`): with every explanation
   method of :mod:`sepdtd.attribution` (DTD, LRP-ε, LRP-α2β1, gradient × input, CLRP, SGLRP), the
   diffusion of Eq. 7 between the top-1 and top-2 heatmaps of real test images, and on two-object
   images with known object regions (:mod:`sepdtd.twoobject`) that the network recognises, the
   relevance mass accuracy and the pointing game of the top-1 and top-2 class.

The extra networks are kept beside the unit's (``networks/<dataset>/seed<seed>/``) and their results
are in the same records. :func:`load_results` reads one dict per unit.
"""
from __future__ import annotations

import dataclasses
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from sepdtd import attribution, experiments, models, utils
from sepdtd.pipeline import measure, store, train, view
from sepdtd.pipeline.config import MeasureConfig, dataset_name, lam_tag

__all__ = ["BeyondProfile", "PROFILES", "jobs", "measurements", "run", "ensure", "reproduce", "unit",
           "load_results", "summary", "gt_table", "factors"]


@dataclass(frozen=True)
class BeyondProfile:
    """Settings of chapters 9-10 on top of an :class:`sepdtd.experiments.Profile` of the same name.

    Attributes
    ----------
    name : str
        ``"smoke"``, ``"quick"`` or ``"full"`` (the experiments' profile whose networks are used).
    seeds : tuple of int
        The units :func:`reproduce` runs by default.
    n_pairs : int
        Two-object candidates drawn per unit (only the recognised ones are scored).
    max_scored : int
        At most this many recognised two-object images are explained per network.
    n_eval : int
        Real test images (drawn with the seed) for the diffusion of Eq. 7.
    method_lams : tuple of float or None
        λ (0.0 = baseline) of the networks explained with *every* method; the others with DTD only.
        None: every λ.
    extra_datasets : tuple of str
        Data sets whose extra networks (separate dense layers, depth) are trained.
    depth_offsets : tuple of int
        Convolutional layers added to (``> 0``) or removed from (``< 0``) Table 1's count.
    separate_widths : tuple of str
        Widths of :func:`sepdtd.models.build_separate`.
    threshold : int
        Mask threshold of the overlaid two-object images (:func:`sepdtd.twoobject.overlay`).
    batch_size : int
        Images per explanation pass (no effect on the numbers).
    """

    name: str
    seeds: tuple[int, ...]
    n_pairs: int
    max_scored: int
    n_eval: int
    method_lams: tuple[float, ...] | None
    extra_datasets: tuple[str, ...]
    depth_offsets: tuple[int, ...]
    separate_widths: tuple[str, ...]
    threshold: int = 0
    batch_size: int = 250


#: The profiles of chapters 9-10. The full profile keeps Table 1's width for the separate dense layers
#: (``"split"``): the ``"full"`` width has C times the dense parameters, over the 3 MB a kept network may take.
PROFILES: dict[str, BeyondProfile] = {
    "smoke": BeyondProfile(name="smoke", seeds=(0,), n_pairs=256, max_scored=32, n_eval=32, method_lams=(0.0, 1.0),
                           extra_datasets=("mnist", "fashion_mnist", "cifar10"), depth_offsets=(-1, 2),
                           separate_widths=("split",), batch_size=64),
    "quick": BeyondProfile(name="quick", seeds=(0,), n_pairs=1500, max_scored=200, n_eval=200,
                           method_lams=(0.0, 1.0), extra_datasets=("mnist", "fashion_mnist"), depth_offsets=(-1, 2),
                           separate_widths=("split",)),
    "full": BeyondProfile(name="full", seeds=(0,), n_pairs=10_000, max_scored=2000, n_eval=2000, method_lams=None,
                          extra_datasets=("mnist", "fashion_mnist", "cifar10"), depth_offsets=(-1, 2, 4),
                          separate_widths=("split",), batch_size=500),
}


def _profile(profile: str) -> BeyondProfile:
    if profile not in PROFILES or profile not in experiments.PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def _extras(profile: str, dataset: str) -> list[str]:
    """The architectures of the extra networks of a data set: ``separate-<width>``, ``depth-<n>``."""
    p, ds = _profile(profile), dataset_name(dataset)
    if ds not in p.extra_datasets:
        return []
    t = models.TABLE1_CONV[ds]
    depths = sorted({t + d for d in p.depth_offsets if t + d >= 0} - {t})
    return [f"separate-{w}" for w in p.separate_widths] + [f"depth-{n}" for n in depths]


def jobs(profile: str, dataset: str, seed: int = 0) -> list[train.Job]:
    """The unit's jobs (:func:`sepdtd.experiments.jobs`) and one job per extra network (the baseline's recipe)."""
    paper = experiments.jobs(profile, dataset, seed)
    base = paper[0].config
    return paper + [train.Job((arch,), dataclasses.replace(base, arch=arch)) for arch in _extras(profile, dataset)]


def measurements(profile: str, dataset: str, seed: int = 0) -> dict[str, dict[str, MeasureConfig]]:
    """Measurement kind -> (tag -> measurement): the ``"paper"`` one for every network, and ``"beyond"``
    with every method for the extra networks and the λ of ``method_lams``, with DTD for the other λ."""
    p, ds = _profile(profile), dataset_name(dataset)
    paper = experiments.measurements(profile, ds, seed)
    lams = (0.0, *experiments.PROFILES[profile].lams)
    every = lams if p.method_lams is None else tuple(lam for lam in p.method_lams if lam in lams)
    base = MeasureConfig(kind="beyond", dataset=ds, seed=seed, n_eval=p.n_eval, n_pairs=p.n_pairs,
                         max_scored=p.max_scored, threshold=p.threshold, methods=tuple(attribution.METHODS),
                         epsilon=attribution.EPSILON, batch_size=p.batch_size)
    beyond = {lam_tag(lam): base if lam in every else dataclasses.replace(base, methods=("dtd",)) for lam in lams}
    beyond.update({arch: base for arch in _extras(profile, ds)})
    return {"paper": {t: paper for j in jobs(profile, ds, seed) for t in j.tags}, "beyond": beyond}


def _params(model: torch.nn.Module) -> int:
    """Trainable parameters, not counting the weights a :class:`~sepdtd.models.BlockDiagonalLinear` pins at 0."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, models.BlockDiagonalLinear):
            n -= int((m.keep == 0).sum())
    return n


# ------------------------------------------------------------------------------------------- views
def unit(profile: str, dataset: str, seed: int = 0, *, results_dir: str | os.PathLike | None = None) -> dict | None:
    """The stored results of a unit of chapters 9-10 (None when a network of it is not kept or measured).

    Returns
    -------
    dict or None
        ``kind`` ("beyond"), ``profile``, ``dataset``, ``seed``, ``config``, ``provenance``,
        ``two_object`` (the candidates' mode, count and mask shares), ``table1_conv``, ``stale`` and
        ``entries``: one per network (``model``: ``baseline``, ``lam<λ>``, ``separate-<width>``,
        ``depth-<n>``) with ``family``, ``lam``, ``width``, ``n_conv``, ``params``, ``accuracy``,
        ``epochs``, ``train_wall_s``, ``recognized`` and ``methods``: per method ``diffusion`` (Eq. 7 per
        convention), ``cosine``, ``abs_cosine``, ``logit_nonpositive``, ``mass`` and ``pointing`` (top-1,
        top-2), their ``_objects`` variants, ``mass_sd``, ``mass_nan``, ``covered`` and ``n_scored``.
    """
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    js, plans = jobs(profile, ds, seed), measurements(profile, ds, seed)
    nets = view.networks(root, ds, seed, js, plans)
    complete = {t: n for t, n in nets.items() if n["train"] is not None and None not in n["measured"].values()}
    if any(lam_tag(lam) not in complete for lam in (0.0, *experiments.PROFILES[profile].lams)):
        return None
    entries = []
    for tag, n in complete.items():
        cfg, fields = n["train"]["config"], n["measured"].get("beyond") or {"methods": {}}
        model = _build(cfg)
        family = "lambda" if cfg["arch"] == "table1" else cfg["arch"].split("-", 1)[0]
        entries.append({
            "model": tag, "family": family, "lam": n["lam"] if family == "lambda" else None,
            "width": cfg["arch"].split("-", 1)[1] if family == "separate" else None,
            "n_conv": models.conv_layers(model), "params": _params(model),
            "accuracy": n["measured"]["paper"]["accuracy"], "epochs": n["train"]["training"]["epochs"],
            "train_wall_s": n["train"]["training"]["train_wall_s"], "trained_here": family != "lambda",
            "recognized": fields.get("recognized"), "n_recognized": fields.get("n_recognized"),
            "n_pairs": fields.get("n_pairs"), "methods": fields["methods"], "paper": n["measured"]["paper"],
            "network": {k: n["train"][k] for k in ("file", "sha256")}, "stale": n["stale"]})
    first = nets["baseline"]["measured"]["beyond"]
    provs = [n["measure"]["beyond"]["provenance"] for n in complete.values() if "beyond" in n["measure"]]
    p = PROFILES[profile]
    return {
        "kind": "beyond", "profile": profile, "dataset": ds, "seed": seed,
        "config": {"jobs": {t: n["train"]["config"] for t, n in complete.items()},
                   "measure": {t: c.as_dict() for t, c in plans["beyond"].items() if t in complete}},
        "provenance": {"commit": "; ".join(sorted({q["commit"] for q in provs})),
                       "device": "; ".join(sorted({q["device"] for q in provs})),
                       "t_start": min(q["t_start"] for q in provs), "t_end": max(q["t_end"] for q in provs)},
        "two_object": {**first["two_object"], "n_pairs": first["n_pairs"], "threshold": p.threshold},
        "table1_conv": models.TABLE1_CONV[ds], "networks_kept": True,
        "missing": [t for t in nets if t not in complete],
        "stale": [r for e in entries for r in e["stale"]], "entries": entries,
    }


def _build(config: dict) -> torch.nn.Module:
    from sepdtd.pipeline.config import TrainConfig

    return TrainConfig.from_dict(config).build()


def load_results(profile: str, *, results_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every stored unit of chapters 9-10 of a profile (those whose paper networks are kept and measured)."""
    root = store.profile_root(profile, results_dir)
    return view.stored_units(root, "beyond", lambda ds, seed: unit(profile, ds, seed, results_dir=root),
                             "the study of chapters 9-10", "run `python -m sepdtd beyond` or `measure` to finish it")


# --------------------------------------------------------------------------------------------- runs
def run(profile: str, dataset: str, seed: int = 0, *, device: str | torch.device = "auto",
        results_dir: str | os.PathLike | None = None, retrain: str = "missing", progress: bool = True,
        checkpoints_dir: str | os.PathLike | None = None) -> dict:
    """Train the unit's missing networks (the paper's and the extra ones), measure what is not current,
    and return :func:`unit`."""
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    imgs = measure.test_images(experiments.measurements(profile, ds, seed))
    train.ensure(root, ds, seed, jobs(profile, ds, seed), device=device, retrain=retrain, progress=progress,
                 checkpoints_dir=checkpoints_dir, profile=profile, test=(imgs["x_test"], imgs["y_test"]))
    for plan in measurements(profile, ds, seed).values():
        measure.measure(root, ds, seed, plan, device=device, progress=progress, profile=profile)
    return unit(profile, ds, seed, results_dir=root)


def ensure(profile: str, dataset: str, seed: int = 0, device: str | torch.device = "auto", *,
           results_dir: str | os.PathLike | None = None, progress: bool = True, **_: Any) -> dict:
    """The results of a unit for the notebooks (:func:`run` with ``retrain="missing"``)."""
    return run(profile, dataset, seed, device=device, results_dir=results_dir, progress=progress)


def reproduce(profile: str, *, datasets: Sequence[str] | str | None = None, seeds: Sequence[int] | None = None,
              device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None,
              retrain: str = "missing", progress: bool = True,
              checkpoints_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every unit of a profile (default: its data sets and :attr:`BeyondProfile.seeds`), one after the other.

    Every data set name and seed is checked before the first unit starts.
    """
    p = _profile(profile)
    names = [datasets] if isinstance(datasets, str) else list(datasets or experiments.PROFILES[profile].datasets)
    units = [(dataset_name(d), s) for s in (p.seeds if seeds is None else seeds) for d in names]
    for d, s in units:
        jobs(profile, d, s)
    utils.resolve_device(device)
    return [run(profile, d, s, device=device, results_dir=results_dir, retrain=retrain, progress=progress,
                checkpoints_dir=checkpoints_dir) for d, s in units]


# ------------------------------------------------------------------------------------- aggregation
def _stats(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def summary(results: Sequence[dict], *, convention: str = "max") -> list[dict]:
    """One row per (data set, network, method), mean and sd over seeds.

    Each row has ``dataset``, ``model``, ``family``, ``lam``, ``n_conv``, ``width``, ``method`` and, as
    ``(mean, sd)`` pairs, ``diffusion`` (Eq. 7 under ``convention``), ``cosine``, ``mass1``, ``mass2``,
    ``point1``, ``point2`` (top-1 / top-2 class), ``mass_obj1``, ``mass_obj2``, ``point_obj1``,
    ``point_obj2`` (the same on the two objects' pixels only, ``objects_only=True``), ``accuracy``,
    ``recognized``, ``train_wall_s``, ``abs_cosine``; ``mass1_se``, ``mass2_se``: the standard error of the
    mean mass accuracy over the scored images where it is defined (of the seeds' mean), a float or None;
    ``mass_nan``, ``pointing_nan`` and ``covered``: the undefined cases, [top-1, top-2] summed over the seeds
    (None for results that predate them); plus ``params``, ``n_seeds``, ``seeds``, ``n_scored`` (per seed) and
    ``epochs``.
    """
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    seeds: dict[tuple, set] = defaultdict(set)
    for res in results:
        for e in res["entries"]:
            for method, m in e["methods"].items():
                groups[(res["dataset"], e["model"], method)].append((e, m))
                seeds[(res["dataset"], e["model"], method)].add(res.get("seed"))
    rows = []
    for (dataset, model, method), items in groups.items():
        e0 = items[0][0]
        row = {"dataset": dataset, "model": model, "family": e0["family"], "lam": e0.get("lam"),
               "n_conv": e0.get("n_conv"), "width": e0.get("width"), "method": method, "params": e0.get("params"),
               "n_seeds": len(items), "seeds": sorted(seeds[(dataset, model, method)]),
               "n_scored": [m.get("n_scored") for _, m in items],
               "epochs": [e.get("epochs") for e, _ in items]}
        row["diffusion"] = _stats([m["diffusion"].get(convention) for _, m in items])[:2]
        row["cosine"] = _stats([m["cosine"] for _, m in items])[:2]
        row["abs_cosine"] = _stats([m.get("abs_cosine") for _, m in items])[:2]
        for key in ("mass_nan", "pointing_nan", "covered"):
            counts = [m.get(key) for _, m in items]
            row[key] = None if any(c is None for c in counts) else [sum(c[k] for c in counts) for k in (0, 1)]
        for k in (0, 1):
            row[f"mass{k + 1}"] = _stats([m["mass"][k] for _, m in items])[:2]
            row[f"point{k + 1}"] = _stats([m["pointing"][k] for _, m in items])[:2]
            row[f"mass_obj{k + 1}"] = _stats([m.get("mass_objects", [None, None])[k] for _, m in items])[:2]
            row[f"point_obj{k + 1}"] = _stats([m.get("pointing_objects", [None, None])[k] for _, m in items])[:2]
        for k in (0, 1):
            # over the composites where the mass accuracy is defined (blank heatmaps left out)
            defined = [(m["mass_sd"][k], (m.get("n_scored") or 0) - (m.get("mass_nan") or [0, 0])[k])
                       for _, m in items if (m.get("mass_sd") or [None, None])[k] is not None]
            ses = [sd / math.sqrt(n) for sd, n in defined if n > 0]
            row[f"mass{k + 1}_se"] = math.sqrt(sum(v * v for v in ses)) / len(ses) if ses else None
        for key in ("accuracy", "recognized", "train_wall_s"):
            row[key] = _stats([e.get(key) for e, _ in items])[:2]
        rows.append(row)
    order = {d: i for i, d in enumerate(models.MODELS)}
    fam = {"lambda": 0, "separate": 1, "depth": 2}
    methods = list(attribution.METHODS)
    rows.sort(key=lambda r: (order.get(r["dataset"], 9), fam[r["family"]], r["lam"] or 0.0, r["n_conv"] or 0,
                             methods.index(r["method"]) if r["method"] in methods else 99))
    return rows


def gt_table(rows: Sequence[dict], dataset: str, *, method: str = "dtd",
             family: str = "lambda") -> tuple[list[str], list[list[str]]]:
    """Chapter 9's table: the ground-truth metrics of one data set's networks, with their undefined counts.

    The metrics are computed on sign-corrected heatmaps (relevance times the sign of its logit), and the
    pointing game on their positive part. A composite has no value where its heatmap holds no positive
    relevance outside the pixels both objects share, or where its object lies inside them (``covered``).

    Parameters
    ----------
    rows : sequence of dict
        :func:`summary`.
    dataset, method, family : str
        Which rows.

    Returns
    -------
    header, body
        One line per network: λ, seeds, scored composites (summed over seeds), mass accuracy and pointing of
        the top-1 and top-2 class (mean ± sd over seeds), the undefined counts of the pointing game
        (top-1 / top-2), |cos| and Eq. 7's d of the top-2 heatmaps on real test images.
    """
    from sepdtd.causes import cell

    header = ["λ", "seeds", "scored", "mass top-1", "mass top-2", "pointing top-1", "pointing top-2",
              "undefined top-1 / top-2", "|cos|", "d"]
    body = []
    for r in rows:
        if (r["dataset"], r["method"], r["family"]) != (dataset, method, family):
            continue
        nan = r.get("pointing_nan")
        body.append(["Baseline" if not r["lam"] else f"{r['lam']:g}", ", ".join(map(str, r.get("seeds", []))),
                     str(sum(n or 0 for n in r["n_scored"])), cell(r["mass1"]), cell(r["mass2"]),
                     cell(r["point1"], pct=True), cell(r["point2"], pct=True),
                     "—" if nan is None else f"{nan[0]} / {nan[1]}", cell(r.get("abs_cosine", (None, None))),
                     cell(r["diffusion"])])
    return header, body


def factors(rows: Sequence[dict], *, lam: float = 1.0) -> list[dict]:
    """How much each factor changes the top-2 explanation, relative to the paper's setting.

    The reference is the baseline network explained with DTD. Each *factor* changes one thing:

    - ``rule``: the explanation method (every other method of :data:`sepdtd.attribution.METHODS`);
    - ``dense``: the dense layers (fine-tuned with Eq. 6 at ``lam``; separate per class);
    - ``depth``: the number of convolutional layers;

    and the change is measured on the similarity of the top-1/top-2 heatmaps (``abs_cosine``, which a
    logit's sign does not change, and the signed ``cosine`` beside it; lower = less alike), Eq. 7 (the
    rows' convention; higher = less diffusion), and the ground truth: the top-2 class's relevance mass
    accuracy and pointing game (higher = its explanation is on its object).

    Returns
    -------
    list of dict
        ``dataset``, ``factor``, ``change`` (a label), the variant's ``model`` and ``method``, and
        ``d_abs_cosine``, ``d_cosine``, ``d_diffusion``, ``d_mass2``, ``d_point2``, ``d_mass_obj2``
        (variant minus reference, means over seeds; None where missing), plus the variant's absolute
        ``mass2``, ``point2`` and ``mass_obj2``.
    """
    by = {(r["dataset"], r["model"], r["method"]): r for r in rows}
    out = []

    def delta(a: dict, b: dict, key: str) -> float | None:
        va, vb = a[key][0], b[key][0]
        return None if va is None or vb is None else va - vb

    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        ref = by.get((dataset, "baseline", "dtd"))
        if ref is None:
            continue
        variants = []
        for method in attribution.METHODS:
            if method != "dtd" and (dataset, "baseline", method) in by:
                variants.append(("rule", attribution.LABELS[method], by[(dataset, "baseline", method)]))
        tag = lam_tag(lam)
        if (dataset, tag, "dtd") in by:
            variants.append(("dense", f"Eq. 6, λ = {lam:.1f}", by[(dataset, tag, "dtd")]))
        for r in rows:
            if r["dataset"] == dataset and r["method"] == "dtd" and r["family"] == "separate":
                variants.append(("dense", f"separate dense layers ({r['width']})", r))
        for r in rows:
            if r["dataset"] == dataset and r["method"] == "dtd" and r["family"] == "depth":
                variants.append(("depth", f"{r['n_conv']} conv layers (Table 1: {ref['n_conv']})", r))
        for factor, change, r in variants:
            out.append({"dataset": dataset, "factor": factor, "change": change, "model": r["model"],
                        "method": r["method"], "d_abs_cosine": delta(r, ref, "abs_cosine"),
                        "d_cosine": delta(r, ref, "cosine"), "d_diffusion": delta(r, ref, "diffusion"),
                        "d_mass2": delta(r, ref, "mass2"), "d_point2": delta(r, ref, "point2"),
                        "d_mass_obj2": delta(r, ref, "mass_obj2"),
                        "mass2": r["mass2"][0], "point2": r["point2"][0], "mass_obj2": r["mass_obj2"][0]})
    return out
