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
# # Diffusion in a toy network (Section 3, Figure 2)
#
# DTD explains a class by starting the relevance at that class's output and setting every other
# output to zero (Section 3, Figure 2b). One would expect the explanation of a weaker class to point at
# the evidence *for that class*. Section 3 argues, with a toy network, why it does not: relevance is
# passed down in proportion to the neurons' activations, so the neurons that respond to the dominant
# object pass relevance to *every* class and drown the weaker class's own evidence.
#
# This page builds that toy network, explains both of its classes with the $z^+$ rule (Eq. 3) and
# draws it in the manner of Figure 2. The paper gives only the weights (0.1 or 1.0) and that the input
# layer sums the colour intensities; the hidden layer, which weight goes where and the example's
# intensities are our reconstruction from its figure and text.

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

from sepdtd import plots, toy

prov = book.provenance(profile=profile, seed=seed, device=device)
book.show_provenance(prov)
square = toy.explain(toy.paper_network(), toy.EXAMPLE_INPUT, "square")
book.show_markdown(book.opening(
    "in a toy network, the relevance of the weaker class flows through the dominant class's neuron (Figure 2).",
    f"Our reconstruction of the network agrees: {square.input_share('blue'):.0%} of the explanation of *square* "
    "lands on the circle's colour."))

# %% [markdown]
# ## The network
#
# The *input layer* holds the summed colour intensities of the image, one neuron for blue and one for
# orange: in the toy world circles are (almost) always blue and squares orange. A hidden layer of two
# ReLU neurons feeds the two outputs, *circle* and *square*. A connection within a class is thick
# (weight 1.0), a connection across classes thin (weight 0.1); all biases are zero.

# %%
net = toy.paper_network()
print("input -> hidden weights (rows: h_circle, h_square; columns: blue, orange)\n", net.w_hidden)
print("hidden -> output weights (rows: circle, square; columns: h_circle, h_square)\n", net.w_out)

# %% [markdown]
# The image shows a large blue circle and a small orange square: summed blue intensity 10, orange 1.
# The network rightly says *circle*, and gives *square* a clearly positive, weaker score.

# %%
x = toy.EXAMPLE_INPUT
hidden, output = net.forward(x)
print(f"input  (blue, orange)        = {x}")
print(f"hidden (h_circle, h_square)  = {hidden}")
print(f"output (circle, square)      = {output}")

# %% [markdown]
# ## Explaining each class with the $z^+$ rule
#
# All inputs are non-negative, so the paper uses the $z^+$ rule (Eq. 3) in both layers:
#
# $$R_i = \sum_j \frac{x_i w_{ij}^+}{\sum_{i'} x_{i'} w_{i'j}^+} R_j .$$
#
# Explaining *square* starts with $R_\text{square} = 3.01$ and $R_\text{circle} = 0$. The square's
# output receives $0.1 \times 10.1 = 1.01$ from the very active circle neuron and only $2.0$ from the
# square neuron, so a third of the relevance goes to the circle neuron at once; one layer further down,
# the square neuron itself sends half of its relevance to the blue input, because $0.1 \times 10$ blue
# weighs as much as $1.0 \times 1$ orange.

# %%
explanations = [toy.explain(net, x, cls) for cls in toy.OUTPUTS]
for e in explanations:
    print(f"explaining {e.cls:6s}: R_hidden = {np.round(e.r_hidden, 3)}, "
          f"R_input (blue, orange) = {np.round(e.r_input, 3)}, "
          f"sum = {e.r_input.sum():.3f} (= f_{e.cls} = {e.total:.3f}), "
          f"share on blue = {e.input_share('blue'):.0%}")

# %% [markdown]
# ## Figure 2, redrawn
#
# Nodes show the activations, line widths the weights (thin 0.1, thick 1.0), red numbers and halos
# the relevance. In (b), the explanation of *square*, two thirds of the relevance land on the blue
# input, i.e. on the circle: **the explanation of the weaker class is dominated by the stronger one.**

# %%
fig = plots.toy_network(explanations)
path = plots.save_figure(fig, "figure2_toy", prov)

# %% [markdown]
# ## How strong the effect is
#
# The share of the square's explanation that lands on the circle grows with how much the circle
# dominates the image. Once the blue intensity is more than about five times the orange one, most of the
# *square* explanation points at the circle. If the thin cross-class connections are removed
# (weight 0), the flow of relevance is separated and the square's explanation lies entirely on the
# square, whatever the image: this is the limit that the block-wise regularization of Section 4
# pushes the dense layers towards.

# %%
import matplotlib.pyplot as plt

ratios = np.geomspace(0.1, 100, 61)
shares = {name: [toy.explain(n, np.array([r, 1.0]), "square").input_share("blue") for r in ratios]
          for name, n in (("Figure 2 network", net), ("cross-class weights removed", toy.separated_network()))}
fig, ax = plt.subplots(figsize=(6, 3.2))
for name, s in shares.items():
    ax.plot(ratios, s, label=name)
ax.axhline(0.5, color="grey", lw=0.8, ls=":")
ax.axvline(10, color="grey", lw=0.8, ls="--")
ax.set_xscale("log")
ax.set_xlabel("summed blue / summed orange intensity")
ax.set_ylabel("share of the square's\nrelevance on blue")
ax.legend(frameon=False)
fig.tight_layout()
path = plots.save_figure(fig, "figure2_share_sweep", prov)

# %% [markdown]
# The dashed line marks the image above. Whether the same mechanism is at work in real networks is what
# the following pages test: {doc}`03_diffusion` shows diffusion in a CIFAR-10 network, and
# {doc}`05_block_regularization` separates the dense layers.
