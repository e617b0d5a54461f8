r"""Why the fine-tuned logits go negative, and a λ sweep where λ bites (the sign-aware study).

After fine-tuning with Eq. 5, the top-2 logit is <= 0 on almost every test image, and DTD then explains
it with a negated pattern. For one unit — a (profile, data set, seed) of :mod:`sepdtd.experiments` —
this protocol adds to the unit's kept networks:

1. **Ablations**, each a fine-tune of the unit's kept baseline at :data:`ABLATION_LAM` with one change
   (:data:`ABLATIONS`): the output layer's bias left free of b <= 0 (``abl-free-output-bias``), and
   Eq. 6 on the output layer only instead of every dense layer (``abl-output-penalty``). A third
   ablation needs no network: the logits centred (each image's mean logit subtracted) before DTD,
   measured on every network by the ``"mechanism"`` measurement.
2. **The decomposition** of each logit into the output layer's in-block positive, in-block negative,
   off-block positive and off-block negative contributions and its bias, for the baseline, the
   fine-tunes and the ablations (:func:`sepdtd.pipeline.measure.mechanism_fields`).
3. **A λ sweep** (``sweep-lam<λ>``): fine-tunes of the baseline with Eq. 6 divided by the number of
   off-block weights (``penalty="mean"``), on a log grid of λ (:data:`SWEEP_LAMS`). With Adam every λ of
   the sum of Eq. 6 follows one path (the penalty's gradient dwarfs the cross-entropy's, and Adam
   normalises the step); per weight, λ sets the balance of the two, and the grid goes from no
   separation to full.

Every network gets the ``"paper"`` measurement (accuracy, Eq. 7, cosines, logit signs, in-block
share); the baseline, the fine-tunes and the ablations also the ``"mechanism"`` one.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch

from sepdtd import experiments, utils
from sepdtd.pipeline import measure, store, train, view
from sepdtd.pipeline.config import MeasureConfig, dataset_name, lam_tag

__all__ = ["ABLATIONS", "ABLATION_LAM", "SWEEP_LAMS", "SWEEP_MAX_EPOCHS", "SWEEP_PENALTY", "SEEDS", "jobs",
           "measurements", "run", "reproduce", "unit", "load_results", "ablation_rows", "ablation_table", "parts_table",
           "sweep_rows", "bias_effects", "NETWORK_LABELS", "PART_LABELS"]

#: The ablations: name -> the fine-tuning settings they change (:class:`~sepdtd.pipeline.config.TrainConfig`).
ABLATIONS: dict[str, dict[str, Any]] = {
    "free-output-bias": {"clamp_output_bias": False},
    "output-penalty": {"penalty_layers": "output"},
}

#: The λ of the ablations' fine-tunes (the book's λ).
ABLATION_LAM = 1.0

#: The penalty of the sweep: Eq. 6's sum divided by the number of off-block weights.
SWEEP_PENALTY = "mean"

#: The λ of the sweep, per profile: a log grid from no cut to a full one. Per off-block weight the
#: penalty's gradient is λ / (number of off-block weights): of the order of 1e-6 at λ = 1 and 1e-2 at
#: λ = 1e4 for the first dense layer (about 1e6 off-block weights), against cross-entropy gradients of
#: 1e-3 and less. Five points keep the full
#: profile's networks within the 200 MB budget.
SWEEP_LAMS: dict[str, tuple[float, ...]] = {
    "smoke": (1.0, 1000.0),
    "quick": (1.0, 10.0, 100.0, 1000.0, 10000.0),
    "full": (1.0, 10.0, 100.0, 1000.0, 10000.0),
}

#: The sweep's cap on fine-tuning epochs, where it differs from the profile's. Adam moves a weight by
#: about one learning-rate step per update whatever λ is, so the quick profile's 2 epochs cut no
#: off-block weight to zero; 10 let the sweep reach the λ-dependent balance of the two terms.
SWEEP_MAX_EPOCHS: dict[str, int | None] = {"smoke": None, "quick": 10, "full": None}

#: The seeds :func:`reproduce` runs by default, per profile.
SEEDS: dict[str, tuple[int, ...]] = {"smoke": (0,), "quick": (0,), "full": (0,)}


def _check(profile: str) -> None:
    if profile not in SWEEP_LAMS or profile not in experiments.PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(SWEEP_LAMS)}")


def jobs(profile: str, dataset: str, seed: int = 0) -> list[train.Job]:
    """The unit's jobs, one job per ablation, and the sweep's stack, all from the unit's kept baseline."""
    _check(profile)
    paper = experiments.jobs(profile, dataset, seed)
    fine = paper[1].config
    out = list(paper)
    for name, change in ABLATIONS.items():
        out.append(train.Job((f"abl-{name}",), dataclasses.replace(fine, lams=(ABLATION_LAM,), **change)))
    lams = SWEEP_LAMS[profile]
    stage = fine.stage
    if SWEEP_MAX_EPOCHS.get(profile) is not None:
        stage = dataclasses.replace(stage, max_epochs=SWEEP_MAX_EPOCHS[profile])
    out.append(train.Job(tuple(f"sweep-{lam_tag(lam)}" for lam in lams),
                         dataclasses.replace(fine, lams=lams, penalty=SWEEP_PENALTY, stage=stage)))
    return out


