"""Figures of the companion book, one function per figure of the paper.

Every function returns a :class:`matplotlib.figure.Figure` and leaves showing it to the caller.
:func:`save_figure` writes a figure as PNG under ``_build/figures/`` with the commit and configuration
that produced it in the file's metadata. Heatmaps use the ``bwr`` colour map centred at zero (positive
relevance or weight red, negative blue), with one colour scale per figure unless said otherwise.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle, FancyArrowPatch, Rectangle
from matplotlib.ticker import MaxNLocator

__all__ = [
    "figures_dir", "save_figure", "toy_network", "heatmap_grid",
    "training_curves", "block_mask", "heatmap_comparison", "dense_weights", "as_image", "claims_figure",
    "lambda_sweep", "similarity_vs_ground_truth",
]

BLUE = "#1f77b4"
ORANGE = "#ff7f0e"
RELEVANCE = "#c0392b"


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------
def figures_dir() -> Path:
    """Where :func:`save_figure` writes: ``$SEPDTD_FIGURES``, else ``<book root>/_build/figures``."""
    env = os.environ.get("SEPDTD_FIGURES")
    if env:
        return Path(env)
    from sepdtd.book import book_root

    return book_root() / "_build" / "figures"


def save_figure(fig: Figure, name: str, provenance: Mapping[str, Any], *, dpi: int = 150) -> Path:
    """Save ``fig`` as ``<figures_dir()>/<name>.png`` with its provenance in the PNG metadata.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The figure.
    name : str
        File stem, e.g. ``"figure2_toy"``.
    provenance : dict
        JSON-serialisable description of what produced the figure (commit, profile, seeds, config
        hashes, device; see :func:`sepdtd.book.provenance`). Stored as JSON in the PNG ``Description``
        text chunk; ``Title`` holds ``name``.
    dpi : int
        Resolution.

    Returns
    -------
    pathlib.Path
        The written file (written atomically).
    """
    import io

    from sepdtd.utils import atomic_write_bytes

    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"figure name must be a plain file stem, got {name!r}")
    buf = io.BytesIO()
    meta = {"Title": name, "Description": json.dumps(dict(provenance), sort_keys=True, default=str),
            "Software": f"sepdtd (matplotlib {matplotlib.__version__})"}
    fig.savefig(buf, format="png", dpi=dpi, metadata=meta, bbox_inches="tight")
    return atomic_write_bytes(figures_dir() / f"{name}.png", buf.getvalue())


# --------------------------------------------------------------------------------------------------
# Figure 2: the toy network
# --------------------------------------------------------------------------------------------------
def _draw_toy(ax: plt.Axes, expl: Any, title: str) -> None:
    from sepdtd import toy

    net = expl.network
    xs = (0.0, 1.0, 2.0)
    ys = (1.0, 0.0)
    layers = [
        (toy.INPUTS, expl.x, expl.r_input, (BLUE, ORANGE)),
        (toy.HIDDEN, expl.hidden, expl.r_hidden, ("#dddddd", "#dddddd")),
        (toy.OUTPUTS, expl.output, expl.r_output, ("#dddddd", "#dddddd")),
    ]
    # edges: width by weight (thin 0.1, thick 1.0), as in Figure 2
    for li, w in enumerate((net.w_hidden, net.w_out)):
        for j in range(2):
            for i in range(2):
                if w[j, i] == 0:
                    continue
                lw = 1.0 + 4.0 * float(abs(w[j, i]))
                ax.add_patch(FancyArrowPatch((xs[li], ys[i]), (xs[li + 1], ys[j]), arrowstyle="-",
                                             lw=lw, color="#555555", shrinkA=20, shrinkB=20, zorder=1))
                t = 0.5 if i == j else 0.3
                ax.text(xs[li] + t, ys[i] + (ys[j] - ys[i]) * t + (0.07 if i == j else 0.0),
                        f"{w[j, i]:.1f}", fontsize=8, color="#555555", ha="center", va="bottom",
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5})
    rmax = max(float(np.max(expl.r_output)), 1e-12)
    for x, (names, act, rel, colours) in zip(xs, layers):
        for k, (name, a, r, c) in enumerate(zip(names, act, rel, colours)):
            y = ys[k]
            ax.add_patch(Circle((x, y), 0.16, facecolor=c, edgecolor="black", lw=1.0, zorder=2))
            # a red halo whose area is proportional to the relevance of the neuron
            if r > 0:
                ax.add_patch(Circle((x, y), 0.16 + 0.1 * np.sqrt(r / rmax), facecolor="none",
                                    edgecolor=RELEVANCE, lw=2.5, alpha=0.9, zorder=1.5))
            ax.text(x, y, f"{a:.3g}", ha="center", va="center", fontsize=9, zorder=3,
                    color="white" if c in (BLUE,) else "black")
            ax.text(x, y + (0.36 if k == 0 else -0.36), f"R = {r:.3g}", ha="center", va="center",
                    fontsize=10, color=RELEVANCE, fontweight="bold")
            ax.text(x, y + (0.52 if k == 0 else -0.52), name, ha="center", va="center", fontsize=8,
                    color="#333333")
    share = expl.input_share("blue")
    ax.set_title(f"{title}\n{share:.0%} of the relevance on the blue (circle) input", fontsize=10)
    ax.set_xlim(-0.75, 2.4)
    ax.set_ylim(-0.75, 1.75)
    ax.set_aspect("equal")
    ax.axis("off")
    # the image the input layer summarises: a large blue circle and a small orange square
    ax.add_patch(Rectangle((-0.72, 0.2), 0.42, 0.6, facecolor="white", edgecolor="#999999", lw=0.8))
    blue, orange = (float(v) for v in expl.x)
    scale = 0.17 / np.sqrt(max(blue, orange, 1e-12))
    ax.add_patch(Circle((-0.51, 0.62), scale * np.sqrt(blue), color=BLUE))
    side = scale * np.sqrt(orange) * 1.6
    ax.add_patch(Rectangle((-0.51 - side / 2, 0.33 - side / 2), side, side, color=ORANGE))


def toy_network(explanations: Sequence[Any], titles: Sequence[str] | None = None) -> Figure:
    """Figure 2: the toy network with activations, weights and z+ relevance for each explanation.

    Parameters
    ----------
    explanations : sequence of sepdtd.toy.ToyExplanation
        One panel each, e.g. the explanations of ``"circle"`` and ``"square"``.
    titles : sequence of str, optional
        Panel titles (default: ``"(a) explaining circle"``, ...).

    Returns
    -------
    matplotlib.figure.Figure
        Nodes show activations, red numbers and halos the relevance, line width the weight
        (thin 0.1, thick 1.0).
    """
    n = len(explanations)
    if titles is None:
        titles = [f"({chr(97 + i)}) explaining {e.cls}" for i, e in enumerate(explanations)]
    fig, axes = plt.subplots(1, n, figsize=(5.2 * n, 4.4), squeeze=False)
    for ax, expl, title in zip(axes[0], explanations, titles):
        _draw_toy(ax, expl, title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Heatmaps (Figures 1, 4, 5)
# --------------------------------------------------------------------------------------------------
def as_image(x: Any) -> np.ndarray:
    """An image ``(C, H, W)`` (uint8 or float in ``[0, 1]``, tensor or array) as ``(H, W[, 3])`` floats."""
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    if a.ndim != 3:
        raise ValueError(f"expected one image (C, H, W), got shape {a.shape}")
    return a[0] if a.shape[0] == 1 else np.transpose(a, (1, 2, 0))


def _show_image(ax: plt.Axes, image: Any, title: str | None = None) -> None:
    img = as_image(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def _show_heatmap(ax: plt.Axes, h: np.ndarray, vmax: float, title: str | None = None) -> Any:
    im = ax.imshow(h, cmap="bwr", vmin=-vmax, vmax=vmax, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return im


def _vmax(*arrays: np.ndarray) -> float:
    m = max(float(np.abs(a).max()) for a in arrays)
    return m if m > 0 else 1.0


def heatmap_grid(image: Any, heatmaps: Any, labels: Sequence[str], *, similarity: Any = None,
                 ncols: int = 5, scale: str = "each") -> Figure:
    """Figure 1: one image, its heatmap for every class and (optionally) their similarity matrix.

    Parameters
    ----------
    image : tensor or array
        ``(C, H, W)``.
    heatmaps : tensor or array
        ``(K, H, W)``, one heatmap per label.
    labels : sequence of str
        Panel titles, e.g. ``"cat (logit 3.1)"``.
    similarity : array, optional
        ``(K, K)`` pairwise cosine similarities, drawn to the right of the heatmaps.
    ncols : int
        Heatmaps per row.
    scale : {"each", "shared"}
        ``"each"``: every heatmap on its own symmetric colour scale (its largest ``|R|`` is full red or
        blue), so shapes can be compared; ``"shared"``: one scale for all.

    Returns
    -------
    matplotlib.figure.Figure
    """
    hm = np.asarray(heatmaps.detach().cpu() if hasattr(heatmaps, "detach") else heatmaps, dtype=np.float64)
    if hm.ndim != 3 or hm.shape[0] != len(labels):
        raise ValueError(f"heatmaps must be (K, H, W) with K = len(labels) = {len(labels)}, got {hm.shape}")
    if scale not in ("each", "shared"):
        raise ValueError(f"scale must be 'each' or 'shared', got {scale!r}")
    k = hm.shape[0]
    nrows = int(np.ceil(k / ncols))
    width = 1.7 * (ncols + 1)
    fig = plt.figure(figsize=(width + (4.4 if similarity is not None else 0.0), 1.9 * nrows + 0.3),
                     layout="constrained")
    if similarity is not None:
        left, right = fig.subfigures(1, 2, width_ratios=[width, 4.4], wspace=0.02)
    else:
        left, right = fig, None
    axes = left.subplots(nrows, ncols + 1, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    _show_image(axes[0, 0], image, "image")
    axes[0, 0].axis("on")
    shared = _vmax(hm)
    for i in range(k):
        ax = axes[i // ncols, 1 + i % ncols]
        ax.axis("on")
        _show_heatmap(ax, hm[i], _vmax(hm[i]) if scale == "each" else shared, labels[i])
    if right is not None:
        sim = np.asarray(similarity, dtype=np.float64)
        ax = right.subplots()
        im = ax.imshow(sim, cmap="coolwarm", vmin=-1.0, vmax=1.0)
        short = [str(lab).split(" (")[0] for lab in labels]
        ax.set_xticks(range(k), short, rotation=90, fontsize=7)
        ax.set_yticks(range(k), short, fontsize=7)
        ax.set_title("cosine similarity of the heatmaps", fontsize=9)
        right.colorbar(im, ax=ax, shrink=0.8)
    return fig


def heatmap_comparison(image: Any, heatmaps: Mapping[str, Any], class_names: Sequence[str], *,
                       probabilities: Mapping[str, Sequence[float]] | None = None,
                       title: str | None = None) -> Figure:
    """Figures 4 and 5: the top-2 class heatmaps of one image for several networks, on one colour scale.

    Parameters
    ----------
    image : tensor or array
        ``(C, H, W)``.
    heatmaps : dict
        Row label (e.g. ``"baseline"``, ``"λ = 1.0"``) -> ``(2, H, W)`` heatmaps of the two classes.
    class_names : sequence of str
        The two classes, in the order of the heatmaps.
    probabilities : dict, optional
        Row label -> the two softmax probabilities, shown in the titles.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
        One row per network: the image, the heatmap of each class and their difference (what Eq. 7
        measures). All heatmaps share one symmetric ``bwr`` scale.
    """
    hms = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64)
           for k, v in heatmaps.items()}
    for k, v in hms.items():
        if v.ndim != 3 or v.shape[0] != 2:
            raise ValueError(f"heatmaps[{k!r}] must be (2, H, W), got {v.shape}")
    vmax = _vmax(*hms.values(), *(v[0] - v[1] for v in hms.values()))
    fig, axes = plt.subplots(len(hms), 4, figsize=(8.2, 2.2 * len(hms) + 0.4), squeeze=False,
                             layout="constrained")
    for row, (label, h) in zip(axes, hms.items()):
        _show_image(row[0], image)
        row[0].set_ylabel(label, fontsize=10)
        probs = probabilities.get(label) if probabilities else None
        for i in range(2):
            t = class_names[i] + (f" (p = {probs[i]:.2f})" if probs is not None else "")
            im = _show_heatmap(row[1 + i], h[i], vmax, t)
        _show_heatmap(row[3], h[0] - h[1], vmax, f"{class_names[0]} − {class_names[1]}")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------------------
# Training curves (Section 5.1)
# --------------------------------------------------------------------------------------------------
_METRIC_LABELS = {"train_loss": "training objective", "val_loss": "validation objective",
                  "val_accuracy": "validation accuracy", "penalty": "penalty S(W) (Eq. 6)",
                  "val_ce": "validation cross-entropy"}


def training_curves(runs: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
                    metrics: Sequence[str] = ("train_loss", "val_loss", "val_accuracy"), *,
                    log_y: Sequence[str] = ()) -> Figure:
    """Per-epoch training histories: one row per group (data set), one column per metric.

    Parameters
    ----------
    runs : dict
        Group (e.g. data set) -> line label (e.g. ``"baseline"``, ``"λ = 0.1"``) -> history dict with
        per-epoch lists (``train_loss``, ``val_loss``, ``val_accuracy``, ``penalty``).
    metrics : sequence of str
        History keys to draw, one column each.
    log_y : sequence of str
        Metrics drawn on a logarithmic axis.

    Returns
    -------
    matplotlib.figure.Figure
    """
    groups = list(runs)
    fig, axes = plt.subplots(len(groups), len(metrics), figsize=(3.4 * len(metrics), 2.5 * len(groups)),
                             squeeze=False)
    for r, group in enumerate(groups):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            for label, hist in runs[group].items():
                values = list(hist.get(metric) or [])
                if values:
                    ax.plot(range(1, len(values) + 1), values, marker="o", ms=3, label=label)
            if metric in log_y:
                ax.set_yscale("log")
            ax.set_title(f"{group}: {_METRIC_LABELS.get(metric, metric)}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[r, -1].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def against_penalty(runs: Mapping[str, Mapping[str, Mapping[str, Sequence[float]]]],
                    metric: str = "val_accuracy", *, reference: Mapping[str, float] | None = None) -> Figure:
    """A per-epoch metric against the penalty S(W) of Eq. 6 at the same epoch: one panel per group.

    The x axis is S(W) on a log scale, decreasing to the right, so every fine-tune runs left to right
    as it cuts the positive off-block weights. Fine-tunes that differ only in how *fast* they cut (e.g.
    their learning rate) lie on one curve when the metric depends on how much is cut, not on how fast.

    Parameters
    ----------
    runs : dict
        Group -> line label -> history dict with per-epoch lists ``penalty`` and ``metric``.
    metric : str, optional
        History key on the y axis.
    reference : dict, optional
        Group -> a y value drawn as a dashed horizontal line (e.g. the baseline's accuracy).

    Returns
    -------
    matplotlib.figure.Figure
    """
    groups = list(runs)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.0), squeeze=False)
    for ax, group in zip(axes[0], groups):
        for label, hist in runs[group].items():
            x, y = list(hist.get("penalty") or []), list(hist.get(metric) or [])
            keep = [(a, b) for a, b in zip(x, y) if a > 0]
            if keep:
                ax.plot([a for a, _ in keep], [b for _, b in keep], marker="o", ms=3, label=label)
        if reference and group in reference:
            ax.axhline(reference[group], color="black", ls="--", lw=0.8, label="baseline")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("penalty S(W) (Eq. 6), after each epoch", fontsize=8)
        ax.set_title(f"{group}: {_METRIC_LABELS.get(metric, metric)}", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------
# Block structure and dense weights (Figures 3 and 6)
# --------------------------------------------------------------------------------------------------
def _block_lines(ax: plt.Axes, out_f: int, in_f: int, n_blocks: int, colour: str = "black") -> None:
    """Thin lines between the diagonal blocks of an ``(out_f, in_f)`` matrix (the split of Eq. 6)."""
    for b in range(1, n_blocks):
        ax.axhline(int(np.ceil(b * out_f / n_blocks)) - 0.5, color=colour, lw=0.7)
        ax.axvline(int(np.ceil(b * in_f / n_blocks)) - 0.5, color=colour, lw=0.7)


def block_mask(masks: Mapping[str, Any], n_blocks: int | Sequence[int]) -> Figure:
    """Figure 3: where Eq. 6 regularizes (grey) and where it does not (white, the diagonal blocks).

    Parameters
    ----------
    masks : dict
        Panel title -> boolean ``(out, in)`` mask, True off the diagonal blocks
        (:func:`sepdtd.regularization.block_mask`).
    n_blocks : int or sequence of int
        Number of blocks (classes), for the block boundaries; one per panel or one for all.

    Returns
    -------
    matplotlib.figure.Figure
        Rows are the layer's output neurons, columns its inputs (the layout of ``nn.Linear.weight``).
    """
    blocks = [n_blocks] * len(masks) if isinstance(n_blocks, int) else list(n_blocks)
    if len(blocks) != len(masks):
        raise ValueError(f"n_blocks has {len(blocks)} entries for {len(masks)} masks")
    fig, axes = plt.subplots(1, len(masks), figsize=(4.0 * len(masks), 3.4), squeeze=False)
    for ax, (title, mask), nb in zip(axes[0], masks.items(), blocks):
        m = np.asarray(mask.cpu() if hasattr(mask, "cpu") else mask, dtype=bool)
        ax.imshow(np.where(m, 0.55, 1.0), cmap="gray", vmin=0, vmax=1, aspect="auto",
                  interpolation="nearest")
        _block_lines(ax, m.shape[0], m.shape[1], nb, colour="#888888")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"input neuron i ({m.shape[1]})", fontsize=8)
        ax.set_ylabel(f"output neuron j ({m.shape[0]})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def dense_weights(weights: Mapping[str, Any], n_blocks: int, *, shares: Mapping[str, float] | None = None,
                  expected: float | None = None, clip_percentile: float = 99.0) -> Figure:
    """Figure 6: dense weight matrices, positive red and negative blue (``bwr`` centred at 0).

    Parameters
    ----------
    weights : dict
        Panel title (e.g. ``"baseline"``) -> ``(out, in)`` weight matrix.
    n_blocks : int
        Number of diagonal blocks, drawn as thin lines.
    shares : dict, optional
        Panel title -> in-block share of the positive weight mass
        (:func:`sepdtd.regularization.inblock_share`), printed in the title.
    expected : float, optional
        The share a block-agnostic layer would have (:func:`sepdtd.regularization.expected_inblock_share`).
    clip_percentile : float
        The colour scale ends at this percentile of ``|w|`` over all panels (so that a few large
        weights do not wash out the rest); one scale for all panels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    ws = {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=np.float64)
          for k, v in weights.items()}
    vmax = float(np.percentile(np.abs(np.concatenate([w.ravel() for w in ws.values()])), clip_percentile))
    vmax = vmax if vmax > 0 else 1.0
    fig, axes = plt.subplots(1, len(ws), figsize=(4.8 * len(ws), 3.8), squeeze=False, layout="constrained")
    for ax, (title, w) in zip(axes[0], ws.items()):
        im = ax.imshow(w, cmap="bwr", vmin=-vmax, vmax=vmax, aspect="auto", interpolation="nearest")
        _block_lines(ax, w.shape[0], w.shape[1], n_blocks)
        label = title
        if shares is not None and title in shares:
            label += f"\nin-block share of positive weight: {shares[title]:.1%}"
            if expected is not None:
                label += f" (no structure: {expected:.1%})"
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(f"input neuron i ({w.shape[1]})", fontsize=8)
        ax.set_ylabel(f"output neuron j ({w.shape[0]})", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.9, label="weight")
    return fig


