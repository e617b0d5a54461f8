# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Your own network
#
# ```{admonition} In brief
# :class: tip
# **The paper:** the block-wise penalty applies to the dense layers of any classifier (Section 4).
#
# **We find:** the paper's steps run on a network that is not in Table 1, through the public API. The
# numbers on this page illustrate the calls; they are not a result about this network.
# ```
#
# Nothing in `sepdtd` is tied to the paper's three networks. The DTD engine explains any plain
# `torch.nn.Sequential` of the layers the rules of Section 2.2 are defined for, the penalty of Eq. 6
# applies to every dense layer of any model, and the training loop and the metrics take tensors. This
# page goes through the paper's steps for a network that is *not* in Table 1 — two padded 5×5
# convolutions where Table 1's Fashion-MNIST network has one unpadded 3×3, and 100 hidden units
# instead of 256 — on Fashion-MNIST, using only the public API:
#
# 1. check that DTD can explain the network (`sepdtd.Explainer` checks it when it is made);
# 2. train it (`training.fit`, Eq. 5 with λ = 0);
# 3. explain its two most likely classes and check conservation (`explainer(x, target="top2")`, Eq. 3-4);
# 4. fine-tune it with the block-wise penalty (`training.fit` with `lam`, Eq. 5-6);
# 5. measure what the paper measures (`metrics.diffusion_variants`, Eq. 7; `regularization.inblock_share`)
#    and what the chapters beyond it add (the other rules of `sepdtd.Explainer`).
#
# The network is small and, at the `quick` profile, trained on a subset for a few epochs: the numbers
# below illustrate the calls, they are not a result about this architecture.

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
import copy

import matplotlib.pyplot as plt
import torch
from torch import nn

import sepdtd
from sepdtd import attribution, data, metrics, plots, regularization, training, utils
from sepdtd.pipeline import train

# How much of Fashion-MNIST this page trains on, per profile (None: all of it).
SIZES = {"smoke": {"train": 2000, "val": 500, "test": 200, "epochs": 1},
         "quick": {"train": 10000, "val": 2000, "test": 1000, "epochs": 8},
         "full": {"train": None, "val": None, "test": None, "epochs": 100}}
# the book's default build reads the full profile's kept networks and trains nothing of its own; this
# tutorial's network is trained at the quick profile's size then, so that the build stays short
trained_at = "quick" if profile == "full" else profile
size = SIZES[trained_at]
dev = utils.resolve_device(device)
checkpoints = train.checkpoint_root() / trained_at / "your_network" / f"seed{seed}"
prov = book.provenance(profile=trained_at, seed=seed, device=device)
book.show_provenance(prov)
book.show_markdown(f"This page trains its own network at the **{trained_at}** profile's size"
                   + (" (the book shows the full profile elsewhere)." if profile == "full" else "."))

ds = data.load("fashion_mnist")
train_idx, val_idx = data.train_val_split(len(ds.x_train), val_fraction=0.1, seed=seed)
train_idx, val_idx = train_idx[:size["train"]], val_idx[:size["val"]]
x_train, y_train = ds.x_train[train_idx], ds.y_train[train_idx]
x_val, y_val = ds.x_train[val_idx], ds.y_train[val_idx]
x_test, y_test = ds.x_test[:size["test"]], ds.y_test[:size["test"]]
print(f"{len(x_train)} training, {len(x_val)} validation and {len(x_test)} test images of "
      f"{tuple(ds.x_train.shape[1:])}, classes: {', '.join(ds.classes)}")

# %% [markdown]
# ## 1. Which networks DTD can explain
#
# DTD's rules need to know the order of the computation and the sign of every layer's input: the
# $z^B$ rule (Eq. 4) for the first weighted layer, which sees the input box, and the $z^+$ rule
# (Eq. 3) for every later one, whose input is a ReLU output. So the engine accepts an `nn.Sequential`
# (nesting allowed) of `Conv2d`, `Linear`, `ReLU`, `MaxPool2d`, `AvgPool2d`, `Flatten` and `Dropout`;
# a `BatchNorm` right after a `Conv2d`/`Linear` is folded into it (in evaluation mode it is an affine
# map). `sepdtd.Explainer(model, rule="dtd", low=, high=)` checks the network when it is made and says
# *before* any computation which layer breaks these conditions. The box $[l, h]$ of the $z^B$ rule is
# the range of the input, here $[0, 1]$:

