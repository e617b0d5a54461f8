"""The training stage: train the networks of a (data set, seed) folder and keep them.

A :class:`Job` is one :class:`~sepdtd.pipeline.config.TrainConfig` and the tags of the networks it
makes: one network from scratch (:func:`sepdtd.training.fit`), or the fine-tunes of a kept start
network, one per λ, trained as one stack (:func:`sepdtd.training.fit_stacked`) from copies of the
start network's kept (float16) weights.

:func:`ensure` trains the jobs whose networks are missing (and, on request, the stale ones), resuming an
interrupted job from its checkpoint under ``$SEPDTD_CACHE/checkpoints``. Each finished network is kept
as float16 safetensors (:func:`sepdtd.pipeline.store.save_network`); its train-record entry holds the
configuration, the fingerprints of the training code it depends on
(:func:`sepdtd.pipeline.fingerprint.train_dependencies`), the digest of the file, the training history
and the test accuracy before and after rounding to float16.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sepdtd import data, training, utils
from sepdtd.pipeline import fingerprint, store
from sepdtd.pipeline.config import TrainConfig, check_name

__all__ = ["Job", "RETRAIN", "checkpoint_root", "train_arrays", "status", "ensure"]

#: What :func:`ensure` trains: ``"missing"`` networks only, ``"stale"`` ones too, or ``"all"``.
RETRAIN = ("missing", "stale", "all")


@dataclass(frozen=True)
class Job:
    """A training job and the tags of its networks (one per λ of ``config.lams``, in that order)."""

    tags: tuple[str, ...]
    config: TrainConfig

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))
        for t in self.tags:
            check_name(t, "a network tag")
        if len(self.tags) != len(self.config.lams):
            raise ValueError(f"one tag per λ: {self.tags} for λ {self.config.lams}")
        if self.config.start is None and len(self.tags) != 1:
            raise ValueError("a job from scratch trains one network; stacks start from a kept network")


def checkpoint_root() -> Path:
    """``$SEPDTD_CACHE/checkpoints``, else ``~/.cache/sepdtd/checkpoints``."""
    root = os.environ.get("SEPDTD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sepdtd") / "checkpoints"


def _digest(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:12]


def train_arrays(config: TrainConfig) -> dict[str, Any]:
    """The training and validation images of a job (CPU tensors) and the digests of its split."""
    ds = data.load(config.dataset)
    x, y = torch.as_tensor(ds.x_train), torch.as_tensor(ds.y_train).long()
    tr, va = data.train_val_split(int(y.shape[0]), val_fraction=config.val_fraction, seed=config.seed)
    tr = data.seeded_subset(torch.as_tensor(tr).long(), config.n_train, config.seed, "train")
    va = data.seeded_subset(torch.as_tensor(va).long(), config.n_val, config.seed, "val")
    return {"x_train": x[tr].contiguous(), "y_train": y[tr].contiguous(),
            "x_val": x[va].contiguous(), "y_val": y[va].contiguous(),
            "split": {"n_train": int(tr.numel()), "n_val": int(va.numel()), "train_idx_sha": _digest(tr),
                      "val_idx_sha": _digest(va), "split_seed": config.seed}}


def status(entry: dict | None, job: Job, tag: str, trained: dict[str, dict]) -> list[dict]:
    """Why the kept network ``tag`` of ``job`` is not what the current code would train (empty: current).

    Each reason is a dict with ``text`` and, for a changed component of the training code
    (:func:`sepdtd.pipeline.fingerprint.train_components`), ``stage`` ("train"), ``field`` (the
    component) and its ``from`` / ``to`` fingerprints. Without an entry the one reason is
    ``{"text": "missing"}``; a different configuration, or a start network that changed or is itself
    stale, are reasons too.
    """
    if entry is None:
        return [{"text": "missing"}]
    reasons = []
    if entry.get("config_hash") != job.config.key():
        reasons.append({"text": f"training configuration {entry.get('config_hash')} is not the current "
                                f"{job.config.key()}"})
    current = fingerprint.train_components()
    for dep in fingerprint.train_dependencies(job.config):
        was = entry.get("fingerprint", {}).get(dep)
        if was != current[dep]:
            reasons.append({"stage": "train", "field": dep, "from": was, "to": current[dep],
                            "text": f"training code '{dep}' changed ({was} -> {current[dep]})"})
    start = job.config.start_tag
    if start is not None:
        src = trained.get(start)
        if src is None or (entry.get("start") or {}).get("sha256") != src.get("sha256"):
            reasons.append({"text": f"its start network '{start}' has changed since"})
        elif src.get("stale"):
            reasons.append({"text": f"its start network '{start}' is stale"})
    return reasons


#: Test images whose heatmaps the float16 rounding check compares (Eq. 7 and |cosine|).
ROUNDING_EVAL = 500


def _rounding(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dev: torch.device) -> dict:
    """What rounding the weights to the kept float16 changes: test accuracy, and raw d and |cosine| of the
    top-1/top-2 DTD heatmaps of the first :data:`ROUNDING_EVAL` test images, before and after."""
    from sepdtd.pipeline.measure import top2_fields

    def measured() -> tuple[float, float, float]:
        _, acc = training.evaluate(model, x, y, device=dev)
        f, _ = top2_fields("dtd", model, x[:ROUNDING_EVAL], dev, 250, ("raw",))
        return acc, f["diffusion"]["raw"], f["abs_cosine"]

    was = model.training
    model.eval()
    before = measured()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for v in model.state_dict().values():
            if v.is_floating_point():
                v.copy_(v.to(store.DTYPE).to(v.dtype))
    after = measured()
    model.load_state_dict(state)
    model.train(was)
    return {"accuracy_float32": before[0], "accuracy_float16": after[0], "n_test": int(x.shape[0]),
            "diffusion_raw_float32": before[1], "diffusion_raw_float16": after[1],
            "abs_cosine_float32": before[2], "abs_cosine_float16": after[2], "n_eval": min(ROUNDING_EVAL, x.shape[0])}


def _start_models(root: Path, job: Job, trained: dict[str, dict]) -> tuple[list[torch.nn.Module], dict]:
    from sepdtd.pipeline.measure import load_network

    tag = job.config.start_tag
    if tag not in trained:
        raise FileNotFoundError(f"the start network '{tag}' of {job.tags} is not kept in {root}: train it first")
    nets = [load_network(root, trained[tag]).train() for _ in job.config.lams]
    return nets, {"tag": tag, "sha256": trained[tag]["sha256"]}


def _train_job(root: Path, job: Job, trained: dict[str, dict], *, dev: torch.device, progress: bool,
               checkpoints_dir: Path, checkpoint_every_s: float, arrays: dict,
               test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, dict]:
    cfg, st = job.config, job.config.stage
    deps = {d: fingerprint.train_components()[d] for d in fingerprint.train_dependencies(cfg)}
    key = cfg.key()
    ckdir = checkpoints_dir / cfg.dataset / f"seed{cfg.seed}" / f"{key}-{store.digest_json(deps)[:12]}"
    ckdir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    kw = dict(n_blocks=cfg.n_blocks, penalty=cfg.penalty, penalty_layers=cfg.penalty_layers, lr=st.lr,
              batch_size=st.batch_size, max_epochs=st.max_epochs, patience=st.patience, augment=cfg.augment,
              clamp_bias=cfg.clamp_bias, clamp_output_bias=cfg.clamp_output_bias, device=dev, seed=cfg.train_seed,
              checkpoint=ckdir / "train.pt",
              checkpoint_key=f"{key}/{sorted(deps.items())}", checkpoint_every_s=checkpoint_every_s,
              progress=progress, optimizer=st.optimizer,
              weight_decay=st.weight_decay, eval_batch_size=cfg.eval_batch_size)
    with utils.file_lock(ckdir / ".lock", timeout=5, what=f"training job {job.tags} of {cfg.dataset} seed {cfg.seed}"):
        if cfg.start is None:
            nets, start = [cfg.build()], None
            hists = [training.fit(nets[0], arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"],
                                  lam=cfg.lams[0], **kw)]
        else:
            nets, start = _start_models(root, job, trained)
            hists = training.fit_stacked(nets, list(cfg.lams), arrays["x_train"], arrays["y_train"], arrays["x_val"],
                                         arrays["y_val"], **kw)
    t_trained = time.time()
    entries = {}
    for tag, lam, net, hist in zip(job.tags, cfg.lams, nets, hists):
        net.eval()
        rounding = _rounding(net, *test, dev)
        info = store.save_network(root, store.network_file(cfg.dataset, cfg.seed, tag), net,
                                  metadata={"tag": tag, "dataset": cfg.dataset, "seed": cfg.seed, "arch": cfg.arch,
                                            "lam": lam, "job": key})
        h = hist.as_dict()
        entries[tag] = {
            "lam": lam, "job": key, "config": cfg.as_dict(), "config_hash": key, "fingerprint": deps, **info,
            "start": start, "split": arrays["split"], "rounding": rounding,
            "training": {**{k: h[k] for k in ("epochs", "best_epoch", "stopped_early", "resumed_from", "images_per_s",
                                              "cuda_graph")},
                         "seed": cfg.train_seed, "train_wall_s": t_trained - t_start,
                         "history": {k: [float(v) for v in h[k]] for k in ("train_loss", "val_loss", "val_accuracy",
                                                                            "penalty")}},
            "provenance": store.provenance(dev, t_start, time.time(), recorded_by=utils.git_commit()),
        }
    return entries


def ensure(root: str | os.PathLike, dataset: str, seed: int, jobs: Sequence[Job], *,
           device: str | torch.device = "auto", retrain: str = "missing", progress: bool = True,
           checkpoints_dir: str | os.PathLike | None = None, checkpoint_every_s: float = 30.0,
           profile: str | None = None, test: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, dict]:
    """Train the jobs of a (data set, seed) folder whose networks are missing (or stale, or all).

    Parameters
    ----------
    root : path
        The profile's folder.
    dataset, seed
        The folder (every job's configuration must have them).
    jobs : sequence of Job
        In an order where every start network comes before the jobs that start from it.
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    retrain : {"missing", "stale", "all"}, optional
        ``"missing"`` keeps every kept network, even a stale one (it warns); ``"stale"`` also trains
        again the networks of :func:`status` other than current; ``"all"`` trains every job.
    progress : bool, optional
        Progress bars.
    checkpoints_dir : path, optional
        Root of the training checkpoints (default :func:`checkpoint_root`).
    checkpoint_every_s : float, optional
        Least seconds between two writes of a job's checkpoint (0: after every epoch).
    profile : str, optional
        The profile's name, for the record (default: the folder's name).
    test : (images, labels), optional
        The test images of the float16 rounding check (default: the whole test set); give the ones the
        accuracy is measured on.

    Returns
    -------
    dict
        Tag -> train-record entry of every network of ``jobs``.
    """
    if retrain not in RETRAIN:
        raise ValueError(f"retrain must be one of {', '.join(RETRAIN)}, got {retrain!r}")
    utils.git_commit()                                  # the commit of the code this process loaded
    root = Path(root)
    for job in jobs:
        if (job.config.dataset, job.config.seed) != (dataset, seed):
            raise ValueError(f"job {job.tags} is for {job.config.dataset} seed {job.config.seed}, "
                             f"not {dataset} seed {seed}")
    path = store.record_path(root, "train", dataset, seed)
    header = {"stage": "train", "profile": profile or root.name, "dataset": dataset, "seed": seed}
    trained = store.read_record(path)["networks"] if path.exists() else {}
    dev = utils.resolve_device(device)
    ck = Path(checkpoints_dir) if checkpoints_dir is not None else checkpoint_root()
    for folder in (root, ck):  # a write sweeps only its own folder; this reaches folders no one writes again
        utils.remove_stale_temporaries(folder, recursive=True)
    arrays: dict[tuple, dict] = {}
    for job in jobs:
        reasons = {t: status(trained.get(t), job, t, trained) for t in job.tags}
        missing = any(r == [{"text": "missing"}] for r in reasons.values())
        stale = any(r and r != [{"text": "missing"}] for r in reasons.values())
        if not (retrain == "all" or missing or (stale and retrain == "stale")):
            if stale:
                why = "; ".join(sorted({x["text"] for r in reasons.values() for x in r}))
                warnings.warn(f"keeping the stale networks {[t for t, r in reasons.items() if r]} of {dataset} seed "
                              f"{seed} ({why}); retrain them with --retrain stale", RuntimeWarning, stacklevel=2)
                for t, r in reasons.items():
                    if r:
                        trained[t] = {**trained[t], "stale": True}
            continue
        cfg = job.config
        split = (cfg.n_train, cfg.n_val, cfg.val_fraction)
        if split not in arrays:
            arrays[split] = train_arrays(cfg)
        if test is None:
            ds = data.load(dataset)
            test = (torch.as_tensor(ds.x_test), torch.as_tensor(ds.y_test).long())
        entries = _train_job(root, job, trained, dev=dev, progress=progress, checkpoints_dir=ck,
                             checkpoint_every_s=checkpoint_every_s, arrays=arrays[split], test=test)
        store.update_record(path, header, lambda nets, entries=entries: nets.update(entries))
        trained.update(entries)
    return {t: trained[t] for job in jobs for t in job.tags}
