# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Beyond the paper: what causes diffusion?
#
# The paper names two suspects. Section 3 describes the mechanism, "highly activated neurons overshadow
# the neurons that activate for features not as dominant", and Section 4 locates it in the **dense
# layers**, which its block-wise regularization separates (and what the "intuitive approach" it sets
# aside — a dedicated copy of the dense layers per class — would separate completely). Section 6 adds
# the **rule**: "we suspect that another cause is only considering positive weights during the relevance
# propagation, as DTD does not take features speaking against a class into account". A third factor is
# known from the literature: $z^+$ explanations of deeper networks depend less and less on the upper
# layers, so on the class (Sixt, Granz and Landgraf 2020, "When explanations lie: why many modified BP
# attributions fail", ICML), which makes the **depth** of the convolutional trunk a suspect too. Two
# choices of DTD itself complete the list: the constraint **$b \le 0$** on the biases, and the **first
# layer's rule** ($z^B$, Eq. 4).
#
# This chapter varies one factor at a time on the networks of {doc}`06_tables` and measures diffusion
# twice: as the paper does (Eq. 7 on real test images, with the cosine similarity of the top-1 and
# top-2 heatmaps beside it, a scale-free measure that the book adds), and against the ground truth of
# {doc}`09_ground_truth` (does the top-2 class's heatmap lie on the top-2 object?).

# %% tags=["parameters"]
profile = "full"
seed = 0
device = "auto"
data_dir = None

# %% tags=["remove-cell"]
# Where the data is (data_dir), and no progress-bar noise in the rendered page.
from sepdtd import book

book.setup_notebook(data_dir)

# %%
import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import torch

from sepdtd import (attribution, beyond, data, dtd, experiments, findings, mechanism, metrics, models, plots, report,
                    twoobject, utils)

DATASETS = ("mnist", "fashion_mnist", "cifar10")
LABELS = report.DATASET_LABELS
METHODS = list(attribution.METHODS)
dev = utils.resolve_device(device)
# every seed of this profile that has been run, this build's included (see the provenance)
results = book.beyond_results(profile, seed, device, DATASETS)
CONVENTION = "max"  # scale-free d, comparable across methods and networks
rows = beyond.summary(results, convention=CONVENTION)
by = {(r["dataset"], r["model"], r["method"]): r for r in rows}
prov = book.provenance(results, profile=profile, seed=seed, device=device)
book.show_provenance(prov)
shown = {r["dataset"]: r["profile"] for r in results if r["seed"] == seed}  # the profile each data set comes from
seeds = sorted({r["seed"] for r in results})
conf = beyond.PROFILES[profile]
extra = [d for d in DATASETS if any(r["dataset"] == d and r["family"] != "lambda" for r in rows)]
print(f"seeds: {seeds}; extra networks trained for: {', '.join(LABELS[d] for d in extra) or 'none'}")
# the sign-aware study: ablations of the fine-tune and the λ sweep (sepdtd.mechanism)
mech = [book.unit_for(profile, name, seed, device, kind="mechanism") for name in extra]
ablations = mechanism.ablation_rows(mech)
book.show_markdown(book.opening(
    "Section 6 suspects DTD's positive-weight rule; Section 4 locates diffusion in the dense layers.",
    findings.causes(ablations), note=book.profile_note(profile, [r for r in results if r["seed"] == seed])))


def cell(pair, digits=2, pct=False):
    mean, sd = pair if isinstance(pair, tuple) else (pair, None)
    if mean is None:
        return "—"
    f = (lambda v: f"{100 * v:.0f}%") if pct else (lambda v: f"{v:.{digits}f}")
    return f(mean) + (f" ± {f(sd)}" if sd is not None else "")


# %% [markdown]
# ## The explanation methods
#
# All are computed by `sepdtd.attribution` with the interface of the paper's DTD engine (`sepdtd.dtd`):
# K classes per image in one shared forward pass. The first layer keeps the paper's $z^B$ rule (Eq. 4),
# so that each method changes only how relevance flows through the layers above it; gradient × input
# is the exception, the gradient at every layer, the first included:
#
# | method | upper-layer rule | negative weights | what it explains |
# | --- | --- | --- | --- |
# | DTD (the paper) | $z^+$ (Eq. 3) | ignored | $f_c$ |
# | LRP-ε (Bach et al. 2015) | $\frac{x_i w_{ij}}{z_j + \epsilon}$ | kept (signed) | $f_c$ |
# | LRP-α2β1 (Bach et al. 2015) | $2\frac{(x_i w_{ij})^+}{z_j^+} - \frac{(x_i w_{ij})^-}{z_j^-}$ | kept, as counter-evidence | $f_c$ |
# | gradient × input | $x \odot \partial f_c / \partial x$ | kept | $f_c$ |
# | CLRP (Gu et al. 2018) | $z^+$ | ignored | $\max(0, \hat R_c - \hat R_\text{others})$ |
# | SGLRP (Iwana et al. 2019) | $z^+$ | ignored | $\partial p_c / \partial f$ |
#
# The implementations are checked against zennit 0.5.1 (LRP-ε, LRP-α2β1, $z^+$/$z^B$) and autograd
# (gradient × input) to a relative $10^{-6}$ in float64, and the conserving rules against
# $\sum_i R_i = f_c$ (`tests/test_attribution.py`). CLRP and SGLRP are the contrastive answers to the
# paper's problem published since: they subtract what speaks for the other classes, but keep DTD's
# positive-weight propagation. They test a third variant of the rule hypothesis: is it the *rule*, or the
# fact that DTD explains $f_c$ alone?

