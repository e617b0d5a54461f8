r"""Fast training on in-memory tensors with the block-wise L1 objective (Eq. 5).

:func:`fit` minimises

.. math:: -\frac{1}{N} \sum_n \hat y_n^T \log y_n + \lambda S(W)

(Eq. 5, with :math:`S(W)` the block-wise penalty of Eq. 6, :func:`sepdtd.regularization.block_l1`)
and projects the biases onto :math:`b \le 0` after every step (DTD's assumption, Section 2.2). It
stops when the validation objective has not improved for ``patience`` epochs (Section 5.1: "until the
loss no longer improved for three concurrent epochs") and restores the best weights.

The whole data set is moved to the device once (as ``uint8``, converted to float per batch). Each
epoch draws an index permutation on the device from a seeded :class:`torch.Generator`, gathers the
shuffled copy of the training set once and augments it (:func:`augment_batch`) in a few batched calls;
the steps then take contiguous slices (views) of it. No DataLoader, no per-step host synchronisation
(step losses stay on the device and are read once per epoch). Python-side work per step is what
limits small models on a GPU, so the step does nothing but forward, backward, optimizer step and bias
projection.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sepdtd.models import clamp_biases_, dense_layers
from sepdtd.regularization import block_l1, block_mask
from sepdtd.utils import atomic_torch_save, resolve_device

__all__ = ["fit", "evaluate", "augment_batch", "EarlyStopping", "History", "NaNLossError", "OPTIMIZERS"]

#: Optimizers :func:`fit` knows.
OPTIMIZERS = ("adam", "sgd", "rmsprop")

#: Steps between host-side checks for a non-finite loss (every step's loss is kept on the device).
NAN_CHECK_EVERY = 100

#: Images augmented per call when :func:`fit` augments an epoch's shuffled copy of the training set.
AUGMENT_CHUNK = 8192

_CHECKPOINT_FORMAT = 1


class NaNLossError(RuntimeError):
    """The training or validation loss became ``nan`` or ``inf``."""


class EarlyStopping:
    """Stop when a monitored value has not improved for ``patience`` consecutive epochs (Section 5.1).

    Parameters
    ----------
    patience : int
        Epochs without improvement tolerated; the paper uses 3. Must be >= 1.
    min_delta : float, optional
        A value improves on the best only if it is smaller than ``best - min_delta``.

    Attributes
    ----------
    best : float
        Smallest value seen (``inf`` before the first step).
    best_epoch : int
        1-based number of the step that gave ``best`` (0 before the first step).
    epochs : int
        Steps taken so far.
    bad_epochs : int
        Consecutive steps without improvement.
    improved : bool
        Whether the last step improved on the best.
    """

    def __init__(self, patience: int, min_delta: float = 0.0):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        if not min_delta >= 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        self.patience = patience
        self.min_delta = float(min_delta)
        self.best = math.inf
        self.best_epoch = 0
        self.epochs = 0
        self.bad_epochs = 0
        self.improved = False

    def step(self, value: float) -> bool:
        """Record one epoch's value; return True when training should stop.

        ``nan`` never counts as an improvement.
        """
        self.epochs += 1
        value = float(value)
        self.improved = value < self.best - self.min_delta
        if self.improved:
            self.best, self.best_epoch, self.bad_epochs = value, self.epochs, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        """The state, for checkpoints."""
        return {k: getattr(self, k) for k in ("patience", "min_delta", "best", "best_epoch", "epochs",
                                              "bad_epochs", "improved")}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state from :meth:`state_dict`."""
        for k, v in state.items():
            setattr(self, k, v)