def measurements(profile: str, dataset: str, seed: int = 0) -> dict[str, dict[str, MeasureConfig]]:
    """Measurement kind -> (tag -> measurement): ``"paper"`` for every network, ``"mechanism"`` for the
    baseline, the fine-tunes and the ablations (with the two-object settings of chapters 9-10)."""
    from sepdtd import beyond

    js = jobs(profile, dataset, seed)
    paper = experiments.measurements(profile, dataset, seed)
    b = beyond.PROFILES[profile]
    mech = MeasureConfig(kind="mechanism", dataset=dataset, seed=seed, n_eval=b.n_eval, n_pairs=b.n_pairs,
                         max_scored=b.max_scored, threshold=b.threshold, batch_size=b.batch_size)
    tags = [t for j in js for t in j.tags]
    return {"paper": {t: paper for t in tags}, "mechanism": {t: mech for t in tags if not t.startswith("sweep-")}}


def _family(tag: str) -> str:
    return "ablation" if tag.startswith("abl-") else "sweep" if tag.startswith("sweep-") else "paper"


def unit(profile: str, dataset: str, seed: int = 0, *, results_dir: str | os.PathLike | None = None) -> dict | None:
    """The stored results of the sign-aware study of a unit.

    The paper's networks (baseline and fine-tunes) must be kept and measured; the ablations and the
    sweep are included where they are, and ``missing`` names the others.

    Returns
    -------
    dict or None
        None when a paper network is not kept or not measured. Otherwise ``kind`` ("mechanism"),
        ``profile``, ``dataset``, ``seed``, ``stale``, ``missing`` (tags not kept or not measured yet) and
        ``networks``: one entry per network with ``tag``, ``family`` ("paper", "ablation" or "sweep"),
        ``lam``, ``penalty``, ``penalty_layers``, ``clamp_output_bias``, ``epochs``, ``paper`` (the
        ``"paper"`` fields), ``mechanism`` (the ``"mechanism"`` fields, None for the sweep) and ``stale``.
    """
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    nets = view.networks(root, ds, seed, jobs(profile, ds, seed), measurements(profile, ds, seed))
    done = {t: n for t, n in nets.items() if n["train"] is not None and None not in n["measured"].values()}
    if any(_family(t) == "paper" and t not in done for t in nets):
        return None
    entries = []
    for tag, n in done.items():
        cfg, t = n["train"]["config"], n["train"]["training"]
        entries.append({"tag": tag, "family": _family(tag), "lam": n["lam"], "penalty": cfg["penalty"],
                        "penalty_layers": cfg["penalty_layers"],
                        "clamp_output_bias": cfg.get("clamp_output_bias", True), "epochs": t["epochs"],
                        "stopped_early": t["stopped_early"], "paper": n["measured"]["paper"],
                        "mechanism": n["measured"].get("mechanism"), "stale": n["stale"]})
    return {"kind": "mechanism", "profile": profile, "dataset": ds, "seed": seed, "networks": entries,
            "missing": [t for t in nets if t not in done], "stale": [r for e in entries for r in e["stale"]]}


