"""Settings of the two stages, as frozen dataclasses with one canonical hash.

A *training job* (:class:`TrainConfig`) trains one network, or several fine-tunes of one start
network as a stack (:func:`sepdtd.training.fit_stacked`). A *measurement* (:class:`MeasureConfig`)
derives numbers from a kept network. Both are :class:`Config` objects: every field that changes the
numbers is hashed (:meth:`Config.key`), and fields marked ``metadata={"hash": False}`` (batch sizes of
the evaluation passes, which only schedule the work) are not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sepdtd import models

__all__ = ["Stage", "Config", "TrainConfig", "MeasureConfig", "dataset_name", "finetune_seed", "check_name",
           "MEASUREMENTS", "lam_tag"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

#: The measurements of :mod:`sepdtd.pipeline.measure`: Tables 2-3, chapters 9-10, and why the fine-tuned
#: logits are negative.
MEASUREMENTS = ("paper", "beyond", "mechanism")

C = TypeVar("C", bound="Config")


def dataset_name(name: str) -> str:
    """The canonical data set name (``fashion-mnist`` -> ``fashion_mnist``); unknown names are refused."""
    key = str(name).strip().lower().replace("-", "_")
    if key not in models.MODELS:
        raise ValueError(f"unknown data set {name!r}: choose one of {', '.join(models.MODELS)}")
    return key


def check_name(name: object, what: str) -> str:
    """``name`` if it is usable in a file name (letters, digits, ``_ . -``), else a ValueError."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.startswith("."):
        raise ValueError(f"{what} must be letters, digits, '_', '.' or '-', got {name!r}")
    return name


def finetune_seed(seed: int) -> int:
    """Seed of the training stream of fine-tunes (a job with a start network) of a unit with ``seed``.

    Derived from ``seed`` by sha256, so that the fine-tunes' stream of shuffles, augmentations and
    dropout masks differs from the pre-training's.
    """
    digest = hashlib.sha256(f"finetune/{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**31


def lam_tag(lam: float) -> str:
    """The name of a network fine-tuned with ``lam``: ``lam1.0``; λ = 0 is the ``baseline``."""
    return "baseline" if lam == 0 else f"lam{float(lam)!r}"


def _count(name: str, v: Any) -> None:
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"{name} must be None (all) or an int >= 1, got {v!r}")


def _int(name: str, v: Any, low: int = 0) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {v!r}")


class Config:
    """Canonical JSON, hash and round trip for the frozen dataclasses of settings."""

    def as_dict(self) -> dict:
        """Every field as JSON-able values (nested dataclasses as dicts, tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), allow_nan=False))

    @classmethod
    def from_dict(cls: type[C], d: dict) -> C:
        """Inverse of :meth:`as_dict`; unknown or missing keys are an error that names them."""
        if not isinstance(d, dict):
            raise TypeError(f"a {cls.__name__} is read from a dict, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = set(d) - set(fields)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}: written by another version")
        kw = {}
        for k, v in d.items():
            kind = fields[k].type
            if isinstance(v, dict) and "Stage" in str(kind):
                v = Stage(**v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[k] = v
        return cls(**kw)

    def hashed(self) -> dict:
        """The fields that change the numbers: all but those marked ``metadata={"hash": False}``, and those
        marked ``metadata={"hash": "if set"}`` only where they differ from their default (fields added
        later, so that the keys of earlier configurations stay what they were)."""
        skip = {f.name for f in dataclasses.fields(self) if not f.metadata.get("hash", True)
                or (f.metadata.get("hash") == "if set" and getattr(self, f.name) == f.default)}
        return {k: v for k, v in self.as_dict().items() if k not in skip}

    def key(self) -> str:
        """12 hex digits of the sha256 of :meth:`hashed` as canonical JSON (sorted keys, no spaces)."""
        blob = json.dumps(self.hashed(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Stage(Config):
    """Optimizer settings of one training stage (pre-training or fine-tuning, Section 5.1).

    Attributes
    ----------
    lr : float
        Learning rate (a fresh optimizer for every job).
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
        for name in ("lr", "weight_decay"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number, got {v!r}")
            object.__setattr__(self, name, float(v))
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        for name in ("batch_size", "max_epochs", "patience"):
            _int(name, getattr(self, name), 1)
        if self.optimizer not in ("adam", "sgd", "rmsprop"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}: choose adam, sgd or rmsprop")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")


