"""Command line: ``python -m sepdtd data prepare``, ``reproduce``, ``beyond``, ``tune``, ``mechanism``, ``measure``.

The report has its own entry point, ``python -m sepdtd.report <results dir> [--json]``. A mistake in the
arguments (every one is checked before anything runs: names, seeds, λ, ``--jobs``, ``--device``, and that
the results folder or data cache takes files), a missing or damaged data set, a damaged or edited record
or network file, or a lock held too long ends with an ``error: ...`` message that says what to do, and
exit status 2, instead of a traceback; ``SEPDTD_TRACEBACK=1`` shows the traceback. Any other error
propagates with its traceback.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

_EPILOG = """environment:
  SEPDTD_CACHE             data, checkpoints and torchvision folders (default ~/.cache/sepdtd)
  SEPDTD_DATA_MIRROR       a folder with mnist/, fashion-mnist/ and cifar10/ to read the data from
                           (default ../shared/data beside the repository or the working directory)
  SEPDTD_TORCHVISION_ROOT  torchvision's data folders (default $SEPDTD_CACHE/torchvision)
  SEPDTD_OFFLINE=1         never try the package registries or torchvision's downloads
  SEPDTD_TRACEBACK=1       show the traceback of an error instead of the "error:" message"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sepdtd", epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Command line: data prepare, reproduce, beyond, tune, mechanism and "
                                            "measure. The report: python -m sepdtd.report <results dir> [--json].")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="data sets: fill the local cache")
    dsub = data.add_subparsers(dest="data_command", required=True)
    prep = dsub.add_parser("prepare", help="decode, verify and cache the data sets (fast when cached)")
    prep.add_argument("--sets", nargs="+", default=None, metavar="SET",
                      help="mnist fashion_mnist cifar10 (default: all)")

    rep = sub.add_parser("reproduce", help="run the paper's protocol (Section 5.1) at a profile")
    rep.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    rep.add_argument("--datasets", nargs="+", default=None, metavar="SET")
    rep.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED")
    rep.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    rep.add_argument("--results-dir", default=None, help="default: results/<profile>")
    rep.add_argument("--jobs", type=int, default=1,
                     help="independent (data set, seed) runs at once, in separate processes")
    rep.add_argument("--retrain", default="missing", choices=["missing", "stale", "all"],
                     help="which kept networks to train again (default: only missing ones)")

    bey = sub.add_parser("beyond", help="the chapters beyond the paper (ground truth, causes of diffusion)")
    bey.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    bey.add_argument("--datasets", nargs="+", default=None, metavar="SET")
    bey.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED")
    bey.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    bey.add_argument("--results-dir", default=None,
                     help="default: results/<profile>; the units' main results are read or made there too")
    bey.add_argument("--retrain", default="missing", choices=["missing", "stale", "all"],
                     help="which kept networks to train again (default: only missing ones)")
    tun = sub.add_parser("tune", help="fine-tuning settings: which keep the baseline's accuracy (Table 3)?")
    tun.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    tun.add_argument("--dataset", default="cifar10", metavar="SET")
    tun.add_argument("--seed", type=int, default=0)
    tun.add_argument("--candidates", nargs="+", default=None, metavar="NAME",
                     help="names from sepdtd.tuning.CANDIDATES (default: all)")
    tun.add_argument("--lams", nargs="+", type=float, default=None, metavar="LAM",
                     help="λ of the fine-tunes (default: the profile's); 1e-30 is a control without the "
                          "penalty (sepdtd.report.CONTROL_LAM)")
    tun.add_argument("--max-epochs", type=int, default=None,
                     help="cap every fine-tune (a pilot; the name gets -cap<N>)")
    tun.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    tun.add_argument("--results-dir", default=None,
                     help="default: results/<profile>; the baseline's unit is read or made there too")
    mec = sub.add_parser("mechanism", help="why the fine-tuned logits go negative: ablations and a λ sweep")
    mec.add_argument("--profile", default="quick", choices=["smoke", "quick", "full"])
    mec.add_argument("--datasets", nargs="+", default=None, metavar="SET")
    mec.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED")
    mec.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    mec.add_argument("--results-dir", default=None, help="default: results/<profile>")
    mec.add_argument("--retrain", default="missing", choices=["missing", "stale", "all"],
                     help="which kept networks to train again (default: only missing ones)")
    mea = sub.add_parser("measure", help="measure the kept networks of a profile again (no training)")
    mea.add_argument("--profile", default="full", choices=["smoke", "quick", "full"])
    mea.add_argument("--datasets", nargs="+", default=None, metavar="SET")
    mea.add_argument("--seeds", nargs="+", type=int, default=None, metavar="SEED")
    mea.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    mea.add_argument("--results-dir", default=None, help="default: results/<profile>")
    mea.add_argument("--force", action="store_true", help="also measure the networks whose results are current")
    return p


class UsageError(ValueError):
    """A mistake in the command line's arguments, found before anything runs."""


#: Seeds are below 2**31 (:class:`sepdtd.pipeline.config.TrainConfig`).
MAX_SEED = 2**31 - 1


