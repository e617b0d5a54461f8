"""What is stored for a (data set, seed) folder, network by network, and whether it is current.

:func:`networks` joins the train record, the measure records and the current code's keys for the
networks of a protocol (its jobs and measurements): each network's training entry, its measured
fields per measurement, and the reasons why any of it is stale. It reads; it never trains or
measures. A stale reason that ``known-changes.json`` in the profile's folder lists (a change of the
code whose effect on the stored numbers was judged and written down) carries that entry's ``why``.
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sepdtd.pipeline import measure, store, train
from sepdtd.pipeline.config import MeasureConfig

__all__ = ["KNOWN_CHANGES", "known_changes", "networks", "stored_units"]

#: The file, in a profile's folder, of the code changes its stored results were not redone for.
KNOWN_CHANGES = "known-changes.json"


def known_changes(root: str | os.PathLike) -> list[dict]:
    """The entries of a profile's ``known-changes.json``: ``stage``, ``field``, ``from``, ``to``, ``why``.

    Raises
    ------
    RecordError
        If the file is not valid JSON or an entry lacks a key.
    """
    path = Path(root) / KNOWN_CHANGES
    if not path.exists():
        return []
    try:
        changes = json.loads(path.read_text()).get("changes", [])
    except (ValueError, AttributeError) as e:
        raise store.RecordError(f"{path} is not a JSON object with a 'changes' list ({e})") from e
    for c in changes:
        keys = ("stage", "field", "from", "to", "why")
        if not isinstance(c, dict) or not all(isinstance(c.get(k), str) for k in keys):
            raise store.RecordError(f"{path}: every change needs the strings stage, field, from, to and why; got {c!r}")
    return changes


def _explain(reasons: list[dict], known: list[dict]) -> list[dict]:
    out = []
    for r in reasons:
        hit = next((k for k in known if "field" in r and (k["stage"], k["field"], k["from"], k["to"])
                    == (r.get("stage"), r.get("field"), r.get("from"), r.get("to"))), None)
        out.append({**r, "known": hit is not None, **({"why": hit["why"]} if hit else {})})
    return out


def _read(path: Path) -> dict:
    return store.read_record(path)["networks"] if path.exists() else {}


def networks(root: str | os.PathLike, dataset: str, seed: int, jobs: Sequence[train.Job],
             plans: Mapping[str, Mapping[str, MeasureConfig]]) -> dict[str, dict]:
    """Every network of ``jobs`` in the folder: what is stored and why it is stale.

    Parameters
    ----------
    root : path
        The profile's folder.
    dataset, seed
        The folder.
    jobs : sequence of Job
        The protocol's training jobs (start networks first).
    plans : mapping
        Measurement kind -> (tag -> the measurement the protocol gives that network).

    Returns
    -------
    dict
        Tag -> ``{"tag", "lam", "train": entry or None, "measured": {kind: fields or None},
        "measure": {kind: entry or None}, "stale": [reason, ...]}``; each reason is a dict with
        ``text``, and for a changed fingerprint ``stage``, ``field``, ``from``, ``to``, ``known`` and (when
        known) ``why``. A network that is missing or not measured has the reason ``missing`` / ``not measured``.
    """
    root = Path(root)
    trained = _read(store.record_path(root, "train", dataset, seed))
    measured = {kind: _read(store.record_path(root, "measure", dataset, seed, kind)) for kind in plans}
    known = known_changes(root)
    out: dict[str, dict] = {}
    for job in jobs:
        for tag, lam in zip(job.tags, job.config.lams):
            entry = trained.get(tag)
            reasons = train.status(entry, job, tag, trained)
            if reasons and entry is not None:
                trained[tag] = {**entry, "stale": True}
            view = {"tag": tag, "lam": lam, "train": entry, "measured": {}, "measure": {}}
            for kind, plan in plans.items():
                if tag not in plan:
                    continue
                m = measured[kind].get(tag)
                view["measure"][kind] = m
                view["measured"][kind] = None if m is None else m["fields"]
                if entry is not None:
                    reasons += [{**r, "measurement": kind} for r in measure.status(m, entry["sha256"], plan[tag])]
            view["stale"] = _explain(reasons, known)
            out[tag] = view
    return out


def stored_units(root: str | os.PathLike, kind: str, unit: Callable[[str, int], dict | None], what: str,
                 incomplete: str) -> list[dict]:
    """Every unit of a protocol with a ``measure/<kind>`` record under ``root``, as ``unit(dataset, seed)``
    returns it. A unit it returns None for is left out with a :class:`RuntimeWarning` that names ``what``
    (the protocol) and ends with ``incomplete`` (what to run to finish it)."""
    out = []
    for path in sorted((Path(root) / "measure" / kind).glob("*/seed*.json")):
        rec = store.read_record(path)
        u = unit(rec["dataset"], rec["seed"])
        if u is None:
            warnings.warn(f"{what} of {rec['dataset']} seed {rec['seed']} in {root} is not complete; "
                          f"{incomplete}", RuntimeWarning, stacklevel=3)
            continue
        out.append(u)
    return out