# %% [markdown]
# ## Factor 1: the rule
#
# The baseline network and the network fine-tuned with λ = 1.0, explained by every method, on the test
# images that `sepdtd.beyond` draws with the seed (`n_eval` of the profile). $d$ is Eq. 7 with each heatmap
# divided by its largest $|R|$ (convention `max`: the methods' heatmaps have different scales, so raw $d$,
# Table 2's convention, would compare scales, not shapes), *cos* the cosine similarity of the top-1 and
# top-2 heatmaps of real test images (1: identical explanations; signed, so for DTD, whose heatmaps have the
# sign of their logit, two logits of opposite signs make it negative even for the same pattern: see
# {doc}`06_tables`, "What the cosine measures"); *mass* and *pointing* are the ground-truth metrics of
# {doc}`09_ground_truth` on the recognised composites, *on objects* the mass accuracy counted on the two
# objects' pixels only (a rule that gives relevance to the black background of an overlay is not penalised
# for it there).

# %%
def method_table(name, model):
    body = []
    for method in METHODS:
        r = by.get((name, model, method))
        if r is None:
            continue
        body.append([attribution.LABELS[method], cell(r["diffusion"]), cell(r["cosine"], 3), cell(r["mass1"]),
                     cell(r["mass2"]), cell(r["mass_obj2"]), cell(r["point1"], pct=True), cell(r["point2"], pct=True)])
    return book.markdown_table(["method", f"d [{CONVENTION}]", "cos", "mass top-1", "mass top-2",
                                "top-2 on objects", "pointing top-1", "pointing top-2"], body)


for name in DATASETS:
    for model, label in (("baseline", "baseline"), ("lam1.0", "λ = 1.0")):
        if (name, model, "epsilon") in by:
            book.show_markdown(f"**{LABELS[name]}, {label}** ({len(seeds)} seed(s))\n\n" + method_table(name, model))

# %% [markdown]
# What the methods do with one recognised composite per data set (baseline network; each heatmap divided
# by its largest $|R|$, so that shapes, not scales, are compared):

# %%
for name in DATASETS:
    net = experiments.load_model(shown[name], name, 0.0, seed=seed, device=dev)
    kept, _ = twoobject.select(twoobject.make(name, 400, seed=seed), net)
    if len(kept) == 0:
        print(f"{name}: no composite recognised at this profile")
        continue
    classes = data.load(name).classes
    top = twoobject.top2(net, kept.images[:1])
    x = data.to_float(kept.images[:1]).to(dev)
    hms = {attribution.LABELS[m].split(" (")[0]: metrics.normalize(
        attribution.heatmap(m, net, x, top.to(dev), low=0.0, high=1.0)[0].cpu(), "max") for m in METHODS}
    fig = plots.heatmap_comparison(kept.images[0], hms, [classes[c] for c in top[0]],
                                   title=f"{LABELS[name]}: {classes[kept.labels[0, 0]]} + "
                                         f"{classes[kept.labels[0, 1]]}, baseline network")
    plots.save_figure(fig, f"figure10_methods_{name}", prov)
    plt.show()

# %% [markdown]
# ## Factor 2: the dense layers
#
# Ways to separate the classes' dense layers, explained with DTD: the paper's soft separation
# (Eq. 6, λ = 1.0), and the hard one it sets aside in Section 4 — **separate dense layers per class**
# on the shared convolutional trunk (`models.build_separate`): each class has its own hidden layer and
# its output reads only that. The book's version splits Table 1's hidden layer among the classes
# (`width="split"`: 51-52 neurons per class for a 512-wide layer), so it has no more parameters than
# Table 1's network: the paper's worry that the intuitive approach would "highly increase the training
# cost" holds, in parameters, only for a full-width copy per class (`width="full"`, ten times the dense parameters; trained in the
# `full` profile). The extra networks are trained like the baseline (the profile's pre-training
# stage on the same training subset). Parameters count trainable weights (the output weights pinned at
# zero are not counted).

# %%
def dense_table(name):
    body = []
    models_ = ["baseline", "lam1.0"] + sorted({r["model"] for r in rows if r["dataset"] == name
                                                and r["family"] == "separate"})
    for model in models_:
        r = by.get((name, model, "dtd"))
        if r is None:
            continue
        g = by.get((name, model, "gradient_x_input"), {})
        label = {"baseline": "Table 1 (baseline)", "lam1.0": "Eq. 6, λ = 1.0"}.get(
            model, f"separate dense layers ({model.split('-', 1)[-1]} width)")
        train = cell(r["train_wall_s"], 0) + " s" if r["train_wall_s"][0] is not None else "—"
        body.append([label, f"{r['params']:,}", train, cell(r["accuracy"], 3), cell(r["diffusion"]),
                     cell(r["cosine"], 3), cell(r["mass2"]), cell(r["point2"], pct=True),
                     cell(g.get("cosine", (None, None)), 3), cell(g.get("mass2", (None, None)))])
    return book.markdown_table(["network", "parameters", "training", "accuracy", "DTD d", "DTD cos",
                                "DTD mass top-2", "DTD pointing top-2", "g×i cos", "g×i mass top-2"], body)


