"""Kept networks and stage records on disk: one writer, one reader, digests, schema checks.

A profile's folder (``results/<profile>/``) holds

- ``networks/<dataset>/seed<seed>/<tag>.safetensors``: every kept network, float16 (:data:`DTYPE`);
- ``networks/MANIFEST.json``: the sha256, size and dtype of every network file;
- ``train/<dataset>/seed<seed>.json``: the training record of every network of that folder (its
  :class:`~sepdtd.pipeline.config.TrainConfig`, the fingerprint of the training code, its history and
  the digest of the file it wrote);
- ``measure/<kind>/<dataset>/seed<seed>.json``: the measurements of those networks (per network: the
  digest it measured, the :class:`~sepdtd.pipeline.config.MeasureConfig`, each field's fingerprint and
  the fields).

Every file is written atomically (:mod:`sepdtd.utils`), and a record is updated under a lock, so two
processes never lose each other's entries. Readers check the schema, re-hash every stored configuration
and the digest of every network file, and name the file that fails.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from sepdtd import utils
from sepdtd.pipeline.config import MEASUREMENTS, MeasureConfig, TrainConfig

__all__ = ["SCHEMA", "DTYPE", "MAX_NETWORK_BYTES", "MAX_PROFILE_BYTES", "RecordError", "DigestError",
           "repo_root", "results_dir_of", "profile_root", "network_file", "sha256_file", "digest_json",
           "save_network", "load_state", "read_manifest", "record_path", "read_record", "update_record",
           "provenance", "iso"]

#: Version of the record layout.
SCHEMA = 2

#: The dtype networks are kept in (their effect on accuracy is measured when they are written).
DTYPE = torch.float16

#: Budgets of a committed profile: bytes per network file and for all of them.
MAX_NETWORK_BYTES = 3_000_000
MAX_PROFILE_BYTES = 200_000_000

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX12 = re.compile(r"^[0-9a-f]{12}$")


class RecordError(ValueError):
    """A record or manifest is damaged, edited or of another layout; the message names the file."""


class DigestError(ValueError):
    """A network file does not have the digest its manifest and records give; the message names it."""


def repo_root() -> Path:
    """The repository (or unpacked source tree) this package lives in."""
    return Path(__file__).resolve().parents[2]


def results_dir_of(profile: str) -> Path:
    """``<repository>/results/<profile>``."""
    return repo_root() / "results" / profile


def profile_root(profile: str, results_dir: str | os.PathLike | None = None) -> Path:
    """The folder of a profile's networks and records: ``results_dir``, else :func:`results_dir`."""
    return Path(results_dir) if results_dir is not None else results_dir_of(profile)


