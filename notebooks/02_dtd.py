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
# # Deep Taylor Decomposition from first principles (Section 2.2, Eq. 1-4)
#
# ```{admonition} In brief
# :class: tip
# **The paper:** DTD's $z^+$ and $z^B$ rules (Eq. 3-4) follow from a first-order Taylor expansion at a
# root point (Eq. 1-2).
#
# **We find:** the package computes exactly these rules. The checks below compare it with the formulas
# in float64 and with zennit, and test that it conserves relevance.
# ```
#
# Deep Taylor Decomposition (DTD, {cite}`montavon2017explaining`) explains the output $f_c(\mathbf{x})$
# of a ReLU network by handing its value down, layer by layer, to the pixels. This page derives the two
# rules the paper uses, $z^+$ (Eq. 3) and $z^B$ (Eq. 4), from the Taylor expansion of Eq. 1, and checks
# numerically that the package's engine, `sepdtd.dtd`, computes exactly what the derivation says.

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
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sepdtd import data, dtd, experiments, models

# the trained networks of this profile (read, or trained where missing: see 04_models_training)
results = {name: book.unit_for(profile, name, seed, device) for name in data.DATASETS}
book.show_provenance(book.provenance(list(results.values()), profile=profile, seed=seed, device=device))
book.show_markdown(book.profile_note(profile, results.values()))
torch.set_default_dtype(torch.float64)  # exact arithmetic for the checks on this page

# %% [markdown]
# ## The derivation
#
# **Relevance starts at the output.** To explain class $c$, the output layer's relevance is the output
# itself, $R_c = f_c(\mathbf{x})$ (Section 2.2), and every other output gets $R_k = 0$ (Section 3).
#
# **One neuron at a time.** Take a neuron of a ReLU layer (Eq. 2),
#
# $$x_j = \max\Big(0, \sum_i x_i w_{ij} + b_j\Big), \qquad b_j \le 0,$$
#
# whose relevance, as DTD establishes layer by layer from the top, is proportional to its activation:
# $R_j = c_j x_j$ with $c_j$ locally constant. Where the neuron is active, $R_j$ is a *linear* function of
# the inputs $x_i$, so its first-order Taylor expansion around a root point $\tilde{\mathbf{x}}^{(j)}$
# (where $R_j(\tilde{\mathbf{x}}^{(j)}) = 0$) is exact:
#
# $$R_j = \sum_i \frac{\partial R_j}{\partial x_i}\Big|_{\tilde{\mathbf{x}}^{(j)}} (x_i - \tilde{x}^{(j)}_i)
#       = \sum_i c_j\, w_{ij}\, (x_i - \tilde{x}^{(j)}_i).$$
#
# The $i$-th term is the share of $R_j$ that input $i$ receives, and summing over the neurons $j$ that
# $i$ feeds gives Eq. 1. What is left is to choose the root point.
#
# **Searching the root along a direction.** Let $\tilde{\mathbf{x}}^{(j)} = \mathbf{x} - t\,\mathbf{v}$
# for a direction $\mathbf{v}$. Solving $\sum_i \tilde{x}_i w_{ij} + b_j = 0$ gives
# $t = (\sum_i x_i w_{ij} + b_j) / \sum_i v_i w_{ij}$, hence $x_i - \tilde{x}_i = t\,v_i$ and
#
# $$R_{i \leftarrow j} = c_j w_{ij}\, t\, v_i = \frac{v_i w_{ij}}{\sum_{i'} v_{i'} w_{i'j}}\, R_j .$$
#
# The direction is chosen so that the root point stays in the domain the inputs can take:
#
# - **$z^+$ rule (Eq. 3), inputs in $\mathbb{R}^+$** (every layer after a ReLU): shrink only the inputs
#   with a positive weight, $v_i = x_i\,1[w_{ij} > 0]$. The root point then lies in $\mathbb{R}^+$ (with
#   $b_j \le 0$, $0 < t \le 1$), and $v_i w_{ij} = x_i w_{ij}^+$:
#
#   $$R_i = \sum_j \frac{x_i w_{ij}^+}{\sum_{i'} x_{i'} w_{i'j}^+} R_j .$$
#
# - **$z^B$ rule (Eq. 4), inputs in a box $l_i \le x_i \le h_i$** (the pixels): move each input towards
#   the corner of the box that lowers the activation most, $v_i = x_i - l_i$ if $w_{ij} > 0$ and
#   $v_i = x_i - h_i$ if $w_{ij} < 0$. The root point stays in the box, and
#   $v_i w_{ij} = x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-$:
#
#   $$R_i = \sum_j \frac{x_i w_{ij} - l_i w_{ij}^+ - h_i w_{ij}^-}
#                     {\sum_{i'} x_{i'} w_{i'j} - l_{i'} w_{i'j}^+ - h_{i'} w_{i'j}^-} R_j .$$
#
# Because every neuron's relevance is split into shares that sum to it, the total is **conserved**:
# $\sum_p R_p = f_c(\mathbf{x})$ at the pixels. Pooling layers pass relevance on as well: average
# pooling in proportion to its inputs (the $z^+$ rule with positive weights), max pooling to the input
# that won the window. The heatmap of the paper sums the pixel relevance over the colour channels.
# The images are in $[0, 1]$, so the box is $l = 0$, $h = 1$.