for name in DATASETS:
    note = "" if name in extra else " — no separate network at this profile (only the λ networks)"
    book.show_markdown(f"**{LABELS[name]}**{note}\n\n" + dense_table(name))

# %% [markdown]
# Training times are wall-clock seconds on the device of the provenance line: the baseline's is the
# pre-training of {doc}`06_tables`; λ = 1.0's is the fine-tuning from the baseline, where all λ of
# the unit are trained as one stack (`training.fit_stacked`), so it is the stack's time, shared by the
# four. Trainings that run at the same time share the device, and the extra networks did not run beside
# the same load as the baselines (in the committed full-profile run, more jobs shared the GPU with
# them), so these times compare as orders of magnitude, not as costs.
#
# ## Factor 3: depth
#
# Table 1's networks with one convolution fewer and with more 3×3 convolutions just below the dense
# layers (`models.build_depth`; Fashion-MNIST's "fewer" is a dense network on the pixels), trained like
# the baseline. Explained with DTD and, for comparison, LRP-ε.

# %%
def depth_table(name):
    body = []
    t = models.TABLE1_CONV[name]
    depth_rows = {r["n_conv"]: r["model"] for r in rows if r["dataset"] == name and r["family"] == "depth"}
    depth_rows[t] = "baseline"
    for n in sorted(depth_rows):
        r = by[(name, depth_rows[n], "dtd")]
        e = by.get((name, depth_rows[n], "epsilon"), {})
        body.append([f"{n}" + (" (Table 1)" if n == t else ""), f"{r['params']:,}", cell(r["accuracy"], 3),
                     cell(r["diffusion"]), cell(r["cosine"], 3), cell(r["mass2"]), cell(r["point2"], pct=True),
                     cell(e.get("cosine", (None, None)), 3), cell(e.get("mass2", (None, None)))])
    return book.markdown_table(["conv layers", "parameters", "accuracy", "DTD d", "DTD cos", "DTD mass top-2",
                                "DTD pointing top-2", "LRP-ε cos", "LRP-ε mass top-2"], body)


for name in extra:
    book.show_markdown(f"**{LABELS[name]}**\n\n" + depth_table(name))

# %% [markdown]
# ## Factor 4: the constraint $b \le 0$ on the output layer
#
# DTD's rules are derived for networks whose biases are $\le 0$ (Section 2.2), so `sepdtd` projects the
# biases onto $b \le 0$ after every training step. After fine-tuning most logits are $\le 0$; could the
# constraint on the output layer's bias hold them there? The fine-tune at λ = 1.0 is trained again with
# that one bias free (`sepdtd.mechanism`, ablation `abl-free-output-bias`; same baseline, data and
# stopping rule) and measured like the others: accuracy, $|\cos|$ of the top-1 and top-2 heatmaps, the
# shares of top-1 / top-2 logits $\le 0$, the share of positive biases, and how far the relevance is
# from summing to the logit (the rules leave the biases out, so only a positive bias loses relevance).

# %%
body = []
for res in mech:
    x = data.to_float(torch.as_tensor(data.load(res["dataset"]).x_test[:200])).to(dev)
    for tag, label in (("lam1.0", "b ≤ 0 (the paper's)"), ("abl-free-output-bias", "output bias free")):
        e = next((e for e in res["networks"] if e["tag"] == tag), None)
        if e is None:
            continue
        net = experiments.load_network(res["profile"], res["dataset"], tag, seed=seed, device=dev)
        effects = mechanism.bias_effects(net, x)
        p = e["paper"]
        body.append([LABELS[res["dataset"]], label, f"{p['accuracy']:.3f}", f"{p['abs_cosine']:.3f}",
                     " / ".join(f"{v:.0%}" for v in p["logit_nonpositive"]),
                     f"{effects['positive_biases']:.0%}", f"{effects['conservation_gap']:.1e}"])
if body:
    book.show_markdown(book.markdown_table(
        ["data set", "biases", "accuracy", "|cos|", "top-1 / top-2 logits ≤ 0", "positive biases",
         "median |ΣR − f| / |f|"], body))
else:
    book.show_markdown("*No network trained with a free output bias at this profile and seed.*")

# %% [markdown]
# ## Why the fine-tuned logits turn negative
#
# After fine-tuning most top-2 logits are $\le 0$, and DTD then returns a negated pattern. Two
# ablations ask what holds the logits there. Each fine-tunes the same baseline at λ = 1.0 with one change:
# the output layer's bias left free of $b \le 0$, or Eq. 6 applied to the output layer only. A third needs
# no network: each image's mean logit is subtracted before DTD (*centred*). The pointing game is the
# top-2 class's on the recognised composites of {doc}`09_ground_truth`, sign-corrected; *undefined*
# counts the composites where it has no value.

# %%
header, body = mechanism.ablation_table(ablations)
book.show_markdown(book.markdown_table(header, body) if body
                   else "*No ablation was run at this profile and seed.*")

# %% [markdown]
# ## Where λ bites: a sweep
#
# Eq. 6 sums over every off-block weight, so its size grows with the layer. The sweep divides it by the
# number of off-block weights and fine-tunes the baseline on a log grid of λ. Each point is one network:
# the test accuracy, the in-block share of the positive dense weights, and $|\cos|$ of the top-1 and
# top-2 DTD heatmaps on real test images.