def network_file(dataset: str, seed: int, tag: str) -> str:
    """The path of a network, relative to its profile's folder."""
    return f"networks/{dataset}/seed{seed}/{tag}.safetensors"


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 of a file, as 64 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_json(obj: Any) -> str:
    """The sha256 (64 hex digits) of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def iso(t: float) -> str:
    """A POSIX time as an ISO 8601 UTC string with milliseconds."""
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="milliseconds")


def provenance(device: torch.device, t_start: float, t_end: float, **extra: Any) -> dict:
    """Where and when a stage ran: commit, versions, device, host, threads, start and end."""
    return {"commit": utils.git_commit(), "versions": utils.package_versions(), "device": utils.device_name(device),
            "host": platform.node(), "threads": torch.get_num_threads(), "started": iso(t_start),
            "finished": iso(t_end), "t_start": t_start, "t_end": t_end, **extra}


# ------------------------------------------------------------------------------------------ networks
def _manifest_path(root: Path) -> Path:
    return root / "networks" / "MANIFEST.json"


def read_manifest(root: str | os.PathLike) -> dict[str, dict]:
    """The manifest of a profile's networks: relative path -> ``{sha256, bytes, dtype, params}``.

    Raises
    ------
    RecordError
        If the manifest is not valid JSON or not of this layout.
    """
    path = _manifest_path(Path(root))
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise RecordError(f"the network manifest {path} is not valid JSON ({e}); restore it with git") from e
    nets = data.get("networks") if isinstance(data, dict) else None
    if data.get("schema") != SCHEMA or not isinstance(nets, dict):
        raise RecordError(f"the network manifest {path} is not of schema {SCHEMA}; restore it with git")
    for rel, e in nets.items():
        if not isinstance(e, dict) or not _HEX64.match(str(e.get("sha256"))):
            raise RecordError(f"the network manifest {path} has no valid sha256 for {rel}; restore it with git")
    return nets


def save_network(root: str | os.PathLike, rel: str, model: torch.nn.Module, *,
                 metadata: Mapping[str, Any] | None = None) -> dict:
    """Keep ``model``'s state as a float16 safetensors file and enter its digest in the manifest.

    Parameters
    ----------
    root : path
        The profile's folder.
    rel : str
        The file's path relative to ``root`` (:func:`network_file`).
    model : torch.nn.Module
        Its floating-point parameters and buffers are stored as :data:`DTYPE`, the others as they are.
    metadata : mapping, optional
        Stored as JSON in the file's header (``"sepdtd"``).

    Returns
    -------
    dict
        ``file``, ``sha256``, ``bytes``, ``dtype`` and ``params`` (the number of stored values).
    """
    from safetensors.torch import save

    root = Path(root)
    tensors = {k: (v.detach().to("cpu", DTYPE) if v.is_floating_point() else v.detach().cpu()).contiguous()
               for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes the metadata map in no fixed order, and the digest needs fixed bytes
    data = save(tensors, metadata={"sepdtd": json.dumps(dict(metadata or {}), sort_keys=True)})
    path = root / rel
    utils.atomic_write_bytes(path, data)
    entry = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "dtype": str(DTYPE).removeprefix("torch."),
             "params": int(sum(t.numel() for t in tensors.values()))}
    mpath = _manifest_path(root)
    with utils.file_lock(mpath.with_name(".MANIFEST.lock"), what=f"the network manifest {mpath}"):
        nets = read_manifest(root)
        nets[rel] = entry
        utils.atomic_write_json(mpath, {"schema": SCHEMA, "networks": dict(sorted(nets.items()))})
    return {"file": rel, **entry}


def load_state(root: str | os.PathLike, rel: str, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a kept network, after checking its digest (float16 values, on the CPU).

    Parameters
    ----------
    root : path
        The profile's folder.
    rel : str
        The file's path relative to ``root``.
    sha256 : str, optional
        The digest a record expects; the manifest's must agree with it.

    Raises
    ------
    FileNotFoundError
        If the file is missing.
    DigestError
        If the file's sha256 is not the manifest's (damaged or swapped), or not the record's.
    """
    from safetensors.torch import load

    root = Path(root)
    path = root / rel
    if not path.exists():
        raise FileNotFoundError(f"the network file {path} is missing: restore it with git, or retrain it "
                                "(python -m sepdtd reproduce ...)")
    data = path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    want = read_manifest(root).get(rel, {}).get("sha256")
    if want is None:
        raise DigestError(f"the network file {path} is not in the manifest {_manifest_path(root)}: it was not "
                          "written by this package's training stage; retrain it")
    if got != want:
        raise DigestError(f"the network file {path} is damaged or was swapped: its sha256 is {got[:12]}…, the "
                          f"manifest says {want[:12]}…; restore it with git (git checkout -- {rel}) or retrain it")
    if sha256 is not None and sha256 != want:
        raise DigestError(f"the network file {path} (sha256 {want[:12]}…) is not the one the record was made from "
                          f"({sha256[:12]}…): the record is stale; re-measure or retrain")
    return load(data)


# ------------------------------------------------------------------------------------------- records
def record_path(root: str | os.PathLike, stage: str, dataset: str, seed: int, kind: str | None = None) -> Path:
    """``train/<dataset>/seed<seed>.json`` or ``measure/<kind>/<dataset>/seed<seed>.json`` under ``root``."""
    root = Path(root)
    if stage == "train":
        return root / "train" / dataset / f"seed{seed}.json"
    if stage == "measure" and kind in MEASUREMENTS:
        return root / "measure" / kind / dataset / f"seed{seed}.json"
    raise ValueError(f"unknown record {stage!r}/{kind!r}: 'train', or 'measure' with one of {MEASUREMENTS}")