@dataclass
class History:
    """What :func:`fit` did, per epoch and overall.

    Attributes
    ----------
    train_loss : list of float
        Mean training objective (cross-entropy + lam * S(W), Eq. 5) over each epoch's steps, with
        dropout and augmentation active.
    val_loss : list of float
        Validation objective after each epoch: validation cross-entropy (eval mode) + lam * S(W). This is
        what early stopping monitors.
    val_accuracy : list of float
        Validation accuracy after each epoch.
    penalty : list of float
        S(W) (Eq. 6) after each epoch.
    epochs : int
        Epochs trained (including those of a resumed run).
    best_epoch : int
        1-based epoch whose weights were restored.
    wall_s : float
        Wall time of :func:`fit` (summed over resumed parts).
    images_per_s : float
        Training images per second of the training steps (evaluation excluded).
    stopped_early : bool
        True if early stopping ended training before ``max_epochs``.
    resumed_from : int
        Epochs loaded from a checkpoint (0 for a fresh run).
    """

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    penalty: list[float] = field(default_factory=list)
    epochs: int = 0
    best_epoch: int = 0
    wall_s: float = 0.0
    images_per_s: float = 0.0
    stopped_early: bool = False
    resumed_from: int = 0
    _train_s: float = field(default=0.0, repr=False)
    _train_images: int = field(default=0, repr=False)

    def as_dict(self) -> dict:
        """Plain JSON-able dict of the public fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}


def _to_float(x: torch.Tensor) -> torch.Tensor:
    return x / 255.0 if x.dtype == torch.uint8 else x.float()


def augment_batch(x: torch.Tensor, *, generator: torch.Generator | None = None, flip_p: float = 0.5,
                  max_shift: float = 0.1, fill: str = "nearest") -> torch.Tensor:
    """Random horizontal flips and shifts, batched on the device (Section 5.1's CIFAR-10 augmentation).

    Follows the Keras CIFAR-10 example (``horizontal_flip=True``, ``width_shift_range=0.1``,
    ``height_shift_range=0.1``, ``fill_mode='nearest'``) with integer shifts: each image is flipped
    with probability ``flip_p`` and shifted by ``dy, dx`` drawn uniformly from
    ``{-s, ..., s}`` with ``s = floor(max_shift * size)`` (3 px on 32x32, 2 px on 28x28), all in one
    gather, no per-sample loop.

    Parameters
    ----------
    x : torch.Tensor
        Images ``(N, C, H, W)`` of any dtype.
    generator : torch.Generator, optional
        Source of randomness, on ``x``'s device; the same generator state gives the same output.
    flip_p : float, optional
        Probability of a horizontal flip.
    max_shift : float, optional
        Largest shift as a fraction of the height/width.
    fill : {"nearest", "zero"}, optional
        Pixels shifted in repeat the nearest edge pixel or are 0.

    Returns
    -------
    torch.Tensor
        A new tensor, same shape/dtype/device as ``x``: ``out[n, c, h, w] = x'[n, c, h - dy, w - dx]``
        where ``x'`` is the (possibly flipped) image, i.e. a positive ``dx`` moves content right.
    """
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W), got shape {tuple(x.shape)}")
    if fill not in ("nearest", "zero"):
        raise ValueError(f"fill must be 'nearest' or 'zero', got {fill!r}")
    if not 0 <= flip_p <= 1 or not 0 <= max_shift < 1:
        raise ValueError(f"need 0 <= flip_p <= 1 and 0 <= max_shift < 1, got {flip_p}, {max_shift}")
    n, _, h, w = x.shape
    dev = x.device
    flip = torch.rand(n, device=dev, generator=generator) < flip_p
    sy, sx = int(max_shift * h), int(max_shift * w)
    dy = torch.randint(-sy, sy + 1, (n,), device=dev, generator=generator)
    dx = torch.randint(-sx, sx + 1, (n,), device=dev, generator=generator)
    cols = torch.arange(w, device=dev)
    src_x = cols[None, :] - dx[:, None]                                   # (N, W) source column
    src_x = torch.where(flip[:, None], w - 1 - src_x, src_x)              # flip before the shift
    src_y = torch.arange(h, device=dev)[None, :] - dy[:, None]            # (N, H)
    valid = None
    if fill == "zero":
        valid = ((src_y >= 0) & (src_y < h))[:, :, None] & ((src_x >= 0) & (src_x < w))[:, None, :]
    src_x, src_y = src_x.clamp(0, w - 1), src_y.clamp(0, h - 1)
    idx = torch.arange(n, device=dev)[:, None, None, None]
    ch = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    out = x[idx, ch, src_y[:, None, :, None], src_x[:, None, None, :]]
    if valid is not None:
        out = out * valid[:, None].to(out.dtype)
    return out


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device, batch_size: int,
              channels_last: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number correct, as device tensors (no sync)."""
    loss = torch.zeros((), dtype=torch.float64, device=dev)
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    for s in range(0, x.shape[0], batch_size):
        xb = _to_float(x[s:s + batch_size].to(dev, non_blocking=True))
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[s:s + batch_size].to(dev, non_blocking=True)
        logits = model(xb)
        loss += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    return loss, correct


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: str | torch.device = "auto",
             batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits; moved to ``device``, run in eval mode without gradients, and its
        training mode restored afterwards.
    x : torch.Tensor
        Images ``(N, C, H, W)``: ``uint8`` (divided by 255) or float (used as is). Any device; moved
        batch by batch.
    y : torch.Tensor
        int64 labels ``(N,)``.
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    batch_size : int, optional
        Images per forward pass.

    Returns
    -------
    (float, float)
        Mean cross-entropy (the first term of Eq. 5, without the penalty) and accuracy in ``[0, 1]``.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"need as many labels as images (and at least one): {x.shape[0]} vs {y.shape[0]}")
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    try:
        loss, correct = _evaluate(model, x, y.long(), dev, batch_size)
    finally:
        model.train(was_training)
    return float(loss) / x.shape[0], int(correct) / x.shape[0]