# %%
sweep = mechanism.sweep_rows(mech)
if sweep:
    fig = plots.lambda_sweep([r for r in sweep if r["seed"] == seed])
    plots.save_figure(fig, "figure10_lambda_sweep", prov)
    plt.show()
else:
    book.show_markdown("*No sweep was run at this profile and seed.*")

# %% [markdown]
# ## Factor 5: the first layer's rule
#
# DTD maps the relevance onto the pixels with the $z^B$ rule (Eq. 4), derived for inputs in a box
# $[l, h]$. With $l = 0$, $h = 1$ its numerator is $x_i w_{ij} - w_{ij}^-$, so a black pixel ($x_i = 0$)
# still receives relevance through the negative weights: darkness there is evidence for the neuron. Pixel
# intensities are never negative, so the $z^+$ rule of the upper layers (Eq. 3) is a valid DTD rule at
# the first layer too (Montavon et al. 2017 derive it for any non-negative input); it gives relevance only
# to pixels that are not black. Does the diffusion arise in the first layer or above it? The baseline and
# the λ = 1.0 networks, explained with $z^+$ above the first layer and either rule at it, on the first
# `5 n_eval` test images (Eq. 7's $d$, convention `max`, and the cosine; more images than Factor 1's,
# so the baseline's DTD cosine differs a little from Factor 1's) and on the recognised composites of
# {doc}`09_ground_truth` (top-2 class).

# %%
def zplus_first(model, x, classes, *, low, high):
    """DTD with z+ (Eq. 3) at every weighted layer, the first included (inputs >= 0)."""
    return attribution.heatmap(attribution.lrp, model, x, classes, low=low, high=high, rule="zplus", first="rule")


FIRST_RULES = {"$z^B$ (Eq. 4, the paper's)": dtd.heatmap, "$z^+$ (Eq. 3)": zplus_first}


def top2_ground_truth(net, fn, tset):
    """Top-2 class's mass accuracy (all pixels, objects only) and pointing game on recognised composites."""
    kept, _ = twoobject.select(tset, net)
    kept = kept.subset(torch.arange(min(len(kept), conf.max_scored)))
    scores = []
    for start in range(0, len(kept), conf.batch_size):
        part = kept.subset(torch.arange(start, min(start + conf.batch_size, len(kept))))
        cls = twoobject.top2(net, part.images)
        with torch.no_grad():
            h = fn(net, data.to_float(part.images).to(dev), cls.to(dev), low=0.0, high=1.0)[:, 1].double().cpu()
        own, other = (m[:, 1] for m in part.regions(cls))
        scores.append(torch.stack([metrics.relevance_mass_accuracy(h, own, other),
                                   metrics.relevance_mass_accuracy(h, own, other, objects_only=True),
                                   metrics.pointing_game(h, own, other)], 1))
    s = torch.cat(scores) if scores else torch.full((0, 3), float("nan"))
    return [float(v[~v.isnan()].mean()) if (~v.isnan()).any() else None for v in s.T]


first_rows = {}
for name in DATASETS:
    test_images = data.load(name).x_test
    x_test = torch.as_tensor(test_images[:min(5 * conf.n_eval, len(test_images))])
    tset = twoobject.make(name, conf.n_pairs, seed=seed, threshold=conf.threshold)
    for lam in (0.0, 1.0):
        net = experiments.load_model(shown[name], name, lam, seed=seed, device=dev)
        for rule, fn in FIRST_RULES.items():
            d = metrics.diffusion_variants(net, x_test, low=0.0, high=1.0, device=dev, heatmap_fn=fn,
                                           batch_size=conf.batch_size, conventions=(CONVENTION,))
            first_rows[name, lam, rule] = (d[CONVENTION], d["cosine"], *top2_ground_truth(net, fn, tset))


book.show_markdown(book.markdown_table(
    ["data set", "network", "first-layer rule", f"d [{CONVENTION}]", "cos", "mass top-2", "top-2 on objects",
     "pointing top-2"],
    [[LABELS[name], "Baseline" if lam == 0 else f"λ = {lam:.1f}", rule]
     + [report.or_dash(x, spec) for x, spec in zip(v, (".2f", ".3f", ".2f", ".2f", ".0%"))]
     for (name, lam, rule), v in first_rows.items()]))
zb, zp = FIRST_RULES


def first_delta(name, lam, k, a=zb, b=zp):
    """Column k of the table, rule b minus rule a (None where either is missing)."""
    u, v = first_rows[name, lam, a][k], first_rows[name, lam, b][k]
    return None if u is None or v is None else v - u


rule_dcos = {n: first_delta(n, 0.0, 1) for n in DATASETS}
lam_dcos = {(n, r): first_rows[n, 1.0, r][1] - first_rows[n, 0.0, r][1] for n in DATASETS for r in FIRST_RULES}
first_layer_small = all(abs(rule_dcos[n]) < abs(lam_dcos[n, zb]) for n in DATASETS)
book.show_markdown(
    f"Replacing $z^B$ by $z^+$ at the first layer changes the baseline's top-2 cosine by at most "
    f"{max(abs(v) for v in rule_dcos.values()):.4f} on any data set; the fine-tuning with λ = 1.0 changes it by "
    + ", ".join(f"{lam_dcos[n, zb]:+.3f} ({LABELS[n]})" for n in DATASETS) + " under $z^B$ and by "
    + ", ".join(f"{lam_dcos[n, zp]:+.3f}" for n in DATASETS) + " under $z^+$. "
    + ("The first layer's rule moves the cosine less than the fine-tuning does on every data set: the similarity "
       "of the two explanations is made above the first layer. "
       if first_layer_small else
       "On " + ", ".join(LABELS[n] for n in DATASETS if abs(rule_dcos[n]) >= abs(lam_dcos[n, zb]))
       + " the first layer's rule moves the cosine at least as much as the fine-tuning does. ")
    + "What the rule changes is where the relevance lies: $z^+$ gives black pixels none, which moves the baseline's "
      "top-2 mass on all pixels by " + ", ".join(report.or_dash(first_delta(n, 0.0, 2), "+.2f") for n in DATASETS)
    + " and on the objects' pixels by " + ", ".join(report.or_dash(first_delta(n, 0.0, 3), "+.2f") for n in DATASETS)
    + f" ({', '.join(LABELS[n] for n in DATASETS)}).")

