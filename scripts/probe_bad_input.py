"""Probe: feed sepdtd bad input and faults, and sort what each one gets.

Every case runs on the CPU in its own temporary folder (a data cache, a mirror, a results folder of its
own; the user's cache is never touched) and is sorted into one of four verdicts:

- ``well``: a clear, named error of the kind the case expects (its message names what is wrong), or, for
  a fault the package repairs, the right result and a warning that names the damaged file;
- ``poor``: an error of a sensible kind whose message does not say what is wrong, or a repair that
  names nothing;
- ``wrong``: a silent wrong answer: the call returned as if the input were fine;
- ``crash``: a raw error from deep inside (``KeyError``, ``EOFError``, a traceback at the command line),
  a hang, or a process killed.

It prints one row per case and the counts. ``--fast`` runs only the in-process cases that need neither
the data mirror nor subprocesses (a few seconds; ``tests/test_probe.py`` runs them). The exit status is
1 when a case is not handled well. Probe other code with ``PYTHONPATH=<its tree> python
scripts/probe_bad_input.py``: the command-line cases run that tree too.

The engine and metrics (``sepdtd.dtd``, ``sepdtd.attribution``, ``sepdtd.metrics``) are not probed here.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VERDICTS = ("well", "poor", "wrong", "crash")

#: Errors a user can act on; anything else raised is a crash.
CLEAN = ("ValueError", "TypeError", "FileNotFoundError", "RuntimeError", "TimeoutError", "LockTimeout",
         "ChecksumError", "DataNotFoundError", "RecordError", "DigestError", "NaNLossError", "UsageError")


@dataclass
class Outcome:
    """What a case did: returned (``value``), raised (``error``, ``message``), or, for a command, exited."""

    value: Any = None
    error: str | None = None            # class name, and its bases' names after it
    message: str = ""
    warnings: list[str] = field(default_factory=list)
    exit_code: int | None = None         # a command: its exit status; None for a call
    stderr: str = ""
    timed_out: bool = False


@dataclass
class Expect:
    """What handling a case well looks like.

    ``error`` and ``says``: the call raises one of these (by class name, a base counts) with every
    regex of ``says`` in its message (for a command: exit status 2 and an ``error:`` line with them).
    ``check`` and ``warns``: the call returns a value for which ``check`` is true, with a warning matching
    ``warns``; ``failed_check`` is the verdict when the check fails.
    """

    error: tuple[str, ...] = ()
    says: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    warns: str | None = None
    failed_check: str = "wrong"


def classify(expect: Expect, out: Outcome) -> tuple[str, str]:
    """The verdict of an outcome against its expectation, and a short reason."""
    if out.timed_out:
        return "crash", "hung (timed out)"
    if out.exit_code is not None:  # a command
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        if out.exit_code == 0:
            return "wrong", "exit status 0: the mistake was not noticed"
        if "Traceback (most recent call last)" in out.stderr:
            return "crash", f"traceback: {last[:100]}"
        if out.exit_code == 2 and "error:" in out.stderr:
            found = all(re.search(s, out.stderr) for s in expect.says)
            return ("well", last[:100]) if found else ("poor", f"error line says too little: {last[:100]}")
        return "crash", f"exit status {out.exit_code}: {last[:100]}"
    if out.error is not None:
        names = out.error.split()
        if expect.error and any(n in expect.error for n in names):
            found = all(re.search(s, out.message) for s in expect.says)
            return ("well" if found else "poor"), f"{names[0]}: {out.message[:100]}"
        if any(n in CLEAN for n in names):
            return "poor", f"{names[0]}: {out.message[:100]}"
        return "crash", f"{names[0]}: {out.message[:100]}"
    if expect.check is not None:
        if not expect.check(out.value):
            return expect.failed_check, "returned, but the result is not right"
        if expect.warns is not None and not any(re.search(expect.warns, w) for w in out.warnings):
            return "poor", "right result, but nothing names the damage"
        return "well", (next((w for w in out.warnings if expect.warns and re.search(expect.warns, w)), "")
                        or "right result")[:100]
    return "wrong", "returned as if the input were fine"


def run_call(fn: Callable[[], Any]) -> Outcome:
    """Run a case in this process; record its value or error and its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                value = fn()
        except Exception as err:  # the probe records every error
            names = " ".join(c.__name__ for c in type(err).__mro__ if c not in (object, BaseException, Exception))
            return Outcome(error=names, message=str(err), warnings=[str(w.message) for w in caught])
    return Outcome(value=value, warnings=[str(w.message) for w in caught])


