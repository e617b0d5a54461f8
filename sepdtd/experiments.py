r"""The experiment pipeline of Section 5.1: pre-train, fine-tune with Eq. 5 for every λ, measure.

For one *unit* — a (profile, data set, seed) — :func:`run` does what Section 5.1 describes:

1. pre-train the Table 1 network without the penalty until the validation loss has not improved for
   three epochs, keeping the best weights: the **baseline** (``lam = 0``);
2. fine-tune a *copy* of the baseline with the block-wise penalty of Eq. 6 (objective Eq. 5) for every
   ``λ ∈ {0.1, 0.5, 1.0, 5.0}``, with the same stopping rule and a fresh optimizer;
3. for every setting measure the test accuracy (Table 3), the diffusion of Eq. 7 between the top-1 and
   top-2 DTD heatmaps under each scaling convention of :mod:`sepdtd.metrics` (Table 2), the cosine
   similarity of those heatmaps, and the in-block share of the dense weights (Figure 6).

CIFAR-10 is trained with random flips and shifts (Section 5.1). Everything that changes the numbers
is a field of :class:`Config`; :data:`PROFILES` holds the three sets of settings (``smoke`` for tests,
``quick`` for the default book build on CPUs, ``full`` for the paper's protocol).

Files (see ``CONTRIBUTING.md``): the results of a unit go to
``results/<profile>/<dataset>/seed<seed>-<config_hash>.json``, written atomically once everything is
done; a results file that exists is loaded, never recomputed, and one written for another
configuration is refused. Checkpoints live under
``$SEPDTD_CACHE/checkpoints/<profile>/<dataset>/seed<seed>-<config_hash>/``: the resumable training
states of the baseline (``baseline.pt``) and of the stacked fine-tunes (``finetunes.pt``), the best
weights of every setting (``<tag>.state.pt``) and ``partial.json``, the finished settings of an
interrupted run. Rerunning an interrupted unit skips the finished settings and resumes unfinished
trainings from their last checkpoint.

The four fine-tunes of a unit share their start, their data and their batch order: they are trained
together as one stacked network (:func:`sepdtd.training.fit_stacked`, :mod:`sepdtd.stacked`), each
with its own λ, early stopping and best weights, in the kernels of one network. On a GPU, where these
small networks leave the device mostly idle, this costs about what one fine-tune costs; the shuffling,
augmentation and dropout of the stack are seeded by :func:`finetune_seed`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import platform
import re
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sepdtd import models, utils

__all__ = [
    "SCHEMA", "LAMBDAS", "Stage", "Profile", "PROFILES", "Config", "make_config", "config_hash", "code_hash",
    "finetune_seed", "default_results_dir", "result_path", "checkpoint_root", "checkpoint_dir", "run", "reproduce", "load_results",
    "load_models", "load_model", "ensure_run",
]

#: Version of the results-file layout (``CONTRIBUTING.md``, "Results files").
SCHEMA = 1

#: The regularizer rates of Section 5.1 (Tables 2-3).
LAMBDAS: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)

#: The modules whose source determines the numbers; :func:`code_hash` covers them.
SOURCES = ("data", "models", "dtd", "regularization", "metrics", "training", "stacked", "experiments")

_REPO = Path(__file__).resolve().parent.parent
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Stage:
    """Optimizer settings of one training stage (pre-training or fine-tuning, Section 5.1).

    Attributes
    ----------
    lr : float
        Learning rate (a fresh optimizer is created for each stage and each fine-tune).
    batch_size : int
        Training batch size.
    max_epochs : int
        Upper bound on the epochs; early stopping normally ends training first.
    patience : int
        Epochs without improvement of the validation objective before stopping (3 in the paper).
    optimizer : str
        ``"adam"``, ``"sgd"`` or ``"rmsprop"`` (see :func:`sepdtd.training.fit`).
    weight_decay : float
        Coupled L2 weight decay of the optimizer.
    """

    lr: float
    batch_size: int
    max_epochs: int
    patience: int = 3
    optimizer: str = "adam"
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("batch_size", "max_epochs", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if self.optimizer not in ("adam", "sgd", "rmsprop"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose adam, sgd or rmsprop")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


@dataclass(frozen=True)
class Profile:
    """A named set of experiment settings (one source of truth for :func:`make_config`).

    Attributes
    ----------
    name : str
        ``"smoke"``, ``"quick"`` or ``"full"``.
    description : str
        What the profile is, honestly: subsets and epoch caps are stated here and copied into results.
    datasets, seeds : tuple
        The units :func:`reproduce` runs by default.
    lams : tuple of float
        The λ of the fine-tunes (the baseline, λ = 0, is always run).
    n_train, n_val : int or None
        Training / validation examples drawn (seeded) from the 90 % / 10 % split of the training set;
        None keeps all of them.
    n_test : int or None
        Test images for the accuracy (Table 3); None = the whole test set.
    n_eval : int or None
        Test images, drawn at random with the seed, for the diffusion of Eq. 7 (Table 2); None = all.
    pretrain, finetune : Stage
        Optimizer settings of the two stages.
    val_fraction : float
        Share of the training set held out for early stopping.
    augment : tuple of str
        Data sets trained with random flips and shifts (CIFAR-10, Section 5.1).
    eval_batch_size : int
        Images per DTD / evaluation pass (no effect on the numbers).
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
        description=("FULL, the protocol of Section 5.1: pre-training and every fine-tune until the loss "
                     "has not improved for 3 epochs, CIFAR-10 with flips and shifts, λ in {0.1, 0.5, 1.0, 5.0} "
                     "(the paper's); with our choices where it is silent: the whole training set minus a "
                     "random 10 % validation split whose objective decides the stop, a cap of 200 epochs, "
                     "best weights kept, Adam at lr 1e-3 for pre-training and a fresh Adam at lr 1e-4 for "
                     "the fine-tunes from a copy of the baseline; accuracy and diffusion on the whole "
                     "10,000-image test set; seeds 0, 1, 2."),
        datasets=("mnist", "fashion_mnist", "cifar10"), seeds=(0, 1, 2), lams=LAMBDAS,
        n_train=None, n_val=None, n_test=None, n_eval=None,
        pretrain=Stage(lr=1e-3, batch_size=128, max_epochs=200),
        finetune=Stage(lr=1e-4, batch_size=128, max_epochs=200),
        eval_batch_size=1000),
}