# %%
torch.manual_seed(seed)
net = nn.Sequential(
    nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
    nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.AvgPool2d(2),
    nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Dropout(0.25),
    nn.Linear(100, 10),
)
explainer = sepdtd.Explainer(net, rule="dtd", low=0.0, high=1.0)  # passes: nothing to report
sepdtd.Explainer(nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                               nn.Linear(8 * 26 * 26, 10)), low=0.0, high=1.0)  # passes: the batch norm is folded
print(f"{sum(p.numel() for p in net.parameters()):,} parameters")

for bad in (nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10)),
            nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.Tanh(), nn.Linear(100, 10)),
            nn.Sequential(nn.Flatten(), nn.Linear(784, 100), nn.Linear(100, 10))):
    try:
        sepdtd.Explainer(bad, low=0.0, high=1.0)
    except (TypeError, ValueError) as err:
        print(f"{type(err).__name__}: {err}\n")

# %% [markdown]
# An adaptive pooling layer amounts to a fixed one for a given input size; a `tanh` has no DTD rule;
# two dense layers without a ReLU between them leave the $z^+$ rule's assumption (inputs $\ge 0$)
# unmet. DTD also needs biases $b \le 0$, the constraint Section 2.2 places on every neuron so that a
# root point exists at the origin; `training.fit` keeps them there by clamping after every step
# (`clamp_bias=True`), and the docstring of `sepdtd.explain.engine` explains what a positive bias would
# cost (relevance absorbed, not conserved) — a folded batch norm may well have one.
#
# A module object may be used at several positions (one `nn.ReLU()` used twice is explained at both),
# and the box of Eq. 4 is checked: finite, around 0 ($l \le 0 \le h$) and not degenerate ($l < h$).
# One order the explainer accepts but DTD's derivation does not cover: a ReLU after an average-pooling
# layer instead of before it (the pooling then mixes signed inputs, and so does their relevance).

# %% [markdown]
# ## 2. Training: Eq. 5 with λ = 0
#
# `training.fit` trains any classifier that returns logits on `uint8` or float images, with Adam and
# early stopping on the validation objective, and restores the best epoch's weights. The data stay on
# the device for the whole run. With `checkpoint=` the run is resumable: its state is written
# atomically after every epoch, an interrupted run continues where it stopped, and a finished one is
# loaded instead of trained again (as when this page is re-executed). `checkpoint_key` names what the
# file's fingerprint cannot see — here the architecture, whose parameter shapes alone do not fix it.

# %%
baseline = training.fit(net, x_train, y_train, x_val, y_val, lr=1e-3, batch_size=128,
                        max_epochs=size["epochs"], patience=3, device=dev, seed=seed, progress=False,
                        checkpoint=checkpoints / "baseline.pt", checkpoint_key=repr(net))
print(f"{baseline.epochs} epochs (best {baseline.best_epoch}), {baseline.wall_s:.1f} s; "
      f"validation accuracy {baseline.val_accuracy[baseline.best_epoch - 1]:.4f}")

# %% [markdown]
# ## 3. Explaining the two most likely classes
#
# `explainer(x, target=...)` explains, for each image, the classes asked — an int, a tensor of classes,
# `"top1"`, `"top2"`, `"topk:K"` or `"all"` — in one pass: the relevance starts at the class's logit
# $f_c(x)$ (Section 3) and is redistributed down to the pixels. An input outside the box is refused,
# because Eq. 4 is derived for $l \le x \le h$:

# %%
net = net.eval()
x = data.to_float(x_test).to(dev)
try:
    explainer(255 * x[:4], target=0)
except ValueError as err:
    print(f"ValueError: {err}")