# %% [markdown]
# ## Which factor accounts for how much?
#
# Every change against the paper's setting (baseline network, DTD), as the difference variant − reference:
# of the cosine similarity of the top-2 heatmaps (negative: less alike by the book's measure; a DTD
# cosine also falls when the second heatmap turns negative because its logit did, see
# {doc}`06_tables`, "What the cosine measures": DTD heatmaps carry one sign each, so a DTD cosine below
# zero can only come from such a sign), of Eq. 7's $d$ (positive: less diffusion by the paper's measure), and of the top-2 class's mass accuracy, on-object mass accuracy
# and pointing game (positive: its explanation moved onto its own object). The last column is the share
# of the baseline's *top-2 error on the objects* — the part of the top-2 class's relevance on the two
# objects that lies on the wrong one, $1 - \text{mass}_\text{objects}$ — that the change removes.

# %%
fac = beyond.factors(rows, lam=1.0)


def error_removed(name, f, by=by):
    """Share of the baseline's top-2 error on the objects (1 - mass on objects) that a change removes."""
    ref = by[(name, "baseline", "dtd")]["mass_obj2"][0]
    return None if ref is None or f["mass_obj2"] is None or ref >= 1 else (f["mass_obj2"] - ref) / (1 - ref)


def removed(name, f, by=by):
    return report.or_dash(error_removed(name, f, by), "+.0%")


def factor_table(name, fac=fac, by=by):
    body = [[f["factor"], f["change"], cell(f["d_cosine"], 3), cell(f["d_diffusion"]), cell(f["d_mass2"]),
             cell(f["d_mass_obj2"]), cell(f["d_point2"]), removed(name, f, by)]
            for f in fac if f["dataset"] == name]
    return f"**{LABELS[name]}**\n\n" + book.markdown_table(
        ["factor", "change", "Δ cos", "Δ d", "Δ mass top-2", "Δ on objects", "Δ pointing top-2",
         "top-2 error removed"], body)


for name in DATASETS:
    book.show_markdown(factor_table(name))

# %% [markdown]
# Eq. 7 and the ground truth do not always agree. Each point below is one network explained by one
# method: the cosine similarity of its top-1 and top-2 heatmaps (the paper's notion of diffusion, left =
# less) against the top-2 class's mass accuracy on the objects (right answer, up = better).

# %%
fig, axes = plt.subplots(1, len(DATASETS), figsize=(4.2 * len(DATASETS), 3.8), layout="constrained", squeeze=False)
colours = dict(zip(METHODS, plt.cm.tab10.colors))
markers = {"lambda": "o", "separate": "s", "depth": "^"}
for ax, name in zip(axes[0], DATASETS):
    for r in rows:
        if r["dataset"] == name and r["cosine"][0] is not None and r["mass_obj2"][0] is not None:
            ax.scatter(r["cosine"][0], r["mass_obj2"][0], color=colours[r["method"]], marker=markers[r["family"]],
                       s=28, alpha=0.85)
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_title(LABELS[name], fontsize=10)
    ax.set_xlabel("cosine of the top-1 and top-2 heatmaps")
axes[0, 0].set_ylabel("top-2 mass accuracy on the objects")
handles = [plt.Line2D([], [], color=c, marker="o", ls="", label=attribution.LABELS[m].split(" (")[0])
           for m, c in colours.items()]
handles += [plt.Line2D([], [], color="k", marker=mk, ls="", label=f) for f, mk in markers.items()]
fig.legend(handles=handles, loc="outside right", fontsize=8)
plots.save_figure(fig, "figure10_cosine_vs_ground_truth", prov)
plt.show()

# %% [markdown]
# ### At the full profile (committed results)
#
# The same comparison from the committed full-profile run (`results/full/beyond/`: the full-profile
# networks of {doc}`06_tables`, the extra networks trained to the profile's early-stopping rule on the
# GPU runner, every method on every network). Data sets and seeds missing here were not run at the full
# profile; the line below names those that were.

