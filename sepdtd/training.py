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
import numbers
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sepdtd.models import clamp_biases_, dense_layers
from sepdtd.regularization import PENALTY_LAYERS, PENALTY_REDUCTIONS, block_l1, block_mask
from sepdtd.utils import atomic_torch_save, resolve_device, temporary_prefix

__all__ = ["fit", "fit_stacked", "evaluate", "check_eval_data", "augment_batch", "EarlyStopping", "History",
           "NaNLossError", "OPTIMIZERS"]

#: Optimizers :func:`fit` knows.
OPTIMIZERS = ("adam", "sgd", "rmsprop")

#: Steps between host-side checks for a non-finite loss (every step's loss is kept on the device).
NAN_CHECK_EVERY = 100

#: Images augmented per call when :func:`fit` augments an epoch's shuffled copy of the training set.
AUGMENT_CHUNK = 8192

_CHECKPOINT_FORMAT = 2


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
    cuda_graph : bool
        Whether the full batches' steps were replayed from a CUDA graph (the last part, for a resumed run).
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
    cuda_graph: bool = False

    def as_dict(self) -> dict:
        """Plain JSON-able dict of the public fields."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}


def _to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (x / 255.0 if x.dtype == torch.uint8 else x).to(dtype)


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
    dtype = next(model.parameters()).dtype
    for s in range(0, x.shape[0], batch_size):
        xb = _to_float(x[s:s + batch_size].to(dev, non_blocking=True), dtype)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = y[s:s + batch_size].to(dev, non_blocking=True)
        logits = model(xb)
        loss += F.cross_entropy(logits if logits.dtype == torch.float64 else logits.float(), yb, reduction="sum")
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
        Images ``(N, C, H, W)``: ``uint8`` (divided by 255) or float in ``[0, 1]`` (used as is; NaN and values
        outside ``[0, 1]`` are refused). Any device; moved batch by batch.
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
    check_eval_data(model, x, y)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    dev = resolve_device(device)
    was_training = model.training
    model.to(dev).eval()
    try:
        loss, correct = _evaluate(model, x, y.long(), dev, batch_size)
    finally:
        model.train(was_training)
    return float(loss) / x.shape[0], int(correct) / x.shape[0]


def check_eval_data(model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str = "eval") -> None:
    """Check images and labels as :func:`evaluate` takes them, before any work.

    Parameters
    ----------
    model : torch.nn.Module
        The classifier whose outputs the labels must index.
    x, y : torch.Tensor
        Images ``(N, C, H, W)`` (``uint8``, or float in ``[0, 1]``) and their ``(N,)`` integer labels.
    what : str, optional
        The name of the set in the messages (``x_<what>``, ``y_<what>``).

    Raises
    ------
    TypeError, ValueError
        Naming the problem: a wrong shape or dtype, an empty set, NaN or out-of-range pixels, labels that
        the model's outputs cannot index.
    """
    _check_data(x, y, what)
    _check_labels(model, {what: y})


def _check_labels(model: nn.Module, labels: dict[str, torch.Tensor]) -> None:
    """Labels must index the model's outputs (a CUDA cross-entropy would otherwise fail with a device assert)."""
    dense = list(dense_layers(model))
    n_out = getattr(model, "n_classes", None) or (dense[-1].out_features if dense else None)
    if n_out is None:
        return
    for what, y in labels.items():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_out:
            raise ValueError(f"y_{what} holds labels in [{lo}, {hi}] but the model has {n_out} outputs")