def load_results(profile: str, *, results_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every stored unit of the study of a profile (those whose paper networks are kept and measured)."""
    root = store.profile_root(profile, results_dir)
    return view.stored_units(root, "mechanism", lambda ds, seed: unit(profile, ds, seed, results_dir=root),
                             "the sign-aware study", "run `python -m sepdtd mechanism` to finish it")


def run(profile: str, dataset: str, seed: int = 0, *, device: str | torch.device = "auto",
        results_dir: str | os.PathLike | None = None, retrain: str = "missing", progress: bool = True,
        checkpoints_dir: str | os.PathLike | None = None) -> dict:
    """Train the unit's missing networks (the paper's, the ablations and the sweep), measure what is not
    current, and return :func:`unit`."""
    _check(profile)
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    imgs = measure.test_images(experiments.measurements(profile, ds, seed))
    train.ensure(root, ds, seed, jobs(profile, ds, seed), device=device, retrain=retrain, progress=progress,
                 checkpoints_dir=checkpoints_dir, profile=profile, test=(imgs["x_test"], imgs["y_test"]))
    for plan in measurements(profile, ds, seed).values():
        measure.measure(root, ds, seed, plan, device=device, progress=progress, profile=profile)
    return unit(profile, ds, seed, results_dir=root)


def reproduce(profile: str, *, datasets: Sequence[str] | str | None = None, seeds: Sequence[int] | None = None,
              device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None,
              retrain: str = "missing", progress: bool = True,
              checkpoints_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every unit of a profile (default: its data sets and :data:`SEEDS`), one after the other; every name
    and seed is checked before the first unit starts."""
    _check(profile)
    names = [datasets] if isinstance(datasets, str) else list(datasets or experiments.PROFILES[profile].datasets)
    units = [(dataset_name(d), s) for s in (SEEDS[profile] if seeds is None else seeds) for d in names]
    for d, s in units:
        jobs(profile, d, s)
    utils.resolve_device(device)
    return [run(profile, d, s, device=device, results_dir=results_dir, retrain=retrain, progress=progress,
                checkpoints_dir=checkpoints_dir) for d, s in units]