# %%
full_results, full_rows = book.committed_beyond(profile, seed, CONVENTION)
FULL_RUN = book.committed_seeds(full_results)
if full_rows:
    print(f"committed: {FULL_RUN}")
    full_by = {(r["dataset"], r["model"], r["method"]): r for r in full_rows}
    full_fac = beyond.factors(full_rows, lam=1.0)
    for name in DATASETS:
        if any(f["dataset"] == name for f in full_fac):
            book.show_markdown(factor_table(name, full_fac, full_by))
    negative = [f"{LABELS[r['dataset']]} λ = {r['lam']:.1f}" for r in full_rows
                if r["method"] == "dtd" and r["family"] == "lambda" and r["lam"] > 0 and r["mass2"][0] is None]
    if negative:
        book.show_markdown(
            "A dash in the rows of Eq. 6 means that the regularized network's top-2 DTD heatmap holds no positive "
            "relevance (outside the pixels both objects share) on any scored composite (" + ", ".join(negative)
            + "). DTD relevance keeps the sign of the logit it starts from, so after fine-tuning the second "
            "class's logit is ≤ 0 on those images, and its explanation cannot point at the second object there, "
            "although Eq. 7 and the cosine, measured on real test images, call it more different from the first.")

# %% [markdown]
# ## Conclusions
#
# The statements below are computed from the tables above: first from this build's profile and seeds,
# then, where they are committed, from the full-profile results, which are the ones to quote, with their
# seeds (with one seed there is no spread over training runs). (The first layer's rule, Factor 5, is
# measured in this build only.)

# %%
def best(items, key, sign=1):
    items = [f for f in items if f[key] is not None]
    return max(items, key=lambda f: sign * f[key]) if items else None


def span(values, fmt):
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    lo, hi = min(values), max(values)
    return fmt(lo) if np.isclose(lo, hi) else f"{fmt(lo)} to {fmt(hi)}"


def range_table(fac, by):
    body = []
    for factor in ("rule", "dense", "depth"):
        line = [factor]
        for name in DATASETS:
            fs = [f for f in fac if f["dataset"] == name and f["factor"] == factor]
            line.append("—" if not fs else
                        f"Δcos {span([f['d_cosine'] for f in fs], lambda v: f'{v:+.2f}')}; "
                        f"error removed {span([error_removed(name, f, by) for f in fs], lambda v: f'{v:+.0%}')}")
        body.append(line)
    return ("Range over the changes of each factor (Δcos: change of the top-2 cosine; error removed: share of "
            "the baseline's top-2 error on the objects that the change removes, over the composites whose top-2 "
            "heatmap is not blank — for the dense-layer changes a minority, see below — and undefined where it "
            "is blank on all):\n\n"
            + book.markdown_table(["factor"] + [LABELS[d] for d in DATASETS], body))


def factor_keys(name, fac, by):
    """``(network, method)`` of each change of ``beyond.factors`` for one data set, in its order."""
    rows_ = list(by.values())
    keys = [("rule", ("baseline", m)) for m in METHODS if m != "dtd" and (name, "baseline", m) in by]
    keys += [("dense", ("lam1.0", "dtd"))] if (name, "lam1.0", "dtd") in by else []
    keys += [("dense", (r["model"], "dtd")) for r in rows_
             if r["dataset"] == name and r["method"] == "dtd" and r["family"] == "separate"]
    keys += [("depth", (r["model"], "dtd")) for r in rows_
             if r["dataset"] == name and r["method"] == "dtd" and r["family"] == "depth"]
    fs = [f for f in fac if f["dataset"] == name]
    assert [k for k, _ in keys] == [f["factor"] for f in fs], "beyond.factors changed its order"
    for f, (_, key) in zip(fs, keys):
        r = by[(name, *key)]
        assert (r["mass2"][0], r["point2"][0]) == (f["mass2"], f["point2"]), f"{f['change']} is not {key}"
    return {id(f): key for f, (_, key) in zip(fs, keys)}


def factor_lines(fac, by, blanks):
    """Per data set and factor: the change that lowers the cosine most, and the one that helps the ground truth most.

    ``blanks``: :func:`sepdtd.book.blank_shares` of the same results, to say on how many composites a gain rests.
    """
    lines = []
    for name in DATASETS:
        fs = [f for f in fac if f["dataset"] == name]
        ref = by.get((name, "baseline", "dtd"))
        if ref is None:
            continue
        keys = factor_keys(name, fac, by)
        out = [f"**{LABELS[name]}** — paper's setting: cos {ref['cosine'][0]:.3f}, top-2 mass "
               f"{report.or_dash(ref['mass2'][0], '.2f')} (on objects {report.or_dash(ref['mass_obj2'][0], '.2f')}), "
               f"top-2 pointing {report.or_dash(ref['point2'][0], '.0%')}."]
        for factor in ("rule", "dense", "depth"):
            group = [f for f in fs if f["factor"] == factor]
            if not group:
                out.append(f"- *{factor}*: not measured at this profile.")
                continue
            c, m = best(group, "d_cosine", -1), best(group, "d_mass_obj2")
            said = []
            if c is not None:
                said.append(f"the largest drop of the cosine is {c['change']} ({c['d_cosine']:+.3f})"
                            if c["d_cosine"] < 0 else
                            f"no change lowers the cosine (the smallest rise: {c['change']}, {c['d_cosine']:+.3f})")
            if m is not None:
                fell = m["d_point2"] is not None and m["d_point2"] < -0.05
                b2 = blanks.get((name, *keys[id(m)]), (None, None))[1]
                few = (f"; only on the {1 - b2:.0%} of the composites whose top-2 heatmap is not blank"
                       if b2 is not None and b2 > 0.5 else "")
                said.append(f"the largest gain on the ground truth is {m['change']} (top-2 on objects "
                            f"{m['d_mass_obj2']:+.3f}, {removed(name, m, by)} of the top-2 error{few}"
                            + (f"; but its top-2 pointing game falls by {-m['d_point2']:.2f}" if fell else "")
                            + ")"
                            if m["d_mass_obj2"] > 0 else
                            f"no change moves the top-2 explanation onto its object (the smallest loss: {m['change']}, "
                            f"{m['d_mass_obj2']:+.3f})")
            out.append(f"- *{factor}*: " + ("; ".join(said) or "no values") + ".")
        lines.append("\n".join(out))
    return "\n\n".join(lines)


def mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def diff(a, b):
    return None if a is None or b is None else a - b


def hypotheses(rows, by, blanks, first_layer=None):
    """The paper's hypotheses, and the contrastive and depth findings, as computed sentences.

    ``blanks``: :func:`sepdtd.book.blank_shares` of the same results. ``first_layer``:
    ``(rule_dcos, first_layer_small)`` of Factor 5, where this build measured it.
    """
    names = [n for n in DATASETS if (n, "baseline", "dtd") in by]
    ref = {n: by[(n, "baseline", "dtd")] for n in names}
    text = []
    # the rule: methods that keep negative weights, on the baseline
    rule = {}
    for n in names:
        signed = [by[(n, "baseline", m)] for m in ("epsilon", "alphabeta", "gradient_x_input")
                  if (n, "baseline", m) in by]
        if signed:
            rule[n] = (mean_or_none([r["cosine"][0] - ref[n]["cosine"][0] for r in signed]),
                       mean_or_none([diff(r["mass_obj2"][0], ref[n]["mass_obj2"][0]) for r in signed]))
    if rule:
        gt = [v[1] for v in rule.values() if v[1] is not None]
        text.append("**Section 6's rule hypothesis** (positive weights only): replacing $z^+$ above the first layer "
                    "(gradient × input: at every layer) by a rule that keeps negative weights (LRP-ε, LRP-α2β1, "
                    "gradient × input; mean of the three) "
                    "changes the top-2 cosine by " + ", ".join(f"{v[0]:+.3f} ({LABELS[n]})" for n, v in rule.items())
                    + " and the top-2 mass on the objects by "
                    + ", ".join(report.or_dash(v[1], "+.3f") for v in rule.values()) + ". "
                    + ("It holds: keeping negative weights makes the two explanations far less alike and moves the "
                       "second one towards its object."
                       if all(v[0] < -0.1 for v in rule.values()) and gt and all(g > 0 for g in gt) else
                       ("It holds for the similarity of the explanations (the cosine falls by more than 0.05 "
                        "everywhere)" if all(v[0] < -0.05 for v in rule.values()) else
                        "It holds only weakly for the similarity of the explanations (the cosine falls everywhere, "
                        "but by 0.05 or less somewhere)")
                       + ("" if gt and all(g > 0 for g in gt) else ", but not everywhere for their correctness" if gt
                          else "; the ground truth was not measured") + "."
                       if all(v[0] < 0 for v in rule.values()) else
                       "It does not hold everywhere even for the similarity of the explanations."))
    # the dense layers: Eq. 6 (soft) and separate dense layers (hard), DTD
    parts, fam = [], {"The fine-tuning with Eq. 6 (λ = 1.0)": [], "Separate dense layers": []}
    for n in names:
        models_ = ["lam1.0"] + [r["model"] for r in rows if r["dataset"] == n and r["family"] == "separate"
                                and r["method"] == "dtd"]
        for model in models_:
            r = by.get((n, model, "dtd"))
            if r is None:
                continue
            dc, dm = r["cosine"][0] - ref[n]["cosine"][0], diff(r["mass_obj2"][0], ref[n]["mass_obj2"][0])
            dp = diff(r["point2"][0], ref[n]["point2"][0])
            b2 = blanks.get((n, model, "dtd"), (None, None))[1]
            fam["The fine-tuning with Eq. 6 (λ = 1.0)" if model == "lam1.0" else "Separate dense layers"
                ].append((dc, dm, b2))
            parts.append(f"{LABELS[n]} {'λ = 1.0' if model == 'lam1.0' else model}: cos {dc:+.3f}, on objects "
                         f"{report.or_dash(dm, '+.3f')}, top-2 pointing {report.or_dash(dp, '+.2f')}, top-2 heatmap "
                         f"blank on {report.or_dash(b2, '.0%')} of the composites")
    verdicts = []
    for label, vals in fam.items():
        if not vals:
            continue
        differ = sum(dc < -0.05 for dc, _, _ in vals)
        mostly_blank = [b for _, _, b in vals if b is not None and b > 0.5]
        seen = [dm for _, dm, b in vals if dm is not None and not (b is not None and b > 0.5)]
        right, wrong = sum(dm > 0.02 for dm in seen), sum(dm < -0.02 for dm in seen)
        said = (f"{label}: the cosine falls by more than 0.05 (less alike by the book's measure, or a second heatmap "
                f"turned negative) in {differ} of {len(vals)} cases")
        if mostly_blank:
            said += (f"; in {len(mostly_blank)} of them the top-2 heatmap holds no positive relevance on most scored "
                     f"composites ({', '.join(f'{b:.0%}' for b in mostly_blank)}; DTD relevance keeps the sign of the "
                     "logit it starts from), so it rarely points at the second object, and its mass accuracy, where "
                     "defined at all, covers only the other composites")
        if seen:
            said += (f"; the top-2 explanation moves onto its object (by more than 0.02) in {right} of the "
                     f"{len(seen)} " + ("others" if mostly_blank else "cases") + (f", off it in {wrong}" if wrong else ""))
        verdicts.append(said + (": the hypothesis holds for them on both counts." if differ == right == len(vals)
                                else "."))
    if parts:
        text.append("**Sections 3-4's dense-layer hypothesis** (overshadowing in the dense layers): against the "
                    "baseline, " + "; ".join(parts) + ". " + " ".join(verdicts))
    # depth
    depth = {}
    for n in names:
        t = models.TABLE1_CONV[n]
        d_rows = [r for r in rows if r["dataset"] == n and r["family"] == "depth" and r["method"] == "dtd"]
        if d_rows:
            depth[n] = ([r["cosine"][0] - ref[n]["cosine"][0] for r in d_rows if r["n_conv"] < t],
                        [r["cosine"][0] - ref[n]["cosine"][0] for r in d_rows if r["n_conv"] > t])
    if depth:
        deeper = [np.mean(v[1]) for v in depth.values() if v[1]]
        shallower = [np.mean(v[0]) for v in depth.values() if v[0]]
        fewer = ", ".join(f"{np.mean(v[0]):+.3f} ({LABELS[n]})" for n, v in depth.items() if v[0]) or "— (none run)"
        more = ", ".join(f"{np.mean(v[1]):+.3f} ({LABELS[n]})" for n, v in depth.items() if v[1]) or "— (none run)"
        TOL = 0.01  # no standard error of the cosine is stored: smaller changes count as none

        def direction(values, expected):
            """How a set of cosine changes compares with the sign z+ would lead us to expect."""
            if not values:
                return "not run"
            if all(expected * v > TOL for v in values):
                return "as expected of $z^+$"
            if all(-expected * v > TOL for v in values):
                return "the opposite of what $z^+$ would lead us to expect"
            return "not consistently in either direction"

        text.append(f"**Depth**: fewer convolutions change the DTD cosine by {fewer}; more convolutions by {more} "
                    f"(means over the depths run). Deeper trunks: {direction(deeper, +1)}; shallower trunks: "
                    f"{direction(shallower, -1)} (changes of the cosine below {TOL} count as none: the cosines "
                    "come without a standard error).")
    # contrastive methods: f_c explained alone?
    contrast = {n: [g for g in (diff(by[(n, "baseline", m)]["mass_obj2"][0], ref[n]["mass_obj2"][0])
                                for m in ("clrp", "sglrp") if (n, "baseline", m) in by) if g is not None]
                for n in names}
    gain = [np.mean(v) for v in contrast.values() if v]
    if gain:
        text.append("**Explaining $f_c$ alone**: the contrastive methods keep DTD's positive-weight propagation; "
                    "they change the top-2 mass on the objects by "
                    + ", ".join(f"{np.mean(v):+.3f} ({LABELS[n]})" for n, v in contrast.items() if v)
                    + " (mean of CLRP and SGLRP). "
                    + ("So part of what Section 6 attributes to the positive weights is that DTD explains each logit "
                       "on its own, without subtracting what the competing class shares with it."
                       if all(g > 0.02 for g in gain) else
                       "Subtracting the competing classes does not consistently help."))
    if first_layer is not None:
        rule_dcos, small = first_layer
        text.append("**The first layer's rule** ($z^B$ against $z^+$, Factor 5): the baseline's top-2 cosine changes "
                    f"by at most {max(abs(v) for v in rule_dcos.values()):.4f}. "
                    + ("The diffusion does not come from the first layer: its rule changes where the relevance lies "
                       "($z^B$ also on dark pixels), not how alike the two classes' explanations are." if small else
                       "At this profile the first layer's rule matters as much as the fine-tuning on some data sets."))
    return "\n\n".join(text)


