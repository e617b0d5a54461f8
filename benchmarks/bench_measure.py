"""The measure command on a profile's kept networks: its wall time against the 20-minute target.

It copies ``results/<profile>`` to a temporary folder (the committed records stay untouched) and runs
:func:`sepdtd.remeasure.run` there with ``force=True``: every kept network gets every measurement its
protocol gives it again, as ``python -m sepdtd measure --profile <profile> --force`` would. It prints the
time per (network, measurement) and in all, and two ratios:

- against the target (20 minutes for the whole full profile on 2 CPU cores), for the networks kept now
  and projected onto every network the profile plans: each measurement kind's mean time per network
  here, times the number of networks of each data set that get it, times that data set's architecture
  factor. The factor of a data set is the time of the ``"paper"`` measurement of a freshly built network
  of its architecture over the same time for a data set measured here (1 for those); the weights do not
  change what a measurement computes, only its values;
- against a reference timed in the same run: one plain forward pass of every kept network over the
  test images it is measured on (what any measurement must at least do), so that a slower machine does
  not read as a slower measure stage.

Usage::

    python benchmarks/bench_measure.py                       # results/full, CPU
    python benchmarks/bench_measure.py --datasets mnist --json out.json
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch

from sepdtd import beyond, data, experiments, mechanism, remeasure
from sepdtd.pipeline import measure, store
from sepdtd.utils import device_name, resolve_device

TARGET_S = 20 * 60.0


def _forward_reference(root: Path, device: torch.device, datasets: list[str] | None) -> float:
    """Seconds of one forward pass of every kept network over its whole test set."""
    total = 0.0
    for path in sorted((root / "train").glob("*/seed*.json")):
        rec = store.read_record(path)
        if datasets and rec["dataset"] not in datasets:
            continue
        x = torch.as_tensor(data.load(rec["dataset"]).x_test)
        for entry in rec["networks"].values():
            net = measure.load_network(root, entry, device=device)
            t0 = time.perf_counter()
            with torch.no_grad():
                for xb in x.split(1000):
                    net(xb.to(device).float() / 255)
            total += time.perf_counter() - t0
    return total


def planned_pairs(profile: str) -> dict[str, dict[str, int]]:
    """Measurement kind -> data set -> how many of its networks get it (every seed the profile plans)."""
    counts: dict[str, dict[str, int]] = {}
    p = experiments.PROFILES[profile]
    for ds in p.datasets:
        for seed in p.seeds:
            mods = [experiments] + [m for m, seeds in ((beyond, beyond.PROFILES[profile].seeds),
                                                       (mechanism, mechanism.SEEDS[profile])) if seed in seeds]
            tags = [t for mod in mods for j in mod.jobs(profile, ds, seed) for t in j.tags]
            for kind, plan in remeasure.plans(profile, ds, seed, list(dict.fromkeys(tags))).items():
                counts.setdefault(kind, {})
                counts[kind][ds] = counts[kind].get(ds, 0) + len(plan)
    return counts


def _paper_seconds(profile: str, dataset: str, device: torch.device) -> float:
    """Seconds of the ``"paper"`` measurement of a freshly built baseline of ``dataset``'s architecture."""
    net = experiments.jobs(profile, dataset, 0)[0].config.build().to(device)
    config = experiments.measurements(profile, dataset, 0)
    imgs = measure.test_images(config)
    t0 = time.perf_counter()
    measure.paper_fields(net, imgs["x_test"], imgs["y_test"], imgs["x_eval"], batch_size=config.batch_size,
                         device=device)
    return time.perf_counter() - t0


def architecture_factors(profile: str, measured: list[str], device: torch.device) -> dict[str, float]:
    """Data set -> its architecture factor against the first data set measured here (1 for the measured ones)."""
    others = [ds for ds in experiments.PROFILES[profile].datasets if ds not in measured]
    if not others:
        return dict.fromkeys(measured, 1.0)
    base = _paper_seconds(profile, measured[0], device)
    return {**dict.fromkeys(measured, 1.0), **{ds: _paper_seconds(profile, ds, device) / base for ds in others}}


def projection(per: list[tuple], planned: dict[str, dict[str, int]], factors: dict[str, float]) -> float | None:
    """Seconds for every planned (network, measurement) pair, at the mean time per kind measured here,
    scaled by each data set's architecture factor."""
    total = 0.0
    for kind, by_ds in planned.items():
        walls = [w for k, *_, w in per if k == kind]
        if not walls:
            return None
        total += sum(n * factors[ds] for ds, n in by_ds.items()) * sum(walls) / len(walls)
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--datasets", nargs="+", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    src = store.results_dir_of(args.profile)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / args.profile
        shutil.copytree(src, root, ignore=shutil.ignore_patterns(".*.lock"))
        for name in args.datasets or ["mnist", "fashion_mnist", "cifar10"]:
            data.load(name)                                  # decoding the data is not the stage's time
        reference = _forward_reference(root, dev, args.datasets)
        out = remeasure.run(args.profile, datasets=args.datasets, device=dev, results_dir=root, force=True)
        per = []
        for kind in ("paper", "beyond", "mechanism"):
            for path in sorted((root / "measure" / kind).glob("*/seed*.json")):
                rec = store.read_record(path)
                per += [(kind, rec["dataset"], rec["seed"], tag, e["wall_s"]) for tag, e in rec["networks"].items()]
    print(f"device: {device_name(dev)}")
    for kind, ds, seed, tag, wall in per:
        print(f"  {kind:<9} {ds:<14} seed {seed} {tag:<20} {wall:7.1f} s")
    n = len(out["networks"])
    print(f"measure stage: {n} (network, measurement) pairs in {out['wall_s']:.1f} s "
          f"({out['wall_s'] / 60:.1f} min; target {TARGET_S / 60:.0f} min: ratio {out['wall_s'] / TARGET_S:.2f})")
    planned = planned_pairs(args.profile)
    measured = list(dict.fromkeys(ds for _, ds, *_ in per))
    factors = architecture_factors(args.profile, measured, dev) if measured else {}
    projected = projection(per, planned, factors) if measured else None
    print(f"planned for the whole {args.profile} profile: "
          + ", ".join(f"{k} {sum(v.values())}" for k, v in planned.items())
          + "; architecture factors " + ", ".join(f"{ds} {f:.2f}" for ds, f in factors.items())
          + (f"; projected {projected / 60:.1f} min at this run's mean per kind (ratio to the target "
             f"{projected / TARGET_S:.2f})" if projected is not None
             else "; no projection: a kind was not measured here"))
    print(f"reference (one forward pass of every kept network over its test set): {reference:.1f} s; "
          f"measure / reference = {out['wall_s'] / max(reference, 1e-9):.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device_name(dev), "wall_s": out["wall_s"], "pairs": n,
                                               "target_s": TARGET_S, "reference_s": reference,
                                               "planned": planned, "architecture_factors": factors,
                                               "projected_s": projected,
                                               "per_network": per}, indent=2))
    return 0 if out["wall_s"] <= TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