# %% [markdown]
# ## A naive implementation, straight from the derivation
#
# The function below does nothing clever. It writes every weighted or pooling layer as a dense matrix,
# walks the neurons one by one, *constructs the root point* $\tilde{\mathbf{x}}^{(j)}$ of each neuron
# along the direction of its rule, checks that the root point is a root and lies in the domain, and
# adds up the Taylor terms $\partial R_j / \partial x_i \cdot (x_i - \tilde{x}_i)$.

# %%
def dense_matrix(linear_map, in_shape):
    """The matrix of a linear map (a convolution or pooling without bias), one column per input."""
    n = int(np.prod(in_shape))
    basis = torch.eye(n).reshape(n, *in_shape)
    return linear_map(basis).reshape(n, -1).T


@torch.no_grad()
def naive_dtd(model, x, c, low=0.0, high=1.0):
    """Relevance of each element of one input ``x`` for class ``c``, neuron by neuron (Eq. 1-4)."""
    layers, a, first = [], x, True
    for layer in model:  # forward pass, recording each layer as (kind, matrix, bias, input)
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            if isinstance(layer, nn.Conv2d):
                f = lambda t, L=layer: F.conv2d(t, L.weight, None, L.stride, L.padding)  # noqa: E731
            else:
                f = lambda t, L=layer: F.linear(t, L.weight)  # noqa: E731
            w = dense_matrix(f, a.shape)
            out_shape = f(a[None]).shape[1:]
            b = layer.bias[:, None, None].expand(out_shape).flatten() if a.ndim == 3 else layer.bias
            layers.append(("zB" if first else "z+", w, b, a.flatten()))
            a, first = (w @ a.flatten() + b).reshape(out_shape), False
        elif isinstance(layer, nn.AvgPool2d):
            w = dense_matrix(layer, a.shape)
            layers.append(("z+", w, torch.zeros(w.shape[0]), a.flatten()))
            a = layer(a[None])[0]
        elif isinstance(layer, nn.MaxPool2d):
            out, idx = F.max_pool2d(a[None], layer.kernel_size, layer.stride, return_indices=True)
            channel = torch.arange(a.shape[0])[:, None, None] * a[0].numel()
            layers.append(("max", (idx[0] + channel).flatten(), None, a.flatten()))
            a = out[0]
        elif isinstance(layer, nn.ReLU):
            a = a.clamp(min=0)
        elif isinstance(layer, nn.Flatten):
            a = a.flatten()
    relevance = torch.zeros(a.numel())
    relevance[c] = a.flatten()[c]                   # R_c = f_c(x), all other outputs 0
    for kind, w, b, a_in in reversed(layers):       # backward pass, neuron by neuron
        r_in = torch.zeros(a_in.numel())
        for j in torch.nonzero(relevance).flatten().tolist():
            if kind == "max":                       # winner takes all
                r_in[w[j]] += relevance[j]
                continue
            s_j = w[j] @ a_in + b[j]                # pre-activation; R_j = c_j * s_j
            if kind == "z+":
                v = a_in * (w[j] > 0)
                assert (a_in >= 0).all()
            else:
                v = torch.where(w[j] > 0, a_in - low, a_in - high)
            if v @ w[j] == 0:                       # no input can lower s_j: no root along v,
                continue                            # the rule's denominator is 0 and R_j is absorbed
            t = s_j / (v @ w[j])
            root = a_in - t * v                     # the root point of neuron j
            assert abs(w[j] @ root + b[j]) < 1e-9 * (1 + abs(s_j)), "not a root"
            domain_ok = (root >= -1e-12).all() if kind == "z+" else ((root >= low - 1e-12) & (root <= high + 1e-12)).all()
            assert domain_ok, "root point outside the input domain"
            c_j = relevance[j] / s_j
            r_in += c_j * w[j] * (a_in - root)      # first-order Taylor terms, Eq. 1
        relevance = r_in
    return relevance.reshape(x.shape)