def code_root() -> Path:
    """The tree whose ``sepdtd`` this probe imports (the command-line cases run the same one)."""
    import sepdtd

    return Path(sepdtd.__file__).resolve().parent.parent


def run_command(args: list[str], env: dict[str, str], timeout: float = 90.0) -> Outcome:
    """Run ``python -m sepdtd ARGS`` on :func:`code_root`'s code."""
    env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(code_root()), os.environ.get("PYTHONPATH", "")])}
    env.pop("SEPDTD_TRACEBACK", None)
    try:
        proc = subprocess.run([sys.executable, "-m", "sepdtd", *args], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return Outcome(exit_code=-1, timed_out=True)
    return Outcome(exit_code=proc.returncode, stderr=proc.stderr)


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class Case:
    area: str
    name: str
    run: Callable[[Path], Outcome]
    expect: Expect
    fast: bool = False          # in-process, no mirror, no subprocess: part of --fast
    needs_mirror: bool = False


def _mirror() -> Path | None:
    from sepdtd import data

    return next((m for m in data._default_mirrors() if (m / "mnist").is_dir()), None)


def _tiny():
    """Tiny two-class images and a network that takes them."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 2
    x = torch.randint(0, 80, (32, 1, 8, 8), generator=g).to(torch.uint8)
    x[y == 1, :, :4] += 150
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 8), nn.ReLU(),
                        nn.Linear(8, 2))
    return x, y, net


def _fit(tmp: Path, **change) -> Outcome:
    from sepdtd import training

    x, y, net = _tiny()
    kw = dict(device="cpu", progress=False, max_epochs=1, batch_size=16)
    xs = change.pop("x", x)
    ys = change.pop("y", y)
    model = change.pop("model", net)
    return run_call(lambda: training.fit(model, xs, ys, xs, ys, **{**kw, **change}))


def training_cases() -> list[Case]:
    import torch

    x, y, _ = _tiny()
    nan = x.float() / 255
    nan[3, 0, 2, 2] = float("nan")
    bad_net = _tiny()[2]
    with torch.no_grad():
        bad_net[0].weight[0, 0, 0, 0] = float("nan")

    def stacked_strings(tmp: Path) -> Outcome:
        from sepdtd import training

        xx, yy, net = _tiny()
        return run_call(lambda: training.fit_stacked([net, _tiny()[2]], ["0.1", "1"], xx, yy, xx, yy, device="cpu",
                                                     progress=False, max_epochs=1))

    def evaluate_label(tmp: Path) -> Outcome:
        from sepdtd import training

        xx, yy, net = _tiny()
        return run_call(lambda: training.evaluate(net, xx, yy + 5, device="cpu"))

    t = "training"
    return [
        Case(t, "float images in 0..255", lambda tmp: _fit(tmp, x=x.float()), Expect(("ValueError",), (r"0\.\.255",)),
             fast=True),
        Case(t, "a NaN pixel", lambda tmp: _fit(tmp, x=nan), Expect(("ValueError",), ("NaN",)), fast=True),
        Case(t, "evaluate: a label out of range", evaluate_label, Expect(("ValueError",), ("label",)), fast=True),
        Case(t, "fit_stacked: λ as strings", stacked_strings, Expect(("ValueError",), ("λ",)), fast=True),
        Case(t, "n_blocks larger than a layer", lambda tmp: _fit(tmp, n_blocks=3, lam=1.0),
             Expect(("ValueError",), ("n_blocks",)), fast=True),
        Case(t, "n_blocks as a string", lambda tmp: _fit(tmp, n_blocks="2"), Expect(("TypeError",), ("n_blocks",)),
             fast=True),
        Case(t, "checkpoint under a file", lambda tmp: _fit(tmp, checkpoint=_file(tmp) / "ck" / "train.pt"),
             Expect(("ValueError",), ("checkpoint", "cannot be written")), fast=True),
        Case(t, "checkpoint is a folder", lambda tmp: _fit(tmp, checkpoint=tmp),
             Expect(("ValueError",), ("checkpoint", "folder")), fast=True),
        Case(t, "augment='no'", lambda tmp: _fit(tmp, augment="no"), Expect(("TypeError",), ("augment",)), fast=True),
        Case(t, "seed as a string", lambda tmp: _fit(tmp, seed="0"), Expect(("ValueError",), ("seed",)), fast=True),
        Case(t, "seed of 2**64", lambda tmp: _fit(tmp, seed=2**64), Expect(("ValueError",), ("seed",)), fast=True),
        Case(t, "labels as bool", lambda tmp: _fit(tmp, y=y.bool()), Expect(("TypeError",), ("label",)), fast=True),
        Case(t, "int32 images", lambda tmp: _fit(tmp, x=x.int()), Expect(("TypeError",), ("uint8",)), fast=True),
        Case(t, "3-channel images for a 1-channel model", lambda tmp: _fit(tmp, x=x.repeat(1, 3, 1, 1)),
             Expect(("ValueError",), (r"does not take x_train's images",)), fast=True),
        Case(t, "a NaN weight in the model", lambda tmp: _fit(tmp, model=bad_net),
             Expect(("ValueError",), (r"parameter .* NaN",)), fast=True),
        Case(t, "λ < 0", lambda tmp: _fit(tmp, lam=-1.0), Expect(("ValueError",), ("lam",)), fast=True),
        Case(t, "lr = 0", lambda tmp: _fit(tmp, lr=0.0), Expect(("ValueError",), ("lr",)), fast=True),
    ]


def _file(tmp: Path) -> Path:
    (tmp / "file").write_text("in the way")
    return tmp / "file"


def results_cases() -> list[Case]:
    def network(tmp: Path):
        from sepdtd.pipeline import fingerprint, store

        return store, store.save_network(tmp, "networks/probe/seed0/a.safetensors",
                                         fingerprint.probe_network(0).float(), metadata={"tag": "a"})

    def damaged(tmp: Path) -> Outcome:
        store, info = network(tmp)
        raw = bytearray((tmp / info["file"]).read_bytes())
        raw[-1] ^= 1
        (tmp / info["file"]).write_bytes(bytes(raw))
        return run_call(lambda: store.load_state(tmp, info["file"], info["sha256"]))

    def swapped(tmp: Path) -> Outcome:
        from torch import nn

        store, info = network(tmp)
        other = store.save_network(tmp, "networks/probe/seed0/b.safetensors", nn.Sequential(nn.Linear(2, 2)))
        (tmp / other["file"]).replace(tmp / info["file"])
        return run_call(lambda: store.load_state(tmp, info["file"], info["sha256"]))

    def same_file(tmp: Path) -> Outcome:
        from sepdtd.pipeline import fingerprint, store

        net = fingerprint.probe_network(0).float()
        return run_call(lambda: {store.save_network(tmp, f"n/{i}.safetensors", net, metadata={"a": 1, "b": 2})["sha256"]
                                 for i in range(8)})

    def record(tmp: Path, edit: Callable[[dict], None]) -> Outcome:
        from sepdtd.pipeline import store
        from sepdtd.pipeline.config import TrainConfig

        path = store.record_path(tmp, "train", "mnist", 0)
        cfg = TrainConfig(dataset="mnist", seed=0)
        entry = {"config": cfg.as_dict(), "config_hash": cfg.key(), "fingerprint": {}, "file": "f", "sha256": "0" * 64,
                 "training": {"epochs": 1, "best_epoch": 1, "history": {}}, "provenance": {}}
        store.update_record(path, {"stage": "train", "dataset": "mnist", "seed": 0}, lambda n: n.update(baseline=entry))
        rec = json.loads(path.read_text())
        edit(rec)
        path.write_text(json.dumps(rec))
        return run_call(lambda: store.read_record(path))

    def edit_config(rec: dict) -> None:
        rec["networks"]["baseline"]["config"]["n_train"] = 7

    def drop_key(rec: dict) -> None:
        del rec["networks"]["baseline"]["training"]

    r = "results"
    return [
        Case(r, "a record with a key missing", lambda tmp: record(tmp, drop_key),
             Expect(("RecordError",), (r"seed0\.json", "training")), fast=True),
        Case(r, "a record whose configuration was edited", lambda tmp: record(tmp, edit_config),
             Expect(("RecordError",), (r"seed0\.json", "edited")), fast=True),
        Case(r, "a network file damaged", damaged, Expect(("DigestError",), (r"a\.safetensors",)), fast=True),
        Case(r, "a network file swapped", swapped, Expect(("DigestError",), (r"a\.safetensors",)), fast=True),
        Case(r, "the same weights kept twice", same_file, Expect(check=lambda v: len(v) == 1), fast=True),
    ]


KILLED_WRITER = textwrap.dedent("""
    import os, signal, sys
    from sepdtd import utils
    os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
    utils.atomic_write_bytes(sys.argv[1], b"half")
""")
STOPPED_HOLDER = textwrap.dedent("""
    import os, signal, sys
    from sepdtd import utils
    with utils.file_lock(sys.argv[1]):
        print("locked", flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
""")
WAITER = textwrap.dedent("""
    import sys
    from sepdtd import data, utils
    utils.LOCK_STOPPED_AFTER_S = 1.0
    data.load("mnist", cache=sys.argv[1], mirror=sys.argv[2])
""")
ORPHAN = textwrap.dedent("""
    import multiprocessing, time

    def child():
        from sepdtd import utils
        utils.die_with_parent()
        time.sleep(60)

    if __name__ == "__main__":
        p = multiprocessing.get_context("spawn").Process(target=child)
        p.start()
        print(p.pid, flush=True)
        time.sleep(60)
""")


def _env(tmp: Path) -> dict[str, str]:
    """A data cache and torchvision folder of the case's own, offline, reading from the mirror, on the probed code."""
    env = {"SEPDTD_CACHE": str(tmp / "cache"), "SEPDTD_TORCHVISION_ROOT": str(tmp / "tv"), "SEPDTD_OFFLINE": "1",
           "PYTHONPATH": str(code_root())}
    mirror = _mirror()
    return env if mirror is None else {**env, "SEPDTD_DATA_MIRROR": str(mirror.resolve())}


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def files_cases() -> list[Case]:
    def killed_writer(tmp: Path) -> Outcome:
        from sepdtd import utils

        subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp / "a.json")], env={**os.environ, **_env(tmp)},
                       capture_output=True)
        for left in tmp.glob("a.json.tmp-*"):
            _age(left, getattr(utils, "STALE_AFTER_S", 600) + 60)
        utils.atomic_write_bytes(tmp / "b.json", b"{}")  # any writer in the folder
        return Outcome(value=sorted(p.name for p in tmp.iterdir()))

    def stopped_holder(tmp: Path) -> Outcome:
        lock = tmp / "cache" / ".mnist.lock"
        lock.parent.mkdir(parents=True)
        (tmp / "mirror").mkdir()
        holder = subprocess.Popen([sys.executable, "-c", STOPPED_HOLDER, str(lock)], stdout=subprocess.PIPE,
                                  text=True, env={**os.environ, **_env(tmp)})
        try:
            holder.stdout.readline()
            proc = subprocess.run([sys.executable, "-c", WAITER, str(tmp / "cache"), str(tmp / "mirror")],
                                  capture_output=True, text=True, timeout=40, env={**os.environ, **_env(tmp)})
        except subprocess.TimeoutExpired:
            return Outcome(timed_out=True)
        finally:
            holder.kill()
            holder.wait()
        last = (proc.stderr.strip().splitlines() or [""])[-1]
        if proc.returncode == 0:
            return Outcome(value="loaded")
        name, _, message = last.partition(": ")
        return Outcome(error=name.rsplit(".", 1)[-1], message=message)

    def orphan(tmp: Path) -> Outcome:
        (tmp / "orphan.py").write_text(ORPHAN)  # a file: spawned children import their parent's main module
        parent = subprocess.Popen([sys.executable, str(tmp / "orphan.py")], stdout=subprocess.PIPE, text=True,
                                  env={**os.environ, **_env(tmp)}, cwd=tmp)
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        for _ in range(50):
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return Outcome(value=True)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, os.WNOHANG)
            time.sleep(0.2)
        os.kill(child, signal.SIGKILL)
        return Outcome(value=False)

    f = "processes and files"
    return [
        Case(f, "a killed writer's temporary, another name written", killed_writer,
             Expect(check=lambda v: v == ["b.json"], failed_check="poor")),
        Case(f, "a data lock held by a stopped process", stopped_holder,
             Expect(("LockTimeout",), (r"\.mnist\.lock", "stopped"))),
        Case(f, "a --jobs worker whose parent is killed", orphan, Expect(check=bool, failed_check="poor")),
    ]


