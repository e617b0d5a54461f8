r"""Beyond the paper: a ground truth for separability, and what causes diffusion (book chapters 9-10).

For one unit — a (profile, data set, seed), the same units as :mod:`sepdtd.experiments` — :func:`run`

1. reuses the unit's trained networks (the baseline and every λ of Eq. 5;
   :func:`sepdtd.experiments.ensure_run` / :func:`~sepdtd.experiments.load_models`);
2. builds two-object test images with known object regions (:mod:`sepdtd.twoobject`);
3. trains the extra networks of chapter 10 with the profile's *pre-training* stage on the unit's
   training subset (the baseline's recipe): Table 1's network with separate dense layers per class
   (:func:`sepdtd.models.build_separate`, the "intuitive approach" of Section 4) and with fewer and more
   convolutional layers (:func:`sepdtd.models.build_depth`);
4. measures every network with every explanation method of :mod:`sepdtd.attribution` (DTD, LRP-ε,
   LRP-α2β1, gradient × input, CLRP, SGLRP): the diffusion of Eq. 7 between the top-1 and top-2
   heatmaps of real test images (under :data:`sepdtd.report.BOOK_CONVENTION` and the others, and the
   cosine similarity), and, on the two-object images the network recognises, the relevance mass
   accuracy and the pointing game of the top-1 and the top-2 class
   (:func:`sepdtd.metrics.relevance_mass_accuracy`, :func:`sepdtd.metrics.pointing_game`).

Results are one JSON file per unit, ``results/<profile>/beyond/<dataset>/seed<seed>-<config_hash>.json``,
written atomically once the unit is done (never read by :func:`sepdtd.experiments.load_results`: it has
no ``settings``); a file that exists is loaded, not recomputed, and one of another configuration is
refused. The extra networks' weights and a ``partial.json`` of the finished entries (so an
interrupted unit resumes) live under ``$SEPDTD_CACHE/checkpoints/<profile>/beyond/<dataset>/seed<seed>-<hash>/``.

Profiles (:data:`PROFILES`) map onto :data:`sepdtd.experiments.PROFILES`: the extra networks reuse
that profile's pre-training stage and data subsets, so ``quick`` stays cheap.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from sepdtd import attribution, experiments, metrics, models, twoobject, utils

__all__ = [
    "SCHEMA", "BeyondProfile", "PROFILES", "BeyondConfig", "make_config", "config_hash", "code_hash",
    "result_path", "checkpoint_dir", "run", "ensure", "reproduce", "load_results", "summary", "factors",
]

#: Version of the results-file layout below.
SCHEMA = 1

#: Sources whose code produces the numbers (on top of :data:`sepdtd.experiments.SOURCES`).
SOURCES = ("attribution", "twoobject", "beyond")

#: Diffusion conventions stored per method (``"softmax"`` needs logit-started heatmaps, which CLRP and
#: SGLRP are not, so it is left out).
DIFFUSION_CONVENTIONS = ("raw", "max", "sum")


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class BeyondProfile:
    """Settings of chapters 9-10 on top of an :class:`sepdtd.experiments.Profile` of the same name.

    Attributes
    ----------
    name : str
        ``"smoke"``, ``"quick"`` or ``"full"`` (the experiments' profile whose networks are reused).
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
    n_pairs: int
    max_scored: int
    n_eval: int
    method_lams: tuple[float, ...] | None
    extra_datasets: tuple[str, ...]
    depth_offsets: tuple[int, ...]
    separate_widths: tuple[str, ...]
    threshold: int = 0
    batch_size: int = 250


#: The profiles of chapters 9-10.
PROFILES: dict[str, BeyondProfile] = {
    "smoke": BeyondProfile(name="smoke", n_pairs=256, max_scored=32, n_eval=32, method_lams=(0.0, 1.0),
                           extra_datasets=("mnist", "fashion_mnist", "cifar10"), depth_offsets=(-1, 2),
                           separate_widths=("split",), batch_size=64),
    "quick": BeyondProfile(name="quick", n_pairs=1500, max_scored=200, n_eval=200, method_lams=(0.0, 1.0),
                           extra_datasets=("mnist", "fashion_mnist"), depth_offsets=(-1, 2),
                           separate_widths=("split",)),
    "full": BeyondProfile(name="full", n_pairs=10_000, max_scored=2000, n_eval=2000, method_lams=None,
                          extra_datasets=("mnist", "fashion_mnist", "cifar10"), depth_offsets=(-1, 2, 4),
                          separate_widths=("split", "full"), batch_size=500),
}


@dataclass(frozen=True)
class BeyondConfig:
    """Everything that changes the numbers of one unit of chapters 9-10 (see :func:`make_config`)."""

    profile: str
    dataset: str
    seed: int
    base_config_hash: str
    n_pairs: int
    max_scored: int
    n_eval: int
    threshold: int
    methods: tuple[str, ...]
    method_lams: tuple[float, ...]
    lams: tuple[float, ...]
    extra: bool
    depths: tuple[int, ...]
    separate_widths: tuple[str, ...]
    epsilon: float = attribution.EPSILON
    batch_size: int = dataclasses.field(default=250, metadata={"hash": False})

    def as_dict(self) -> dict:
        """All fields as a JSON-able dict."""
        return json.loads(json.dumps(dataclasses.asdict(self)))


def make_config(profile: str, dataset: str, seed: int = 0) -> BeyondConfig:
    """The configuration of ``dataset`` and ``seed`` under a profile of :data:`PROFILES`.

    Raises
    ------
    ValueError
        For an unknown profile or data set, or an invalid seed (as :func:`sepdtd.experiments.make_config`).
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    base = experiments.make_config(profile, dataset, seed)
    p = PROFILES[profile]
    lams = (0.0, *base.lams)
    method_lams = lams if p.method_lams is None else tuple(lam for lam in p.method_lams if lam in lams)
    t = models.TABLE1_CONV[base.dataset]
    depths = tuple(sorted({t + d for d in p.depth_offsets if t + d >= 0} - {t}))
    return BeyondConfig(profile=profile, dataset=base.dataset, seed=base.seed,
                        base_config_hash=experiments.config_hash(base), n_pairs=p.n_pairs, max_scored=p.max_scored,
                        n_eval=p.n_eval, threshold=p.threshold, methods=tuple(attribution.METHODS),
                        method_lams=method_lams, lams=lams, extra=base.dataset in p.extra_datasets,
                        depths=depths, separate_widths=p.separate_widths, batch_size=p.batch_size)


def config_hash(config: BeyondConfig) -> str:
    """12 hex digits of the sha256 of the configuration's canonical JSON (scheduling fields left out)."""
    skip = {f.name for f in dataclasses.fields(BeyondConfig) if not f.metadata.get("hash", True)}
    d = {k: v for k, v in config.as_dict().items() if k not in skip}
    return hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def code_hash() -> str:
    """Hash of the sources behind the numbers: :data:`SOURCES` and :func:`sepdtd.experiments.code_hash`."""
    h = hashlib.sha256(experiments.code_hash().encode())
    here = Path(__file__).resolve().parent
    for name in SOURCES:
        path = here / f"{name}.py"
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.exists() else b"<missing>") + b"\0")
    return h.hexdigest()[:12]