# %% [markdown]
# A small network with every kind of layer of Table 1 (a first convolution for $z^B$, average and max
# pooling, later convolutions and dense layers for $z^+$), random weights in $[-0.7, 0.7]$, biases $\le 0$ as DTD
# requires (`models.clamp_biases_`), and random inputs in $[0, 1]$:

# %%
torch.manual_seed(seed)
tiny = nn.Sequential(
    nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
    nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3),
)
for m in tiny.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.uniform_(m.weight, -0.7, 0.7)
        nn.init.uniform_(m.bias, -0.1, 0.0)
models.clamp_biases_(tiny).eval()
x = torch.rand(4, 2, 8, 8)
with torch.no_grad():
    logits = tiny(x)

rows = []
for n in range(x.shape[0]):
    for c in range(logits.shape[1]):
        ours = dtd.relevance(tiny, x[n:n + 1], torch.tensor([[c]]), low=0.0, high=1.0)[0, 0]
        naive = naive_dtd(tiny, x[n], c)
        rows.append((n, c, float(logits[n, c]), float(naive.sum()), float((ours - naive).abs().max())))
worst = max(r[4] for r in rows)
print("image class   f_c(x)   sum R (naive)   max |R_package - R_naive|")
for n, c, f, s, err in rows:
    print(f"{n:5d} {c:5d} {f:9.5f} {s:14.5f} {err:16.2e}")
assert worst < 1e-7, worst
print(f"\nThe package equals the neuron-by-neuron computation (largest difference {worst:.1e}).")

# %% [markdown]
# Every root point was a root and lay in its domain (the assertions would have stopped the page), and
# the package's class-batched engine, which never loops over neurons, gives the same relevance (to the
# largest difference printed, set by the float64 arithmetic and the $\epsilon$ of the denominators). The
# relevance sums to $f_c(\mathbf{x})$ (compare the two columns). The derivation holds for $f_c < 0$ too,
# and predicts one exception: when no input of an output neuron has a positive weight *and* a positive
# value, the $z^+$ direction cannot reach a root ($\sum_i v_i w_{ij} = 0$) and the neuron's relevance is
# absorbed; the sum is then 0. This page's random network shows neither case; `tests/test_dtd.py`
# checks both (every class of random networks, negative logits included, and a bias that switches on a
# neuron without positive-weight input).
# The package's test suite also compares the engine with zennit's $z^+$ / $z^B$ rules
# {cite}`anders2021zennit` on the networks of Table 1.
#
# ## Conservation in the trained networks
#
# The networks of Table 1, trained by this book's experiments (profile given above; training is
# described on {doc}`04_models_training`), keep their biases $\le 0$ during training
# (`clamp_bias`). For their top-2 classes on test images the relevance therefore sums to the logit,
# $\sum_p R_p = f_c(\mathbf{x})$, up to the stabiliser $\epsilon = 10^{-9}$ of the denominators:

# %%
print("data set        images  classes  max |sum R - f_c| / |f_c|   biases <= 0")
for name in data.DATASETS:
    net = experiments.load_model(results[name]["profile"], name, 0.0, seed=seed).double()
    test = data.load(name)
    xb = data.to_float(test.x_test[:64]).double()
    with torch.no_grad():
        f = net(xb)
    top2 = f.topk(2, dim=1).indices
    r = dtd.relevance(net, xb, top2, low=0.0, high=1.0)
    total = r.flatten(2).sum(-1)
    rel_err = ((total - f.gather(1, top2)).abs() / f.gather(1, top2).abs().clamp(min=1e-12)).max()
    biases_ok = all(float(m.bias.detach().max()) <= 0 for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    print(f"{name:15s} {xb.shape[0]:6d} {2:8d} {float(rel_err):26.1e}   {biases_ok}")
    assert rel_err < 1e-6

# %% [markdown]
# With these checks, the heatmaps on the following pages are DTD as Section 2.2 defines it. The next
# page, {doc}`03_diffusion`, uses them to look at the explanations of all ten classes of one image.