def bias_effects(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """What the biases of a network do to DTD, on float images ``x``.

    Returns
    -------
    dict
        ``positive_biases`` (share of the Conv2d/Linear biases > 0) and ``conservation_gap`` (median over the
        images and their top-2 classes of ``|sum_i R_i - f_c| / |f_c|``: the relevance DTD does not pass
        down to the pixels, which only a positive bias loses).
    """
    from sepdtd import dtd

    biases = torch.cat([m.bias.detach().flatten() for m in model.modules()
                        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None])
    with torch.no_grad():
        logits = model(x)
    top = logits.topk(2, dim=1).indices
    total = dtd.relevance(model, x, top, low=0.0, high=1.0).flatten(2).sum(2)
    f = logits.gather(1, top)
    return {"positive_biases": float((biases > 0).double().mean()),
            "conservation_gap": float(((total - f).abs() / f.abs().clamp_min(1e-6)).median())}


# ------------------------------------------------------------------------------------------- tables
def ablation_rows(results: Sequence[dict]) -> list[dict]:
    """One row per (data set, seed, network) of the baseline, the fine-tune at :data:`ABLATION_LAM` and
    the ablations: accuracy, |cos|, logit signs (raw and centred), the top-2 class's pointing game
    (signed, sign-corrected, centred) and the parts of the top-2 logit."""
    rows = []
    for res in results:
        for e in res["networks"]:
            if e["family"] == "sweep" or (e["family"] == "paper" and e["lam"] not in (0.0, ABLATION_LAM)):
                continue
            m, p = e["mechanism"], e["paper"]
            rows.append({"dataset": res["dataset"], "seed": res["seed"], "tag": e["tag"], "family": e["family"],
                         "lam": e["lam"], "accuracy": p["accuracy"], "abs_cosine": p["abs_cosine"],
                         "cosine": p["cosine"], "logit_nonpositive": p["logit_nonpositive"],
                         "centered_logit_nonpositive": m["centered_logit_nonpositive"],
                         "centered_cosine": m["centered_cosine"], "pointing2": m["pointing2"],
                         "pointing2_nan": m["pointing2_nan"], "n_scored": m["n_scored"],
                         "top2_parts": m["logit_parts"]["top2"], "top1_parts": m["logit_parts"]["top1"],
                         "inblock": p["inblock"], "epochs": e["epochs"]})
    return rows


#: How chapter 10 names the networks of :func:`ablation_rows`.
NETWORK_LABELS: dict[str, str] = {"baseline": "baseline", f"lam{ABLATION_LAM!r}": f"λ = {ABLATION_LAM:g}",
                                  "abl-free-output-bias": f"λ = {ABLATION_LAM:g}, output bias free",
                                  "abl-output-penalty": f"λ = {ABLATION_LAM:g}, Eq. 6 on the output layer only"}


def _in_table_order(rows: Sequence[dict]) -> list[dict]:
    """Rows by data set, seed, then the network order of :data:`NETWORK_LABELS`."""
    order = list(NETWORK_LABELS)
    return sorted(rows, key=lambda r: (r["dataset"], r["seed"], order.index(r["tag"]) if r["tag"] in order
                                       else len(order)))


def ablation_table(rows: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    """Chapter 10's table of the ablations: one line per (data set, seed, network) of :func:`ablation_rows`.

    Returns
    -------
    header, body
        Data set, seed, network, test accuracy, the shares of top-1 / top-2 logits <= 0 on the test images
        (raw, then with each image's mean logit subtracted), |cos| of the top-1 and top-2 heatmaps, and the
        top-2 class's sign-corrected pointing game with its undefined count.
    """
    from sepdtd.report import DATASET_LABELS, or_dash

    def shares(pair: Sequence[float | None] | None) -> str:
        return "—" if pair is None else " / ".join(or_dash(v, ".0%") for v in pair)

    header = ["data set", "seed", "network", "accuracy", "logits ≤ 0 (top-1 / top-2)", "centred logits ≤ 0",
              "|cos|", "pointing top-2 (sign-corrected)", "undefined"]
    body = []
    for r in _in_table_order(rows):
        body.append([DATASET_LABELS.get(r["dataset"], r["dataset"]), str(r["seed"]),
                     NETWORK_LABELS.get(r["tag"], r["tag"]), or_dash(r["accuracy"], ".3f"),
                     shares(r["logit_nonpositive"]), shares(r["centered_logit_nonpositive"]),
                     or_dash(r["abs_cosine"], ".3f"), or_dash(r["pointing2"]["corrected"], ".0%"),
                     str(r["pointing2_nan"]["corrected"])])
    return header, body


#: Chapter 10's names of the parts of a logit (:data:`sepdtd.pipeline.measure.LOGIT_PARTS`).
PART_LABELS: dict[str, str] = {"in_pos": "in-block +", "in_neg": "in-block −", "off_pos": "off-block +",
                               "off_neg": "off-block −", "bias": "bias", "logit": "logit"}


def parts_table(rows: Sequence[dict], *, which: str = "top2") -> tuple[list[str], list[list[str]]]:
    """The output layer's contributions to the top-2 (or top-1) logit, per network of :func:`ablation_rows`.

    Each part is a mean over the test images of ``w_cj a_j`` summed over the hidden neurons of one kind
    (in or off the class's block of Eq. 6, positive or negative weight), or the bias; they add up to the
    logit.

    Returns
    -------
    header, body
        Data set, seed, network, then one column per part of :data:`PART_LABELS`.
    """
    from sepdtd.report import DATASET_LABELS

    body = []
    for r in _in_table_order(rows):
        parts = r[f"{which}_parts"]
        body.append([DATASET_LABELS.get(r["dataset"], r["dataset"]), str(r["seed"]),
                     NETWORK_LABELS.get(r["tag"], r["tag"])] + [f"{parts[k]:+.2f}" for k in PART_LABELS])
    return ["data set", "seed", "network"] + list(PART_LABELS.values()), body


def sweep_rows(results: Sequence[dict], *, convention: str | None = None) -> list[dict]:
    """One row per (data set, seed, λ) of the sweep, the baseline first (λ = 0): the profile, accuracy, the
    mean in-block share of the dense layers, |cos| and Eq. 7 under ``convention`` (default
    :data:`sepdtd.report.PRIMARY_CONVENTION`)."""
    from sepdtd import report

    convention = convention or report.PRIMARY_CONVENTION
    rows = []
    for res in results:
        for e in res["networks"]:
            if not (e["family"] == "sweep" or (e["family"] == "paper" and e["lam"] == 0.0)):
                continue
            p = e["paper"]
            shares = [v for v in p["inblock"] if v is not None]
            rows.append({"dataset": res["dataset"], "profile": res["profile"], "seed": res["seed"], "lam": e["lam"],
                         "accuracy": p["accuracy"],
                         "inblock": sum(shares) / len(shares) if shares else None, "abs_cosine": p["abs_cosine"],
                         "d": p["diffusion"].get(convention), "convention": convention, "epochs": e["epochs"],
                         "stopped_early": e["stopped_early"]})
    return sorted(rows, key=lambda r: (r["dataset"], r["seed"], r["lam"]))
