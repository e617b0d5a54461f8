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
# # Block-wise L1 regularization (Section 4, Eq. 5-6, Figure 3)
#
# If diffusion comes from neurons of one class passing relevance to the outputs of others (see
# {doc}`01_toy_example`), the cure is to keep the classes' information apart in the dense layers, where
# features are combined into class scores. Rather than training one set of dense layers per class, the
# paper *softly* separates them: every dense layer is split into one diagonal block per class, and the
# positive weights that connect different blocks are pushed towards zero with an L1 penalty.

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
import torch

from sepdtd import experiments, findings, models, plots, regularization, report

results = {name: book.unit_for(profile, name, seed, device)
           for name in ("cifar10", "fashion_mnist", "mnist")}
prov = book.provenance(list(results.values()), profile=profile, seed=seed, device=device)
book.show_provenance(prov)
book.show_markdown(book.opening("an L1 penalty on the positive weights between class blocks of the dense "
                                "layers (Eq. 5-6) keeps the classes' paths apart.",
                                findings.penalty(book.rows_for(profile, seed, device)),
                                note=book.profile_note(profile, results.values())))

# %% [markdown]
# ## The penalty
#
# The training objective (Eq. 5) adds the penalty $S(W)$ to the cross-entropy,
#
# $$\underset{W,b}{\text{minimize}}\; -\frac{1}{N}\sum_{n=1}^N \hat{\mathbf{y}}_n^\top \log \mathbf{y}_n
#   + \lambda\, S(W), \tag{Eq. 5}$$
#
# $$S(W) = \sum_l \sum_{i} \sum_{j} \max(0, w^l_{ij})\; 1[\text{block}(i) \neq \text{block}(j)],
#   \tag{Eq. 6}$$
#
# summed over the dense layers $l$. Only *positive* weights are penalised, because only they carry
# relevance in the $z^+$ rule (Eq. 3); convolutions are not regularized. With $C$ classes, the
# neurons of a layer with $n$ neurons are cut into $C$ contiguous blocks, neuron $i$ belonging to block
# $\lfloor iC/n \rfloor$. (The paper's text speaks of "integer division with the number of classes",
# $\lfloor i/C \rfloor$, which would give blocks of $C$ neurons rather than $C$ blocks; we follow
# Figure 3 and the text's "a number of blocks equal to the number of classes".) In the output layer
# every class is one block of one neuron.
#
# ## Figure 3: where the penalty acts
#
# Grey weights are penalised, white ones (the diagonal blocks) are free. Left, a small layer with three
# classes, to see the pattern; middle and right, the two dense layers of the CIFAR-10 network. (The
# paper's Figure 3 draws a regularized layer inside the DTD picture; we draw only its weight masks.)

# %%
masks = {
    "example: 18 inputs, 12 outputs, C = 3": regularization.block_mask(12, 18, 3),
    "CIFAR-10 D(512): 512 × 2304": regularization.block_mask(512, 2304, 10),
    "CIFAR-10 output D(10): 10 × 512": regularization.block_mask(10, 512, 10),
}
fig = plots.block_mask(masks, n_blocks=[3, 10, 10])
path = plots.save_figure(fig, "figure3_block_mask", prov)

# %% [markdown]
# ### Eq. 6, checked
#
# The package computes $S(W)$ in one masked sum (`regularization.block_l1`). Written out literally, as
# a loop over layers and a double sum over neurons, Eq. 6 gives the same value for the baseline
# networks:

# %%
def penalty_literally(model, n_classes):
    total = 0.0
    for layer in models.dense_layers(model):
        w = layer.weight.detach().double().tolist()        # w[j][i]: input i -> output j
        n_out, n_in = len(w), len(w[0])
        for j in range(n_out):
            for i in range(n_in):
                if (i * n_classes) // n_in != (j * n_classes) // n_out:
                    total += max(0.0, w[j][i])
    return total


for name in ("fashion_mnist",):                            # the smallest dense layers: 256 x 5408
    net = experiments.load_model(results[name]["profile"], name, 0.0, seed=seed)
    with torch.no_grad():
        fast = float(regularization.block_l1(net, 10))
    slow = penalty_literally(net, 10)
    print(f"{name}: S(W) = {fast:.6f} (package), {slow:.6f} (Eq. 6 written out); "
          f"relative difference {abs(fast - slow) / slow:.1e}")
    assert abs(fast - slow) <= 1e-5 * slow

