"""Glue for the companion book: provenance lines, running notebooks with papermill, picking sources.

The notebooks live as Jupytext ``py:percent`` files in ``notebooks/``. The book is built in one of two
ways (see the book's *Reproducing this book* page):

1. ``jupyter-book build .`` reads the ``.py`` files (``nb_custom_formats``) and executes them at their
   default parameters, through the Jupyter cache, so that only changed notebooks run again.
2. ``papermill`` runs a notebook with parameters (``-p profile full``) into ``notebooks/<name>.ipynb``;
   ``make book`` does this for every notebook, then builds the book without executing anything.

Both files of a pair have the same document name, which Sphinx refuses. The Sphinx extension in this
module (``sphinx: extra_extensions: [sepdtd.book]`` in ``_config.yml``) therefore picks one source per
notebook when the build starts: the ``.ipynb`` if it is a successful papermill run of the *current*
``.py`` (same cells, apart from papermill's injected parameters), else the ``.py``. A stale or failed
executed copy is never shown by accident.

The same extension shows one parameters cell per page (:func:`show_parameters`), switches the
repository and launch buttons on only when ``_config.yml`` names the repository (:func:`repository_url`),
and stops the build when the MathJax that the site serves is missing (``make mathjax``).

Nothing here imports torch; :func:`provenance` imports :mod:`sepdtd.utils` lazily.
"""
from __future__ import annotations

import ast
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "NOTEBOOK_DIR", "provenance", "provenance_line", "show_provenance", "setup_notebook", "book_root",
    "markdown_table", "show_markdown", "opening", "FALLBACK", "unit_for", "rows_for", "profile_note", "beyond_results",
    "committed_beyond", "committed_inblock", "blank_shares",
    "mass_se", "pointing_beyond_nonblank", "committed_seeds", "top2_cosines",
    "plausible_examples", "show_parameters", "repository_url", "install_cell", "add_install_cell",
    "source_cells", "is_executed_copy", "choose_sources", "execute", "setup", "main",
]

NOTEBOOK_DIR = "notebooks"
"""Folder (relative to the book root) holding the ``.py`` notebooks and their executed copies."""


