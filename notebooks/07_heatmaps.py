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
# # Heatmaps before and after regularization (Section 5.2, Figures 4 and 5)
#
# Table 2 says *that* the top-2 explanations differ more after block-wise regularization; Figures 4 and
# 5 let the reader judge *whether the difference is meaningful*. The paper shows a CIFAR-10 image whose
# two most likely classes are *plane* and *car* (with the regularized network, the wing matters more for
# *plane*, the street for *car*), and a Fashion-MNIST image torn between *sneaker* and *ankle boot*.
# This page draws the same comparison: baseline against the network fine-tuned with $\lambda = 1.0$.

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

from sepdtd import data, dtd, experiments, findings, metrics, plots, report, utils

dev = utils.resolve_device(device)
LAM = 1.0
results = {name: book.unit_for(profile, name, seed, device)
           for name in ("cifar10", "fashion_mnist")}
prov = book.provenance(list(results.values()), profile=profile, seed=seed, device=device)
book.show_provenance(prov)
book.show_markdown(book.opening("after fine-tuning, each of the two top classes is explained by its own "
                                "evidence (Figures 4 and 5).",
                                findings.heatmaps(book.rows_for(profile, seed, device), LAM),
                                note=book.profile_note(profile, results.values())))

# %% [markdown]
# ## Choosing the images
#
# The paper picks images where the second class is a plausible alternative. We make that rule explicit
# (`book.plausible_examples`): among 2,000 test images drawn with the seed, take those that both
# networks classify correctly, on whose two most likely classes they agree, and whose second class has
# a probability of at least 0.1 under the baseline; prefer the paper's pairs (*airplane*/*automobile*,
# *sneaker*/*ankle boot*), then the most ambiguous images, one per pair of classes.
#
# Every heatmap is shown in Table 2's convention (see {doc}`06_tables`): raw, the relevance as DTD
# returns it, starting at the class's logit, so the last column, the difference of the two explanations,
# has the image's term in Eq. 7 as its Frobenius norm. Raw heatmaps scale with the logit, which
# fine-tuning changes, so compare *where* the relevance lies more than how strong the colours are (the
# cosine printed below does not depend on the scale). All heatmaps of one image share one colour scale
# (red positive, blue negative).

# %%
def compare(name, prefer, figure_name, n=2):
    shown = results[name]["profile"]
    nets = {"baseline": experiments.load_model(shown, name, 0.0, seed=seed, device=dev),
            f"λ = {LAM:.1f}": experiments.load_model(shown, name, LAM, seed=seed, device=dev)}
    ds = data.load(name)
    pool = torch.randperm(ds.x_test.shape[0], generator=torch.Generator().manual_seed(seed))[:2000]
    pairs = [(ds.classes.index(a), ds.classes.index(b)) for a, b in prefer]
    picks = book.plausible_examples(nets, ds.x_test[pool], ds.y_test[pool], n=n, prefer=pairs)
    found = any(set(p["classes"]) == set(pairs[0]) for p in picks)
    print(f"The paper's pair ({', '.join(prefer[0])}) is {'' if found else 'not '}among the images shown"
          + ("." if found else ": no image of the pool met the criteria for it."))
    for k, pick in enumerate(picks):
        index = int(pool[pick["index"]])
        image = ds.x_test[index]
        x = data.to_float(image[None]).to(dev)
        classes = torch.tensor([pick["classes"]], device=dev)
        heatmaps = {label: metrics.normalize(dtd.heatmap(net, x, classes, low=0.0, high=1.0)[0].cpu(),
                                             report.BOOK_CONVENTION)
                    for label, net in nets.items()}
        names = [ds.classes[c] for c in pick["classes"]]
        note = "" if pick["criteria_met"] else " (no image met all criteria: most ambiguous instead)"
        title = f"{name} test image {index}, label {ds.classes[pick['label']]}{note}"
        fig = plots.heatmap_comparison(image, heatmaps, names, probabilities=pick["probabilities"], title=title)
        plots.save_figure(fig, f"{figure_name}_{k + 1}", {**prov, "test_index": index, "lam": LAM})
        for label, h in heatmaps.items():
            d = float(metrics.frobenius(h[0][None], h[1][None])[0])
            print(f"image {index}, {label}: ||R_{names[0]} - R_{names[1]}||_F = {d:.4f} "
                  f"({report.BOOK_CONVENTION}, Table 2's convention), "
                  f"cosine {metrics.cosine(h[0][None], h[1][None]):.3f}")


# %% [markdown]
# ## Figure 4: CIFAR-10

# %%
compare("cifar10", [("airplane", "automobile"), ("automobile", "truck"), ("cat", "dog")], "figure4_cifar10")

# %% [markdown]
# ## Figure 5: Fashion-MNIST

# %%
compare("fashion_mnist", [("Sneaker", "Ankle boot"), ("Shirt", "T-shirt/top"), ("Pullover", "Coat")],
        "figure5_fashion_mnist")

# %% [markdown]
# The printed norms are these images' terms of Eq. 7 under Table 2's convention, and the cosine
# similarities say how alike the two explanations are (1 = identical up to scale). A single image can
# go either way; Table 2 averages over hundreds. And the networks matter: at the quick profile the
# fine-tunes stop after two epochs with most of the off-block weight in place (chapter 5), so the
# baseline's and the regularized network's heatmaps are nearly the same; the paper's setting is the
# full profile (`make book PROFILE=full`, on a GPU). Whether the differences point at *meaningful*
# evidence, like the wing for *plane* in the paper, is for the reader to judge from the figures; the
# paper's Discussion makes the same reservation: there is no ground truth for explanations.
# {doc}`08_weights` shows what the regularization did to the weights.