def _copy_mirror(tmp: Path, name: str = "mnist") -> Path:
    src = _mirror() / name
    dst = tmp / "mirror" / name
    shutil.copytree(src, dst)
    for p in dst.iterdir():
        p.chmod(0o644)
    return tmp / "mirror"


def _truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _garble(path: Path) -> None:
    raw = path.read_bytes()
    mid = len(raw) // 2
    path.write_bytes(raw[:mid] + bytes(b ^ 0x5A for b in raw[mid:mid + 64]) + raw[mid + 64:])


def data_cases() -> list[Case]:
    def reference():
        from sepdtd import data

        if "mnist" not in _REFERENCE:
            _REFERENCE["mnist"] = data.load("mnist", cache=_REF_CACHE, mirror=_mirror())
        return _REFERENCE["mnist"]

    def with_env(tmp: Path, fn: Callable[[], Any]) -> Outcome:
        old = {k: os.environ.get(k) for k in _env(tmp)}
        os.environ.update({k: v for k, v in _env(tmp).items() if k != "PYTHONPATH"})
        try:
            return run_call(fn)
        finally:
            for k, v in old.items():
                if k == "PYTHONPATH":
                    continue
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def cached_labels_zeroed(tmp: Path) -> Outcome:
        import numpy as np

        from sepdtd import data

        reference()
        shutil.copytree(_REF_CACHE / "mnist", tmp / "cache" / "mnist")
        np.save(tmp / "cache" / "mnist" / "y_train.npy", np.zeros(60000, np.int64))
        return with_env(tmp, lambda: data.load("mnist", cache=tmp / "cache", mirror=_mirror()))

    def same_as_reference(ds) -> bool:
        ref = reference()
        return all(bool((getattr(ds, k) == getattr(ref, k)).all()) for k in ("x_train", "y_train", "x_test", "y_test"))

    def damaged_gz(tmp: Path, damage: Callable[[Path], None], second_source: bool) -> Outcome:
        from sepdtd import data

        mirror = _copy_mirror(tmp)
        damage(mirror / "mnist" / "train-labels-idx1-ubyte.gz")
        if second_source:
            shutil.copytree(_mirror() / "mnist", tmp / "tv" / "MNIST" / "raw")
        return with_env(tmp, lambda: data.load("mnist", cache=tmp / "cache", mirror=mirror))

    def leftovers(tmp: Path) -> Outcome:
        from sepdtd import data

        folder = tmp / "cache" / "mnist"
        (folder / ".fetch-k3j2h1" / "raw").mkdir(parents=True)
        (folder / "x_test.npy.tmp-123").write_bytes(b"half")
        with_env(tmp, lambda: data.load("mnist", cache=tmp / "cache", mirror=_mirror()))
        return Outcome(value=sorted(p.name for p in folder.iterdir()))

    def nowhere(tmp: Path) -> Outcome:
        from sepdtd import data

        (tmp / "empty").mkdir()
        return with_env(tmp, lambda: data.load("cifar10", cache=tmp / "cache", mirror=tmp / "empty"))

    d = "data"
    gz = r"train-labels-idx1-ubyte\.gz"
    return [
        Case(d, "a cached array damaged at the same size (labels 0)", cached_labels_zeroed,
             Expect(check=same_as_reference, warns=r"y_train\.npy"), needs_mirror=True),
        Case(d, "a truncated .gz, another source has the set", lambda tmp: damaged_gz(tmp, _truncate, True),
             Expect(check=same_as_reference, warns=gz), needs_mirror=True),
        Case(d, "a truncated .gz in the only source", lambda tmp: damaged_gz(tmp, _truncate, False),
             Expect(("ChecksumError",), (gz,)), needs_mirror=True),
        Case(d, "a damaged gzip in the only source", lambda tmp: damaged_gz(tmp, _garble, False),
             Expect(("ChecksumError",), (gz,)), needs_mirror=True),
        Case(d, "a damaged gzip, another source has the set", lambda tmp: damaged_gz(tmp, _garble, True),
             Expect(check=same_as_reference, warns=gz), needs_mirror=True),
        Case(d, "temporaries of an earlier, killed fill", leftovers,
             Expect(check=lambda v: v == ["manifest.json", "x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"],
                    failed_check="poor"), needs_mirror=True),
        Case(d, "a set that no source has", nowhere,
             Expect(("DataNotFoundError",), ("found in no source", "SEPDTD_DATA_MIRROR")), fast=True),
        Case(d, "an unknown data set", lambda tmp: run_call(lambda: __import__("sepdtd.data").data.load("svhn")),
             Expect(("ValueError",), ("unknown data set",)), fast=True),
    ]