def result_path(config: BeyondConfig, results_dir: str | os.PathLike | None = None) -> Path:
    """``<results_dir>/beyond/<dataset>/seed<seed>-<hash>.json`` (default ``results/<profile>``)."""
    root = Path(results_dir) if results_dir is not None else experiments.default_results_dir(config.profile)
    return root / "beyond" / config.dataset / f"seed{config.seed}-{config_hash(config)}.json"


def checkpoint_dir(config: BeyondConfig, checkpoints_dir: str | os.PathLike | None = None) -> Path:
    """``<checkpoint root>/<profile>/beyond/<dataset>/seed<seed>-<hash>/``."""
    root = Path(checkpoints_dir) if checkpoints_dir is not None else experiments.checkpoint_root()
    return root / config.profile / "beyond" / config.dataset / f"seed{config.seed}-{config_hash(config)}"


def _tag(lam: float) -> str:
    """The name of a λ network, as in :mod:`sepdtd.experiments`' checkpoints: ``baseline``, ``lam1.0``."""
    return "baseline" if lam == 0 else f"lam{float(lam)!r}"


# ---------------------------------------------------------------------------------------- measuring
def _batches(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _heatmaps(method: str, model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor,
              dev: torch.device) -> torch.Tensor:
    with torch.no_grad():
        xb = x.to(dev).float() / 255
        return attribution.heatmap(method, model, xb, classes.to(dev), low=0.0, high=1.0).double().cpu()


def _diffusion(method: str, model: torch.nn.Module, x: torch.Tensor, dev: torch.device, bs: int) -> dict:
    """Eq. 7 between the top-1 and top-2 heatmaps, per convention, and their cosine similarity.

    Also the mean |cosine| and the shares of images whose top-1 / top-2 logit is <= 0 (as
    :func:`sepdtd.metrics.diffusion_variants`): a DTD heatmap carries its logit's sign.
    """
    sums = {c: 0.0 for c in DIFFUSION_CONVENTIONS}
    cos = abs_cos = 0.0
    nonpositive = torch.zeros(2, dtype=torch.float64)
    for sl in _batches(x.shape[0], bs):
        with torch.no_grad():
            logits = model(x[sl].to(dev).float() / 255).topk(2, dim=1)
        cls = logits.indices.cpu()
        h = _heatmaps(method, model, x[sl], cls, dev)
        for c in DIFFUSION_CONVENTIONS:
            hc = metrics.normalize(h, c)
            sums[c] += float(metrics.frobenius(hc[:, 0], hc[:, 1]).sum())
        per_image = metrics.cosines(h[:, 0], h[:, 1])
        cos += float(per_image.sum())
        abs_cos += float(per_image.abs().sum())
        nonpositive += (logits.values <= 0).sum(dim=0).double().cpu()
    n = x.shape[0]
    return {"diffusion": {c: v / n for c, v in sums.items()}, "cosine": cos / n, "abs_cosine": abs_cos / n,
            "logit_nonpositive": (nonpositive / n).tolist(), "n_eval": n}


def _ground_truth(method: str, model: torch.nn.Module, tset: twoobject.TwoObjectSet, dev: torch.device,
                  bs: int) -> dict:
    """Mass accuracy and pointing game of the top-1 and top-2 class on the recognised composites."""
    if len(tset) == 0:
        return {"mass": [None, None], "pointing": [None, None], "mass_objects": [None, None],
                "pointing_objects": [None, None], "mass_sd": [None, None], "mass_nan": [0, 0], "covered": [0, 0],
                "n_scored": 0}
    mass, point, mass_o, point_o = [], [], [], []
    for sl in _batches(len(tset), bs):
        part = tset.subset(torch.arange(sl.start, sl.stop))
        cls = twoobject.top2(model, part.images)
        h = _heatmaps(method, model, part.images, cls, dev)
        own, other = part.regions(cls)
        flat = (h.flatten(0, 1), own.flatten(0, 1), other.flatten(0, 1))
        mass.append(metrics.relevance_mass_accuracy(*flat).view(-1, 2))
        point.append(metrics.pointing_game(*flat).view(-1, 2))
        mass_o.append(metrics.relevance_mass_accuracy(*flat, objects_only=True).view(-1, 2))
        point_o.append(metrics.pointing_game(*flat, objects_only=True).view(-1, 2))
    m, p, mo, po = (torch.cat(v) for v in (mass, point, mass_o, point_o))
    return {"mass": [_nanmean(m[:, k]) for k in range(2)], "pointing": [_nanmean(p[:, k]) for k in range(2)],
            "mass_objects": [_nanmean(mo[:, k]) for k in range(2)],
            "pointing_objects": [_nanmean(po[:, k]) for k in range(2)],
            "mass_sd": [_nansd(m[:, k]) for k in range(2)],
            "mass_nan": [int(torch.isnan(m[:, k]).sum()) for k in range(2)],
            # objects with no pixel outside the shared ones: no mass or pointing value (the rest of mass_nan is blank)
            "covered": [int(torch.isnan(p[:, k]).sum()) for k in range(2)], "n_scored": int(m.shape[0])}


def _nanmean(t: torch.Tensor) -> float | None:
    ok = t[~torch.isnan(t)]
    return float(ok.mean()) if ok.numel() else None


def _nansd(t: torch.Tensor) -> float | None:
    ok = t[~torch.isnan(t)]
    return float(ok.std()) if ok.numel() > 1 else None


def _measure(model: torch.nn.Module, methods: Sequence[str], x_eval: torch.Tensor,
             cands: twoobject.TwoObjectSet, config: BeyondConfig, dev: torch.device) -> dict:
    """Recognition share and, per method, diffusion and ground-truth scores of one network."""
    model = model.to(dev).eval()
    kept, shares = twoobject.select(cands, model)
    scored = kept.subset(torch.arange(min(len(kept), config.max_scored)))
    out: dict[str, Any] = {"recognized": shares["all"], "n_recognized": shares["kept"], "n_pairs": shares["n"],
                           "methods": {}}
    for method in methods:
        t0 = time.time()
        entry = _diffusion(method, model, x_eval, dev, config.batch_size)
        entry.update(_ground_truth(method, model, scored, dev, config.batch_size))
        entry["wall_s"] = time.time() - t0
        out["methods"][method] = entry
    return out


def _params(model: torch.nn.Module) -> int:
    """Trainable parameters, not counting the weights a :class:`~sepdtd.models.BlockDiagonalLinear` pins at 0."""
    n = sum(p.numel() for p in model.parameters())
    for m in model.modules():
        if isinstance(m, models.BlockDiagonalLinear):
            n -= int((m.keep == 0).sum())
    return n


# ---------------------------------------------------------------------------------------- the unit
def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def _eval_images(dataset: str, n: int, seed: int) -> torch.Tensor:
    from sepdtd import data

    ds = data.load(dataset)
    x = torch.as_tensor(ds.x_test)
    key = int.from_bytes(hashlib.sha256(f"beyond-eval/{seed}".encode()).digest()[:4], "big")
    idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(key))[:n].sort().values
    return x[idx].contiguous()