def _check_data(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x_{what} must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise TypeError(f"x_{what} must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y_{what} must be (N,) with N = {x.shape[0]} labels, got shape {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"the {what} set is empty")
    if y.is_floating_point():
        raise TypeError(f"y_{what} must hold integer class labels, got {y.dtype}")


def _make_optimizer(name: str, params: list, lr: float, weight_decay: float,
                    dev: torch.device) -> torch.optim.Optimizer:
    cuda = dev.type == "cuda"
    speed = {"fused": True} if cuda else {"foreach": True}
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **speed)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, **speed)
    if name == "rmsprop":  # Keras' RMSprop defaults (the Keras CIFAR-10 example's optimizer)
        return torch.optim.RMSprop(params, lr=lr, alpha=0.9, eps=1e-7, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r}: choose one of {', '.join(OPTIMIZERS)}")


def _fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor, yv: torch.Tensor,
                 settings: dict) -> str:
    """Hash of what determines the trajectory (settings, initial parameters' shapes and sums, data)."""
    data = [(tuple(t.shape), str(t.dtype), int(t.sum(dtype=torch.int64)) if not t.is_floating_point()
             else float(t.double().sum())) for t in (x, y, xv, yv)]
    params = [(k, tuple(v.shape), float(v.double().sum())) for k, v in model.state_dict().items()]
    blob = json.dumps({"settings": settings, "data": data, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _rng_state(gen: torch.Generator, dev: torch.device) -> dict:
    state = {"shuffle": gen.get_state(), "cpu": torch.get_rng_state()}
    if dev.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(dev)
    return state


def _set_rng_state(state: dict, gen: torch.Generator, dev: torch.device) -> None:
    gen.set_state(state["shuffle"].cpu())
    torch.set_rng_state(state["cpu"].cpu())
    if dev.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].cpu(), dev)