def cli_cases() -> list[Case]:
    def cmd(args: Callable[[Path], list[str]], extra: Callable[[Path], dict] = lambda tmp: {}):
        return lambda tmp: run_command(args(tmp), {**_env(tmp), **extra(tmp)})

    def truncated_only(tmp: Path) -> dict:
        mirror = _copy_mirror(tmp)
        _truncate(mirror / "mnist" / "train-labels-idx1-ubyte.gz")
        return {"SEPDTD_DATA_MIRROR": str(mirror)}

    def rd(tmp: Path) -> list[str]:
        return ["--results-dir", str(tmp / "results")]

    c = "command line"
    return [
        Case(c, "--jobs 0", cmd(lambda tmp: ["reproduce", "--profile", "smoke", "--jobs", "0", *rd(tmp)]),
             Expect(says=("--jobs",))),
        Case(c, "--device foo", cmd(lambda tmp: ["reproduce", "--profile", "smoke", "--device", "foo", *rd(tmp)]),
             Expect(says=("device",))),
        Case(c, "tune --lams -1", cmd(lambda tmp: ["tune", "--profile", "smoke", "--lams", "-1", *rd(tmp)]),
             Expect(says=("λ",))),
        Case(c, "--seeds 2**31", cmd(lambda tmp: ["reproduce", "--profile", "smoke", "--seeds", str(2**31), *rd(tmp)]),
             Expect(says=("2\\*\\*31",))),
        Case(c, "tune --seed 2**64", cmd(lambda tmp: ["tune", "--profile", "smoke", "--seed", str(2**64), *rd(tmp)]),
             Expect(says=("2\\*\\*31",))),
        Case(c, "--results-dir is a file", cmd(lambda tmp: ["reproduce", "--profile", "smoke", "--datasets", "mnist",
                                                            "--results-dir", str(_file(tmp))]),
             Expect(says=("results-dir", "file"))),
        Case(c, "--results-dir under a file", cmd(lambda tmp: ["beyond", "--profile", "smoke", "--datasets", "mnist",
                                                               "--results-dir", str(_file(tmp) / "r")]),
             Expect(says=("results-dir", "file"))),
        Case(c, "measure a folder that does not exist", cmd(lambda tmp: ["measure", "--profile", "smoke", *rd(tmp)]),
             Expect(says=("results-dir", "does not exist"))),
        Case(c, "data prepare --sets svhn", cmd(lambda tmp: ["data", "prepare", "--sets", "svhn"]),
             Expect(says=("svhn",))),
        Case(c, "data prepare, a truncated .gz the only source",
             cmd(lambda tmp: ["data", "prepare", "--sets", "mnist"], truncated_only),
             Expect(says=(r"train-labels-idx1-ubyte\.gz",)), needs_mirror=True),
    ]