def _as_rate(value: object, message: str) -> float:
    """``value`` as a float λ >= 0; Python, NumPy and 0-d tensor reals are accepted."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and value.dtype != torch.bool and not value.is_complex():
        value = value.item()
    elif type(value).__name__ == "ndarray" and getattr(value, "ndim", None) == 0:  # a 0-d NumPy array
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{message}, got {value!r}")
    return float(value)


def _check_data(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    """Images and labels as :func:`fit` and :func:`evaluate` take them, or a ValueError/TypeError that says why."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x_{what} must be a (N, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if not (x.dtype == torch.uint8 or x.is_floating_point()):
        raise TypeError(f"x_{what} must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    if not isinstance(y, torch.Tensor) or y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y_{what} must be a (N,) tensor with N = {x.shape[0]} labels, got "
                         f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
    if x.shape[0] == 0:
        raise ValueError(f"the {what} set is empty")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y_{what} must hold integer class labels, got {y.dtype}")
    if x.is_floating_point():
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = (~finite).flatten(1).any(1).nonzero()[:, 0]
            raise ValueError(f"x_{what} holds NaN or infinite pixels in {bad.numel()} image(s) (the first is image "
                             f"{int(bad[0])}); clean or drop those images first")
        lo, hi = (float(v) for v in torch.aminmax(x))
        if lo < 0 or hi > 1:
            hint = (" (they look like 0..255: divide by 255, as sepdtd.data.to_float does, or pass them as uint8)"
                    if hi > 2 and lo >= 0 else "")
            raise ValueError(f"x_{what} spans [{lo:.4g}, {hi:.4g}], outside [0, 1]: the models and DTD's input box "
                             f"(low=0, high=1) take float images in [0, 1] or uint8 images{hint}")


def _check_model(model: nn.Module, x: torch.Tensor, y_max: int, what: str, label: str = "the model") -> None:
    """The model's parameters are finite and it maps one of ``x``'s images to one row of logits."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{label} must be a torch.nn.Module, got {type(model).__name__}")
    params = list(model.named_parameters())
    if not params:
        raise ValueError(f"{label} has no parameters to train")
    for name, p in params:
        if p.is_floating_point() and not bool(torch.isfinite(p).all()):
            raise ValueError(f"{label}'s parameter {name} holds NaN or infinite values before training; "
                             "build or load it again")
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            logits = model(_to_float(x[:1].to(params[0][1].device), params[0][1].dtype))
    except RuntimeError as err:
        raise ValueError(f"{label} does not take x_{what}'s images of shape {tuple(x.shape[1:])}: {err}") from None
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[0] != 1:
        raise ValueError(f"{label} must return logits (N, classes); for one image of x_{what} it returned "
                         f"{tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__}")
    if y_max >= logits.shape[1]:
        raise ValueError(f"y_{what} holds the label {y_max} but {label} has {logits.shape[1]} outputs")


def _check_flags(**flags: object) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _check_seed(seed: object) -> None:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an int in [0, 2**63), got {seed!r}")


def _check_checkpoint(checkpoint: str | Path | None, checkpoint_key: str | None) -> None:
    """A checkpoint file can be written where it is asked for (tried with a temporary file), before any epoch."""
    if checkpoint_key is not None and not isinstance(checkpoint_key, str):
        raise TypeError(f"checkpoint_key must be a str or None, got {type(checkpoint_key).__name__}")
    if checkpoint is None:
        return
    if not isinstance(checkpoint, (str, Path)) or not str(checkpoint):
        raise TypeError(f"checkpoint must be a path or None, got {checkpoint!r}")
    path = Path(checkpoint)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a folder; give a file name in it, e.g. {path / 'train.pt'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix(path.name), dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"checkpoint {path} cannot be written ({type(err).__name__}: {err}); choose a writable "
                         "path, or checkpoint=None") from None


def _make_optimizer(name: str, params: list, lr: float, weight_decay: float,
                    dev: torch.device, capturable: bool = False) -> torch.optim.Optimizer:
    cuda = dev.type == "cuda"
    speed = {"fused": True} if cuda else {"foreach": True}
    if name == "adam":
        if cuda and capturable:
            speed["capturable"] = True
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
    except Exception as e:  # any unreadable file means starting over
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


class _Step:
    """One optimisation step of Eq. 5: forward, backward, optimizer step, projection of the biases onto b <= 0.

    ``objective(xb, yb)`` returns the objective (a scalar, or one value per member of a stack) whose
    sum is minimised. On a CUDA device with ``graph=True`` the step is captured once as a CUDA graph
    (forward, backward, Adam and the projection) and then replayed for every full batch: the Table 1
    networks are so small that launching their kernels one by one from Python, not computing them, is
    what limits a step. The step is captured from the real training state, and before it is used,
    one replay is checked against one ordinary step from the same parameters, optimizer state and
    random numbers (dropout); if they disagree or the capture fails, a :class:`RuntimeWarning` says so
    and every step runs the ordinary way. Either way the training state is left exactly as it was
    before the capture. Batches of another size (an epoch's last) always run the ordinary way.
    """

    def __init__(self, objective, opt: torch.optim.Optimizer, params: list[torch.Tensor],
                 biases: list[torch.Tensor], graph: bool):
        self.objective, self.opt, self.params, self.biases = objective, opt, params, biases
        self.graph_wanted = graph
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_shape: tuple | None = None
        self.graph_failed = False
        self.replays = 0

    def eager(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        obj = self.objective(xb, yb)
        self.opt.zero_grad(set_to_none=True)
        obj.sum().backward()
        self.opt.step()
        if self.biases:
            with torch.no_grad():
                torch._foreach_clamp_max_(self.biases, 0.0)
        return obj.detach()

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        if self.graph is None and self.graph_wanted and not self.graph_failed and xb.is_cuda:
            self._capture(xb, yb)
        if self.graph is not None and tuple(xb.shape) == self.graph_shape:
            self.static_x.copy_(xb)
            self.static_y.copy_(yb)
            self.graph.replay()
            self.replays += 1
            return self.static_obj
        return self.eager(xb, yb)

    # -- capture ---------------------------------------------------------------------------------
    def _snapshot(self) -> tuple:
        params = [p.detach().clone() for p in self.params]
        state = {}
        for i, p in enumerate(self.params):
            st = self.opt.state.get(p)
            if st:
                state[i] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
        return params, state

    @torch.no_grad()
    def _restore(self, snap: tuple) -> None:
        params, state = snap
        for p, v in zip(self.params, params):
            p.copy_(v)
        for i, p in enumerate(self.params):
            st = self.opt.state.get(p)
            if not st:
                continue
            saved = state.get(i)
            for k, v in st.items():  # in place: the graph holds these tensors
                if torch.is_tensor(v):
                    v.copy_(saved[k]) if saved is not None else v.zero_()
                elif saved is not None:
                    st[k] = saved[k]

    def _capture(self, xb: torch.Tensor, yb: torch.Tensor) -> None:
        dev = xb.device
        snap = self._snapshot()
        rng = torch.cuda.get_rng_state(dev)
        try:
            self.static_x, self.static_y = xb.clone(), yb.clone()
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):  # warm-up: lazy optimizer state, library handles
                for _ in range(3):
                    self.eager(self.static_x, self.static_y)
            torch.cuda.current_stream(dev).wait_stream(side)
            self.opt.zero_grad(set_to_none=True)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                obj = self.objective(self.static_x, self.static_y)
                obj.sum().backward()
                self.opt.step()
                if self.biases:
                    with torch.no_grad():
                        torch._foreach_clamp_max_(self.biases, 0.0)
                self.static_obj = obj.detach()
            # check one replay against one ordinary step from the same state and random numbers
            self._restore(snap)
            torch.cuda.set_rng_state(rng, dev)
            before = torch.cat([p.detach().reshape(-1) for p in self.params])
            want = self.eager(xb, yb).clone()
            after_eager = torch.cat([p.detach().reshape(-1) for p in self.params])
            self._restore(snap)
            torch.cuda.set_rng_state(rng, dev)
            self.static_x.copy_(xb)
            self.static_y.copy_(yb)
            graph.replay()
            got = self.static_obj.clone()
            after_graph = torch.cat([p.detach().reshape(-1) for p in self.params])
            step = (after_eager - before).norm()
            ok = bool(torch.isfinite(got).all()) and bool(torch.allclose(got, want, rtol=1e-4, atol=1e-6)) \
                and float((after_graph - after_eager).norm()) <= 1e-2 * float(step) + 1e-12
            if not ok:
                raise RuntimeError(f"the replayed step disagrees with the ordinary one (objective {got.tolist()} "
                                   f"vs {want.tolist()}, parameter change differs by "
                                   f"{float((after_graph - after_eager).norm()):.3g} of {float(step):.3g})")
            self.graph, self.graph_shape = graph, tuple(xb.shape)
        except Exception as e:  # any failure means: run the ordinary way
            self.graph_failed = True
            self.graph = None
            warnings.warn(f"CUDA graph of the training step not used ({type(e).__name__}: {e}); "
                          "running ordinary steps", RuntimeWarning, stacklevel=3)
        finally:
            self._restore(snap)
            torch.cuda.set_rng_state(rng, dev)
            self.opt.zero_grad(set_to_none=self.graph is None)


class _Single:
    """One network in the training loop: :func:`fit`'s view of the members."""

    def __init__(self, model: nn.Module, lam: float, n_blocks: int, penalty: dict, channels_last: bool):
        self.module, self.models, self.lams = model, [model], [lam]
        self.n_blocks, self.penalty, self.channels_last = n_blocks, penalty, channels_last
        self.dense = bool(list(dense_layers(model)))

    def objective(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(self.module(xb), yb)
        if self.lams[0] > 0:
            loss = loss + self.lams[0] * block_l1(self.module, self.n_blocks, **self.penalty)
        return loss

    def validate(self, x: torch.Tensor, y: torch.Tensor, dev: torch.device, batch_size: int
                 ) -> tuple[list[float], list[float], list[float]]:
        loss, correct = _evaluate(self.module, x, y, dev, batch_size, self.channels_last)
        with torch.no_grad():
            pen = float(block_l1(self.module, self.n_blocks, **self.penalty)) if self.dense else 0.0
        return [float(loss) / x.shape[0] + self.lams[0] * pen], [int(correct) / x.shape[0]], [pen]

    def member_state(self, g: int) -> dict:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}


class _Stack:
    """``G`` networks as one :class:`~sepdtd.stacked.StackedSequential`: :func:`fit_stacked`'s members."""

    def __init__(self, models: list[nn.Module], lams: list[float], n_blocks: int, penalty: dict,
                 dev: torch.device):
        from sepdtd.stacked import StackedSequential

        self.models, self.lams = models, lams
        self.module = StackedSequential(models).to(dev)
        weights = self.module.dense_weights()
        self.weights = weights[-1:] if penalty["layers"] == "output" else weights
        self.masks = [_mask_like(w, n_blocks) for w in self.weights]
        self.count = sum(float(m.sum()) for m in self.masks) if penalty["reduction"] == "mean" else None
        dtype = self.weights[0].dtype if self.weights else torch.float32
        self.lam_t = torch.tensor(lams, dtype=dtype, device=dev)
        self.regularize = any(lam > 0 for lam in lams)

    def _penalty(self) -> torch.Tensor:
        pen = _stacked_penalty(self.weights, self.masks)
        return pen / self.count if self.count else pen

    def objective(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = self.module(xb)
        G = len(self.lams)
        obj = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(G), reduction="none").view(G, -1).mean(1)
        if self.regularize:
            obj = obj + self.lam_t * self._penalty()
        return obj

    def validate(self, x: torch.Tensor, y: torch.Tensor, dev: torch.device, batch_size: int
                 ) -> tuple[list[float], list[float], list[float]]:
        vloss, vcorrect = _evaluate_stacked(self.module, x, y, dev, batch_size)
        with torch.no_grad():
            pen = self._penalty().double() if self.weights else torch.zeros(len(self.lams), device=dev)
        val_loss = (vloss / x.shape[0] + self.lam_t.double() * pen).tolist()
        return val_loss, (vcorrect.double() / x.shape[0]).tolist(), pen.tolist()

    def member_state(self, g: int) -> dict:
        return self.module.member_state_dict(g)


def _check_settings(models: list[nn.Module], lams: list[float], x_train: torch.Tensor, y_train: torch.Tensor,
                    x_val: torch.Tensor, y_val: torch.Tensor, *, n_blocks: int | None, lr: float, batch_size: int,
                    max_epochs: int, eval_batch_size: int, weight_decay: float, optimizer: str,
                    checkpoint_every_s: float, penalty: dict, patience: int, seed: int,
                    checkpoint: str | Path | None, checkpoint_key: str | None, flags: dict[str, object]) -> int:
    """Check every argument of :func:`fit` / :func:`fit_stacked` before any work; return ``n_blocks``."""
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    for name, v in (("batch_size", batch_size), ("max_epochs", max_epochs), ("eval_batch_size", eval_batch_size),
                    ("patience", patience)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if isinstance(checkpoint_every_s, bool) or not isinstance(checkpoint_every_s, numbers.Real) \
            or not checkpoint_every_s >= 0:
        raise ValueError(f"checkpoint_every_s must be a number >= 0, got {checkpoint_every_s!r}")
    _as_rate(weight_decay, "weight_decay must be a finite number >= 0")
    _check_flags(**flags)
    _check_seed(seed)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
    if penalty["layers"] not in PENALTY_LAYERS:
        raise ValueError(f"unknown penalty_layers {penalty['layers']!r}: choose one of {', '.join(PENALTY_LAYERS)}")
    if penalty["reduction"] not in PENALTY_REDUCTIONS:
        raise ValueError(f"unknown penalty {penalty['reduction']!r}: choose one of {', '.join(PENALTY_REDUCTIONS)}")
    _check_data(x_train, y_train, "train")
    _check_data(x_val, y_val, "val")
    dense = list(dense_layers(models[0]))
    if n_blocks is None:
        n_blocks = getattr(models[0], "n_classes", None) or (dense[-1].out_features if dense else 1)
    if any(lam > 0 for lam in lams) and not dense:
        raise ValueError("λ > 0 but the model has no dense layers for Eq. 6 to regularize")
    for layer in dense:
        block_mask(layer.out_features, layer.in_features, n_blocks)  # validates n_blocks
    _check_labels(models[0], {"train": y_train, "val": y_val})
    for g, m in enumerate(models):
        _check_model(m, x_train, max(int(y_train.max()), int(y_val.max())), "train",
                     "the model" if len(models) == 1 else f"model {g} (λ = {lams[g]:g})")
    _check_checkpoint(checkpoint, checkpoint_key)
    return n_blocks


def _run(members: _Single | _Stack, x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
         y_val: torch.Tensor, *, settings: dict, lr: float, batch_size: int, max_epochs: int, patience: int,
         augment: bool, clamp_bias: bool, clamp_output_bias: bool, dev: torch.device, seed: int,
         checkpoint: str | Path | None,
         checkpoint_key: str | None, checkpoint_every_s: float, progress: bool, optimizer: str,
         weight_decay: float, eval_batch_size: int, cuda_graph: bool, channels_last: bool = False) -> list[History]:
    """The training loop of Eq. 5 that :func:`fit` and :func:`fit_stacked` share (see their docstrings)."""
    t_start = time.perf_counter()
    module, G, lams = members.module, len(members.lams), members.lams
    was_training = [m.training for m in members.models]
    params = [p for p in module.parameters() if p.requires_grad]
    dtype = params[0].dtype
    x_tr, y_tr = x_train.to(dev), y_train.to(dev).long()
    x_va, y_va = x_val.to(dev), y_val.to(dev).long()
    n_train = x_tr.shape[0]
    steps_per_epoch = math.ceil(n_train / batch_size)
    graph = bool(cuda_graph and dev.type == "cuda" and optimizer == "adam" and not channels_last)
    opt = _make_optimizer(optimizer, params, lr, weight_decay, dev, capturable=graph)
    biases = [m.bias for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None]
    if isinstance(members, _Stack):
        biases = list(module.biases)
    if not clamp_output_bias:
        biases = biases[:-1]                       # the output layer's bias comes last
    train_step = _Step(members.objective, opt, params, biases if clamp_bias else [], graph)
    settings = {**settings, "lr": float(lr), "batch_size": batch_size, "augment": augment, "clamp_bias": clamp_bias,
                **({} if clamp_output_bias else {"clamp_output_bias": False}),
                "seed": seed, "optimizer": optimizer, "weight_decay": float(weight_decay), "device_type": dev.type}
    path = Path(checkpoint) if checkpoint is not None else None
    fingerprint = _fingerprint(module, x_tr, y_tr, x_va, y_va, settings) if path is not None else ""

    hists = [History() for _ in range(G)]
    stoppers = [EarlyStopping(patience) for _ in range(G)]
    active = [True] * G
    cuda_index = (dev.index if dev.index is not None else torch.cuda.current_device()) if dev.type == "cuda" else None
    with torch.random.fork_rng(devices=[] if cuda_index is None else [cuda_index]):
        gen = torch.Generator(device=dev).manual_seed(seed)
        dropout_seed = (seed * 0x9E3779B1 + 0x7F4A7C15) % 2**63  # a stream distinct from gen's
        torch.default_generator.manual_seed(dropout_seed)
        if cuda_index is not None:
            torch.cuda.default_generators[cuda_index].manual_seed(dropout_seed)
        best = [members.member_state(g) for g in range(G)]
        start_epoch, done, train_s, train_images = 0, False, 0.0, 0
        ckpt = _load_checkpoint(path, fingerprint, checkpoint_key, dev) if path is not None else None
        if ckpt is not None:
            module.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            best = ckpt["best_state"]
            for s, st in zip(stoppers, ckpt["early_stopping"]):
                s.load_state_dict(st)
                s.patience = patience
            for h, hd in zip(hists, ckpt["history"]):
                for k, v in hd.items():
                    setattr(h, k, v)
            active = list(ckpt["active"])
            train_s, train_images = ckpt["train_s"], ckpt["train_images"]
            _set_rng_state(ckpt["rng"], gen, dev)
            start_epoch, done = int(ckpt["epoch"]), bool(ckpt["done"])
            for g, (h, s) in enumerate(zip(hists, stoppers)):
                h.resumed_from = start_epoch
                if active[g] and start_epoch > 0 and s.bad_epochs >= patience:
                    active[g], h.stopped_early = False, True  # a smaller patience already stops here
            done = done or not any(active)

        def save(epoch: int) -> None:
            hs = []
            for h in hists:
                d = dataclasses.asdict(h)
                d["wall_s"] = h.wall_s + (time.perf_counter() - t_start)
                hs.append(d)
            atomic_torch_save(path, {
                "format": _CHECKPOINT_FORMAT, "key": checkpoint_key, "fingerprint": fingerprint,
                "model": module.state_dict(), "optimizer": opt.state_dict(), "best_state": best,
                "early_stopping": [s.state_dict() for s in stoppers], "history": hs, "active": active,
                "train_s": train_s, "train_images": train_images, "epoch": epoch, "done": done,
                "rng": _rng_state(gen, dev)})

        desc = f"fit lam={lams[0]:g}" if G == 1 else f"fit {G} stacked"
        bar = tqdm(total=max_epochs, initial=min(start_epoch, max_epochs), disable=not progress, desc=desc,
                   unit="epoch", leave=False)
        last_save = time.perf_counter()
        try:
            epoch = start_epoch
            while not done and epoch < max_epochs:
                module.train()
                t0 = time.perf_counter()
                losses = torch.empty(steps_per_epoch, G, dtype=dtype, device=dev)
                # one gather (and one batched augmentation) per epoch; the steps slice views of it
                perm = torch.randperm(n_train, device=dev, generator=gen)
                x_ep, y_ep = x_tr[perm], y_tr[perm]
                if augment:
                    for s in range(0, n_train, AUGMENT_CHUNK):
                        x_ep[s:s + AUGMENT_CHUNK] = augment_batch(x_ep[s:s + AUGMENT_CHUNK], generator=gen)
                act = torch.tensor(active, device=dev)
                steps_run = steps_per_epoch
                for step in range(steps_per_epoch):
                    xb = _to_float(x_ep[step * batch_size:(step + 1) * batch_size], dtype)
                    if channels_last:
                        xb = xb.contiguous(memory_format=torch.channels_last)
                    losses[step] = train_step(xb, y_ep[step * batch_size:(step + 1) * batch_size])  # no sync
                    if (step + 1) % NAN_CHECK_EVERY == 0 and \
                            not bool((torch.isfinite(losses[:step + 1]) | ~act).all()):
                        steps_run = step + 1
                        break
                finite = torch.isfinite(losses[:steps_run]) | ~act
                if not bool(finite.all()):
                    bad_step, g = (int(v) for v in (~finite).nonzero()[0])
                    raise NaNLossError(
                        f"training loss became nan/inf at epoch {epoch + 1}, step {bad_step + 1} of {steps_per_epoch} "
                        f"for the network with lam={lams[g]:g} (lr={lr:g}, batch_size={batch_size}); "
                        f"try a lower learning rate, e.g. lr={lr / 10:g}")
                train_loss = losses[:steps_run].double().mean(0).tolist()
                train_s += time.perf_counter() - t0
                train_images += n_train

                module.eval()
                val_loss, val_acc, pen = members.validate(x_va, y_va, dev, eval_batch_size)
                epoch += 1
                for g in range(G):
                    if not active[g]:
                        continue
                    if not math.isfinite(val_loss[g]):
                        raise NaNLossError(
                            f"validation loss is {val_loss[g]} after epoch {epoch} for the network with lam="
                            f"{lams[g]:g} (its training steps were finite; lr={lr:g}); try a lower learning rate")
                    stop = stoppers[g].step(val_loss[g])
                    if stoppers[g].improved:
                        best[g] = members.member_state(g)
                    h = hists[g]
                    h.train_loss.append(train_loss[g])
                    h.val_loss.append(val_loss[g])
                    h.val_accuracy.append(val_acc[g])
                    h.penalty.append(pen[g])
                    h.epochs, h.best_epoch = epoch, stoppers[g].best_epoch
                    h.stopped_early = stop
                    if stop:
                        active[g] = False
                done = not any(active)
                for h in hists:
                    h.images_per_s = train_images / max(train_s, 1e-12)
                bar.update(1)
                bar.set_postfix(active=sum(active), val_loss=" ".join(f"{v:.4f}" for v in val_loss))
                if path is not None and (done or epoch >= max_epochs
                                         or time.perf_counter() - last_save >= checkpoint_every_s):
                    save(epoch)
                    last_save = time.perf_counter()
        finally:
            bar.close()
    for g, (m, h, s) in enumerate(zip(members.models, hists, stoppers)):
        m.to(dev)
        m.load_state_dict(best[g])
        m.train(was_training[g])
        h.epochs = len(h.train_loss)
        h.best_epoch = s.best_epoch
        h.images_per_s = train_images / max(train_s, 1e-12)
        h.wall_s += time.perf_counter() - t_start
        h.cuda_graph = train_step.graph is not None
    return hists


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    lam: float = 0.0,
    n_blocks: int | None = None,
    penalty: str = "sum",
    penalty_layers: str = "dense",
    lr: float = 1e-3,
    batch_size: int = 128,
    max_epochs: int = 100,
    patience: int = 3,
    augment: bool = False,
    clamp_bias: bool = True,
    clamp_output_bias: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_key: str | None = None,
    checkpoint_every_s: float = 0.0,
    progress: bool = True,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    channels_last: bool = False,
    eval_batch_size: int = 1000,
    cuda_graph: bool = True,
) -> History:
    """Train ``model`` on the objective of Eq. 5 with early stopping; restore the best weights.

    Parameters
    ----------
    model : torch.nn.Module
        Classifier returning logits; trained in place and moved to ``device``. On return it holds the
        weights of the best validation epoch and its original train/eval mode. Its parameters' dtype
        (float32 for the paper's networks) is the dtype of the whole computation.
    x_train, y_train, x_val, y_val : torch.Tensor
        Images ``(N, C, H, W)`` (``uint8``, divided by 255 per batch on the device, or float in
        ``[0, 1]``: NaN and values outside are refused) and integer labels ``(N,)`` below the model's
        number of outputs. Each set is copied to the device once; each epoch also
        holds a shuffled (and augmented) copy of the training images there.
    lam : float, optional
        λ of Eq. 5, the weight of the block-wise penalty S(W) (Eq. 6); 0 trains the baseline.
    n_blocks : int, optional
        Blocks of Eq. 6; defaults to ``model.n_classes`` (else the last dense layer's outputs).
    penalty : {"sum", "mean"}, optional
        S(W) as Eq. 6 writes it, or divided by the number of off-block weights
        (:func:`sepdtd.regularization.block_l1`).
    penalty_layers : {"dense", "output"}, optional
        The dense layers S(W) covers: all of them (Eq. 6) or the output layer only.
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
    clamp_output_bias : bool, optional
        With ``clamp_bias``, also the output layer's bias (False leaves it free: an ablation of why the
        fine-tuned logits go negative).
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    seed : int, optional
        Seeds the shuffling/augmentation generator and (inside a forked RNG, so the caller's global RNG
        state is untouched) the global RNG used by dropout. Same seed and device -> same run.
    checkpoint : str or Path, optional
        File for a resumable training state (model, optimizer, best weights, early stopping, history,
        every RNG state), written atomically. If it exists and matches this run (``checkpoint_key``
        and a fingerprint of the settings, parameter shapes and data), training resumes from it and
        continues exactly as an uninterrupted run would (bit for bit on CPU; on a GPU as far as its
        kernels are deterministic); otherwise a :class:`RuntimeWarning` is issued and training starts
        over. ``max_epochs`` and ``patience`` may change between the parts.
    checkpoint_key : str, optional
        Caller's identity of the run (e.g. a config hash) stored in and checked against the checkpoint.
    checkpoint_every_s : float, optional
        Least seconds between two checkpoint writes (0: after every epoch); the last epoch is always written.
    progress : bool, optional
        Show a tqdm bar over epochs.
    optimizer : {"adam", "sgd", "rmsprop"}, optional
        Adam; SGD with momentum 0.9; RMSprop with Keras' defaults (``rho=0.9, eps=1e-7``). Fused/foreach
        implementations are used.
    weight_decay : float, optional
        Passed to the optimizer (coupled L2).
    channels_last : bool, optional
        Run convolutions in channels-last memory format (``benchmarks/bench_train.py --channels-last``
        measures it).
    eval_batch_size : int, optional
        Batch size of the validation passes.
    cuda_graph : bool, optional
        On a CUDA device, replay the training step from a CUDA graph (see :class:`_Step`; checked
        against an ordinary step before use). Used with Adam and no ``channels_last``; it changes how
        the step is launched, not what it computes.

    Returns
    -------
    History
        Per-epoch losses and accuracy, best epoch, timing.

    Raises
    ------
    ValueError, TypeError
        For invalid settings or data, before any work: every argument is checked, the model is run on one
        image (its parameters must be finite, its logits cover the labels), and ``checkpoint``'s folder
        must take a file.
    NaNLossError
        When a training loss (or the validation loss) is not finite; the message names the epoch and
        step. Every step's loss is written to a device buffer without synchronising; the host looks at
        it every :data:`NAN_CHECK_EVERY` steps and at the end of each epoch, so at most that many steps
        run after the first bad one. The model is left in its failed state and no checkpoint is
        written for that epoch.
    """
    lam = _as_rate(lam, "lam must be a finite number >= 0 (the regularizer rate of Eq. 5)")
    pen = {"layers": penalty_layers, "reduction": penalty}
    n_blocks = _check_settings([model], [lam], x_train, y_train, x_val, y_val, n_blocks=n_blocks, lr=lr,
                               batch_size=batch_size, max_epochs=max_epochs, eval_batch_size=eval_batch_size,
                               weight_decay=weight_decay, optimizer=optimizer,
                               checkpoint_every_s=checkpoint_every_s, penalty=pen, patience=patience, seed=seed,
                               checkpoint=checkpoint, checkpoint_key=checkpoint_key,
                               flags=dict(augment=augment, clamp_bias=clamp_bias, progress=progress,
                                          channels_last=channels_last, cuda_graph=cuda_graph))
    dev = resolve_device(device)
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if clamp_bias:
        clamp_biases_(model)
    members = _Single(model, lam, n_blocks, pen, channels_last)
    settings = {"lams": [lam], "n_blocks": n_blocks, "penalty": pen, "stacked": 0, "channels_last": channels_last}
    return _run(members, x_train, y_train, x_val, y_val, settings=settings, lr=lr, batch_size=batch_size,
                max_epochs=max_epochs, patience=patience, augment=augment, clamp_bias=clamp_bias,
                clamp_output_bias=clamp_output_bias, dev=dev,
                seed=seed, checkpoint=checkpoint, checkpoint_key=checkpoint_key,
                checkpoint_every_s=checkpoint_every_s, progress=progress, optimizer=optimizer,
                weight_decay=weight_decay, eval_batch_size=eval_batch_size, cuda_graph=cuda_graph,
                channels_last=channels_last)[0]


def fit_stacked(
    models: list[nn.Module],
    lams: list[float],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    n_blocks: int | None = None,
    penalty: str = "sum",
    penalty_layers: str = "dense",
    lr: float = 1e-4,
    batch_size: int = 128,
    max_epochs: int = 100,
    patience: int = 3,
    augment: bool = False,
    clamp_bias: bool = True,
    clamp_output_bias: bool = True,
    device: str | torch.device = "auto",
    seed: int = 0,
    checkpoint: str | Path | None = None,
    checkpoint_key: str | None = None,
    checkpoint_every_s: float = 30.0,
    progress: bool = True,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    eval_batch_size: int = 1000,
    cuda_graph: bool = True,
) -> list[History]:
    """Train several networks of one architecture on Eq. 5, each with its own λ, as one stacked network.

    What :func:`fit` does for one network, done for ``G`` networks at once through
    :class:`sepdtd.stacked.StackedSequential`, in the same training loop: member ``g`` minimises
    cross-entropy + ``lams[g] * S(W)`` (Eq. 5-6), has its own early stopping on its validation objective
    and gets its own best weights back. The members see the same batches in the same order (one shuffle
    and augmentation per epoch, from ``seed``), so the fine-tunes of a unit differ only in λ and in their
    dropout masks. With dropout off, member ``g`` follows the trajectory of ``fit(models[g],
    lam=lams[g], seed=seed)`` up to floating-point summation order. The stack trains until every member
    has stopped (or ``max_epochs``); a member that has stopped is still computed (its later weights are
    discarded), so the cost is that of the longest member, in the kernels of one network.

    Parameters
    ----------
    models : list of torch.nn.Module
        ``G >= 1`` networks of one architecture (:data:`sepdtd.stacked.SUPPORTED` layers, e.g. copies
        of the baseline). Trained "in place": on return each holds the weights of its best validation
        epoch, is on ``device`` and has its original train/eval mode.
    lams : list of float
        λ of Eq. 5 per member (``>= 0``).
    x_train, y_train, x_val, y_val, n_blocks, penalty, penalty_layers, lr, batch_size, max_epochs, patience, \
augment, clamp_bias, clamp_output_bias, device, seed, checkpoint, checkpoint_key, progress, optimizer, \
weight_decay, eval_batch_size, cuda_graph
        As for :func:`fit` (``lr`` and the optimizer are shared; element-wise optimizers such as Adam
        update every member exactly as its own optimizer would).
    checkpoint_every_s : float, optional
        Least seconds between two checkpoint writes (0: after every epoch).

    Returns
    -------
    list of History
        One per member: its own losses, accuracy, penalty, epochs (until it stopped) and best epoch;
        ``wall_s`` and ``images_per_s`` are the stack's (training images per second, each image
        passing through all members).

    Raises
    ------
    ValueError, TypeError
        For invalid settings, data or architectures, before any work.
    NaNLossError
        When a member that is still training gets a non-finite loss (the message names its λ).
    """
    models, lams = list(models), [_as_rate(v, "every λ must be a finite number >= 0 (Eq. 5)") for v in lams]
    if not models or len(models) != len(lams):
        raise ValueError(f"need one λ per model and at least one model, got {len(models)} models, {len(lams)} λ")
    pen = {"layers": penalty_layers, "reduction": penalty}
    n_blocks = _check_settings(models, lams, x_train, y_train, x_val, y_val, n_blocks=n_blocks, lr=lr,
                               batch_size=batch_size, max_epochs=max_epochs, eval_batch_size=eval_batch_size,
                               weight_decay=weight_decay, optimizer=optimizer,
                               checkpoint_every_s=checkpoint_every_s, penalty=pen, patience=patience, seed=seed,
                               checkpoint=checkpoint, checkpoint_key=checkpoint_key,
                               flags=dict(augment=augment, clamp_bias=clamp_bias, progress=progress,
                                          cuda_graph=cuda_graph))
    dev = resolve_device(device)
    if clamp_bias:
        for m in models:
            clamp_biases_(m)
    members = _Stack(models, lams, n_blocks, pen, dev)
    settings = {"lams": lams, "n_blocks": n_blocks, "penalty": pen, "stacked": len(models)}
    return _run(members, x_train, y_train, x_val, y_val, settings=settings, lr=lr, batch_size=batch_size,
                max_epochs=max_epochs, patience=patience, augment=augment, clamp_bias=clamp_bias,
                clamp_output_bias=clamp_output_bias, dev=dev,
                seed=seed, checkpoint=checkpoint, checkpoint_key=checkpoint_key,
                checkpoint_every_s=checkpoint_every_s, progress=progress, optimizer=optimizer,
                weight_decay=weight_decay, eval_batch_size=eval_batch_size, cuda_graph=cuda_graph)


def _stacked_penalty(weights: list[torch.Tensor], masks: list[torch.Tensor]) -> torch.Tensor:
    """S(W) of Eq. 6 for every member of a stack: ``(G,)`` from the ``(G, out, in)`` dense weights."""
    total = None
    for w, m in zip(weights, masks):
        term = (torch.relu(w) * m).sum(dim=(1, 2))
        total = term if total is None else total + term
    return total


@torch.no_grad()
def _evaluate_stacked(stack: nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device,
                      batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy and number correct per member, ``(G,)`` device tensors (no sync)."""
    G = stack.n_members
    loss = torch.zeros(G, dtype=torch.float64, device=dev)
    correct = torch.zeros(G, dtype=torch.int64, device=dev)
    for s in range(0, x.shape[0], batch_size):
        xb = _to_float(x[s:s + batch_size].to(dev, non_blocking=True), stack.weights[0].dtype)
        yb = y[s:s + batch_size].to(dev, non_blocking=True)
        logits = stack(xb)                                                   # (G, B, K)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yb.repeat(G), reduction="none")
        loss += ce.view(G, -1).sum(1)
        correct += (logits.argmax(-1) == yb).sum(1)
    return loss, correct


def _mask_like(w: torch.Tensor, n_blocks: int) -> torch.Tensor:
    """The off-block indicator of Eq. 6 for a stacked dense weight ``(G, out, in)``, as 0/1 in its dtype."""
    return block_mask(w.shape[1], w.shape[2], n_blocks, device=w.device).to(w.dtype)