# %% [markdown]
# For $b \le 0$ the rules conserve relevance: the pixels' relevance sums to the explained logit
# (Section 2.2), up to the stabiliser of the denominators and float rounding, unless no positive
# evidence reaches the class at the top ($z^+_c = 0$; then all of $f_c \le 0$ is lost). The explanation
# holds the relevance, the heatmaps, the classes, the logits and this conservation error; the largest
# over the top-1 and top-2 explanations of every test image:

# %%
e = explainer(x, target="top2")                                     # e.relevance: (N, 2, 1, 28, 28)
f = e.logits.gather(1, e.classes)                                   # (N, 2)
print(f"largest |Σ R − f_c| over {f.numel()} explanations: {e.conservation_error.abs().max():.2e} "
      f"(largest |f_c|: {f.abs().max():.2f}; {int((f <= 0).sum())} with f_c <= 0)")

# %% [markdown]
# ## 4. Fine-tuning with the block-wise penalty: Eq. 5-6
#
# The paper's remedy is a fine-tuning with $\lambda\, S(W)$ added to the loss, where $S(W)$ sums the
# positive weights outside the class blocks of every dense layer (Eq. 6). `regularization.block_l1`
# computes it for any model with `Linear` layers; `n_blocks` is the number of classes (a model without
# an `n_classes` attribute must say so). `training.fit` with `lam` fine-tunes with it — here at the
# book's fine-tuning learning rate, $10^{-4}$ (the paper names none; see chapter 4):

# %%
LAM = 1.0
regularized = copy.deepcopy(net)
finetune = training.fit(regularized, x_train, y_train, x_val, y_val, lam=LAM, n_blocks=10, lr=1e-4,
                        batch_size=128, max_epochs=size["epochs"], patience=3, device=dev, seed=seed + 1,
                        progress=False, checkpoint=checkpoints / f"lam{LAM:g}.pt", checkpoint_key=repr(net))
regularized = regularized.eval()
nets = {"baseline": net, f"λ = {LAM:g}": regularized}
print(f"{finetune.epochs} epochs (best {finetune.best_epoch}); S(W) per epoch: "
      + ", ".join(f"{p:.3g}" for p in finetune.penalty))

# %% [markdown]
# ## 5. Measuring: accuracy, the block structure and Eq. 7
#
# `metrics.diffusion_variants` computes Eq. 7 between the top-1 and top-2 heatmaps of every image
# under each scale convention of {doc}`06_tables`, among them the primary one, `sc-sum`, which compares
# sign-corrected heatmaps. Beside it stand $|\cos|$ of the two heatmaps (lower: less alike, whatever the
# signs of the logits) and the signed cosine; `regularization.inblock_share` gives the share of each dense layer's positive
# weight mass inside the class blocks (Figure 6; the share a layer without structure would have is
# about 1/10).

# %%
rows, measured = [], {}
for label, model in nets.items():
    loss, acc = training.evaluate(model, x_test, y_test, device=dev)
    d = metrics.diffusion_variants(model, x_test, low=0.0, high=1.0, device=dev)
    shares = regularization.inblock_share(model, n_blocks=10)
    with torch.no_grad():
        s = float(regularization.block_l1(model, n_blocks=10))
    measured[label] = {"accuracy": acc, **d}
    rows.append([label, f"{acc:.4f}", f"{s:.3g}", ", ".join(f"{v:.3f}" for v in shares),
                 f"{d['raw']:.4f}", f"{d['max']:.3f}", f"{d['sum']:.4f}", f"{d['softmax']:.4f}",
                 f"{d['sc-sum']:.4f}", f"{d['abs_cosine']:.3f}", f"{d['cosine']:.3f}"])
book.show_markdown(book.markdown_table(
    ["network", "test accuracy", "S(W)", "in-block share (dense layers)", "d raw", "d max", "d sum",
     "d softmax", "d sc-sum (primary)", "|cos|", "cos (signed)"], rows))

base, reg = measured["baseline"], measured[f"λ = {LAM:g}"]
moved = [f"{c} {'rose' if reg[c] > base[c] else 'fell'} from {base[c]:.4g} to {reg[c]:.4g}"
         for c in ("sc-sum", "raw", "max", "sum", "softmax")]
