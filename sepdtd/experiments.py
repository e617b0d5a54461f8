r"""The protocol of Section 5.1: pre-train, fine-tune with Eq. 5 for every λ, measure.

For one *unit* — a (profile, data set, seed) — the protocol is two training jobs and one measurement
over the stages of :mod:`sepdtd.pipeline`:

1. ``baseline``: the Table 1 network pre-trained without the penalty until the validation loss has not
   improved for three epochs, best weights kept (:func:`sepdtd.training.fit`);
2. ``lam0.1``, ``lam0.5``, ``lam1.0``, ``lam5.0``: copies of the kept baseline fine-tuned with the
   block-wise penalty of Eq. 6 (objective Eq. 5), one per λ, with the same stopping rule and a fresh
   optimizer, trained together as one stack (:func:`sepdtd.training.fit_stacked`);
3. the ``"paper"`` measurement of every network (:func:`sepdtd.pipeline.measure.paper_fields`): test
   accuracy (Table 3), Eq. 7 between the top-1 and top-2 DTD heatmaps under every convention (Table
   2), cosine, |cosine|, the signs of the two logits, and the in-block share (Figure 6).

CIFAR-10 is trained with random flips and shifts (Section 5.1). :data:`PROFILES` holds the three sets of
settings (``smoke`` for tests, ``quick`` for a laptop, ``full`` for the paper's protocol).

The networks are kept in ``results/<profile>/networks/`` (float16 safetensors with a manifest of their
digests) and the results in the train and measure records beside them (:mod:`sepdtd.pipeline.store`).
:func:`load_results` reads them as one dict per unit; :func:`load_model` loads a kept network on any
machine without training, and :func:`pretrained` (``sepdtd.pretrained``) with its results. A result is
stale when the code would now compute something else: a fingerprint of the training code for the
networks, of each measured field for the numbers (:mod:`sepdtd.pipeline.fingerprint`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sepdtd import models, utils
from sepdtd.pipeline import measure, store, train, view
from sepdtd.pipeline.config import MeasureConfig, Stage, TrainConfig, dataset_name, finetune_seed, lam_tag

__all__ = [
    "LAMBDAS", "Stage", "Profile", "PROFILES", "jobs", "measurements", "finetune_seed", "default_results_dir",
    "run", "reproduce", "ensure_run", "unit", "load_results", "load_model", "load_models", "load_network",
    "pretrained", "Pretrained",
]

#: The regularizer rates of Section 5.1 (Tables 2-3).
LAMBDAS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)


@dataclass(frozen=True)
class Profile:
    """A named set of experiment settings.

    Attributes
    ----------
    name : str
        ``"smoke"``, ``"quick"`` or ``"full"``.
    description : str
        What the profile is: subsets and epoch caps are stated here and shown with its results.
    datasets, seeds : tuple
        The units :func:`reproduce` runs by default.
    lams : tuple of float
        The λ of the fine-tunes (the baseline, λ = 0, is always trained).
    n_train, n_val : int or None
        Training / validation examples drawn (seeded) from the 90 % / 10 % split of the training set;
        None keeps all of them.
    n_test : int or None
        Test images for the accuracy (Table 3); None = the whole test set.
    n_eval : int or None
        Test images, drawn with the seed, for the diffusion of Eq. 7 (Table 2); None = all.
    pretrain, finetune : Stage
        Optimizer settings of the two stages.
    val_fraction : float
        Share of the training set held out for early stopping.
    augment : tuple of str
        Data sets trained with random flips and shifts (CIFAR-10, Section 5.1).
    eval_batch_size : int
        Images per evaluation pass (no effect on the numbers).
    """

    name: str
    description: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    lams: tuple[float, ...]
    n_train: int | None
    n_val: int | None
    n_test: int | None
    n_eval: int | None
    pretrain: Stage
    finetune: Stage
    val_fraction: float = 0.1
    augment: tuple[str, ...] = ("cifar10",)
    eval_batch_size: int = 500


#: The profiles. ``full`` is the paper's protocol; ``quick`` and ``smoke`` are labelled subsets.
PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        description=("SMOKE TEST, not a result: 512 training / 256 validation images, 1 epoch of "
                     "pre-training and 1 epoch per fine-tune, accuracy on 256 and diffusion on 128 test "
                     "images. Checks that the pipeline runs end to end in seconds."),
        datasets=("mnist", "fashion_mnist", "cifar10"), seeds=(0,), lams=LAMBDAS,
        n_train=512, n_val=256, n_test=256, n_eval=128,
        pretrain=Stage(lr=1e-3, batch_size=128, max_epochs=1),
        finetune=Stage(lr=1e-4, batch_size=128, max_epochs=1),
        eval_batch_size=128),
    "quick": Profile(
        name="quick",
        description=("QUICK, a reduced version of Section 5.1 for CPUs (about 5 minutes for the three "
                     "data sets on 2 cores): 10,000 training and 2,000 validation images, pre-training "
                     "capped at 5 epochs and each fine-tune at 2 epochs (early stopping with patience 3 "
                     "rarely triggers within these caps), test accuracy on 2,000 and diffusion on 500 "
                     "test images, one seed. The networks are not trained to convergence: expect lower "
                     "accuracy than Table 3. Use the full profile for the paper's protocol."),
        datasets=("mnist", "fashion_mnist", "cifar10"), seeds=(0,), lams=LAMBDAS,
        n_train=10_000, n_val=2_000, n_test=2_000, n_eval=500,
        pretrain=Stage(lr=1e-3, batch_size=128, max_epochs=5),
        finetune=Stage(lr=1e-4, batch_size=128, max_epochs=2),
        eval_batch_size=250),
    "full": Profile(
        name="full",
        description=("FULL, the protocol of Section 5.1 (pre-training until the loss has not improved for "
                     "3 epochs, fine-tunes of that baseline with Eq. 5 for λ 0.1, 0.5, 1 and 5, accuracy and "
                     "diffusion on the whole 10,000-image test set), with these choices of ours: a random "
                     "10 % of the training set for early stopping, patience on the validation objective, "
                     "best weights kept, a cap of 200 epochs, Adam at lr 1e-3 for pre-training and a fresh "
                     "Adam at lr 1e-4 for each fine-tune; seeds 0, 1 and 2."),
        datasets=("mnist", "fashion_mnist", "cifar10"), seeds=(0, 1, 2), lams=LAMBDAS,
        n_train=None, n_val=None, n_test=None, n_eval=None,
        pretrain=Stage(lr=1e-3, batch_size=128, max_epochs=200),
        finetune=Stage(lr=1e-4, batch_size=128, max_epochs=200),
        eval_batch_size=1000),
}


def _profile(profile: str) -> Profile:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def baseline_config(profile: str, dataset: str, seed: int = 0) -> TrainConfig:
    """The pre-training job of a unit (also the recipe of chapter 10's extra networks)."""
    p, ds = _profile(profile), dataset_name(dataset)
    return TrainConfig(dataset=ds, seed=seed, arch="table1", lams=(0.0,), stage=p.pretrain, n_train=p.n_train,
                       n_val=p.n_val, val_fraction=p.val_fraction, augment=ds in p.augment,
                       eval_batch_size=max(p.eval_batch_size, 1000))


def jobs(profile: str, dataset: str, seed: int = 0) -> list[train.Job]:
    """The two training jobs of a unit: the baseline, and the stack of its fine-tunes (one per λ).

    Raises
    ------
    ValueError
        For an unknown profile or data set, or an invalid seed.
    """
    base = baseline_config(profile, dataset, seed)
    lams = _profile(profile).lams
    fine = dataclasses.replace(base, lams=lams, stage=_profile(profile).finetune, start=f"baseline:{base.key()}")
    return [train.Job(("baseline",), base), train.Job(tuple(lam_tag(lam) for lam in lams), fine)]


def measurements(profile: str, dataset: str, seed: int = 0) -> MeasureConfig:
    """The ``"paper"`` measurement of a unit's networks."""
    p = _profile(profile)
    return MeasureConfig(kind="paper", dataset=dataset, seed=seed, n_test=p.n_test, n_eval=p.n_eval,
                         batch_size=p.eval_batch_size)


def default_results_dir(profile: str) -> Path:
    """``<repository>/results/<profile>``."""
    return store.results_dir_of(profile)


def _plan(profile: str, dataset: str, seed: int) -> tuple[list[train.Job], dict[str, MeasureConfig]]:
    js = jobs(profile, dataset, seed)
    m = measurements(profile, dataset, seed)
    return js, {t: m for j in js for t in j.tags}


# ------------------------------------------------------------------------------------------- views
def unit(profile: str, dataset: str, seed: int = 0, *, results_dir: str | os.PathLike | None = None) -> dict | None:
    """The stored results of a unit as one dict (None when a network of it is not kept or not measured).

    Returns
    -------
    dict or None
        ``profile``, ``dataset``, ``seed``, ``description``, ``config`` (``jobs``: tag -> training
        configuration; ``measure``: the measurement), ``provenance`` (training commit, device and
        times), ``run_wall_s`` (the unit's training), ``split``, ``networks_kept`` (True), ``stale``
        (the reasons of every network) and ``settings``: one entry per network, the baseline (``lam``
        0.0) first, with the measured fields (``accuracy``, ``test_loss``, ``diffusion`` per convention,
        ``cosine``, ``abs_cosine``, ``logit_nonpositive``, ``inblock``, ``n_eval``, ``n_test``), the
        training (``epochs``, ``best_epoch``, ``stopped_early``, ``history``, ``train_wall_s``, ...),
        ``network`` (file and sha256), ``rounding`` (accuracy before and after rounding to float16) and
        ``stale``.
    """
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    js, plan = _plan(profile, ds, seed)
    nets = view.networks(root, ds, seed, js, {"paper": plan})
    if any(n["train"] is None or n["measured"]["paper"] is None for n in nets.values()):
        return None
    settings = []
    for tag, n in nets.items():
        tr, fields = n["train"], n["measured"]["paper"]
        t = tr["training"]
        settings.append({
            "lam": n["lam"], "tag": tag, "seed": t["seed"], **fields,
            **{k: t[k] for k in ("epochs", "best_epoch", "stopped_early", "resumed_from", "images_per_s", "cuda_graph",
                                 "train_wall_s", "history")},
            "wall_s": t["train_wall_s"] + n["measure"]["paper"].get("wall_s", 0.0),
            "network": {k: tr[k] for k in ("file", "sha256", "bytes", "dtype")}, "rounding": tr.get("rounding"),
            "stale": n["stale"]})
    provs = [n["train"]["provenance"] for n in nets.values()]
    t0, t1 = min(p["t_start"] for p in provs), max(p["t_end"] for p in provs)
    first = nets["baseline"]["train"]
    return {
        "schema": store.SCHEMA, "kind": "paper", "profile": profile, "dataset": ds, "seed": seed,
        "description": PROFILES[profile].description if profile in PROFILES else None,
        "config": {"jobs": {t: n["train"]["config"] for t, n in nets.items()}, "measure": plan["baseline"].as_dict()},
        "config_hash": store.digest_json([j.config.key() for j in js] + [plan["baseline"].key()])[:12],
        "provenance": {"commit": "; ".join(sorted({p["commit"] for p in provs})),
                       "device": "; ".join(sorted({p["device"] for p in provs})), "t_start": t0, "t_end": t1,
                       "measure": n["measure"]["paper"]["provenance"]},
        "run_wall_s": t1 - t0, "split": first["split"], "networks_kept": True,
        "inblock_expected": _expected_inblock(ds),
        "stale": [r for s in settings for r in s["stale"]],
        "settings": settings,
    }


def _expected_inblock(dataset: str) -> list[float]:
    from sepdtd import regularization

    net = models.build(dataset)
    return [regularization.expected_inblock_share(d.out_features, d.in_features, net.n_classes)
            for d in models.dense_layers(net)]


def _legacy(path: Path) -> dict | None:
    """A results file of the first layout (networks not kept): read as it is, marked so."""
    try:
        res = json.loads(path.read_text())
    except ValueError as e:
        raise store.RecordError(f"{path} is not valid JSON ({e}); restore it with git") from e
    if not (isinstance(res, dict) and res.get("schema") == 1 and isinstance(res.get("settings"), list)):
        return None
    for s in res["settings"]:
        if not isinstance(s, dict) or not all(k in s for k in ("lam", "accuracy", "diffusion")):
            raise store.RecordError(f"{path}: a setting lacks lam, accuracy or diffusion; restore the file with git")
    return {**res, "networks_kept": False, "stale": []}


def load_results(results_dir: str | os.PathLike, *, profile: str | None = None) -> list[dict]:
    """Every unit stored under a profile's folder, as :func:`unit` dicts, and the results of the first
    layout (``legacy/``: numbers whose networks were not kept, ``networks_kept`` False).

    A unit some of whose networks are not yet measured is left out with a warning.

    Raises
    ------
    FileNotFoundError
        If ``results_dir`` does not exist.
    RecordError
        If a record or legacy file is damaged (the message names it).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder {root}: run `python -m sepdtd reproduce --profile ...` first")
    profile = profile or root.name
    out = []
    for path in sorted((root / "train").glob("*/seed*.json")):
        rec = store.read_record(path)
        if not any(t == "baseline" or t.startswith("lam") for t in rec["networks"]):
            continue
        u = unit(rec.get("profile", profile), rec["dataset"], rec["seed"], results_dir=root)
        if u is None:
            warnings.warn(f"{rec['dataset']} seed {rec['seed']} in {root} is not complete (a network is not kept or "
                          "not measured); run `python -m sepdtd measure` or `reproduce` to finish it",
                          RuntimeWarning, stacklevel=2)
            continue
        out.append(u)
    for path in sorted((root / "legacy").glob("*/seed*.json")):
        res = _legacy(path)
        if res is not None:
            out.append(res)
    return out


# --------------------------------------------------------------------------------------------- runs
def run(profile: str, dataset: str, seed: int = 0, *, device: str | torch.device = "auto",
        results_dir: str | os.PathLike | None = None, retrain: str = "missing", progress: bool = True,
        checkpoints_dir: str | os.PathLike | None = None) -> dict:
    """Train the unit's missing networks, measure what is not current, and return :func:`unit`.

    Parameters
    ----------
    profile, dataset, seed
        The unit.
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    results_dir : path, optional
        The profile's folder (default ``results/<profile>``).
    retrain : {"missing", "stale", "all"}, optional
        See :func:`sepdtd.pipeline.train.ensure`.
    progress : bool, optional
        Progress bars.
    checkpoints_dir : path, optional
        Root of the training checkpoints.
    """
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    js, plan = _plan(profile, ds, seed)
    imgs = measure.test_images(plan["baseline"])
    train.ensure(root, ds, seed, js, device=device, retrain=retrain, progress=progress,
                 checkpoints_dir=checkpoints_dir, profile=profile, test=(imgs["x_test"], imgs["y_test"]))
    measure.measure(root, ds, seed, plan, device=device, progress=progress, profile=profile)
    return unit(profile, ds, seed, results_dir=root)


def _unit_job(args: tuple) -> dict:
    profile, dataset, seed, device, results_dir, retrain, checkpoints_dir, threads = args
    utils.die_with_parent()
    torch.set_num_threads(threads)
    return run(profile, dataset, seed, device=device, results_dir=results_dir, retrain=retrain, progress=False,
               checkpoints_dir=checkpoints_dir)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def reproduce(profile: str, *, datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None, jobs: int = 1,
              retrain: str = "missing", progress: bool = True,
              checkpoints_dir: str | os.PathLike | None = None) -> list[dict]:
    """Run every (data set, seed) unit of a profile (:func:`run`): the experiments of Section 5.1.

    Parameters
    ----------
    profile : str
        A key of :data:`PROFILES`.
    datasets, seeds : sequence, optional
        Default: the profile's.
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    results_dir : path, optional
        Default ``results/<profile>``.
    jobs : int, optional
        Units run at once, each in its own spawned process with ``max(1, cores // jobs)`` threads; a
        worker dies with this process.
    retrain : {"missing", "stale", "all"}, optional
        See :func:`sepdtd.pipeline.train.ensure`.
    progress : bool, optional
        Progress bars (with ``jobs > 1``: one line per finished unit instead).
    checkpoints_dir : path, optional
        Root of the training checkpoints.

    Returns
    -------
    list of dict
        One :func:`unit` dict per unit, data sets x seeds (seed-major).
    """
    prof = _profile(profile)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    names = list(dict.fromkeys(dataset_name(d) for d in ([datasets] if isinstance(datasets, str) else
                                                          (datasets or prof.datasets))))
    seed_list = list(dict.fromkeys(prof.seeds if seeds is None else seeds))
    if not seed_list:
        raise ValueError("no seeds to run")
    units = [(d, s) for s in seed_list for d in names]
    for d, s in units:  # every argument is checked before the first unit starts
        _plan(profile, d, s)
    dev = utils.resolve_device(device)
    root = store.profile_root(profile, results_dir)
    if jobs == 1 or len(units) == 1:
        return [run(profile, d, s, device=dev, results_dir=root, retrain=retrain, progress=progress,
                    checkpoints_dir=checkpoints_dir) for d, s in units]
    workers = min(jobs, len(units))
    threads = max(1, _cores() // workers)
    order = sorted(range(len(units)), key=lambda i: models.MODELS.index(units[i][0]), reverse=True)
    out: list[dict | None] = [None] * len(units)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futs = {pool.submit(_unit_job, (profile, *units[i], str(dev), str(root), retrain,
                                        None if checkpoints_dir is None else str(checkpoints_dir), threads)): i
                for i in order}
        for fut in as_completed(futs):
            i = futs[fut]
            out[i] = fut.result()
            if progress:
                r = out[i]
                print(f"[{profile}] {r['dataset']} seed {r['seed']}: done ({r['run_wall_s']:.1f} s of training, "
                      f"{r['provenance']['device']})", flush=True)
    return [r for r in out if r is not None]


def ensure_run(profile: str, dataset: str, seed: int = 0, device: str | torch.device = "auto", *,
               results_dir: str | os.PathLike | None = None, progress: bool = True, **_: Any) -> dict:
    """The results of a unit for the notebooks: what is stored, with missing networks trained and
    measurements that are not current redone first (:func:`run` with ``retrain="missing"``)."""
    return run(profile, dataset, seed, device=device, results_dir=results_dir, progress=progress)


# ------------------------------------------------------------------------------------------ networks
def load_model(profile: str, dataset: str, lam: float = 0.0, *, seed: int = 0,
               results_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> models.PaperNet:
    """A kept network of a unit (``lam`` 0.0 = baseline), in eval mode, float32, on ``device``.

    The file's sha256 is checked against the manifest and the train record; nothing is trained.

    Raises
    ------
    ValueError
        If ``lam`` is not one of the profile's.
    FileNotFoundError
        If the network is not kept; the message says which command trains it.
    DigestError
        If the file is damaged or swapped.
    """
    p = _profile(profile)
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not math.isfinite(lam) \
            or (float(lam) != 0.0 and float(lam) not in p.lams):
        raise ValueError(f"λ = {lam!r} is not one of profile {profile!r}'s {p.lams} (0.0 = baseline)")
    return load_network(profile, dataset, lam_tag(float(lam)), seed=seed, results_dir=results_dir, device=device)


def load_network(profile: str, dataset: str, tag: str, *, seed: int = 0,
                 results_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Any kept network of a (data set, seed) folder by its tag (``baseline``, ``lam1.0``, ``depth-1``,
    ``abl-output-penalty``, ...), checked against the manifest and the train record, in eval mode.

    Raises
    ------
    FileNotFoundError
        If no network of that tag is kept; the message says which command trains the paper's networks.
    DigestError
        If the file is damaged or swapped.
    """
    root = store.profile_root(profile, results_dir)
    ds = dataset_name(dataset)
    path = store.record_path(root, "train", ds, seed)
    entry = store.read_record(path)["networks"].get(tag) if path.exists() else None
    if entry is None:
        raise FileNotFoundError(f"the {profile} network {tag} of {ds} seed {seed} is not kept in {root}: train it "
                                f"with `python -m sepdtd reproduce --profile {profile} --datasets {ds} --seeds {seed}` "
                                "(the paper's networks) or the command of its chapter")
    return measure.load_network(root, entry, device=device)


def load_models(profile: str, dataset: str, *, seed: int = 0, results_dir: str | os.PathLike | None = None,
                device: str | torch.device = "cpu") -> dict[float, models.PaperNet]:
    """Every kept network of a unit, λ -> model (0.0 = baseline), as :func:`load_model`."""
    return {lam: load_model(profile, dataset, lam, seed=seed, results_dir=results_dir, device=device)
            for lam in (0.0, *_profile(profile).lams)}


class Pretrained(NamedTuple):
    """A kept network of the paper with its results (:func:`pretrained`).

    Attributes
    ----------
    model : sepdtd.models.PaperNet
        The network, in eval mode, float32.
    record : dict
        Its entry of the unit's ``settings`` (:func:`unit`): ``lam``, ``tag``, ``accuracy``, ``diffusion``
        per convention, ``cosine``, ``abs_cosine``, ``inblock``, the training history, ``network`` (file
        and sha256), ``stale``, ...
    unit : dict
        The whole unit (:func:`unit`): every setting, the configurations and the provenance.
    """

    model: models.PaperNet
    record: dict
    unit: dict


def pretrained(dataset: str, lam: float = 0.0, *, seed: int = 0, profile: str = "full",
               results_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Pretrained:
    """A network of the paper from the kept networks, with its results record.

    Parameters
    ----------
    dataset : str
        ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
    lam : float
        λ of the fine-tune (Eq. 5), one of the profile's (:data:`LAMBDAS` for ``"full"``); 0.0 is the
        baseline.
    seed : int
        The unit's seed.
    profile : str
        The profile whose kept networks to read (``"full"``: the committed ones, ``results/full``).
    results_dir : str or os.PathLike, optional
        Where the profile's results live (default: ``results/<profile>`` of the repository).
    device : str or torch.device
        Where to put the network.

    Returns
    -------
    Pretrained
        ``(model, record, unit)``: the network (eval mode, float32, its sha256 checked against the
        manifest and the train record), its setting of the unit's results and the whole unit.

    Raises
    ------
    ValueError
        For an unknown profile or data set, or a λ the profile does not train.
    FileNotFoundError
        If the network is not kept, or its unit is not measured; the message says which command makes it.
    sepdtd.pipeline.store.DigestError
        If the network file is damaged or swapped.

    Examples
    --------
    >>> net, record, _ = sepdtd.pretrained("mnist", lam=1.0, seed=0)       # doctest: +SKIP
    >>> record["accuracy"], record["diffusion"]["raw"]                      # doctest: +SKIP
    """
    model = load_model(profile, dataset, lam, seed=seed, results_dir=results_dir, device=device)
    results = unit(profile, dataset, seed, results_dir=results_dir)
    if results is None:
        root = store.profile_root(profile, results_dir)
        raise FileNotFoundError(f"the {profile} unit of {dataset_name(dataset)} seed {seed} in {root} is not complete "
                                f"(a network of it is not kept or not measured): run `python -m sepdtd reproduce "
                                f"--profile {profile} --datasets {dataset_name(dataset)} --seeds {seed}`")
    record = next(s for s in results["settings"] if s["lam"] == float(lam))
    return Pretrained(model, record, results)
