# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Separable explanations of neural network decisions: a reproducibility report
#
# This book re-runs *Separable explanations of neural network decisions* by Laura Rieger
# {cite}`rieger2017separable` with `sepdtd`, a tested PyTorch package. The tables below read the
# results committed in `results/full/`.

# %% tags=["remove-cell"]
from sepdtd import book, experiments, plots, report

book.setup_notebook()
units = experiments.load_results(experiments.default_results_dir("full"))
rows = report.rows(units)
table = report.claims_table(rows)


def _units(keep):
    """"MNIST seeds 0, 1" for the units whose networks are (not) kept; a kept unit replaces its legacy one."""
    kept_units = {(u["dataset"], u["seed"]) for u in units if u["networks_kept"]}
    seeds = {}
    for u in units:
        if bool(u["networks_kept"]) == keep and (keep or (u["dataset"], u["seed"]) not in kept_units):
            seeds.setdefault(report.DATASET_LABELS[u["dataset"]], []).append(u["seed"])
    return [f"{d} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, sorted(s)))}" for d, s in seeds.items()]


kept, legacy = _units(True), _units(False)

# %% [markdown]
# ## Reproducibility summary
#
# **Scope.** The paper makes two claims. First, Deep Taylor Decomposition (DTD) explains a class other
# than the dominant one with the dominant class's heatmap ("diffusion"). Second, fine-tuning with an L1
# penalty on the positive weights between class blocks of the dense layers (Eq. 5-6) separates the
# explanations (Table 2). It does so at no cost in accuracy (Table 3), on MNIST, Fashion-MNIST and
# CIFAR-10.
#
# **What we did.** We trained the paper's networks (Table 1) and fine-tuned each with the four λ of
# Section 5.1, at three seeds. Each fine-tune is compared with its own seed's baseline, with a 95 %
# interval. A DTD heatmap carries the sign of its logit, and after fine-tuning a logit can be ≤ 0.
# Where a network is kept, it is measured with sign-aware metrics as well.

# %% tags=["remove-input"]
def claims_of(verdicts, reasons=None):
    """Claim -> the data sets (with their verdict and reason) whose verdict is one of ``verdicts``."""
    by = {}
    for r in table:
        if r["verdict"] in verdicts and (reasons is None or r["reason"] in reasons):
            by.setdefault(r["claim"][0].upper() + r["claim"][1:], []).append(r)
    return by


held = claims_of(("held",))
other = claims_of(("not held", "partly"))
undecided = claims_of(("inconclusive", "open"))
lines = ["**What held.**" + ("" if held else " Nothing, at the seeds measured so far.")]
lines += [f"- {claim}: {', '.join(r['dataset'] for r in rs)}." for claim, rs in held.items()]
lines += ["", "**What did not, or only partly.**" + ("" if other else " Nothing.")]
lines += [f"- {claim}: " + "; ".join(f"{r['dataset']} {r['verdict']} ({r['reason'].split(';')[0]})" for r in rs) + "."
          for claim, rs in other.items()]
if undecided:
    lines += ["", "**Not decided.** The results cannot tell."]
    lines += [f"- {claim}: " + "; ".join(f"{r['dataset']} {r['verdict']} ({r['reason'].split(';')[0]})" for r in rs)
              + "." for claim, rs in undecided.items()]
lines += ["", "**Networks kept.** " + ("; ".join(kept) if kept else "none yet") + "."]
if legacy:
    lines += ["", f"**Networks not kept.** {'; '.join(legacy)}: the numbers of an earlier run whose networks "
              "were not kept. Their sign-aware metrics are missing until the networks are trained again."]
book.show_markdown("\n".join(lines))

# %% [markdown]
# ## The claims, checked
#
# One row per claim and data set. The fine-tuned claims are read at λ = 1, the λ of the paper's
# figures. "Paired" is the fine-tune minus its own seed's baseline: the mean, its 95 % interval and the
# number of seeds. A verdict comes from that interval, not from a threshold on means.

# %% tags=["remove-input"]
book.show_markdown(book.markdown_table(
    ["claim", "data set", "paper", "ours", "paired difference", "verdict"],
    [[r["claim"], r["dataset"], r["paper"], r["ours"], r["paired"], f"**{r['verdict']}**: {r['reason']}"]
     for r in table]))

# %% [markdown]
# ## One figure
#
# What fine-tuning at λ = 1 changes, against the same seed's baseline.

# %% tags=["remove-input"]
fig = plots.claims_figure(rows)

# %% [markdown]
# ## How to read this book
#
# Each chapter opens with a box: what the paper says, and what we find. The chapters follow the paper;
# two go beyond it.
#
# | page | paper |
# | --- | --- |
# | {doc}`../notebooks/01_toy_example` | Section 3, Figure 2 |
# | {doc}`../notebooks/02_dtd` | Section 2.2, Eq. 1-4 |
# | {doc}`../notebooks/03_diffusion` | Section 3, Figure 1 |
# | {doc}`../notebooks/04_models_training` | Section 5.1, Table 1 |
# | {doc}`../notebooks/05_block_regularization` | Section 4, Eq. 5-6, Figure 3 |
# | {doc}`../notebooks/06_tables` | Sections 5.1-5.2, Eq. 7, Tables 2 and 3 |
# | {doc}`../notebooks/07_heatmaps` | Section 5.2, Figures 4 and 5 |
# | {doc}`../notebooks/08_weights` | Section 6, Figure 6 |
# | {doc}`../notebooks/09_ground_truth` | beyond: images with a known region per class |
# | {doc}`../notebooks/10_causes` | beyond: what causes diffusion, and why the logits turn negative |
# | {doc}`../notebooks/11_your_network` | the package on a network of your own |
# | {doc}`../notebooks/12_finetuning_search` | appendix: other fine-tuning settings, against controls |
#
# Each page states its profile, seeds, commit and device. `make book` shows the full profile: the
# committed results, and the networks it keeps. Where a data set keeps none, a page draws it from the
# quick profile and says so. `make book PROFILE=quick` retrains a reduced version on a laptop. The page
# {doc}`reproducing` explains both.