def _read_partial(ckdir: Path, chash: str, ccode: str) -> dict[str, dict]:
    path = ckdir / "partial.json"
    if not path.exists():
        return {}
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if state.get("config_hash") != chash or state.get("code_hash") != ccode:
        return {}
    return dict(state.get("entries", {}))


def _train_extra(config: BeyondConfig, tag: str, model: models.PaperNet, arrays: dict, base: experiments.Config,
                 ckdir: Path, dev: torch.device, progress: bool, ckey: str) -> tuple[models.PaperNet, dict]:
    """Train an extra network with the baseline's recipe (the profile's pre-training stage)."""
    from sepdtd import training

    state = ckdir / f"{tag}.state.pt"
    t0 = time.time()
    stage = base.pretrain
    hist = training.fit(
        model, arrays["x_train"], arrays["y_train"], arrays["x_val"], arrays["y_val"], lam=0.0,
        lr=stage.lr, batch_size=stage.batch_size, max_epochs=stage.max_epochs, patience=stage.patience,
        augment=base.augment, clamp_bias=base.clamp_bias, device=dev, seed=config.seed,
        checkpoint=ckdir / f"{tag}.pt", checkpoint_key=f"{ckey}/{tag}", progress=progress,
        optimizer=stage.optimizer, weight_decay=stage.weight_decay, eval_batch_size=1000)
    train_s = time.time() - t0
    utils.atomic_torch_save(state, {k: v.detach().cpu() for k, v in model.state_dict().items()})
    _, acc = training.evaluate(model, arrays["x_test"], arrays["y_test"], device=dev, batch_size=1000)
    return model.eval(), {"accuracy": float(acc), "train_wall_s": train_s, "epochs": int(hist.epochs),
                          "best_epoch": int(hist.best_epoch), "images_per_s": float(hist.images_per_s)}