#: Network builders of :class:`TrainConfig` ``arch``: Table 1's, and chapter 10's variants.
ARCHS = ("table1", "separate-split", "separate-full", "depth-<n>")


@dataclass(frozen=True)
class TrainConfig(Config):
    """One training job: a network trained from scratch, or the fine-tunes of a start network.

    Attributes
    ----------
    dataset : str
        ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
    seed : int
        Seeds the train/validation split, the subsets and the initial weights; the training stream
        (shuffles, augmentation, dropout) uses ``seed`` itself, or :func:`finetune_seed` for a job
        with a ``start``.
    arch : str
        ``"table1"`` (:func:`sepdtd.models.build`), ``"separate-split"``, ``"separate-full"``
        (:func:`sepdtd.models.build_separate`) or ``"depth-<n>"`` (:func:`sepdtd.models.build_depth`).
    lams : tuple of float
        λ of Eq. 5, one network each; several are trained as one stack.
    stage : Stage
        Optimizer and stopping.
    start : str or None
        ``"<tag>:<job key>"``: the kept network the job starts from (a copy per λ), else None (fresh
        weights from ``seed``).
    n_train, n_val : int or None
        Training / validation images drawn (seeded) from the split; None keeps all.
    val_fraction : float
        Share of the training set held out for early stopping.
    augment : bool
        Random flips and shifts (CIFAR-10 in Section 5.1).
    clamp_bias : bool
        Keep the biases <= 0 (DTD's assumption, Section 2.2).
    n_blocks : int or None
        Diagonal blocks of Eq. 6; None = the number of classes.
    penalty : {"sum", "mean"}
        Eq. 6's sum, or its mean over the off-block weights (:func:`sepdtd.regularization.block_l1`).
    penalty_layers : {"dense", "output"}
        The dense layers Eq. 6 covers.
    clamp_output_bias : bool
        With ``clamp_bias``, the output layer's bias is kept <= 0 too (False: an ablation).
    eval_batch_size : int
        Images per validation pass (not hashed).
    """

    dataset: str
    seed: int
    arch: str = "table1"
    lams: tuple[float, ...] = (0.0,)
    stage: Stage = Stage(lr=1e-3, batch_size=128, max_epochs=200)
    start: str | None = None
    n_train: int | None = None
    n_val: int | None = None
    val_fraction: float = 0.1
    augment: bool = False
    clamp_bias: bool = True
    n_blocks: int | None = None
    penalty: str = "sum"
    penalty_layers: str = "dense"
    eval_batch_size: int = field(default=1000, metadata={"hash": False})
    clamp_output_bias: bool = field(default=True, metadata={"hash": "if set"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", dataset_name(self.dataset))
        _int("seed", self.seed)
        if self.seed >= 2**31:
            raise ValueError(f"seed must be below 2**31, got {self.seed}")
        if self.arch not in ("table1", "separate-split", "separate-full") and not re.fullmatch(r"depth-\d+", self.arch):
            raise ValueError(f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        lams = tuple(self.lams)
        if not lams:
            raise ValueError("lams must hold at least one λ")
        for lam in lams:
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
                raise ValueError(f"every λ must be a finite number >= 0 (the regularizer rate of Eq. 5), got {lam!r}")
        lams = tuple(float(v) for v in lams)
        if len(set(lams)) != len(lams):
            raise ValueError(f"duplicate λ in {lams}")
        object.__setattr__(self, "lams", lams)
        if isinstance(self.stage, dict):
            object.__setattr__(self, "stage", Stage(**self.stage))
        if not isinstance(self.stage, Stage):
            raise TypeError(f"stage must be a Stage, got {type(self.stage).__name__}")
        if self.start is not None and (not isinstance(self.start, str) or ":" not in self.start):
            raise ValueError(f"start must be '<tag>:<job key>' or None, got {self.start!r}")
        for name in ("n_train", "n_val", "n_blocks"):
            _count(name, getattr(self, name))
        object.__setattr__(self, "val_fraction", float(self.val_fraction))
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction!r}")
        if self.penalty not in ("sum", "mean"):
            raise ValueError(f"penalty must be 'sum' or 'mean', got {self.penalty!r}")
        if self.penalty_layers not in ("dense", "output"):
            raise ValueError(f"penalty_layers must be 'dense' or 'output', got {self.penalty_layers!r}")
        _int("eval_batch_size", self.eval_batch_size, 1)

    @property
    def train_seed(self) -> int:
        """Seed of the training stream: ``seed`` from scratch, :func:`finetune_seed` from a start network."""
        return self.seed if self.start is None else finetune_seed(self.seed)

    @property
    def start_tag(self) -> str | None:
        """The tag of the start network, or None."""
        return None if self.start is None else self.start.split(":", 1)[0]

    def build(self) -> models.PaperNet:
        """The freshly initialised network of ``arch`` (seeded with ``seed``)."""
        if self.arch == "table1":
            return models.build(self.dataset, seed=self.seed)
        if self.arch.startswith("separate-"):
            return models.build_separate(self.dataset, width=self.arch.split("-", 1)[1], seed=self.seed)
        return models.build_depth(self.dataset, int(self.arch.split("-", 1)[1]), seed=self.seed)


@dataclass(frozen=True)
class MeasureConfig(Config):
    """One measurement of kept networks (:mod:`sepdtd.pipeline.measure`).

    Attributes
    ----------
    kind : {"paper", "beyond", "mechanism"}
        ``"paper"``: test accuracy (Table 3), Eq. 7 and the sign-aware quantities of the top-1/top-2
        DTD heatmaps (Table 2), in-block shares (Figure 6). ``"beyond"``: chapters 9-10, every method
        of ``methods`` on real test images and on two-object images with known object regions.
        ``"mechanism"``: the parts of the logits and what their signs do to DTD.
    dataset : str
        The data set whose test images are used.
    seed : int
        Seeds the test subsets and the two-object pairs.
    n_test, n_eval : int or None
        Test images for the accuracy and for the explanations (None: all); for ``"beyond"`` ``n_test``
        is unused.
    n_pairs, max_scored, threshold : int
        Two-object candidates drawn, at most this many recognised ones scored, and the mask threshold
        (:func:`sepdtd.twoobject.make`); 0 for ``"paper"``.
    methods : tuple of str
        Explanation methods (:data:`sepdtd.attribution.METHODS`); ``("dtd",)`` for ``"paper"``.
    epsilon : float
        The stabiliser of LRP-ε.
    batch_size : int
        Images per explanation pass (not hashed).
    """

    kind: str
    dataset: str
    seed: int
    n_test: int | None = None
    n_eval: int | None = None
    n_pairs: int = 0
    max_scored: int = 0
    threshold: int = 0
    methods: tuple[str, ...] = ("dtd",)
    epsilon: float = 0.01
    batch_size: int = field(default=500, metadata={"hash": False})

    def __post_init__(self) -> None:
        if self.kind not in MEASUREMENTS:
            raise ValueError(f"unknown measurement {self.kind!r}: choose one of {', '.join(MEASUREMENTS)}")
        object.__setattr__(self, "dataset", dataset_name(self.dataset))
        _int("seed", self.seed)
        for name in ("n_test", "n_eval"):
            _count(name, getattr(self, name))
        for name in ("n_pairs", "max_scored", "threshold"):
            _int(name, getattr(self, name))
        object.__setattr__(self, "methods", tuple(self.methods))
        if not self.methods:
            raise ValueError("methods must name at least one explanation method")
        object.__setattr__(self, "epsilon", float(self.epsilon))
        _int("batch_size", self.batch_size, 1)
