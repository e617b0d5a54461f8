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
import matplotlib.pyplot as plt
import torch

from sepdtd import (attribution, beyond, causes, data, experiments, findings, mechanism, metrics, models, plots,
                    report, twoobject, utils)

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
extra = [d for d in DATASETS if any(r["dataset"] == d and r["family"] != "lambda" for r in rows)]
print(f"seeds: {seeds}; extra networks trained for: {', '.join(LABELS[d] for d in extra) or 'none'}")
# the sign-aware study: ablations of the fine-tune and the λ sweep (sepdtd.mechanism)
kept_mech = [d for d in DATASETS if profile == "full" and mechanism.unit("full", d, seed) is not None]
mech = [book.unit_for(profile, name, seed, device, kind="mechanism") for name in DATASETS
        if name in extra or name in kept_mech]
ablations = mechanism.ablation_rows(mech)
book.show_markdown(book.opening(
    "Section 6 suspects DTD's positive-weight rule; Section 4 locates diffusion in the dense layers.",
    findings.causes(ablations), note=book.profile_note(profile, [r for r in results if r["seed"] == seed])))


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
# Table 2's convention, would compare scales, not shapes). *|cos|* is the absolute cosine similarity of
# the top-1 and top-2 heatmaps of real test images (1: the same pattern). It is the chapter's measure of
# how alike two explanations are, because a heatmap that starts at a logit carries that logit's sign. The
# signed *cos* is shown beside it: two logits of opposite signs make it negative even for the same
# pattern (see {doc}`06_tables`, "What the cosine measures"). *mass* and *pointing* are the ground-truth metrics of
# {doc}`09_ground_truth` on the recognised composites, *on objects* the mass accuracy counted on the two
# objects' pixels only (a rule that gives relevance to the black background of an overlay is not penalised
# for it there).

# %%
for name in DATASETS:
    for model, label in (("baseline", "baseline"), ("lam1.0", "λ = 1.0")):
        if (name, model, "epsilon") in by:
            book.show_markdown(f"**{LABELS[name]}, {label}** ({len(seeds)} seed(s))\n\n"
                               + book.markdown_table(*causes.method_table(by, name, model, CONVENTION)))

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
not_kept = {r["dataset"]: r["missing"] for r in results if r["seed"] == seed and r.get("missing")}
for name in DATASETS:
    note = ("" if name in extra else f" — not kept yet: {', '.join(not_kept[name])}" if name in not_kept
            else " — no separate network at this profile (only the λ networks)")
    book.show_markdown(f"**{LABELS[name]}**{note}\n\n" + book.markdown_table(*causes.dense_table(rows, by, name)))

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
for name in extra:
    book.show_markdown(f"**{LABELS[name]}**\n\n"
                       + book.markdown_table(*causes.depth_table(rows, by, name, models.TABLE1_CONV[name])))

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
header, body = mechanism.parts_table(ablations)
if body:
    book.show_markdown("The output layer's contributions to the top-2 logit, means over the test images. "
                       "Eq. 6 penalises only the positive off-block weights; the negative ones stay.\n\n"
                       + book.markdown_table(header, body))
header, body = mechanism.ablation_table(ablations)
book.show_markdown(book.markdown_table(header, body) if body
                   else "*No ablation was run at this profile and seed.*")
missing = [f"{LABELS[res['dataset']]}: {', '.join(res['missing'])}" for res in mech if res.get("missing")]
if missing:
    book.show_markdown("Networks of the study not kept yet: " + "; ".join(missing) + ".")

# %% [markdown]
# ## Where λ bites: a sweep
#
# Eq. 6 sums over every off-block weight, so its size grows with the layer. The sweep divides it by the
# number of off-block weights and fine-tunes the baseline on a log grid of λ. Each point is one network:
# the test accuracy, the in-block share of the positive dense weights, and $|\cos|$ of the top-1 and
# top-2 DTD heatmaps on real test images.

# %%
sweep = mechanism.sweep_rows(mech)
if any(r["lam"] > 0 for r in sweep):
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
# the λ = 1.0 networks, explained with $z^+$ above the first layer and either rule at it (the methods
# `dtd` and `zplus` of Factor 1's measurement): Eq. 7's $d$, convention `max`, |cos| and the signed
# cosine on real test images, and the top-2 class's ground truth on the recognised composites of
# {doc}`09_ground_truth` (sign-corrected heatmaps).