# --------------------------------------------------------------------------------------------------
# The reproducibility summary and the sign-aware study
# --------------------------------------------------------------------------------------------------
_SUMMARY_PANELS = (("accuracy", "accuracy − baseline", 0.0, -0.01),
                   ("abs_cosine", "|cos| − baseline", 0.0, None),
                   ("d", "d[sc-sum] − baseline", 0.0, None))


def claims_figure(rows: Sequence[Mapping[str, Any]], *, lam: float = 1.0) -> Figure:
    """The paired differences of the fine-tunes at ``lam`` to their own baselines, per data set.

    One panel per quantity (accuracy, |cos| of the top-1 and top-2 heatmaps, Eq. 7's d under the primary
    convention), one row per data set: the mean difference over seeds with its 95 % interval (a dot alone
    for one seed). The dashed line marks the accuracy claim's bound.

    Parameters
    ----------
    rows : sequence of dict
        :func:`sepdtd.report.rows`.
    lam : float, optional
        The λ shown.
    """
    from sepdtd.report import DATASET_LABELS

    picked = [r for r in rows if r["lam"] == lam and "paired" in r]
    fig, axes = plt.subplots(1, len(_SUMMARY_PANELS), sharey=True, squeeze=False,
                             figsize=(3.2 * len(_SUMMARY_PANELS), 0.6 + 0.55 * max(1, len(picked))))
    labels = [DATASET_LABELS.get(r["dataset"], r["dataset"]) for r in picked]
    for ax, (key, title, zero, bound) in zip(axes[0], _SUMMARY_PANELS):
        for y, r in enumerate(picked):
            iv = r["paired"][key]
            if iv["mean"] is None:
                ax.text(zero, y, "not measured", ha="center", va="center", fontsize=7, color="grey")
                continue
            if iv["lo"] is not None:
                ax.plot([iv["lo"], iv["hi"]], [y, y], color=BLUE, lw=2)
            ax.plot([iv["mean"]], [y], "o", color=BLUE, ms=5)
            ax.annotate(f"n = {iv['n']}", (iv["mean"], y), textcoords="offset points", xytext=(0, 6), ha="center",
                        fontsize=7, color="grey")
        ax.axvline(zero, color="black", lw=0.8)
        if bound is not None:
            ax.axvline(bound, color=ORANGE, lw=1, ls="--")
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0][0].set_yticks(range(len(picked)), labels)
    axes[0][0].set_ylim(-0.7, len(picked) - 0.3)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"Fine-tuned at λ = {lam:g} minus the same seed's baseline (mean, 95 % interval)", fontsize=9)
    fig.tight_layout()
    return fig