def _check_args(args: argparse.Namespace) -> None:
    """Refuse every argument that the command could not run with, before anything trains or is read."""
    from sepdtd.pipeline.config import dataset_name

    try:
        for name in (getattr(args, "datasets", None) or getattr(args, "sets", None) or []):
            dataset_name(name)
        if args.command == "tune":
            dataset_name(args.dataset)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.command == "tune":
        from sepdtd import tuning

        unknown = [n for n in args.candidates or [] if n not in tuning.CANDIDATES]
        if unknown:
            raise UsageError(f"unknown candidate(s) {', '.join(map(repr, unknown))}: choose from "
                             f"{', '.join(tuning.CANDIDATES)}")
        for lam in args.lams or []:
            if not (math.isfinite(lam) and lam >= 0):
                raise UsageError(f"--lams: every λ must be a finite number >= 0, got {lam:g}")
        if args.lams and len(set(args.lams)) != len(args.lams):
            raise UsageError(f"--lams: each λ once, got {' '.join(f'{v:g}' for v in args.lams)}")
        if args.max_epochs is not None and args.max_epochs < 1:
            raise UsageError(f"--max-epochs must be >= 1, got {args.max_epochs}")
    seeds = list(getattr(args, "seeds", None) or []) + ([args.seed] if args.command == "tune" else [])
    for seed in seeds:
        if seed < 0:
            raise UsageError(f"seeds must be >= 0, got {seed}")
        if seed > MAX_SEED:
            raise UsageError(f"seeds must be below 2**31 = {MAX_SEED + 1}, got {seed}")
    if getattr(args, "jobs", 1) < 1:
        raise UsageError(f"--jobs must be >= 1 (units run at once), got {args.jobs}")
    if hasattr(args, "device"):
        from sepdtd.utils import resolve_device

        try:
            resolve_device(args.device)
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"--device: {exc}") from None
    if args.command == "data":
        from sepdtd.data import cache_dir

        _check_writable(cache_dir(), "the data cache (SEPDTD_CACHE)")
    elif args.command in ("reproduce", "beyond", "tune", "measure"):
        from sepdtd.pipeline import store

        root = store.profile_root(args.profile, args.results_dir)
        what = "--results-dir" if args.results_dir is not None else f"the results folder of {args.profile}"
        if args.command == "measure" and not root.is_dir():
            raise UsageError(f"{what} {root} does not exist: there are no kept networks to measure")
        _check_writable(root, what)


def _check_writable(folder: Path, what: str) -> None:
    """``folder`` is a folder that takes files, or can be made as one (nothing is made: the nearest existing
    folder above it is tried with a temporary file)."""
    import tempfile

    from sepdtd.utils import temporary_prefix

    folder = folder.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"cannot be made: {existing} is a file"
        raise UsageError(f"{what} {folder} {where}, not a folder: choose a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=temporary_prefix(".write-test"), dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"{what} {folder} cannot be written ({type(exc).__name__} in {existing}: "
                         f"{exc.strerror or exc}): choose a folder you can write") from None


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 and an ``error:`` message for a user's mistake)."""
    from sepdtd.data import ChecksumError, DataNotFoundError
    from sepdtd.pipeline.store import DigestError, RecordError
    from sepdtd.utils import LockTimeout

    args = _parser().parse_args(argv)
    if os.environ.get("SEPDTD_TRACEBACK", "") not in ("", "0"):
        return _run(args)
    try:
        return _run(args)
    except (UsageError, DataNotFoundError, ChecksumError, RecordError, DigestError, LockTimeout) as exc:
        print(f"error: {exc} (SEPDTD_TRACEBACK=1 shows where)", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    _check_args(args)
    if args.command == "data":
        from sepdtd import data

        paths = data.prepare(args.sets, progress=True)
        for path in paths:
            print(path)
        return 0
    if args.command == "reproduce":
        from sepdtd import experiments, report

        results = experiments.reproduce(args.profile, datasets=args.datasets, seeds=args.seeds,
                                        device=args.device, results_dir=args.results_dir, jobs=args.jobs,
                                        retrain=args.retrain)
        print(report.format_tables(report.rows(results)))
        return 0
    if args.command == "beyond":
        from sepdtd import beyond

        results = beyond.reproduce(args.profile, datasets=args.datasets, seeds=args.seeds, device=args.device,
                                   results_dir=args.results_dir, retrain=args.retrain)
        for r in results:
            print(f"{r['dataset']} seed {r['seed']}: {len(r['entries'])} networks measured")
        return 0
    if args.command == "mechanism":
        from sepdtd import mechanism

        results = mechanism.reproduce(args.profile, datasets=args.datasets, seeds=args.seeds, device=args.device,
                                      results_dir=args.results_dir, retrain=args.retrain)
        for r in results:
            print(f"{r['dataset']} seed {r['seed']}: {len(r['networks'])} networks measured")
        return 0
    if args.command == "measure":
        from sepdtd import remeasure

        out = remeasure.run(args.profile, datasets=args.datasets, seeds=args.seeds, device=args.device,
                            results_dir=args.results_dir, force=args.force)
        if not out["kept"]:
            print(f"no kept networks under {out['root']}: nothing to measure")
            return 0
        print(f"measured {len(out['networks'])} (network, measurement) pairs in {out['wall_s']:.1f} s on "
              f"{out['device']}; {out['current']} were current")
        return 0
    if args.command == "tune":
        from sepdtd import tuning

        results = tuning.search(args.profile, args.dataset, args.seed, args.candidates, lams=args.lams,
                                max_epochs=args.max_epochs, device=args.device, results_dir=args.results_dir)
        for r in tuning.summary(results):
            inblock = float("nan") if r["inblock"] is None else r["inblock"]
            print(f"{r['name']:>24} λ={r['lam']:<4} accuracy {r['accuracy']:.4f} ({r['delta']:+.4f} vs baseline "
                  f"{r['baseline_accuracy']:.4f}), epochs {r['epochs']}, in-block {inblock:.3f}")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