# %%
first = causes.first_layer_rows(by, DATASETS)
first_text, rule_change, first_layer_small = causes.first_layer_summary(first, DATASETS)
book.show_markdown(book.markdown_table(*causes.first_layer_table(first, CONVENTION)) + "\n\n"
                   + book.markdown_table(*causes.change_table(first, DATASETS)) + "\n\n" + first_text)

# %% [markdown]
# ## Which factor accounts for how much?
#
# Every change against the paper's setting (baseline network, DTD), as the difference variant − reference:
# of |cos| of the top-2 heatmaps (negative: less alike), of the signed cosine (sensitivity only: it also
# falls when a logit turns negative), of Eq. 7's $d$ (positive: less diffusion by the paper's measure), and
# of the top-2 class's mass accuracy, on-object mass accuracy and pointing game (positive: its explanation
# moved onto its own object). The last column is the share of the baseline's *top-2 error on the objects*
# that the change removes. That error is the part of the top-2 class's relevance on the two objects that
# lies on the wrong one, $1 - \text{mass}_\text{objects}$.

# %%
fac = beyond.factors(rows, lam=1.0)
for name in DATASETS:
    if any(f["dataset"] == name for f in fac):
        book.show_markdown(f"**{LABELS[name]}**\n\n" + book.markdown_table(*causes.factor_table(fac, by, name)))

# %% [markdown]
# Eq. 7 and the ground truth do not always agree. Each point below is one network explained by one
# method: |cos| of its top-1 and top-2 heatmaps (left: less alike) against the top-2 class's mass
# accuracy on the objects (up: more right).

# %%
fig = plots.similarity_vs_ground_truth(rows, DATASETS)
plots.save_figure(fig, "figure10_cosine_vs_ground_truth", prov)
plt.show()

# %% [markdown]
# ### At the full profile (committed results)
#
# The same comparison from the committed full-profile results: the units whose networks are kept
# (`results/full/`), measured by the current code. Data sets and seeds missing here keep no network yet;
# the line below names those that do. A unit whose extra networks are not kept shows the rule factor only.

# %%
full_results, full_rows = book.committed_beyond(profile, seed, CONVENTION)
FULL_RUN = book.committed_seeds(full_results)
if full_rows:
    print(f"committed: {FULL_RUN}")
    full_by = {(r["dataset"], r["model"], r["method"]): r for r in full_rows}
    full_fac = beyond.factors(full_rows, lam=1.0)
    for name in DATASETS:
        if any(f["dataset"] == name for f in full_fac):
            book.show_markdown(f"**{LABELS[name]}**\n\n"
                               + book.markdown_table(*causes.factor_table(full_fac, full_by, name)))

# %% [markdown]
# ## Conclusions
#
# The statements below are computed from the tables above by `sepdtd.causes`. They come first from this
# build's profile and seeds, then from the committed full-profile results where those exist. One seed
# gives no spread over training runs.

# %%
blanks = book.blank_shares(results)
book.show_markdown(f"**This build (profile `{profile}`)**\n\n"
                   + book.markdown_table(*causes.range_table(fac, by, DATASETS)) + "\n\n"
                   + causes.factor_lines(fac, by, blanks, DATASETS) + "\n\n"
                   + causes.hypotheses(rows, blanks, DATASETS, models.TABLE1_CONV,
                                       first_layer=(rule_change, first_layer_small) if rule_change else None))
if full_rows:
    full_blanks = book.blank_shares(full_results)
    full_first = causes.first_layer_summary(causes.first_layer_rows(full_by, DATASETS), DATASETS)
    book.show_markdown(f"**The committed full-profile results** ({FULL_RUN})\n\n"
                       + book.markdown_table(*causes.range_table(full_fac, full_by, DATASETS)) + "\n\n"
                       + causes.factor_lines(full_fac, full_by, full_blanks, DATASETS) + "\n\n"
                       + causes.hypotheses(full_rows, full_blanks, DATASETS, models.TABLE1_CONV,
                                           first_layer=full_first[1:] if full_first[1] else None))

# %% [markdown]
# Taken together with {doc}`09_ground_truth`: Eq. 7 and |cos| measure whether two explanations differ.
# A factor can make them differ without making the second explanation any more right; the ground-truth
# columns are what separate "different" from "separable". After fine-tuning, a fall of the signed cosine
# is mostly the second logit turning negative, so no verdict here rests on it. {doc}`06_tables` shows the
# fine-tunes' |cos| at the full profile.