book.show_markdown(f"On these {d['n']} test images, after the fine-tuning, d " + "; ".join(moved)
                   + f". |cos| went from {base['abs_cosine']:.4f} to {reg['abs_cosine']:.4f}, the signed cosine "
                   f"from {base['cosine']:.4f} to {reg['cosine']:.4f}. Test accuracy changed by "
                   f"{reg['accuracy'] - base['accuracy']:+.4f}.")

# %% [markdown]
# The signed cosine misleads here. A DTD heatmap has the sign of the logit it starts from: where the
# second logit is $\le 0$ and the first $> 0$, the two heatmaps have opposite signs and a negative cosine
# even for the same pattern. So read $|\cos|$, and look at the signs too ({doc}`06_tables`, "What the cosine measures"):

# %%
for label, model in nets.items():
    cos, logits, _ = book.top2_cosines(model, x)  # per image
    print(f"{label:>10}: cosine {float(cos.mean()):+.3f}, |cos| {float(cos.abs().mean()):.3f}; "
          f"logit <= 0 for the top-1 class on {float((logits[:, 0] <= 0).double().mean()):.0%} "
          f"and for the top-2 class on {float((logits[:, 1] <= 0).double().mean()):.0%} of the test images")

# %% [markdown]
# The top-2 heatmaps of two test images for both networks, on one colour scale per image, with
# their difference (what Eq. 7 measures), chosen as Figures 4-5 choose theirs
# (`book.plausible_examples`: correctly classified by both networks, the same two classes on top):

# %%
picks = book.plausible_examples(nets, x_test, y_test, n=2)
for k, pick in enumerate(picks):
    i = pick["index"]
    classes = torch.tensor([pick["classes"]])
    heatmaps = {label: sepdtd.Explainer(m, low=0.0, high=1.0)(x[i:i + 1], target=classes.to(dev)).heatmap[0]
                for label, m in nets.items()}
    fig = plots.heatmap_comparison(x_test[i], heatmaps, [ds.classes[c] for c in pick["classes"]],
                                   probabilities=pick["probabilities"], title=f"test image {i}")
    plots.save_figure(fig, f"your_network_{k + 1}", {**prov, "test_index": i, "lam": LAM})
    plt.show()

# %% [markdown]
# ## Other explanation methods
#
# The explainer's `rule` takes the methods of {doc}`10_causes` by name — LRP-ε, LRP-α2β1, gradient ×
# input and the two contrastive methods, CLRP and SGLRP — or rule objects and composites that assign
# rules by layer type (`sepdtd.Composite({nn.Conv2d: sepdtd.ZPlus(), nn.Linear: sepdtd.Epsilon()},
# first=sepdtd.ZBox())`), so the same comparison takes one loop (raw convention):

# %%
rows = []
for method in attribution.METHODS:
    cells = [f"{attribution.LABELS[method]} (`{method}`)"]
    for label, model in nets.items():
        h = sepdtd.Explainer(model, rule=method, low=0.0, high=1.0)(x, target="top2").heatmap
        cells += [f"{metrics.diffusion(h[:, 0], h[:, 1]):.4f}", f"{metrics.cosine(h[:, 0], h[:, 1]):.3f}"]
    rows.append(cells)
book.show_markdown(book.markdown_table(
    ["method"] + [f"{c} ({label})" for label in nets for c in ("d raw", "cosine")], rows))

# %% [markdown]
# To go further with a network of your own:
#
# - the paper's own networks, trained and kept, load with their results from
#   `sepdtd.pretrained(dataset, lam=..., seed=...)`;
# - the whole protocol of Section 5.1 for it — split, pre-training, the stacked fine-tunes of several
#   λ, Eq. 7 on a test set, a results file with provenance — is `sepdtd.experiments`; its networks come
#   from `sepdtd.models.build`, the place to register another architecture;
# - the two-object test sets and the ground-truth metrics of {doc}`09_ground_truth` are
#   `sepdtd.twoobject` and `metrics.relevance_mass_accuracy` / `metrics.pointing_game`;
# - `CONTRIBUTING.md` lists every module's public functions.