def lambda_sweep(rows: Sequence[Mapping[str, Any]]) -> Figure:
    """Accuracy, in-block share and |cos| against λ (:func:`sepdtd.mechanism.sweep_rows`), one line per
    data set with a sweep; λ = 0 (the baseline) is drawn at the left edge. Where the rows come from more
    than one profile, each label names its own."""
    from sepdtd.report import DATASET_LABELS

    fig, axes = plt.subplots(1, 3, figsize=(10, 3), squeeze=False)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows if r["lam"] > 0))
    mixed = len({r.get("profile") for r in rows if r["dataset"] in datasets}) > 1
    lams = sorted({r["lam"] for r in rows if r["lam"] > 0})
    left = min(lams) / 10 if lams else 1.0
    for ds in datasets:
        rs = sorted((r for r in rows if r["dataset"] == ds), key=lambda r: r["lam"])
        xs = [r["lam"] if r["lam"] > 0 else left for r in rs]
        label = DATASET_LABELS.get(ds, ds) + (f" ({rs[0].get('profile')})" if mixed else "")
        for ax, key in zip(axes[0], ("accuracy", "inblock", "abs_cosine")):
            ax.plot(xs, [r[key] for r in rs], "o-", label=label, ms=4)
    for ax, title in zip(axes[0], ("test accuracy", "in-block share of positive weight", "|cos| of top-1/top-2")):
        ax.set_xscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("λ (Eq. 6 per off-block weight; left: baseline)", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def similarity_vs_ground_truth(rows: Sequence[Mapping[str, Any]], datasets: Sequence[str]) -> Figure:
    """Chapter 10's scatter: per network and method, |cos| of the top-1 and top-2 heatmaps against the
    top-2 class's mass accuracy on the objects (rows of :func:`sepdtd.beyond.summary`).

    Rows without ``abs_cosine`` (results of older code) are left out; a panel with none says so.
    """
    from sepdtd import attribution
    from sepdtd.report import DATASET_LABELS

    methods = list(attribution.METHODS)
    colours = dict(zip(methods, plt.cm.tab10.colors))
    markers = {"lambda": "o", "separate": "s", "depth": "^"}
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.8), layout="constrained",
                             squeeze=False)
    for ax, name in zip(axes[0], datasets):
        drawn = 0
        for r in rows:
            x, y = (r.get("abs_cosine") or (None,))[0], r["mass_obj2"][0]
            if r["dataset"] == name and x is not None and y is not None:
                ax.scatter(x, y, color=colours.get(r["method"], "k"), marker=markers.get(r["family"], "o"),
                           s=28, alpha=0.85)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, "|cos| not measured", ha="center", va="center", transform=ax.transAxes)
        ax.axhline(0.5, color="grey", lw=0.6, ls=":")
        ax.set_title(DATASET_LABELS.get(name, name), fontsize=10)
        ax.set_xlabel("|cos| of the top-1 and top-2 heatmaps")
    axes[0, 0].set_ylabel("top-2 mass accuracy on the objects")
    handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=attribution.LABELS[m].split(" (")[0])
               for m, c in colours.items()]
    handles += [plt.Line2D([], [], color="k", marker=mk, ls="", label=f) for f, mk in markers.items()]
    fig.legend(handles=handles, loc="outside right", fontsize=8)
    return fig