def _dataset_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in models.MODELS:
        raise ValueError(f"unknown data set {name!r}: choose one of {', '.join(models.MODELS)}")
    return key


def _opt_count(name: str, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"{name} must be None (all) or an int >= 1, got {v!r}")


@dataclass(frozen=True)
class Config:
    """Every setting of one unit (profile, data set, seed) that changes its numbers.

    :func:`config_hash` covers all fields except those marked ``metadata={"hash": False}``
    (``eval_batch_size``: how the work is scheduled, not what is computed).
    Use :func:`make_config` to get the configuration of a profile.

    Attributes
    ----------
    profile, dataset : str
        Profile name (a folder name) and data set (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``).
    seed : int
        Seeds the train/validation split, the subsets, the initial weights (:func:`sepdtd.models.build`),
        the pre-training and (with λ, :func:`finetune_seed`) every fine-tune.
    lams : tuple of float
        λ > 0 of the fine-tunes (Eq. 5); the baseline (λ = 0) is always run.
    n_train, n_val, n_test, n_eval, val_fraction : see :class:`Profile`.
    augment : bool
        Random flips and shifts during training (CIFAR-10 in Section 5.1).
    clamp_bias : bool
        Keep biases <= 0 during training (DTD's assumption, Section 2.2).
    n_blocks : int or None
        Diagonal blocks of Eq. 6; None = the number of classes (the paper's C).
    pretrain, finetune : Stage
        Optimizer settings of the two stages.
    """

    profile: str
    dataset: str
    seed: int
    lams: tuple[float, ...] = LAMBDAS
    n_train: int | None = None
    n_val: int | None = None
    n_test: int | None = None
    n_eval: int | None = None
    val_fraction: float = 0.1
    augment: bool = False
    clamp_bias: bool = True
    n_blocks: int | None = None
    pretrain: Stage = Stage(lr=1e-3, batch_size=128, max_epochs=200)
    finetune: Stage = Stage(lr=1e-4, batch_size=128, max_epochs=200)
    eval_batch_size: int = field(default=500, metadata={"hash": False})

    def __post_init__(self) -> None:
        if not isinstance(self.profile, str) or not _NAME_RE.match(self.profile):
            raise ValueError(f"profile must be a name of letters, digits, '_' or '-', got {self.profile!r}")
        object.__setattr__(self, "dataset", _dataset_name(self.dataset))
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {self.seed!r}")
        lams = tuple(self.lams)
        for lam in lams:
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
                raise ValueError(f"every λ must be a finite number, got {lam!r}")
            if lam < 0:
                raise ValueError(f"λ must be >= 0 (the regularizer rate of Eq. 5), got {lam!r}")
            if lam == 0:
                raise ValueError("λ = 0 is the baseline, which is always run: list only the λ > 0 of the fine-tunes")
        lams = tuple(float(lam) for lam in lams)
        if len(set(lams)) != len(lams):
            raise ValueError(f"duplicate λ in {lams}")
        object.__setattr__(self, "lams", lams)
        for name in ("n_train", "n_val", "n_test", "n_eval", "n_blocks"):
            _opt_count(name, getattr(self, name))
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction!r}")
        for name in ("pretrain", "finetune"):
            v = getattr(self, name)
            if isinstance(v, dict):
                v = Stage(**v)
                object.__setattr__(self, name, v)
            if not isinstance(v, Stage):
                raise TypeError(f"{name} must be a Stage, got {type(v).__name__}")
        if isinstance(self.eval_batch_size, bool) or not isinstance(self.eval_batch_size, int) \
                or self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be an int >= 1, got {self.eval_batch_size!r}")

    def as_dict(self) -> dict:
        """All fields as a JSON-able dict (nested stages as dicts, tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Inverse of :meth:`as_dict` (unknown keys are an error)."""
        d = dict(d)
        for k in _LEGACY_UNHASHED:
            d.pop(k, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown Config fields {sorted(unknown)}: the file was written by another version")
        if "lams" in d:
            d["lams"] = tuple(d["lams"])
        return cls(**d)


#: Scheduling-only fields of earlier versions, still found in older results files (never hashed).
_LEGACY_UNHASHED = ("parallel_finetune",)


def _hashed_fields(d: dict) -> dict:
    skip = {f.name for f in dataclasses.fields(Config) if not f.metadata.get("hash", True)}
    skip.update(_LEGACY_UNHASHED)
    return {k: v for k, v in d.items() if k not in skip}


def _hash_of_dict(d: dict) -> str:
    blob = json.dumps(_hashed_fields(d), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def config_hash(config: Config) -> str:
    """First 12 hex digits of the sha256 of the configuration's canonical JSON.

    Canonical: keys sorted, no whitespace, floats as Python writes them (``1`` and ``1.0`` become the
    same ``1.0`` because :class:`Config` stores floats), scheduling-only fields left out.

    Parameters
    ----------
    config : Config
        The unit's configuration.

    Returns
    -------
    str
        12 lowercase hex digits, stable across processes, machines and Python versions.
    """
    if not isinstance(config, Config):
        raise TypeError(f"config_hash expects a Config, got {type(config).__name__}")
    return _hash_of_dict(config.as_dict())


def code_hash() -> str:
    """Hash (12 hex digits) of the sources that produce the numbers (:data:`SOURCES`).

    A result whose ``code_hash`` differs from the current one is *stale*: the code that produced it has
    changed since (:mod:`sepdtd.report` marks it). A missing module contributes its absence.
    """
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for name in SOURCES:
        path = here / f"{name}.py"
        h.update(name.encode() + b"\0")
        h.update(path.read_bytes() if path.exists() else b"<missing>")
        h.update(b"\0")
    return h.hexdigest()[:12]


def _get_profile(profile: str) -> Profile:
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    return PROFILES[profile]


def make_config(profile: str, dataset: str, seed: int = 0) -> Config:
    """The :class:`Config` of ``dataset`` and ``seed`` under a profile of :data:`PROFILES`.

    Raises
    ------
    ValueError
        For an unknown profile or data set, or an invalid seed.
    """
    p = _get_profile(profile)
    ds = _dataset_name(dataset)
    return Config(profile=p.name, dataset=ds, seed=seed, lams=p.lams, n_train=p.n_train, n_val=p.n_val,
                  n_test=p.n_test, n_eval=p.n_eval, val_fraction=p.val_fraction, augment=ds in p.augment,
                  pretrain=p.pretrain, finetune=p.finetune, eval_batch_size=p.eval_batch_size)


def finetune_seed(seed: int) -> int:
    """Seed of the stacked fine-tunes of a unit with ``seed`` (the baseline uses ``seed`` itself).

    Derived from ``seed`` by sha256, so that the fine-tunes' stream of shuffles, augmentations and
    dropout masks differs from the baseline's.
    """
    digest = hashlib.sha256(f"finetune/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


# --------------------------------------------------------------------------------------------- paths
def default_results_dir(profile: str) -> Path:
    """``<repository>/results/<profile>``."""
    return _REPO / "results" / profile


def result_path(config: Config, results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/<dataset>/seed<seed>-<config_hash>.json`` (default ``results/<profile>``)."""
    root = Path(results_dir) if results_dir is not None else default_results_dir(config.profile)
    return root / config.dataset / f"seed{config.seed}-{config_hash(config)}.json"


def checkpoint_root() -> Path:
    """``$SEPDTD_CACHE/checkpoints``, else ``~/.cache/sepdtd/checkpoints``."""
    root = os.environ.get("SEPDTD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sepdtd") / "checkpoints"


def checkpoint_dir(config: Config, checkpoints_dir: str | os.PathLike | None = None) -> Path:
    """``<checkpoint root>/<profile>/<dataset>/seed<seed>-<config_hash>/``."""
    root = Path(checkpoints_dir) if checkpoints_dir is not None else checkpoint_root()
    return root / config.profile / config.dataset / f"seed{config.seed}-{config_hash(config)}"


def _tag(lam: float) -> str:
    return "baseline" if lam == 0 else f"lam{float(lam)!r}"


# ---------------------------------------------------------------------------------------------- data
def _subset(idx: torch.Tensor, n: int | None, seed: int, salt: str) -> torch.Tensor:
    """A seeded random subset of ``n`` of the indices (sorted), or all of them when ``n`` is None or larger."""
    if n is None or n >= idx.numel():
        return idx
    key = int.from_bytes(hashlib.sha256(f"{salt}/{seed}".encode()).digest()[:4], "big")
    pick = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(key))[:n]
    return idx[pick.sort().values]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:12]


def _prepare_arrays(config: Config) -> dict[str, Any]:
    """Load the data set and cut the split and subsets of ``config`` (CPU tensors plus sizes/digests)."""
    from sepdtd import data

    ds = data.load(config.dataset)
    x_train, y_train = torch.as_tensor(ds.x_train), torch.as_tensor(ds.y_train).long()
    x_test, y_test = torch.as_tensor(ds.x_test), torch.as_tensor(ds.y_test).long()
    tr, va = data.train_val_split(int(y_train.shape[0]), val_fraction=config.val_fraction, seed=config.seed)
    tr, va = torch.as_tensor(tr).long(), torch.as_tensor(va).long()
    tr = _subset(tr, config.n_train, config.seed, "train")
    va = _subset(va, config.n_val, config.seed, "val")
    all_test = torch.arange(y_test.shape[0])
    te = _subset(all_test, config.n_test, config.seed, "test")
    ev = _subset(all_test, config.n_eval, config.seed, "eval")
    return {
        "x_train": x_train[tr].contiguous(), "y_train": y_train[tr].contiguous(),
        "x_val": x_train[va].contiguous(), "y_val": y_train[va].contiguous(),
        "x_test": x_test[te].contiguous(), "y_test": y_test[te].contiguous(),
        "x_eval": x_test[ev].contiguous(),
        "split": {"n_train": int(tr.numel()), "n_val": int(va.numel()), "n_test": int(te.numel()),
                  "n_eval": int(ev.numel()), "train_idx_sha": _digest(tr), "val_idx_sha": _digest(va),
                  "test_idx_sha": _digest(te), "eval_idx_sha": _digest(ev), "split_seed": config.seed},
    }


_TENSORS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "x_eval")


def _to_device(arrays: dict, dev: torch.device) -> dict:
    out = dict(arrays)
    for k in _TENSORS:
        out[k] = torch.as_tensor(arrays[k]).to(dev)
    return out


# -------------------------------------------------------------------------------------- one setting
def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _measure(config: Config, lam: float, model: models.PaperNet, hist, arrays: dict, ckdir: Path,
             dev: torch.device, seed: int, t_start: float, t_trained: float) -> dict:
    """Save the trained weights of one setting, measure them (Tables 2-3, Figure 6); return its entry."""
    from sepdtd import metrics, regularization, training

    t0 = time.time()
    utils.atomic_torch_save(ckdir / f"{_tag(lam)}.state.pt",
                            {k: v.detach().cpu() for k, v in model.state_dict().items()})
    model.eval()
    test_loss, accuracy = training.evaluate(model, arrays["x_test"], arrays["y_test"], device=dev,
                                            batch_size=1000)
    dv = metrics.diffusion_variants(model, arrays["x_eval"], low=0.0, high=1.0,
                                    batch_size=config.eval_batch_size, device=dev)
    inblock = regularization.inblock_share(model, config.n_blocks)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t_end = time.time()
    h = hist.as_dict()
    return {
        "lam": float(lam), "seed": seed, "accuracy": float(accuracy), "test_loss": float(test_loss),
        "n_test": int(arrays["y_test"].shape[0]),
        "epochs": int(hist.epochs), "best_epoch": int(hist.best_epoch),
        "stopped_early": bool(hist.stopped_early), "resumed_from": int(h.get("resumed_from", 0)),
        "images_per_s": float(hist.images_per_s), "cuda_graph": bool(h.get("cuda_graph", False)),
        "train_wall_s": t_trained - t_start, "eval_wall_s": t_end - t0, "wall_s": t_end - t_start,
        "t_start": t_start, "t_end": t_end,
        "diffusion": {c: float(dv[c]) for c in metrics.CONVENTIONS},
        "cosine": float(dv["cosine"]), "abs_cosine": float(dv["abs_cosine"]),
        "logit_nonpositive": [float(dv["top1_nonpositive"]), float(dv["top2_nonpositive"])],
        "inblock": [_finite_or_none(s) for s in inblock],
        "n_eval": int(dv["n"]),
        "history": {k: [float(v) for v in h[k]] for k in ("train_loss", "val_loss", "val_accuracy", "penalty")
                    if k in h},
    }


def _train_baseline(config: Config, arrays: dict, ckdir: Path, dev: torch.device, progress: bool,
                    ckey: str) -> dict:
    """Pre-train the baseline (λ = 0) until early stopping, save and measure it."""
    from sepdtd import training

    t_start = time.time()
    stage = config.pretrain
    model = models.build(config.dataset, seed=config.seed)
    hist = training.fit(
        model, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
        lam=0.0, n_blocks=config.n_blocks, lr=stage.lr, batch_size=stage.batch_size,
        max_epochs=stage.max_epochs, patience=stage.patience, augment=config.augment,
        clamp_bias=config.clamp_bias, device=dev, seed=config.seed, checkpoint=ckdir / "baseline.pt",
        checkpoint_key=f"{ckey}/baseline", progress=progress, optimizer=stage.optimizer,
        weight_decay=stage.weight_decay, eval_batch_size=1000)
    return _measure(config, 0.0, model, hist, arrays, ckdir, dev, config.seed, t_start, time.time())


def _train_finetunes(config: Config, todo: list[float], arrays: dict, ckdir: Path, dev: torch.device,
                     progress: bool, ckey: str, finish) -> None:
    """Fine-tune copies of the baseline for every λ of the unit as one stack (Eq. 5); measure those in ``todo``.

    The stack always holds all of ``config.lams`` (the members share batches and the dropout stream,
    so a stack of fewer λ would give other numbers); its checkpoint makes a rerun after an interruption
    resume it, or load it when it had finished.
    """
    from sepdtd import training

    t_start = time.time()
    stage = config.finetune
    base = torch.load(ckdir / "baseline.state.pt", map_location="cpu", weights_only=True)
    # The fine-tunes start from the baseline as it is kept: rounded to float16.
    base = {k: v.half().float() if v.is_floating_point() else v for k, v in base.items()}
    nets = []
    for _ in config.lams:
        m = models.build(config.dataset, seed=config.seed)
        m.load_state_dict(base)
        nets.append(m)
    seed = finetune_seed(config.seed)
    hists = training.fit_stacked(
        nets, list(config.lams), arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
        n_blocks=config.n_blocks, lr=stage.lr, batch_size=stage.batch_size, max_epochs=stage.max_epochs,
        patience=stage.patience, augment=config.augment, clamp_bias=config.clamp_bias, device=dev, seed=seed,
        checkpoint=ckdir / "finetunes.pt", checkpoint_key=f"{ckey}/finetunes", progress=progress,
        optimizer=stage.optimizer, weight_decay=stage.weight_decay, eval_batch_size=1000)
    t_trained = time.time()
    for lam, net, hist in zip(config.lams, nets, hists):
        if lam in todo:
            finish(_measure(config, lam, net, hist, arrays, ckdir, dev, seed, t_start, t_trained))


# ------------------------------------------------------------------------------------- partial state
def _read_partial(ckdir: Path, chash: str, ccode: str) -> dict[str, dict]:
    """Finished settings of an interrupted run (tag -> entry), only those whose weights are on disk."""
    path = ckdir / "partial.json"
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warnings.warn(f"{path} is unreadable ({e}); recomputing every setting", RuntimeWarning, stacklevel=3)
        return {}
    if state.get("config_hash") != chash:
        raise ValueError(f"{path} belongs to configuration {state.get('config_hash')}, not {chash}: the "
                         f"checkpoint folder was reused for another configuration; delete {ckdir} and rerun")
    if state.get("code_hash") != ccode:
        warnings.warn(f"{path} was written by other code (code_hash {state.get('code_hash')} vs {ccode}); "
                      "recomputing every setting", RuntimeWarning, stacklevel=3)
        return {}
    done = {tag: s for tag, s in state.get("settings", {}).items() if (ckdir / f"{tag}.state.pt").exists()}
    if "baseline" not in done:
        return {}  # the fine-tunes start from the baseline: without it, nothing finished counts
    return done


def _write_partial(ckdir: Path, config: Config, chash: str, ccode: str, done: dict[str, dict]) -> None:
    utils.atomic_write_json(ckdir / "partial.json", {
        "schema": SCHEMA, "config": config.as_dict(), "config_hash": chash, "code_hash": ccode,
        "settings": done})


# ------------------------------------------------------------------------------------------ results
def _read_result(path: Path, config: Config) -> dict:
    """Load a results file and make sure it belongs to ``config`` (raises otherwise)."""
    try:
        res = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"results file {path} is not valid JSON ({e}); delete it and rerun") from e
    want = config_hash(config)
    got = res.get("config_hash") if isinstance(res, dict) else None
    own = _hash_of_dict(res["config"]) if isinstance(res, dict) and isinstance(res.get("config"), dict) else None
    if got != want or own != want:
        raise ValueError(
            f"results file {path} was produced by another configuration (its config hashes to {own}, it "
            f"claims {got}; this run's is {want}); it is never reused. Move or delete it and rerun.")
    current = code_hash()
    if res.get("code_hash") != current:
        warnings.warn(f"{path} was produced by other code (code_hash {res.get('code_hash')} vs current "
                      f"{current}): it is stale (the report marks it); delete it to recompute",
                      RuntimeWarning, stacklevel=3)
    return res


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def _compute(config: Config, *, device: str | torch.device, results_path: Path | None, progress: bool,
             checkpoints_dir: str | os.PathLike | None) -> dict:
    """Run (or resume) the unit; write the results file when ``results_path`` is given."""
    t_start = time.time()
    dev = utils.resolve_device(device)
    chash, ccode = config_hash(config), code_hash()
    ckey = f"{chash}/{ccode}"
    ckdir = checkpoint_dir(config, checkpoints_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    done = _read_partial(ckdir, chash, ccode)
    resumed = sorted(done, key=lambda t: -1.0 if t == "baseline" else float(t[3:]))

    arrays_cpu = _prepare_arrays(config)
    arrays = _to_device(arrays_cpu, dev)
    tags = ["baseline"] + [_tag(lam) for lam in config.lams]
    todo = [lam for lam in config.lams if _tag(lam) not in done]
    bar = tqdm(total=len(tags), initial=len(done), disable=not progress, unit="setting",
               desc=f"{config.profile} {config.dataset} seed{config.seed}")

    def finish(entry: dict) -> None:
        done[_tag(entry["lam"])] = entry
        _write_partial(ckdir, config, chash, ccode, done)
        bar.update(1)
        bar.set_postfix(lam=entry["lam"], acc=f"{entry['accuracy']:.3f}")

    try:
        if "baseline" not in done:
            finish(_train_baseline(config, arrays, ckdir, dev, progress, ckey))
        if todo:
            _train_finetunes(config, todo, arrays, ckdir, dev, progress, ckey, finish)
    finally:
        bar.close()

    t_end = time.time()
    settings = [done[t] for t in tags]
    first = models.build(config.dataset, seed=0)
    dense = list(models.dense_layers(first))
    from sepdtd import regularization

    n_blocks = config.n_blocks or first.n_classes
    result = {
        "schema": SCHEMA, "profile": config.profile, "dataset": config.dataset, "seed": config.seed,
        "description": _description(config),
        "config": config.as_dict(), "config_hash": chash, "code_hash": ccode,
        "provenance": {
            "commit": utils.git_commit(), "versions": utils.package_versions(), "device": utils.device_name(dev),
            "started": _iso(t_start), "finished": _iso(t_end), "t_start": t_start, "t_end": t_end,
            "host": platform.node(), "threads": torch.get_num_threads(), "finetunes": "stacked",
            "resumed_settings": resumed,
        },
        "run_wall_s": t_end - t_start,
        "split": arrays_cpu["split"],
        "inblock_expected": [regularization.expected_inblock_share(d.out_features, d.in_features, n_blocks)
                             for d in dense],
        "settings": settings,
    }
    if results_path is not None:
        utils.atomic_write_json(results_path, result)
    return result


def _description(config: Config) -> str:
    """The profile's description, or a note that the configuration is not the profile's."""
    try:
        same = config_hash(make_config(config.profile, config.dataset, config.seed)) == config_hash(config)
    except ValueError:
        same = False
    if same:
        return PROFILES[config.profile].description
    return f"custom configuration (not the {config.profile!r} profile's settings); see 'config'"


# --------------------------------------------------------------------------------------- public API
def run(config: Config, *, device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None,
        progress: bool = True, checkpoints_dir: str | os.PathLike | None = None) -> dict:
    """Run the protocol of Section 5.1 for one unit, or load its results if they exist.

    Parameters
    ----------
    config : Config
        The unit (see :func:`make_config`).
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    results_dir : path, optional
        Folder of the profile's results (default ``results/<profile>`` in the repository).
    progress : bool, optional
        tqdm bars over settings and epochs.
    checkpoints_dir : path, optional
        Root of the checkpoints (default :func:`checkpoint_root`).

    Returns
    -------
    dict
        The results (``CONTRIBUTING.md``, "Results files"): ``settings`` holds the baseline (``lam``
        0.0) and every λ with accuracy (Table 3), diffusion per convention (Eq. 7, Table 2), cosine,
        in-block shares, history and timing; ``provenance`` and ``run_wall_s`` say where and how long.

    Raises
    ------
    ValueError
        If the results file for this configuration holds another configuration (never reused).
    """
    if not isinstance(config, Config):
        raise TypeError(f"run expects a Config (see make_config), got {type(config).__name__}")
    path = result_path(config, results_dir)
    if path.exists():
        return _read_result(path, config)
    return _compute(config, device=device, results_path=path, progress=progress, checkpoints_dir=checkpoints_dir)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _unit_job(args: tuple) -> dict:
    config, device, results_dir, checkpoints_dir, threads = args
    torch.set_num_threads(threads)
    return run(config, device=device, results_dir=results_dir, progress=False, checkpoints_dir=checkpoints_dir)


def reproduce(profile: str, *, datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None, jobs: int = 1,
              progress: bool = True, checkpoints_dir: str | os.PathLike | None = None) -> list[dict]:
    """Run (or load) every (data set, seed) unit of a profile: the experiments of Section 5.1.

    Parameters
    ----------
    profile : str
        A key of :data:`PROFILES`.
    datasets, seeds : sequence, optional
        Default: the profile's.
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    results_dir : path, optional
        Default ``results/<profile>`` in the repository.
    jobs : int, optional
        Units run at once, each in its own spawned process with ``max(1, cores // jobs)`` threads
        (independent units share a GPU this way).
    progress : bool, optional
        Progress bars (with ``jobs > 1``: one line per finished unit instead).
    checkpoints_dir : path, optional
        Root of the checkpoints (default :func:`checkpoint_root`).

    Returns
    -------
    list of dict
        One results dict per unit, in the order data sets x seeds (seed-major).
    """
    prof = _get_profile(profile)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an int >= 1, got {jobs!r}")
    names = list(dict.fromkeys(_dataset_name(d) for d in (datasets or prof.datasets)))
    seed_list = list(dict.fromkeys(int(s) for s in (prof.seeds if seeds is None else seeds)))
    if not seed_list:
        raise ValueError("no seeds to run")
    configs = [make_config(profile, d, s) for s in seed_list for d in names]
    dev = utils.resolve_device(device)  # fails early if CUDA was asked for and is missing
    rdir = Path(results_dir) if results_dir is not None else default_results_dir(profile)
    if jobs == 1 or len(configs) == 1:
        return [run(c, device=dev, results_dir=rdir, progress=progress, checkpoints_dir=checkpoints_dir)
                for c in configs]
    workers = min(jobs, len(configs))
    threads = max(1, _cores() // workers)
    ctx = multiprocessing.get_context("spawn")
    # Largest first, so the longest unit does not start last.
    order = sorted(range(len(configs)), key=lambda i: models.MODELS.index(configs[i].dataset), reverse=True)
    out: list[dict | None] = [None] * len(configs)
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futs = {pool.submit(_unit_job, (configs[i], str(dev), str(rdir),
                                        None if checkpoints_dir is None else str(checkpoints_dir), threads)): i
                for i in order}
        for fut in as_completed(futs):
            i = futs[fut]
            out[i] = fut.result()
            if progress:
                r = out[i]
                print(f"[{r['profile']}] {r['dataset']} seed {r['seed']}: done "
                      f"({r['run_wall_s']:.1f} s, {r['provenance']['device']})", flush=True)
    return [r for r in out if r is not None]


def load_results(results_dir: str | os.PathLike) -> list[dict]:
    """Every results file under ``results_dir`` (recursively; temporary ``*.tmp*`` files skipped).

    Raises
    ------
    FileNotFoundError
        If ``results_dir`` does not exist.
    ValueError
        If a ``.json`` file is not valid JSON (results are written atomically, so this means damage).
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"no results folder {root}: run `python -m sepdtd reproduce --profile ...` first")
    out = []
    for path in sorted(root.rglob("*.json")):
        if ".tmp" in path.name:
            continue
        try:
            res = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it and rerun") from e
        if isinstance(res, dict) and "settings" in res and "schema" in res:
            out.append(res)
    return out


def _missing_models_message(config: Config, results_dir: str | os.PathLike | None, missing: Path) -> str:
    cmd = (f"python -m sepdtd reproduce --profile {config.profile} --datasets {config.dataset} "
           f"--seeds {config.seed}")
    path = result_path(config, results_dir)
    if path.exists():
        return (f"the weights {missing} are missing, but the results {path} exist (checkpoints are not "
                f"committed), so `{cmd}` would only load them: rebuild the checkpoints with "
                f"sepdtd.experiments.ensure_run({config.profile!r}, {config.dataset!r}, {config.seed}, with_models=True)")
    return f"the weights {missing} are missing: run `{cmd}` first"


def load_models(profile: str, dataset: str, *, seed: int = 0, results_dir: str | os.PathLike | None = None,
                device: str | torch.device = "cpu",
                checkpoints_dir: str | os.PathLike | None = None) -> dict[float, models.PaperNet]:
    """The trained networks of a unit, λ -> model (0.0 = baseline), with their best weights, in eval mode.

    Raises
    ------
    FileNotFoundError
        If the checkpoints are missing; the message says which command creates them.
    """
    config = make_config(profile, dataset, seed)
    return {lam: load_model(profile, dataset, lam, seed=seed, results_dir=results_dir, device=device,
                            checkpoints_dir=checkpoints_dir) for lam in (0.0, *config.lams)}


def _vouched(ckdir: Path) -> tuple[str | None, set[str]]:
    """The code hash of a checkpoint folder's ``partial.json`` and the settings it lists as finished.

    ``(None, set())`` when there is none or it is unreadable: then no weight file in the folder is vouched for.
    """
    try:
        state = json.loads((ckdir / "partial.json").read_text())
        return state.get("code_hash"), set(state.get("settings", {}))
    except (OSError, ValueError, AttributeError):
        return None, set()


def load_model(profile: str, dataset: str, lam: float = 0.0, *, seed: int = 0,
               results_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
               checkpoints_dir: str | os.PathLike | None = None) -> models.PaperNet:
    """One trained network of a unit (``lam`` 0.0 = baseline), best weights, eval mode (see :func:`load_models`).

    Warns (``RuntimeWarning``) when the checkpoint folder's ``partial.json`` does not vouch for the
    weights: they were trained by other code than the current package's (they then belong to the
    results of that code, stale now), or by a run that was interrupted before this setting.

    Raises
    ------
    FileNotFoundError
        If the checkpoint is missing (the message says which command creates it).
    ValueError
        If the checkpoint file is damaged (named, with what to do).
    """
    config = make_config(profile, dataset, seed)
    if float(lam) != 0.0 and float(lam) not in config.lams:
        raise ValueError(f"λ = {lam} is not one of profile {profile!r}'s {config.lams} (0.0 = baseline)")
    ckdir = checkpoint_dir(config, checkpoints_dir)
    path = ckdir / f"{_tag(float(lam))}.state.pt"
    if not path.exists():
        raise FileNotFoundError(_missing_models_message(config, results_dir, path))
    trained_by, finished = _vouched(ckdir)
    if trained_by != code_hash() or _tag(float(lam)) not in finished:
        why = (f"trained by other code (code hash {trained_by}, the package's is {code_hash()}); they belong to "
               "that code's (stale) results" if trained_by != code_hash() else
               "not listed as finished by the run that wrote the folder (interrupted?)")
        warnings.warn(f"the weights {path} are {why}; delete {ckdir} and run sepdtd.experiments.ensure_run("
                      f"{profile!r}, {config.dataset!r}, {seed}, with_models=True) to train them anew",
                      RuntimeWarning, stacklevel=2)
    model = models.build(config.dataset, seed=config.seed)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError or pickle errors for a truncated file
        raise ValueError(f"the checkpoint {path} is damaged ({type(e).__name__}: {e}); delete {ckdir} and rebuild "
                         f"it with sepdtd.experiments.ensure_run({profile!r}, {config.dataset!r}, {seed}, "
                         "with_models=True)") from e
    model.load_state_dict(state)
    return model.to(utils.resolve_device(device)).eval()


def ensure_run(profile: str, dataset: str, seed: int = 0, device: str | torch.device = "auto", *,
               results_dir: str | os.PathLike | None = None, progress: bool = True, with_models: bool = False,
               checkpoints_dir: str | os.PathLike | None = None) -> dict:
    """The results of a unit for the notebooks: loaded when they exist (never recomputed), else run.

    Parameters
    ----------
    profile, dataset, seed, device : see :func:`run`.
    with_models : bool, optional
        Also make sure the checkpoints :func:`load_models` needs exist. When the results exist but the
        checkpoints do not (they are not committed), or a run of the current code into the checkpoint
        folder was interrupted, the unit is trained (or resumed) into the checkpoint folder; the
        existing results file is kept as it is and returned. Checkpoints of other code are kept: they
        belong to the results that code wrote (:func:`load_model` warns).
    """
    config = make_config(profile, dataset, seed)
    path = result_path(config, results_dir)
    if path.exists():
        res = _read_result(path, config)
        if with_models:
            ckdir = checkpoint_dir(config, checkpoints_dir)
            tags = ["baseline"] + [_tag(lam) for lam in config.lams]
            missing = not all((ckdir / f"{t}.state.pt").exists() for t in tags)
            trained_by, finished = _vouched(ckdir)
            unfinished = trained_by == code_hash() and not set(tags) <= finished
            if missing or unfinished:
                why = "they are missing" if missing else "a run of this code into it was interrupted"
                warnings.warn(f"rebuilding the checkpoints of {path.name} in {ckdir} ({why}): the figures will use "
                              "these retrained networks, the tables the results file", RuntimeWarning, stacklevel=2)
                _compute(config, device=device, results_path=None, progress=progress, checkpoints_dir=checkpoints_dir)
        return res
    return run(config, device=device, results_dir=results_dir, progress=progress, checkpoints_dir=checkpoints_dir)