def _load_checkpoint(path: Path, fingerprint: str, key: str | None, dev: torch.device) -> dict | None:
    if not path.exists():
        return None
    try:
        ckpt = torch.load(path, map_location=dev, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file means starting over
        warnings.warn(f"checkpoint {path} is unreadable ({e}); starting over", RuntimeWarning, stacklevel=3)
        return None
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CHECKPOINT_FORMAT:
        warnings.warn(f"checkpoint {path} has an unknown format; starting over", RuntimeWarning, stacklevel=3)
        return None
    if ckpt.get("key") != key or ckpt.get("fingerprint") != fingerprint:
        warnings.warn(f"checkpoint {path} was written for other settings (key {ckpt.get('key')!r} vs {key!r}, "
                      f"fingerprint {ckpt.get('fingerprint')} vs {fingerprint}); starting over and overwriting it",
                      RuntimeWarning, stacklevel=3)
        return None
    return ckpt


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    lam: float = 0.0,
    n_blocks: int | None = None,
    lr: float = 1e-3,
    batch_size: int = 128,
    max_epochs: int = 100,
    patience: int = 3,
    augment: bool = False,
    clamp_bias: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_key: str | None = None,
    progress: bool = True,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    lr_schedule: Callable[[int], float] | None = None,
    channels_last: bool = False,
    eval_batch_size: int = 1000,
) -> History:
    """Train ``model`` on the objective of Eq. 5 with early stopping; restore the best weights.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits; trained in place and moved to ``device``. On return it holds the
        weights of the best validation epoch and its original train/eval mode.
    x_train, y_train, x_val, y_val : torch.Tensor
        Images ``(N, C, H, W)`` (``uint8``, divided by 255 per batch on the device, or float used as
        is) and int64 labels ``(N,)``. Each set is copied to the device once; each epoch also holds a
        shuffled (and augmented) copy of the training images there.
    lam : float, optional
        λ of Eq. 5, the weight of the block-wise penalty S(W) (Eq. 6); 0 trains the baseline.
    n_blocks : int, optional
        Blocks of Eq. 6; defaults to ``model.n_classes`` (else the last dense layer's outputs).
    lr : float, optional
        Learning rate.
    batch_size : int, optional
        Training batch size; the last, smaller batch of an epoch is kept.
    max_epochs : int, optional
        Upper bound on the number of epochs (counting epochs loaded from a checkpoint).
    patience : int, optional
        Early stopping (:class:`EarlyStopping`) on the validation objective — validation cross-entropy
        + ``lam * S(W)``, the same objective as training (Section 5.1: "until the loss no longer
        improved for three concurrent epochs").
    augment : bool, optional
        Random flips and shifts (:func:`augment_batch`), as the paper does for CIFAR-10.
    clamp_bias : bool, optional
        After every optimizer step project the biases onto ``b <= 0`` (DTD's assumption, Section 2.2).
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    seed : int, optional
        Seeds the shuffling/augmentation generator and (inside a forked RNG, so the caller's global RNG
        state is untouched) the global RNG used by dropout. Same seed and device -> same run.
    checkpoint : str or Path, optional
        File for a resumable training state (model, optimizer, best weights, early stopping, history,
        every RNG state), written atomically after every epoch. If it exists and matches this run
        (``checkpoint_key`` and a fingerprint of the settings, parameter shapes and data), training
        resumes from it and continues exactly as an uninterrupted run would (bit for bit on CPU; on
        a GPU as far as its kernels are deterministic); otherwise a
        :class:`RuntimeWarning` is issued and training starts over. ``max_epochs`` and ``patience`` may
        change between the parts.
    checkpoint_key : str, optional
        Caller's identity of the run (e.g. a config hash) stored in and checked against the checkpoint;
        it must cover anything the fingerprint cannot see (e.g. the code of ``lr_schedule``).
    progress : bool, optional
        Show a tqdm bar over epochs (loss, validation loss and accuracy).
    optimizer : {"adam", "sgd", "rmsprop"}, optional
        Adam; SGD with momentum 0.9; RMSprop with Keras' defaults (``rho=0.9, eps=1e-7``). Fused/foreach
        implementations are used.
    weight_decay : float, optional
        Passed to the optimizer (coupled L2).
    lr_schedule : callable, optional
        ``lr_schedule(epoch) -> factor``: the learning rate of 0-based ``epoch`` is ``lr * factor``.
    channels_last : bool, optional
        Run convolutions in channels-last memory format. Off by default: for the float32 Table 1
        networks it was within about +-15 % on an H200 (faster for CIFAR-10, slower for the others);
        ``benchmarks/bench_train.py --channels-last`` measures it.
    eval_batch_size : int, optional
        Batch size of the validation passes.

    Returns
    -------
    History
        Per-epoch losses and accuracy, best epoch, timing.

    Raises
    ------
    ValueError, TypeError
        For invalid settings or data.
    NaNLossError
        When a training loss (or the validation loss) is not finite; the message names the epoch and
        step. Every step's loss is written to a device buffer without synchronising; the host looks at
        it every :data:`NAN_CHECK_EVERY` steps (a ``.item()`` per step would stall a GPU) and at the end of each epoch, so at most that many steps
        run after the first bad one. The model is left in its failed state and no checkpoint is
        written for that epoch.
    """
    t_start = time.perf_counter()
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"lam must be a finite number >= 0 (the regularizer rate of Eq. 5), got {lam!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    for name, v in (("batch_size", batch_size), ("max_epochs", max_epochs), ("eval_batch_size", eval_batch_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    _check_data(x_train, y_train, "train")
    _check_data(x_val, y_val, "val")
    stopper = EarlyStopping(patience)
    dense = list(dense_layers(model))
    if n_blocks is None:
        n_blocks = getattr(model, "n_classes", None) or (dense[-1].out_features if dense else 1)
    if lam > 0:
        if not dense:
            raise ValueError("lam > 0 but the model has no dense layers for Eq. 6 to regularize")
        for layer in dense:
            block_mask(layer.out_features, layer.in_features, n_blocks)  # validates n_blocks

    n_out = getattr(model, "n_classes", None) or (dense[-1].out_features if dense else None)
    if n_out is not None:
        for what, y in (("train", y_train), ("val", y_val)):
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= n_out:
                raise ValueError(f"y_{what} holds labels in [{lo}, {hi}] but the model has {n_out} outputs")

    dev = resolve_device(device)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    x_tr, y_tr = x_train.to(dev), y_train.to(dev).long()
    x_va, y_va = x_val.to(dev), y_val.to(dev).long()
    n_train = x_tr.shape[0]
    steps_per_epoch = math.ceil(n_train / batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _make_optimizer(optimizer, params, lr, weight_decay, dev)
    biases = [m.bias for m in model.modules()
              if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None] if clamp_bias else []

    settings = {"lam": float(lam), "n_blocks": n_blocks, "lr": float(lr), "batch_size": batch_size,
                "augment": augment, "clamp_bias": clamp_bias, "seed": seed, "optimizer": optimizer,
                "weight_decay": float(weight_decay), "device_type": dev.type, "channels_last": channels_last,
                "lr_schedule": None if lr_schedule is None else getattr(lr_schedule, "__qualname__", repr(lr_schedule))}
    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = _fingerprint(model, x_tr, y_tr, x_va, y_va, settings) if path is not None else ""

    hist = History()
    was_training = model.training
    if clamp_bias:
        clamp_biases_(model)
    cuda_index = (dev.index if dev.index is not None else torch.cuda.current_device()) if dev.type == "cuda" else None
    with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
        gen = torch.Generator(device=dev).manual_seed(seed)
        dropout_seed = (seed * 0x9E3779B1 + 0x7F4A7C15) % 2**63  # a stream distinct from gen's
        torch.default_generator.manual_seed(dropout_seed)
        if cuda_index is not None:
            torch.cuda.default_generators[cuda_index].manual_seed(dropout_seed)
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        start_epoch, done = 0, False
        ckpt = _load_checkpoint(path, fingerprint, checkpoint_key, dev) if path is not None else None
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            best_state = ckpt["best_state"]
            stopper.load_state_dict(ckpt["early_stopping"])
            stopper.patience = patience
            for k, v in ckpt["history"].items():
                setattr(hist, k, v)
            _set_rng_state(ckpt["rng"], gen, dev)
            start_epoch, done = int(ckpt["epoch"]), bool(ckpt["done"])
            hist.resumed_from = start_epoch
            if not done and start_epoch > 0 and stopper.bad_epochs >= patience:
                done = hist.stopped_early = True  # a smaller patience already stops here

        bar = tqdm(total=max_epochs, initial=min(start_epoch, max_epochs), disable=not progress,
                   desc=f"fit lam={lam:g}", unit="epoch", leave=False)
        try:
            epoch = start_epoch
            while not done and epoch < max_epochs:
                if lr_schedule is not None:
                    for g in opt.param_groups:
                        g["lr"] = lr * float(lr_schedule(epoch))
                model.train()
                t0 = time.perf_counter()
                losses = torch.empty(steps_per_epoch, dtype=torch.float32, device=dev)
                # one gather (and one batched augmentation) per epoch; the steps slice views of it
                perm = torch.randperm(n_train, device=dev, generator=gen)
                x_ep, y_ep = x_tr[perm], y_tr[perm]
                if augment:
                    for s in range(0, n_train, AUGMENT_CHUNK):
                        x_ep[s:s + AUGMENT_CHUNK] = augment_batch(x_ep[s:s + AUGMENT_CHUNK], generator=gen)
                steps_run = steps_per_epoch
                for step in range(steps_per_epoch):
                    xb = x_ep[step * batch_size:(step + 1) * batch_size]
                    xb = xb / 255.0 if xb.dtype == torch.uint8 else xb.float()  # one kernel
                    if channels_last:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    loss = F.cross_entropy(model(xb), y_ep[step * batch_size:(step + 1) * batch_size])
                    if lam > 0:
                        loss = loss + lam * block_l1(model, n_blocks)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if biases:
                        with torch.no_grad():
                            torch._foreach_clamp_max_(biases, 0.0)
                    losses[step] = loss.detach()  # stays on the device: no sync
                    if (step + 1) % NAN_CHECK_EVERY == 0 and not bool(torch.isfinite(losses[:step + 1]).all()):
                        steps_run = step + 1
                        break
                finite = torch.isfinite(losses[:steps_run])
                if not bool(finite.all()):
                    bad = int((~finite).nonzero()[0, 0])
                    raise NaNLossError(
                        f"training loss became nan/inf at epoch {epoch + 1}, step {bad + 1} of {steps_per_epoch} "
                        f"(lam={lam:g}, lr={opt.param_groups[0]['lr']:g}, batch_size={batch_size}); "
                        f"try a lower learning rate, e.g. lr={opt.param_groups[0]['lr'] / 10:g}")
                train_loss = float(losses.double().mean())
                hist._train_s += time.perf_counter() - t0
                hist._train_images += n_train

                model.eval()
                vloss, vcorrect = _evaluate(model, x_va, y_va, dev, eval_batch_size, channels_last)
                with torch.no_grad():
                    pen = float(block_l1(model, n_blocks)) if dense else 0.0
                val_loss = float(vloss) / x_va.shape[0] + lam * pen
                if not math.isfinite(val_loss):
                    raise NaNLossError(
                        f"validation loss is {val_loss} after epoch {epoch + 1} (all {steps_per_epoch} training steps "
                        f"were finite; lam={lam:g}, lr={opt.param_groups[0]['lr']:g}); try a lower learning rate")
                val_acc = int(vcorrect) / x_va.shape[0]
                stop = stopper.step(val_loss)
                if stopper.improved:
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                hist.train_loss.append(train_loss)
                hist.val_loss.append(val_loss)
                hist.val_accuracy.append(val_acc)
                hist.penalty.append(pen)
                epoch += 1
                hist.epochs, hist.best_epoch = epoch, stopper.best_epoch
                hist.images_per_s = hist._train_images / max(hist._train_s, 1e-12)
                hist.stopped_early = done = stop
                bar.update(1)
                bar.set_postfix(loss=f"{train_loss:.4f}", val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.3f}")
                if path is not None:
                    h = dataclasses.asdict(hist)
                    h["wall_s"] = hist.wall_s + (time.perf_counter() - t_start)
                    atomic_torch_save(path, {
                        "format": _CHECKPOINT_FORMAT, "key": checkpoint_key, "fingerprint": fingerprint,
                        "model": model.state_dict(), "optimizer": opt.state_dict(), "best_state": best_state,
                        "early_stopping": stopper.state_dict(), "epoch": epoch, "done": done, "history": h,
                        "rng": _rng_state(gen, dev)})
        finally:
            bar.close()
        model.load_state_dict(best_state)
        model.train(was_training)
    hist.epochs = len(hist.train_loss)
    hist.best_epoch = stopper.best_epoch
    hist.wall_s += time.perf_counter() - t_start
    return hist