def _fail(path: Path, what: str) -> RecordError:
    return RecordError(f"{path}: {what}; restore the file with git, or delete it and rerun the stage that writes it")


def _check_dict(path: Path, d: Any, keys: Mapping[str, type | tuple], where: str) -> None:
    if not isinstance(d, dict):
        raise _fail(path, f"{where} is not an object")
    for k, t in keys.items():
        if k not in d:
            raise _fail(path, f"{where} has no {k!r}")
        if not isinstance(d[k], t) or (t is int and isinstance(d[k], bool)):
            raise _fail(path, f"{where}.{k} is a {type(d[k]).__name__}, expected {t}")


def _check_train_entry(path: Path, tag: str, e: Any) -> None:
    where = f"networks.{tag}"
    _check_dict(path, e, {"config": dict, "config_hash": str, "fingerprint": dict, "file": str, "sha256": str,
                          "training": dict, "provenance": dict}, where)
    try:
        key = TrainConfig.from_dict(e["config"]).key()
    except (TypeError, ValueError) as err:
        raise _fail(path, f"{where}.config is not a valid training configuration ({err})") from err
    if key != e["config_hash"]:
        raise _fail(path, f"{where}.config hashes to {key}, but the record says {e['config_hash']}: it was edited")
    if not _HEX64.match(e["sha256"]):
        raise _fail(path, f"{where}.sha256 is not a sha256")
    _check_dict(path, e["training"], {"epochs": int, "best_epoch": int, "history": dict}, f"{where}.training")


def _check_measure_entry(path: Path, tag: str, e: Any) -> None:
    where = f"networks.{tag}"
    _check_dict(path, e, {"sha256": str, "config": dict, "config_hash": str, "fingerprints": dict, "fields": dict,
                          "provenance": dict}, where)
    try:
        key = MeasureConfig.from_dict(e["config"]).key()
    except (TypeError, ValueError) as err:
        raise _fail(path, f"{where}.config is not a valid measurement configuration ({err})") from err
    if key != e["config_hash"]:
        raise _fail(path, f"{where}.config hashes to {key}, but the record says {e['config_hash']}: it was edited")
    for name, fp in e["fingerprints"].items():
        if not isinstance(fp, str) or not _HEX12.match(fp):
            raise _fail(path, f"{where}.fingerprints.{name} is not a fingerprint")


def read_record(path: str | os.PathLike) -> dict:
    """A train or measure record, after checking its layout and re-hashing every configuration.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    RecordError
        If it is not valid JSON, not of :data:`SCHEMA`, lacks a key, or holds a configuration whose
        hash is not the stored one (an edited record).
    """
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except ValueError as e:
        raise _fail(path, f"not valid JSON ({e})") from e
    _check_dict(path, rec, {"schema": int, "stage": str, "dataset": str, "seed": int, "networks": dict}, "the record")
    if rec["schema"] != SCHEMA:
        raise _fail(path, f"schema {rec['schema']}, this package reads schema {SCHEMA}")
    check = {"train": _check_train_entry, "measure": _check_measure_entry}.get(rec["stage"])
    if check is None:
        raise _fail(path, f"unknown stage {rec['stage']!r}")
    for tag, e in rec["networks"].items():
        check(path, tag, e)
    return rec


def update_record(path: str | os.PathLike, header: Mapping[str, Any], update: Callable[[dict], None]) -> dict:
    """Read a record (or start one with ``header``), apply ``update`` to its ``networks``, write it atomically.

    The read-modify-write runs under a lock on the record, so concurrent writers keep each other's entries.
    """
    path = Path(path)
    with utils.file_lock(path.with_name(f".{path.name}.lock"), timeout=600, what=f"the record {path}"):
        rec = read_record(path) if path.exists() else {"schema": SCHEMA, **header, "networks": {}}
        update(rec["networks"])
        rec["networks"] = dict(sorted(rec["networks"].items()))
        rec["updated"] = iso(time.time())
        utils.atomic_write_json(path, rec)
    return rec