def _compute(config: BeyondConfig, *, device: str | torch.device, results_dir: str | os.PathLike | None,
             checkpoints_dir: str | os.PathLike | None, progress: bool) -> dict:
    t_start = time.time()
    dev = utils.resolve_device(device)
    chash, ccode = config_hash(config), code_hash()
    ckdir = checkpoint_dir(config, checkpoints_dir)
    ckdir.mkdir(parents=True, exist_ok=True)
    done = _read_partial(ckdir, chash, ccode)

    base = experiments.make_config(config.profile, config.dataset, config.seed)
    main = experiments.ensure_run(config.profile, config.dataset, config.seed, dev, results_dir=results_dir,
                                  progress=progress, with_models=True, checkpoints_dir=checkpoints_dir)
    nets = experiments.load_models(config.profile, config.dataset, seed=config.seed, results_dir=results_dir,
                                   device=dev, checkpoints_dir=checkpoints_dir)
    settings = {float(s["lam"]): s for s in main["settings"]}
    cands = twoobject.make(config.dataset, config.n_pairs, seed=config.seed, threshold=config.threshold)
    x_eval = _eval_images(config.dataset, config.n_eval, config.seed)

    plan: list[tuple[str, dict]] = [(_tag(lam), {"family": "lambda", "lam": lam}) for lam in config.lams]
    if config.extra:
        plan += [(f"separate-{w}", {"family": "separate", "width": w}) for w in config.separate_widths]
        plan += [(f"depth-{n}", {"family": "depth", "n_conv": n}) for n in config.depths]
    todo = [tag for tag, _ in plan if tag not in done]
    arrays = experiments._prepare_arrays(base) if any(not t.startswith(("baseline", "lam")) for t in todo) else None
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), disable=not progress, unit="network",
               desc=f"beyond {config.profile} {config.dataset} seed{config.seed}")
    try:
        for tag, spec in plan:
            if tag in done:
                continue
            entry: dict[str, Any] = {"model": tag, **spec}
            if spec["family"] == "lambda":
                lam = spec["lam"]
                model = nets[lam]
                methods = config.methods if lam in config.method_lams else ("dtd",)
                entry.update(accuracy=settings[lam]["accuracy"], train_wall_s=settings[lam].get("train_wall_s"),
                             epochs=settings[lam].get("epochs"), trained_here=False,
                             n_conv=models.conv_layers(model))
            else:
                if spec["family"] == "separate":
                    model = models.build_separate(config.dataset, width=spec["width"], seed=config.seed)
                else:
                    model = models.build_depth(config.dataset, spec["n_conv"], seed=config.seed)
                model, info = _train_extra(config, tag, model, arrays, base, ckdir, dev, progress, f"{chash}/{ccode}")
                entry.update(info, trained_here=True, n_conv=models.conv_layers(model))
                methods = config.methods
            entry["params"] = _params(model)
            entry.update(_measure(model, methods, x_eval, cands, config, dev))
            done[tag] = entry
            utils.atomic_write_json(ckdir / "partial.json", {"config_hash": chash, "code_hash": ccode,
                                                            "entries": done})
            bar.update(1)
    finally:
        bar.close()
    t_end = time.time()
    t1 = models.TABLE1_CONV[config.dataset]
    result = {
        "beyond_schema": SCHEMA, "kind": "beyond", "profile": config.profile, "dataset": config.dataset,
        "seed": config.seed, "config": config.as_dict(), "config_hash": chash, "code_hash": ccode,
        "base": {"config_hash": main.get("config_hash"), "code_hash": main.get("code_hash"),
                 "commit": main.get("provenance", {}).get("commit"),
                 "device": main.get("provenance", {}).get("device")},
        "provenance": {"commit": utils.git_commit(), "versions": utils.package_versions(),
                       "device": utils.device_name(dev), "started": _iso(t_start), "finished": _iso(t_end),
                       "t_start": t_start, "t_end": t_end, "host": platform.node(),
                       "threads": torch.get_num_threads()},
        "run_wall_s": t_end - t_start,
        "two_object": {"mode": cands.mode, "n_pairs": len(cands), "threshold": config.threshold,
                       "both_mask_share": float((cands.mask_a & cands.mask_b).double().mean()),
                       "object_mask_share": float(cands.masks.double().mean())},
        "table1_conv": t1,
        "entries": [done[tag] for tag, _ in plan],
    }
    return result