book.show_markdown(f"**This build (profile `{profile}`)**\n\n" + range_table(fac, by) + "\n\n" + factor_lines(fac, by, book.blank_shares(results))
                   + "\n\n" + hypotheses(rows, by, book.blank_shares(results),
                                           first_layer=(rule_dcos, first_layer_small)))
if full_rows:
    book.show_markdown(f"**The committed full-profile results** ({FULL_RUN})\n\n" + range_table(full_fac, full_by) + "\n\n"
                       + factor_lines(full_fac, full_by, book.blank_shares(full_results)) + "\n\n"
                       + hypotheses(full_rows, full_by, book.blank_shares(full_results)))

# %% [markdown]
# Taken together with {doc}`09_ground_truth`: Eq. 7 and the cosine measure whether two explanations
# differ, and a factor can make them differ without making the second explanation any more right. In the
# committed full-profile results the fine-tuning with λ = 1.0 raises $d$ and lowers the cosine while its
# second explanation holds no positive relevance on the composites at all; separate dense layers lower
# the (signed) cosine further — below zero, which for DTD needs heatmaps of opposite signs, so part of
# that fall is the second logit turning ≤ 0 (how much, the stored cosines cannot tell) — but their
# second explanation too is blank on most composites, and their top-2 pointing game falls (where it is
# not blank, a minority of the composites, it lies more on its object). SGLRP raises Eq. 7 by
# construction: its top-2 heatmap is almost the negative of the top-1 heatmap whenever two classes share
# the probability (its second explanation does also move onto its object, see the factor tables). The
# ground-truth columns are what separate "different" from "separable".
