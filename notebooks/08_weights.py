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
# # The dense weights (Section 6, Figure 6)
#
# The Discussion backs the mechanism with a picture of a dense layer's weights: after fine-tuning with
# the penalty of Eq. 6, "the positive weights are largely restricted to the respective class blocks and
# will therefore not influence each other during relevance propagation". This page draws the dense
# weights of a baseline and of the network fine-tuned with $\lambda = 1.0$. It puts a number on
# "largely": the share of the positive weight mass that lies inside the diagonal blocks. The paper does
# not say which network, layer or λ its figure shows. We draw CIFAR-10 where its full-profile networks
# are kept, else Fashion-MNIST; both dense layers; and λ = 1.0, the λ of its Figures 4-5.

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
from sepdtd import experiments, findings, models, plots, regularization, report

LAM = 1.0
results = {name: book.unit_for(profile, name, seed, device)
           for name in ("cifar10", "fashion_mnist", "mnist")}
# the figure's data set: CIFAR-10 where its networks are this profile's, else the first that is
shown = next((name for name, res in results.items() if not res.get("fallback")), "cifar10")
prov = book.provenance(list(results.values()), profile=profile, seed=seed, device=device)
book.show_provenance(prov)
book.show_markdown(book.opening("after fine-tuning, the positive weights lie largely inside the class blocks "
                                "(Figure 6).", findings.weights(report.rows([results[shown]]), shown, LAM),
                                note=book.profile_note(profile, [results[shown]])))
nets = {"baseline": experiments.load_model(results[shown]["profile"], shown, 0.0, seed=seed),
        f"λ = {LAM:.1f}": experiments.load_model(results[shown]["profile"], shown, LAM, seed=seed)}

# %% [markdown]
# ## Figure 6
#
# Rows are a layer's output neurons, columns its inputs; positive weights red, negative blue, on one
# colour scale centred at zero for both networks (it ends at the 99th percentile of $|w|$, so that a few
# large weights do not wash out the rest). Thin lines mark the ten diagonal blocks. The titles give the
# in-block share of the positive weight (`regularization.inblock_share`) and, for comparison, the share
# a layer without any block structure would have (`regularization.expected_inblock_share`, the fraction
# of weights inside the blocks).

# %%
for layer_name, kind in ((1, "output"), (0, "hidden")):
    weights, shares = {}, {}
    for label, net in nets.items():
        layer = list(models.dense_layers(net))[layer_name]
        weights[label] = layer.weight
        shares[label] = regularization.inblock_share(net, 10)[layer_name]
    out_f, in_f = weights["baseline"].shape
    fig = plots.dense_weights(weights, 10, shares=shares,
                              expected=regularization.expected_inblock_share(out_f, in_f, 10))
    fig.suptitle(f"{report.DATASET_LABELS[shown]}, {kind} layer D({out_f}), {out_f} × {in_f}", fontsize=10)
    plots.save_figure(fig, f"figure6_weights_{'output' if layer_name == 1 else 'hidden'}", {**prov, "lam": LAM})

# %% [markdown]
# ## The in-block share for every network
#
# The same number for all data sets and every λ, as recorded by the experiments (hidden / output
# layer). A network that ignores the blocks has about $1/C = 10\,\%$ of its positive weight inside
# them; Eq. 6 drives the share towards 100 %.

# %%
rows = []
for name, res in results.items():
    expected = " / ".join(f"{v:.1%}" for v in res.get("inblock_expected", []))
    for s in res["settings"]:
        rows.append((report.DATASET_LABELS[name], "baseline" if s["lam"] == 0 else f"{s['lam']:.1f}",
                     " / ".join(f"{v:.1%}" if v is not None else "—" for v in s["inblock"]), expected))
book.show_markdown(book.markdown_table(["data set", "λ", "in-block share of positive weight",
                                        "without structure"], rows))

# %% [markdown]
# A build at the quick profile fine-tunes for two epochs only, which cuts a part of $S(W)$: its shares
# stay near the baseline's, and its Figure 6 shows little structure. The committed full-profile
# fine-tunes, run to the paper's stopping rule, end at the shares below (baselines, then every λ and
# seed; hidden / output layer):

# %%
table = book.committed_inblock(profile)
book.show_markdown(table if table else "*This build is the full profile (the table above), or no full-profile "
                                       "results are committed.*")

# %% [markdown]
# Restricting the positive weights to the blocks is what Section 4 set out to do: relevance that enters
# at one class's output can then only reach the other classes' hidden neurons through the remaining
# off-block weights. How far this goes in reducing diffusion is measured on {doc}`06_tables`; the paper's
# Conclusion adds the caveat that the approach does not scale to many classes, each of which needs its
# own block of neurons.