# --------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------
def _unique(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def provenance(results: Mapping | Iterable[Mapping] | None = None, *, profile: str | None = None,
               seed: int | None = None, device: str | None = "auto") -> dict:
    """What produced the numbers on a page: profile, seeds, commits and devices.

    Parameters
    ----------
    results : dict or iterable of dict, optional
        Results dicts of :mod:`sepdtd.experiments` (schema in ``CONTRIBUTING.md``) whose numbers the
        page shows; their profile, seeds, data sets, config hashes, commit and device are collected.
    profile, seed : optional
        The notebook's parameters (used when no results are given, and recorded anyway).
    device : str, optional
        The device the notebook computes on now (``"auto"`` is resolved); ``None`` to leave it out.

    Returns
    -------
    dict
        JSON-serialisable: ``profile``, ``seeds``, ``datasets``, ``config_hashes``, ``configs`` (the
        full configuration of each result), ``results_commits``, ``results_devices`` (from the results)
        and ``commit``, ``device`` (of this execution).
    """
    from sepdtd.utils import device_name, git_commit, resolve_device

    if results is None:
        results = []
    elif isinstance(results, Mapping):
        results = [results]
    results = list(results)
    profiles = _unique(r.get("profile") for r in results) or _unique([profile])
    prov = {
        "profile": ", ".join(map(str, profiles)) or None,
        "seeds": _unique(r.get("seed") for r in results) or _unique([seed]),
        "datasets": _unique(r.get("dataset") for r in results),
        "config_hashes": _unique(r.get("config_hash") for r in results),
        "configs": {f"{r.get('dataset')}/seed{r.get('seed')}": r.get("config") for r in results},
        "results_commits": _unique(r.get("provenance", {}).get("commit") for r in results),
        "results_devices": _unique(r.get("provenance", {}).get("device") for r in results),
        "commit": git_commit(),
    }
    if device is not None:
        prov["device"] = device_name(resolve_device(device))
    return prov


def _short(commit: str) -> str:
    """12 hex digits of a commit, keeping the ``-dirty`` mark of uncommitted changes."""
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def provenance_line(prov: Mapping) -> str:
    """One line of Markdown saying which profile, seed(s), commit and device produced a page."""
    parts = [f"profile **{prov.get('profile')}**"]
    seeds = prov.get("seeds") or []
    if seeds:
        parts.append(("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds))
    if prov.get("results_commits"):
        results = ", ".join(f"`{_short(c)}`" for c in prov["results_commits"])
        devices = "; ".join(prov.get("results_devices") or ["unknown device"])
        parts.append(f"results computed by commit {results} on {devices}")
    executed = f"page executed by commit `{_short(str(prov.get('commit')))}`"
    if prov.get("device"):
        executed += f" on {prov['device']}"
    parts.append(executed)
    return "**Provenance:** " + " · ".join(parts)


def show_provenance(prov: Mapping) -> None:
    """Display :func:`provenance_line` as Markdown in a notebook (plain text elsewhere)."""
    show_markdown(provenance_line(prov))


def setup_notebook(data_dir: str | os.PathLike | None = None) -> None:
    """First call of every notebook: where the data is, and no progress-bar noise.

    Parameters
    ----------
    data_dir : path, optional
        A folder with the data sets in the layout of ``shared/data`` (``mnist/``, ``fashion-mnist/``,
        ``cifar10/``); it becomes ``$SEPDTD_DATA_MIRROR`` (see :mod:`sepdtd.data`). None keeps the
        defaults of :mod:`sepdtd.data`.

    Notes
    -----
    Call it before importing :mod:`sepdtd.experiments`: it also silences tqdm's warning that Jupyter
    widgets are missing (the notebooks run without progress bars).
    """
    import warnings

    if data_dir is not None:
        os.environ["SEPDTD_DATA_MIRROR"] = str(Path(data_dir).expanduser().resolve())
    warnings.filterwarnings("ignore", message="IProgress not found")


def book_root(start: str | os.PathLike | None = None) -> Path:
    """The book's root: the nearest folder at or above ``start`` (default: cwd) holding ``_toc.yml``.

    Falls back to ``start`` itself when there is none (e.g. a notebook copied elsewhere).
    """
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "_toc.yml").is_file():
            return folder
    return start


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown (GFM) table; cells are written with ``str``, ``|`` escaped."""
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def show_markdown(text: str) -> None:
    """Display Markdown in a notebook or IPython, print it as plain text elsewhere (a script)."""
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover
        get_ipython = None
    if get_ipython is None or get_ipython() is None:
        print(text)
        return
    display(Markdown(text))


def opening(paper: str, found: str, *, note: str | None = None) -> str:
    """The box that opens a chapter: what the paper says, and what we find, as MyST Markdown.

    Parameters
    ----------
    paper : str
        The paper's claim, one sentence.
    found : str
        What the results shown on the page say (generated by :mod:`sepdtd.findings` where it holds numbers).
    note : str, optional
        A third line, e.g. which profile a figure falls back to (:func:`profile_note`).
    """
    lines = [f"**The paper:** {paper.strip()}", f"**We find:** {found.strip()}"]
    if note:
        lines.append(note.strip())
    return "```{admonition} In brief\n:class: tip\n" + "\n\n".join(lines) + "\n```"


#: The profile a page draws from where the full profile's networks are not kept (CIFAR-10 until the GPU
#: job has run): it trains on a laptop in minutes.
FALLBACK = "quick"


def unit_for(profile: str, dataset: str, seed: int, device: str, *, kind: str = "paper") -> dict:
    """The results a page shows for one data set, with ``profile`` set to the profile they come from.

    At the full profile the book only reads: the committed networks and results, never trained or
    measured again. Where the full profile's networks are not kept, the page falls back to
    :data:`FALLBACK` (trained when missing) and the result says so (``fallback``). At another profile,
    the networks are trained where missing and measured where not current.

    Parameters
    ----------
    profile : str
        The book's profile.
    dataset : str
        The data set.
    seed : int
        The unit's seed.
    device : str
        Where to compute what is missing.
    kind : {"paper", "beyond", "mechanism"}, optional
        The protocol: :mod:`sepdtd.experiments`, :mod:`sepdtd.beyond` or :mod:`sepdtd.mechanism`.
    """
    import importlib

    mod = importlib.import_module({"paper": "sepdtd.experiments", "beyond": "sepdtd.beyond",
                                   "mechanism": "sepdtd.mechanism"}[kind])
    if profile == "full":
        kept = mod.unit("full", dataset, seed)
        if kept is not None:
            return {**kept, "fallback": None}
        return {**mod.run(FALLBACK, dataset, seed, device=device, progress=False),
                "fallback": "the full profile's networks of this data set are not kept yet"}
    return {**mod.run(profile, dataset, seed, device=device, progress=False), "fallback": None}


def profile_note(profile: str, results: Iterable[Mapping]) -> str:
    """One Markdown line: the profile a page shows, and the data sets it draws from another one."""
    from sepdtd import report

    results = list(results)
    moved = sorted({r["dataset"] for r in results if r.get("fallback")}, key=_DATASET_ORDER.index)
    text = f"This page shows the **{profile}** profile"
    if profile == "full":
        text += " (the committed networks and results)"
    if moved:
        names = ", ".join(report.DATASET_LABELS.get(d, d) for d in moved)
        text += (f"; {names} {'comes' if len(moved) == 1 else 'come'} from the **{FALLBACK}** profile: its "
                 "full-profile networks are not kept yet")
    return text + "."


_DATASET_ORDER = ["cifar10", "fashion_mnist", "mnist"]


def rows_for(profile: str, seed: int, device: str) -> list[dict]:
    """The aggregated rows (:func:`sepdtd.report.rows`) a page's opening box reads: those of the units the
    page shows, so that the box and the page agree.

    At the full profile, a data set whose networks are kept gives every kept seed; one that keeps none
    gives the page's fallback unit (:func:`unit_for`). At another profile, the page's own units of the
    three data sets (trained where missing).
    """
    import warnings

    from sepdtd import experiments, report

    kept: list[dict] = []
    folder = experiments.default_results_dir("full")
    if profile == "full" and folder.is_dir():
        with warnings.catch_warnings():  # an unfinished unit is named by the page's own provenance
            warnings.simplefilter("ignore")
            kept = [u for u in experiments.load_results(folder) if u["networks_kept"]]
    units: list[dict] = []
    for name in _DATASET_ORDER:
        units += [u for u in kept if u["dataset"] == name] or [unit_for(profile, name, seed, device)]
    return report.rows(units)


def beyond_results(profile: str, seed: int, device: str, datasets: Sequence[str]) -> list[dict]:
    """Results of chapters 9-10: this build's units (:func:`unit_for`) and every other seed of ``profile``
    already stored, ordered by data set (as in ``datasets``), then seed."""
    from sepdtd import beyond

    ran = [unit_for(profile, name, seed, device, kind="beyond") for name in datasets]
    units = {(r["dataset"], r["seed"]): r for r in beyond.load_results(profile)}
    units.update({(r["dataset"], r["seed"]): r for r in ran})
    results = [units[k] for k in sorted(units, key=lambda k: (list(datasets).index(k[0]), k[1]))]
    _warn_stale_beyond(results)
    return results


def _warn_stale_beyond(results: Sequence[dict]) -> list[dict]:
    """Show a warning for chapter 9-10 results the current code would compute otherwise; return them."""
    stale = [r for r in results if r.get("stale")]
    if stale:
        why = sorted({reason["text"] for r in stale for reason in r["stale"]})
        show_markdown("**Stale:** " + ", ".join(f"{r['dataset']} seed {r['seed']}" for r in stale)
                      + " would be computed otherwise by the current code (" + "; ".join(why[:3])
                      + ("; ..." if len(why) > 3 else "") + "); their numbers may differ from what it computes now.")
    return stale


def committed_beyond(profile: str, seed: int, convention: str) -> tuple[list[dict], list[dict]]:
    """The committed full-profile results of chapters 9-10 and their :func:`sepdtd.beyond.summary` rows.

    Shows their provenance line, or a note when there are none; empty when this build is the full
    profile itself (its results are the page's own).
    """
    from sepdtd import beyond

    results = [] if profile == "full" else beyond.load_results("full")
    if not results:
        show_markdown("*No other full-profile results of this chapter in this checkout.*")
        return [], []
    show_provenance(provenance(results, profile="full", seed=seed, device=None))
    _warn_stale_beyond(results)
    return results, beyond.summary(results, convention=convention)


def committed_inblock(profile: str) -> str | None:
    """A Markdown table of the committed full-profile in-block shares (Figure 6), for a build at another
    profile; None when this build is the full profile or none are committed.

    One row per data set: the baselines' share and the fine-tunes' range over every λ and seed, hidden /
    output layer (:func:`sepdtd.regularization.inblock_share`).
    """
    from sepdtd import experiments, report

    folder = experiments.default_results_dir("full")
    if profile == "full" or not folder.is_dir():
        return None
    results = experiments.load_results(folder)
    if not results:
        return None

    def span(values: list[float]) -> str:
        lo, hi = min(values), max(values)
        return f"{lo:.1%}" if f"{lo:.1%}" == f"{hi:.1%}" else f"{lo:.1%}-{hi:.1%}"

    rows = []
    for name in sorted({r["dataset"] for r in results}):
        sets = [s for r in results if r["dataset"] == name for s in r["settings"]
                if all(v is not None for v in s["inblock"])]
        cells = []
        for fine in (False, True):
            chosen = [s for s in sets if (s["lam"] > 0) == fine]
            layers = range(len(chosen[0]["inblock"])) if chosen else ()
            cells.append(" / ".join(span([s["inblock"][k] for s in chosen]) for k in layers) or "—")
        seeds = sorted({r["seed"] for r in results if r["dataset"] == name})
        rows.append([report.DATASET_LABELS.get(name, name), ", ".join(map(str, seeds)), *cells])
    return markdown_table(["data set", "seeds", "baseline", "fine-tuned (every λ)"], rows)


def top2_cosines(model: Any, x: Any, *, batch_size: int = 500) -> tuple[Any, Any, Any]:
    """Per image, the cosine of the top-1 and top-2 DTD heatmaps, with the two logits and classes.

    The per-image terms of :func:`sepdtd.metrics.cosine` (same heatmaps, same norm clamp), kept apart so
    that they can be split by the signs of the logits (chapter 6, "What the cosine measures").

    Returns
    -------
    cosines : torch.Tensor
        ``(N,)`` float64, in ``[-1, 1]``.
    logits, classes : torch.Tensor
        ``(N, 2)``: the top-2 logits and their classes.
    """
    import torch

    from sepdtd import dtd, metrics

    cos, values, indices = [], [], []
    with torch.no_grad():
        for xb in x.split(batch_size):
            top = model(xb).topk(2, dim=1)
            h = dtd.heatmap(model, xb, top.indices, low=0.0, high=1.0)
            cos.append(metrics.cosines(h[:, 0], h[:, 1]))
            values.append(top.values)
            indices.append(top.indices)
    return torch.cat(cos).double(), torch.cat(values).double(), torch.cat(indices)


def _beyond_methods(results: Iterable[Mapping]) -> Iterator[tuple[tuple[str, str, str], Mapping]]:
    """``((data set, network, method), measures)`` for every method of every network of chapter 9-10 results."""
    for res in results:
        for e in res["entries"]:
            for method, m in e["methods"].items():
                yield (res["dataset"], e["model"], method), m


def blank_shares(results: Iterable[Mapping]) -> dict[tuple[str, str, str], tuple[float | None, float | None]]:
    """Share of the scored composites whose top-1 / top-2 heatmap holds no positive relevance.

    From the chapter 9-10 results (:mod:`sepdtd.beyond`): for each (data set, network, method), the
    mean over seeds of ``(mass_nan[k] - covered[k]) / (n_scored - covered[k])`` — among the composites
    whose object has pixels outside the ones both objects share (``covered``: those that have none,
    stored since the pointing game is played on R+; 0 for older results), the heatmaps whose mass
    accuracy is undefined because no positive relevance lies outside the shared pixels. The mass accuracy is the
    mean over the *other* composites only, and the pointing game counts them as misses (results of
    older code could count them as hits, see :func:`pointing_beyond_nonblank`).
    """
    acc: dict[tuple[str, str, str], list[list[float]]] = {}
    for key, m in _beyond_methods(results):
        n = m.get("n_scored") or 0
        if not n or not m.get("mass_nan"):
            continue
        covered = m.get("covered") or [0, 0]      # objects inside the shared pixels (stored since rerun-fixes)
        for k in (0, 1):
            if n > covered[k]:
                acc.setdefault(key, [[], []])[k].append((m["mass_nan"][k] - covered[k]) / (n - covered[k]))
    return {key: tuple(sum(v) / len(v) if v else None for v in pair) for key, pair in acc.items()}


def pointing_beyond_nonblank(results: Iterable[Mapping], *, objects_only: bool = False,
                             ) -> list[tuple[str, str, str, int, int, float, float]]:
    """Results whose pointing game scores more hits than they have heatmaps with positive relevance.

    ``metrics.pointing_game`` before it was played on ``R+`` took the heatmap's largest value as it
    was, so a heatmap without positive relevance ("blank") pointed at its least negative pixel, which
    may lie on the object; results of that code can hold such hits (none of the current code can).
    Where a unit's hit rate exceeds its share of non-blank heatmaps (``1 - mass_nan[k] / n_scored``),
    some hits certainly came from blank heatmaps; where it does not,
    blank hits are possible but bounded by that share.

    Returns
    -------
    list of tuple
        ``(dataset, network, method, seed, k, pointing, non-blank share)`` for every (unit, class
        k = 1 or 2) over the bound, from ``pointing`` (all pixels) or, with ``objects_only``,
        ``pointing_objects``.
    """
    key = "pointing_objects" if objects_only else "pointing"
    out = []
    for res in results:
        for (dataset, model, method), m in _beyond_methods([res]):
            n = m.get("n_scored") or 0
            if not n or not m.get("mass_nan") or not m.get(key):
                continue
            covered = m.get("covered") or [0, 0]
            for k in (0, 1):
                if n <= covered[k]:
                    continue
                hits, nonblank = m[key][k], 1 - (m["mass_nan"][k] - covered[k]) / (n - covered[k])
                if hits is not None and hits > nonblank + 1e-9:
                    out.append((dataset, model, method, res.get("seed"), k + 1, hits, nonblank))
    return out


def committed_seeds(results: Iterable[Mapping]) -> str:
    """The data sets and seeds of chapter 9-10 results, e.g. ``"MNIST seed(s) [0], Fashion-MNIST seed(s) [0]"``."""
    from sepdtd import models, report

    seeds: dict[str, list[int]] = {}
    for res in results:
        seeds.setdefault(res["dataset"], []).append(res["seed"])
    return ", ".join(f"{report.DATASET_LABELS[d]} seed(s) {sorted(seeds[d])}" for d in models.MODELS if d in seeds)


def mass_se(results: Iterable[Mapping]) -> dict[tuple[str, str, str], tuple[float | None, float | None]]:
    """Standard error of the top-1 / top-2 mass accuracy of chapter 9, from the spread over the composites.

    For each (data set, network, method) of the :mod:`sepdtd.beyond` results: per seed, the sd of the
    mass accuracy over the composites where it is defined (``mass_sd[k]``) divided by the square root of
    their number, ``n_scored - mass_nan[k]``; then the standard error of the seeds' mean,
    ``sqrt(sum se^2) / n_seeds``. None where no seed has an sd. The same as ``beyond.summary``'s
    ``mass*_se``, keyed for the book's tables.
    """
    acc: dict[tuple[str, str, str], list[list[float]]] = {}
    for key, m in _beyond_methods(results):
        pair = acc.setdefault(key, [[], []])
        for k in (0, 1):
            sd = (m.get("mass_sd") or [None, None])[k]
            n = (m.get("n_scored") or 0) - (m.get("mass_nan") or [0, 0])[k]
            if sd is not None and n > 0:
                pair[k].append(sd / math.sqrt(n))
    return {key: tuple(math.sqrt(sum(v * v for v in ses)) / len(ses) if ses else None for ses in pair)
            for key, pair in acc.items()}


def plausible_examples(nets: Mapping[str, Any], x: Any, y: Any, *, n: int = 2,
                       prefer: Sequence[tuple[int, int]] = (), min_second: float = 0.1,
                       batch_size: int = 500) -> list[dict]:
    """Test images whose two most likely classes form a plausible pair (how Figures 4-5 pick theirs).

    A *candidate* is classified correctly by every network in ``nets``, all networks agree on its
    top-2 classes, and the first network gives the second class a probability of at least
    ``min_second``. Candidates whose (unordered) pair is in ``prefer`` come first (e.g. plane/car),
    then the most ambiguous ones (highest second probability); at most one image per class pair. If
    fewer than ``n`` candidates exist (e.g. barely trained networks), the remaining images are the most
    ambiguous ones for the first network, without the other conditions.

    Parameters
    ----------
    nets : dict
        Label -> model in eval mode (the first is the reference, e.g. the baseline).
    x : torch.Tensor
        ``uint8`` images ``(N, C, H, W)``.
    y : torch.Tensor
        Labels ``(N,)``.
    n : int
        Number of images.
    prefer : sequence of (int, int)
        Preferred class pairs.
    min_second : float
        Smallest second-class probability of a candidate.
    batch_size : int
        Images per forward pass.

    Returns
    -------
    list of dict
        ``index`` (into ``x``), ``classes`` (top-1, top-2 of the reference network), ``label``,
        ``probabilities`` (label -> (p1, p2) of those two classes), ``criteria_met`` (bool).
    """
    import torch

    from sepdtd.data import to_float

    probs = {}
    with torch.no_grad():
        for label, net in nets.items():
            dev = next(net.parameters()).device
            parts = [torch.softmax(net(to_float(x[i:i + batch_size]).to(dev)).double(), dim=1).cpu()
                     for i in range(0, x.shape[0], batch_size)]
            probs[label] = torch.cat(parts)
    ref = next(iter(probs))
    top2 = {k: p.topk(2, dim=1).indices for k, p in probs.items()}
    y = torch.as_tensor(y).cpu()
    ok = torch.ones(x.shape[0], dtype=torch.bool)
    for k in probs:
        ok &= top2[k][:, 0] == y
        ok &= (top2[k] == top2[ref]).all(dim=1)
    second = probs[ref].gather(1, top2[ref][:, 1:]).squeeze(1)
    ok &= second >= min_second
    preferred = {frozenset(p) for p in prefer}

    def order(mask: Any) -> list[int]:
        idx = torch.nonzero(mask).flatten().tolist()
        return sorted(idx, key=lambda i: (frozenset(top2[ref][i].tolist()) not in preferred, -float(second[i])))

    chosen: list[dict] = []
    pairs: set = set()
    for criteria, candidates in ((True, order(ok)), (False, order(~ok))):
        for i in candidates:
            pair = frozenset(top2[ref][i].tolist())
            if len(chosen) == n:
                break
            if pair in pairs:
                continue
            pairs.add(pair)
            c1, c2 = (int(c) for c in top2[ref][i])
            chosen.append({"index": i, "classes": (c1, c2), "label": int(y[i]), "criteria_met": criteria,
                           "probabilities": {k: (float(p[i, c1]), float(p[i, c2])) for k, p in probs.items()}})
    return chosen


# --------------------------------------------------------------------------------------------------
# One parameters cell per page
# --------------------------------------------------------------------------------------------------
INJECTED_TAG = "injected-parameters"
"""Tag of the cell that papermill adds after the notebook's own ``parameters`` cell."""


def _tags(cell: Any) -> list[str]:
    return cell.get("metadata", {}).get("tags", [])


def _assignments(source: str) -> dict[str, tuple[int, int, str, str]] | None:
    """``name -> (first line, last line, statement, value)`` of a cell's top-level ``name = value``
    statements, as source text.

    Lines count from 0, the last one included. None when the cell is not valid Python.
    """
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    lines = source.splitlines()
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            first, last = node.lineno - 1, (node.end_lineno or node.lineno) - 1
            value = ast.get_source_segment(source, node.value) or ""
            out[node.targets[0].id] = (first, last, "\n".join(lines[first:last + 1]), value)
    return out


def _value(source: str) -> Any:
    """The value of a literal's source text; the text itself when it is not a literal."""
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError):
        return source


def show_parameters(nb: Any) -> Any:
    """One parameters cell with the values the run used, for the page of a papermill run.

    papermill leaves the notebook's own cell tagged ``parameters`` as it is and adds a cell tagged
    ``injected-parameters`` with the values it was given. This writes each given value into the
    notebook's own cell, in place of the default, with a comment naming the default, and hides the
    injected cell (tag ``remove-cell``). A value equal to its default is written without comment.
    Without an own cell, or when it is not plain Python, the own cell is hidden and papermill's shown.

    Returns ``nb``, changed in place; the notebook on disk, papermill's record, is not changed.
    """
    own = [c for c in nb.cells if "parameters" in _tags(c)]
    injected = [c for c in nb.cells if INJECTED_TAG in _tags(c)]
    if not injected:
        return nb
    given = _assignments(injected[-1].source) or {}
    defaults = _assignments(own[0].source) if len(own) == 1 else None
    if defaults is None or not given:
        for cell in own:
            cell.metadata["tags"] = [*_tags(cell), "remove-cell"]
        return nb
    lines = own[0].source.splitlines()
    for name, (first, last, _, default) in sorted(defaults.items(), key=lambda kv: -kv[1][0]):
        if name not in given:
            continue
        used, value = given[name][2:]
        if _value(value) != _value(default):
            used += f"  # papermill -p {name}; the default is {default}"
        lines[first:last + 1] = used.splitlines()
    lines += [f"{s}  # papermill -p {name}; no default" for name, (_, _, s, _) in given.items() if name not in defaults]
    own[0].source = "\n".join(lines)
    for cell in injected:
        cell.metadata["tags"] = [*_tags(cell), "remove-cell"]
    return nb


# --------------------------------------------------------------------------------------------------
# The repository's address, and the install cell that depends on it
# --------------------------------------------------------------------------------------------------
INSTALL_TAG = "sepdtd-install"
"""Tag of the install cell that :func:`add_install_cell` adds to an executed copy."""


def repository_url(start: str | os.PathLike | None = None) -> str | None:
    """The repository's address: ``repository.url`` in the book's ``_config.yml``, or None when unset.

    This is the one place where the address is written. The book shows its repository, issues and launch
    buttons only when it is set, and executed copies get an install cell only then
    (:func:`add_install_cell`).

    Parameters
    ----------
    start : path, optional
        A folder in the book (default: cwd); ``_config.yml`` is looked up from there (:func:`book_root`).
    """
    import yaml

    path = book_root(start) / "_config.yml"
    if not path.is_file():
        return None
    config = yaml.safe_load(path.read_text()) or {}
    url = str((config.get("repository") or {}).get("url") or "").strip()
    return url or None


def install_cell(url: str) -> Any:
    """A hidden code cell that installs the package from ``url`` when it runs on Google Colab."""
    import nbformat

    source = (f"# On Google Colab: install the package from {url} (elsewhere it is installed already).\n"
              "import subprocess\n"
              "import sys\n\n"
              'if "google.colab" in sys.modules:\n'
              '    subprocess.run([sys.executable, "-m", "pip", "install", "-q",\n'
              f'                    "sepdtd[vision] @ git+{url}"], check=True)')
    return nbformat.v4.new_code_cell(source, metadata={"tags": ["remove-cell", INSTALL_TAG]})


def add_install_cell(nb: Any, url: str | None) -> Any:
    """Give ``nb`` the install cell of ``url`` before its first code cell; with no ``url``, none.

    The notebooks' sources hold no install cell: it is added to an executed copy at build time, so that
    it exists only when the repository is published (:func:`repository_url`). An install cell already
    there is replaced. Returns ``nb``, changed in place.
    """
    cells = [c for c in nb.cells if INSTALL_TAG not in _tags(c)]
    if url:
        first = next((i for i, c in enumerate(cells) if c.cell_type == "code"), len(cells))
        cells.insert(first, install_cell(url))
    nb.cells = cells
    return nb


# --------------------------------------------------------------------------------------------------
# Executed copies and source selection
# --------------------------------------------------------------------------------------------------
def source_cells(nb: Any) -> list[tuple[str, str]]:
    """``(cell_type, source)`` of a notebook's cells, without the cells the build adds: papermill's
    injected parameters and the install cell (:func:`add_install_cell`)."""
    cells = []
    for cell in nb.cells:
        if INJECTED_TAG in _tags(cell) or INSTALL_TAG in _tags(cell):
            continue
        cells.append((cell.cell_type, cell.source.strip()))
    return cells


def is_executed_copy(ipynb: str | os.PathLike, source: str | os.PathLike) -> tuple[bool, str]:
    """Whether ``ipynb`` is a successful papermill run of the current text notebook ``source``.

    Returns
    -------
    ok : bool
    reason : str
        Why not (or which parameters it ran with), for the build log.
    """
    import jupytext
    import nbformat

    try:
        executed = nbformat.read(ipynb, as_version=4)
    except Exception as exc:  # any unreadable file is "not an executed copy"
        return False, f"unreadable ({exc})"
    pm = executed.metadata.get("papermill")
    if not pm or not pm.get("end_time"):
        return False, "not a finished papermill run"
    if pm.get("exception"):
        return False, "its papermill run raised an exception"
    if source_cells(executed) != source_cells(jupytext.read(source)):
        return False, f"stale: {Path(source).name} changed since it was executed"
    return True, "parameters " + json.dumps(pm.get("parameters", {}), sort_keys=True)


def choose_sources(srcdir: str | os.PathLike, notebook_dir: str = NOTEBOOK_DIR) -> dict[str, list[str]]:
    """Pick the executed ``.ipynb`` or the ``.py`` source of each notebook in ``srcdir/notebook_dir``.

    Returns
    -------
    dict
        ``{"executed": [...], "source": [...], "exclude": [...], "notes": [...]}``: document paths
        (relative to ``srcdir``) of the chosen executed copies and text sources, the Sphinx
        ``exclude_patterns`` that hide the other file of each pair, and one note per decision.
    """
    srcdir = Path(srcdir)
    out: dict[str, list[str]] = {"executed": [], "source": [], "exclude": [], "notes": []}
    folder = srcdir / notebook_dir
    if not folder.is_dir():
        return out
    for py in sorted(folder.glob("*.py")):
        ipynb = py.with_suffix(".ipynb")
        rel_py, rel_nb = (p.relative_to(srcdir).as_posix() for p in (py, ipynb))
        if ipynb.exists():
            ok, why = is_executed_copy(ipynb, py)
            if ok:
                out["executed"].append(rel_nb)
                out["exclude"].append(rel_py)
                out["notes"].append(f"{rel_nb}: showing the executed copy ({why})")
                continue
            out["exclude"].append(rel_nb)
            out["notes"].append(f"{rel_nb} ignored ({why}); building from {rel_py}")
        out["source"].append(rel_py)
    return out


def execute(source: str | os.PathLike, output: str | os.PathLike | None,
            parameters: Mapping[str, Any] | None = None, *, cwd: str | os.PathLike | None = None,
            kernel_name: str = "python3", timeout: float | None = None) -> Any:
    """Run a text notebook with papermill, converting it with Jupytext in memory.

    This is what ``jupytext --to ipynb -o - <source> | python -m sepdtd.book install-cell | papermill - <output>
    -p ...`` does in ``make book``: the install cell is added when the repository is configured.

    Parameters
    ----------
    source : path
        A Jupytext notebook (``notebooks/*.py``).
    output : path or None
        Where the executed ``.ipynb`` goes (None: not written).
    parameters : dict, optional
        Values for the cell tagged ``parameters``.
    cwd : path, optional
        Working directory of the kernel (default: the source's folder, as in ``jupyter-book build``).
    kernel_name : str
        Jupyter kernel.
    timeout : float, optional
        Per-cell timeout in seconds.

    Returns
    -------
    nbformat.NotebookNode
        The executed notebook. Raises :class:`papermill.PapermillExecutionError` if a cell fails.
    """
    import jupytext
    import papermill

    nb = add_install_cell(jupytext.read(source), repository_url(Path(source).resolve().parent))
    return papermill.execute_notebook(
        nb, None if output is None else str(output), parameters=dict(parameters or {}),
        cwd=str(cwd or Path(source).resolve().parent), kernel_name=kernel_name,
        progress_bar=False, execution_timeout=timeout,
    )


# --------------------------------------------------------------------------------------------------
# Sphinx extension
# --------------------------------------------------------------------------------------------------
REPOSITORY_BUTTONS = ("use_repository_button", "use_issues_button")
"""The header buttons that lead to the repository; shown only when its address is set."""


def repository_options(theme_options: Mapping[str, Any]) -> dict[str, Any]:
    """The theme options with the repository and launch buttons on if ``repository_url`` is set, else off.

    Jupyter Book copies ``repository.url`` of ``_config.yml`` to ``repository_url``. Without it, the
    buttons would lead nowhere: the launch buttons and ``repository_url`` are dropped and the repository
    buttons are switched off. With it, the repository and issues buttons are switched on (Jupyter Book's
    defaults switch them off, and it refuses ``html.use_repository_button`` without an address).
    """
    options = dict(theme_options)
    url = str(options.get("repository_url") or "").strip()
    if url:
        options.update(dict.fromkeys(REPOSITORY_BUTTONS, True))
        return options
    options.pop("repository_url", None)
    options.pop("launch_buttons", None)
    for key in (*REPOSITORY_BUTTONS, "use_edit_page_button"):
        options[key] = False
    return options


def _missing_mathjax(app: Any, config: Any) -> str | None:
    """Why the MathJax of ``mathjax_path`` is not in the site's static files; None when it is, or when
    ``mathjax_path`` is an address on the web."""
    path = str(config.mathjax_path or "")
    if not path or "://" in path or path.startswith("/"):
        return None
    folders = [Path(app.confdir, f) for f in config.html_static_path]
    if any((folder / path).is_file() for folder in folders):
        return None
    return (f"MathJax ({path}, mathjax_path) is in none of the site's static folders (html_static_path): run "
            "`make mathjax`, which fetches it from the npm registry into .cache/mathjax/ (see book/reproducing.md)")


def _on_config_inited(app: Any, config: Any) -> None:
    from sphinx.errors import ConfigError
    from sphinx.util import logging

    logger = logging.getLogger(__name__)
    chosen = choose_sources(app.srcdir, config.sepdtd_notebook_dir)
    config.exclude_patterns = list(config.exclude_patterns) + chosen["exclude"]
    for note in chosen["notes"]:
        logger.info("[sepdtd.book] %s", note)
    config.html_theme_options = repository_options(config.html_theme_options)
    if not config.html_theme_options.get("repository_url"):
        logger.info("[sepdtd.book] no repository.url in _config.yml: no repository or launch buttons")
    if why := _missing_mathjax(app, config):
        raise ConfigError(f"[sepdtd.book] {why}")


def _on_source_read(app: Any, docname: str, source: list[str]) -> None:
    """Show one parameters cell on the page of a papermill run (:func:`show_parameters`)."""
    import nbformat

    if Path(app.env.doc2path(docname)).suffix != ".ipynb":
        return
    nb = nbformat.reads(source[0], as_version=4)
    if any(INJECTED_TAG in _tags(c) for c in nb.cells):
        source[0] = nbformat.writes(show_parameters(nb))


def setup(app: Any) -> dict:
    """Sphinx entry point: choose each notebook's source before Sphinx looks for documents, configure
    the buttons, check MathJax, and merge the parameters cells of papermill runs."""
    app.add_config_value("sepdtd_notebook_dir", NOTEBOOK_DIR, "env")
    app.connect("config-inited", _on_config_inited, priority=900)
    app.connect("source-read", _on_source_read)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sepdtd.book install-cell``: a notebook on stdin, with its install cell, to stdout.

    The filter between Jupytext and papermill in ``make book``. The address comes from the
    ``_config.yml`` of the book around the current folder (:func:`repository_url`).
    """
    import argparse

    import nbformat

    parser = argparse.ArgumentParser(prog="python -m sepdtd.book", description=main.__doc__.splitlines()[0])
    parser.add_argument("command", choices=["install-cell"])
    parser.parse_args(argv)
    nb = nbformat.read(sys.stdin, as_version=4)
    nbformat.write(add_install_cell(nb, repository_url()), sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