# %% [markdown]
# ## Fine-tuning for each λ
#
# Each baseline is fine-tuned from a copy of its weights with the objective of Eq. 5, for
# $\lambda \in \{0.1, 0.5, 1.0, 5.0\}$, with a fresh optimizer (Adam, learning rate $10^{-4}$, a tenth of
# the pre-training's: our choice, the paper names neither) and the same stopping rule. The four fine-tunes of a data set see the same batches in the same order, so
# that they differ only in λ (and in their dropout masks); `sepdtd` trains them together as one stacked
# network (`training.fit_stacked`), each with its own early stopping and best weights. The curves show
# the objective on the validation set (cross-entropy $+\,\lambda S(W)$), the penalty $S(W)$ itself,
# and the validation accuracy.

# %%
curves = {report.DATASET_LABELS[name]: {f"λ = {s['lam']:.1f}": s["history"] for s in res["settings"] if s["lam"] > 0}
          for name, res in results.items()}
fig = plots.training_curves(curves, metrics=("val_loss", "penalty", "val_accuracy"))
path = plots.save_figure(fig, "finetuning_curves", prov)

# %% [markdown]
# Two things can be read off these curves. First, how far the penalty falls within the fine-tuning.
# Second, how much λ matters. The optimizer, Adam, scales every weight's step by the running size of
# that weight's gradient; for a weight whose gradient is dominated by the penalty the step is therefore
# about the learning rate *whatever λ is*, and as long as the penalty dominates, the fine-tunes with
# different λ follow nearly the same path. The numbers, for the weights each run keeps (those of its
# best epoch; the baseline's are where the fine-tunes start):

# %%
for name, res in results.items():
    base = res["settings"][0]["history"]["penalty"][res["settings"][0]["best_epoch"] - 1]
    ends = {s["lam"]: s["history"]["penalty"][s["best_epoch"] - 1] for s in res["settings"] if s["lam"] > 0}
    spread = (max(ends.values()) - min(ends.values())) / base
    print(f"{report.DATASET_LABELS[name]:8s} S(W): baseline {base:.4g}; "
          + ", ".join(f"λ = {lam:.1f}: {v:.4g}" for lam, v in ends.items())
          + f"  (spread across λ: {spread:.2%} of the baseline's)")

# %% [markdown]
# As the penalty falls, the share of the positive weight mass that lies inside the diagonal blocks
# (Figure 6 shows the weights themselves) rises from about $1/C$ (no structure) towards 1:

# %%
rows = []
for name, res in results.items():
    expected = res.get("inblock_expected") or [None, None]
    for s in res["settings"]:
        share = " / ".join(f"{v:.2f}" if v is not None else "—" for v in s["inblock"])
        rows.append((report.DATASET_LABELS[name], "baseline" if s["lam"] == 0 else f"{s['lam']:.1f}",
                     f"{s['accuracy']:.3f}", share, s["epochs"], f"{s.get('train_wall_s', s['wall_s']):.0f} s"))
    rows.append((report.DATASET_LABELS[name], "no structure", "", " / ".join(f"{v:.2f}" for v in expected
                                                                           if v is not None), "", ""))
book.show_markdown(book.markdown_table(
    ["data set", "λ", "test accuracy", "in-block share (hidden / output layer)", "epochs",
     "training time (the fine-tunes': their stack's)"], rows))

# %% [markdown]
# How far it rises depends on how long the fine-tuning runs: a build at the quick profile stops after
# two epochs, with most of $S(W)$ still in place, so its shares stay near the baseline's. The committed
# full-profile fine-tunes, run to the paper's stopping rule, end with all the positive dense weight
# inside the blocks (baselines, then every λ and seed; hidden / output layer):

# %%
table = book.committed_inblock(profile)
book.show_markdown(table if table else "*This build is the full profile (the table above), or no full-profile "
                                       "results are committed.*")

# %% [markdown]
# Whether this separation reduces diffusion (Table 2) without costing accuracy (Table 3) is the subject
# of {doc}`06_tables`.