_REF_CACHE = Path()         # a data cache of the probe's own, for the reference arrays
_REFERENCE: dict[str, Any] = {}


def all_cases() -> list[Case]:
    return training_cases() + results_cases() + data_cases() + files_cases() + cli_cases()


def run_cases(cases: list[Case]) -> list[tuple[Case, str, str]]:
    """Run every case in a fresh temporary folder; return (case, verdict, reason)."""
    rows = []
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="sepdtd-probe-") as tmp:
            try:
                out = case.run(Path(tmp))
            except Exception as err:  # the probe's own set-up failed: count it against the case
                out = Outcome(error=type(err).__name__, message=f"(in the probe's set-up) {err}")
            verdict, why = classify(case.expect, out)
        rows.append((case, verdict, why))
    return rows


def counts(rows: list[tuple[Case, str, str]]) -> dict[str, int]:
    """``cases`` and the number of each verdict."""
    out = {"cases": len(rows)}
    out.update({v: sum(1 for _, verdict, _ in rows if verdict == v) for v in VERDICTS})
    return out


def format_rows(rows: list[tuple[Case, str, str]]) -> str:
    width = max((len(c.name) for c, _, _ in rows), default=10)
    lines = [f"{'area':<20} {'case':<{width}} {'verdict':<7} what it got", "-" * (width + 60)]
    lines += [f"{c.area:<20} {c.name:<{width}} {v:<7} {' '.join(why.split())}" for c, v, why in rows]
    n = counts(rows)
    lines += ["", "  ".join(f"{k}: {v}" for k, v in n.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global _REF_CACHE
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fast", action="store_true", help="only the in-process cases without mirror or subprocess")
    ap.add_argument("--json", action="store_true", help="print the rows and counts as JSON")
    args = ap.parse_args(argv)
    cases = all_cases()
    mirror = _mirror()
    if args.fast:
        cases = [c for c in cases if c.fast]
    skipped = [c for c in cases if c.needs_mirror and mirror is None]
    cases = [c for c in cases if c not in skipped]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sepdtd-probe-ref-") as ref:
        _REF_CACHE = Path(ref)
        rows = run_cases(cases)
    if args.json:
        print(json.dumps({"rows": [{"area": c.area, "case": c.name, "verdict": v, "why": w} for c, v, w in rows],
                          "counts": counts(rows), "skipped": [c.name for c in skipped]}, indent=2))
    else:
        print(format_rows(rows))
        if skipped:
            print(f"skipped (no data mirror): {len(skipped)}")
        print(f"{time.perf_counter() - start:.0f} s, code from {code_root()}")
    return 0 if all(v == "well" for _, v, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