# --------------------------------------------------------------------------------------- public API
def _read(path: Path, config: BeyondConfig) -> dict:
    try:
        res = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"results file {path} is not valid JSON ({e}); delete it and rerun") from e
    if res.get("config_hash") != config_hash(config) or res.get("config", {}).get("base_config_hash") != \
            config.base_config_hash:
        raise ValueError(f"results file {path} belongs to another configuration; move or delete it and rerun")
    if res.get("code_hash") != code_hash():
        warnings.warn(f"{path} was produced by other code (code_hash {res.get('code_hash')} vs {code_hash()}): "
                      "it is stale; delete it to recompute", RuntimeWarning, stacklevel=3)
    return res


def run(config: BeyondConfig, *, device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None,
        checkpoints_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Run (or load) one unit of chapters 9-10; see the module docstring.

    Parameters
    ----------
    config : BeyondConfig
        From :func:`make_config`.
    device : str or torch.device, optional
        ``"auto"``: CUDA when available.
    results_dir : path, optional
        The profile's results folder (default ``results/<profile>``); the unit's main results are read
        (or produced) there by :func:`sepdtd.experiments.ensure_run`, and this unit's file is written
        to its ``beyond/`` subfolder.
    checkpoints_dir : path, optional
        Root of the checkpoints (default :func:`sepdtd.experiments.checkpoint_root`).
    progress : bool, optional
        Progress bars.

    Returns
    -------
    dict
        ``entries``: one per network (``model`` tag: ``baseline``, ``lam<λ>``, ``separate-<width>``,
        ``depth-<n>``) with ``family``, ``accuracy``, ``params``, ``n_conv``, training time and
        epochs (extra networks), ``recognized`` (share of the two-object candidates it recognises) and
        ``methods``: per method ``diffusion`` (Eq. 7 per convention), ``cosine``, ``mass`` and
        ``pointing`` (top-1, top-2), ``n_scored``; plus ``two_object``, ``provenance``, ``run_wall_s``.
    """
    if not isinstance(config, BeyondConfig):
        raise TypeError(f"run expects a BeyondConfig (see make_config), got {type(config).__name__}")
    path = result_path(config, results_dir)
    if path.exists():
        return _read(path, config)
    result = _compute(config, device=device, results_dir=results_dir, checkpoints_dir=checkpoints_dir,
                      progress=progress)
    utils.atomic_write_json(path, result)
    return result


def ensure(profile: str, dataset: str, seed: int = 0, device: str | torch.device = "auto", *,
           results_dir: str | os.PathLike | None = None, checkpoints_dir: str | os.PathLike | None = None,
           progress: bool = True) -> dict:
    """The results of a unit for the notebooks: loaded when they exist, else run (:func:`run`)."""
    return run(make_config(profile, dataset, seed), device=device, results_dir=results_dir,
               checkpoints_dir=checkpoints_dir, progress=progress)


def reproduce(profile: str, *, datasets: Sequence[str] | None = None, seeds: Sequence[int] | None = None,
              device: str | torch.device = "auto", results_dir: str | os.PathLike | None = None,
              checkpoints_dir: str | os.PathLike | None = None, progress: bool = True) -> list[dict]:
    """Every unit of a profile (default: the experiments profile's data sets and seeds), one after the other."""
    prof = experiments.PROFILES.get(profile)
    if prof is None or profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    if isinstance(datasets, str):
        datasets = [datasets]
    for d in datasets or ():  # all names and seeds before the first unit runs
        for s in (prof.seeds if seeds is None else seeds):
            make_config(profile, d, s)
    return [ensure(profile, d, s, device, results_dir=results_dir, checkpoints_dir=checkpoints_dir, progress=progress)
            for s in (prof.seeds if seeds is None else seeds) for d in (datasets or prof.datasets)]


def load_results(profile: str, *, results_dir: str | os.PathLike | None = None) -> list[dict]:
    """Every current unit file of a profile (``results/<profile>/beyond/``), one per (data set, seed).

    Files of another configuration than the current package's are skipped (with a warning). Each result
    gets ``stale``: True when its ``code_hash`` is not the current :func:`code_hash` (the code that
    produced it has changed since; its numbers may differ from what the package computes now).

    Raises
    ------
    ValueError
        If a ``.json`` file is not valid JSON (results are written atomically, so this means damage).
    """
    root = (Path(results_dir) if results_dir is not None else experiments.default_results_dir(profile)) / "beyond"
    if not root.is_dir():
        return []
    out = []
    for path in sorted(root.rglob("*.json")):
        if ".tmp" in path.name:
            continue
        try:
            res = json.loads(path.read_text())
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e}); delete it and rerun") from e
        if not isinstance(res, dict) or res.get("kind") != "beyond":
            continue
        try:
            current = config_hash(make_config(profile, res["dataset"], int(res["seed"])))
        except (KeyError, ValueError):
            current = None
        if res.get("config_hash") != current:
            warnings.warn(f"skipping {path}: written for another configuration", RuntimeWarning, stacklevel=2)
            continue
        res["stale"] = res.get("code_hash") != code_hash()
        out.append(res)
    return out


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
    ``recognized``, ``train_wall_s``; ``mass1_se``, ``mass2_se``: the standard error of the mean mass
    accuracy over the scored images where it is defined (of the seeds' mean), a float or None; plus ``params``,
    ``n_seeds``, ``n_scored`` (per seed) and ``epochs``.
    """
    groups: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for res in results:
        for e in res["entries"]:
            for method, m in e["methods"].items():
                groups[(res["dataset"], e["model"], method)].append((e, m))
    rows = []
    for (dataset, model, method), items in groups.items():
        e0 = items[0][0]
        row = {"dataset": dataset, "model": model, "family": e0["family"], "lam": e0.get("lam"),
               "n_conv": e0.get("n_conv"), "width": e0.get("width"), "method": method, "params": e0.get("params"),
               "n_seeds": len(items), "n_scored": [m.get("n_scored") for _, m in items],
               "epochs": [e.get("epochs") for e, _ in items]}
        row["diffusion"] = _stats([m["diffusion"].get(convention) for _, m in items])[:2]
        row["cosine"] = _stats([m["cosine"] for _, m in items])[:2]
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


def factors(rows: Sequence[dict], *, lam: float = 1.0) -> list[dict]:
    """How much each factor changes the top-2 explanation, relative to the paper's setting.

    The reference is the baseline network explained with DTD. Each *factor* changes one thing:

    - ``rule``: the explanation method (every other method of :data:`sepdtd.attribution.METHODS`);
    - ``dense``: the dense layers (fine-tuned with Eq. 6 at ``lam``; separate per class);
    - ``depth``: the number of convolutional layers;

    and the change is measured on the cosine similarity of the top-1/top-2 heatmaps (lower = less
    diffusion), Eq. 7 (the rows' convention; higher = less diffusion), and the ground truth: the top-2
    class's relevance mass accuracy and pointing game (higher = its explanation is on its object).

    Returns
    -------
    list of dict
        ``dataset``, ``factor``, ``change`` (a label), and ``d_cosine``, ``d_diffusion``, ``d_mass2``,
        ``d_point2``, ``d_mass_obj2`` (variant minus reference, means over seeds; None where missing),
        plus the variant's absolute ``mass2``, ``point2`` and ``mass_obj2``.
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
        tag = _tag(lam)
        if (dataset, tag, "dtd") in by:
            variants.append(("dense", f"Eq. 6, λ = {lam:.1f}", by[(dataset, tag, "dtd")]))
        for r in rows:
            if r["dataset"] == dataset and r["method"] == "dtd" and r["family"] == "separate":
                variants.append(("dense", f"separate dense layers ({r['width']})", r))
        for r in rows:
            if r["dataset"] == dataset and r["method"] == "dtd" and r["family"] == "depth":
                variants.append(("depth", f"{r['n_conv']} conv layers (Table 1: {ref['n_conv']})", r))
        for factor, change, r in variants:
            out.append({"dataset": dataset, "factor": factor, "change": change,
                        "d_cosine": delta(r, ref, "cosine"), "d_diffusion": delta(r, ref, "diffusion"),
                        "d_mass2": delta(r, ref, "mass2"), "d_point2": delta(r, ref, "point2"),
                        "d_mass_obj2": delta(r, ref, "mass_obj2"),
                        "mass2": r["mass2"][0], "point2": r["point2"][0], "mass_obj2": r["mass_obj2"][0]})
    return out
