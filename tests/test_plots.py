"""The book's figure functions: what they draw, on which colour scale, and the saved provenance."""
from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

matplotlib.use("Agg")

from sepdtd import plots, regularization, toy


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    matplotlib.pyplot.close("all")


def _images(fig):
    return [im for ax in fig.axes for im in ax.get_images()]


def test_save_figure_writes_png_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("SEPDTD_FIGURES", str(tmp_path / "figs"))
    fig, ax = matplotlib.pyplot.subplots()
    ax.plot([0, 1], [1, 0])
    prov = {"commit": "abc123", "profile": "quick", "seeds": [0], "config_hashes": ["f00"]}
    path = plots.save_figure(fig, "figure9", prov)
    assert path == tmp_path / "figs" / "figure9.png"
    with Image.open(path) as im:
        assert im.text["Title"] == "figure9"
        assert json.loads(im.text["Description"]) == prov
    with pytest.raises(ValueError):
        plots.save_figure(fig, "../escape", prov)


def test_figures_dir_defaults_to_the_book_root(tmp_path, monkeypatch):
    monkeypatch.delenv("SEPDTD_FIGURES", raising=False)
    (tmp_path / "_toc.yml").write_text("root: intro\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert plots.figures_dir() == tmp_path / "_build" / "figures"


def test_toy_network_draws_weights_and_relevance():
    net = toy.paper_network()
    expl = [toy.explain(net, toy.EXAMPLE_INPUT, c) for c in toy.OUTPUTS]
    fig = plots.toy_network(expl)
    assert len(fig.axes) == 2
    texts = [t.get_text() for t in fig.axes[1].texts]
    assert "R = 2" in texts and "R = 1.01" in texts          # square's input relevance (Figure 2b)
    assert texts.count("0.1") == 4 and texts.count("1.0") == 4  # thin and thick connections
    assert "66%" in fig.axes[1].get_title()


def test_heatmap_grid_scales_each_heatmap_and_draws_similarity():
    h = np.stack([np.full((4, 4), v) for v in (1.0, -2.0, 4.0)])
    h[:, 0, 0] = 0.0
    fig = plots.heatmap_grid(torch.zeros(3, 4, 4, dtype=torch.uint8), h, ["a", "b", "c"],
                             similarity=np.eye(3), ncols=3)
    ims = _images(fig)
    assert len(ims) == 1 + 3 + 1                               # image, 3 heatmaps, similarity matrix
    assert [im.get_clim() for im in ims[1:4]] == [(-1.0, 1.0), (-2.0, 2.0), (-4.0, 4.0)]
    assert all(im.get_cmap().name == "bwr" for im in ims[1:4])
    fig = plots.heatmap_grid(torch.zeros(1, 4, 4), h, ["a", "b", "c"], scale="shared")
    assert {im.get_clim() for im in _images(fig)[1:]} == {(-4.0, 4.0)}
    with pytest.raises(ValueError):
        plots.heatmap_grid(torch.zeros(1, 4, 4), h, ["a", "b"])


def test_heatmap_comparison_uses_one_colour_scale():
    hm = {"baseline": np.stack([np.ones((5, 5)), -np.ones((5, 5))]),
          "λ = 1.0": np.stack([np.full((5, 5), 0.5), np.zeros((5, 5))])}
    fig = plots.heatmap_comparison(torch.zeros(3, 5, 5, dtype=torch.uint8), hm, ["plane", "car"],
                                   probabilities={"baseline": (0.6, 0.3), "λ = 1.0": (0.5, 0.4)})
    heat = [im for im in _images(fig) if im.get_cmap().name == "bwr"]
    assert len(heat) == 2 * 3                                  # two classes and their difference, per row
    assert {im.get_clim() for im in heat} == {(-2.0, 2.0)}     # |baseline difference| = 2 sets the scale
    np.testing.assert_allclose(heat[2].get_array(), 2.0)       # plane - car of the baseline
    titles = [ax.get_title() for ax in fig.axes]
    assert "plane (p = 0.60)" in titles and "car (p = 0.40)" in titles


def test_training_curves_one_row_per_group():
    hist = {"train_loss": [2.0, 1.0], "val_loss": [1.5, 1.2], "val_accuracy": [0.5, 0.7]}
    fig = plots.training_curves({"MNIST": {"baseline": hist}, "CIFAR10": {"baseline": hist, "λ": hist}})
    assert len(fig.axes) == 6
    line = fig.axes[2].get_lines()[0]
    np.testing.assert_array_equal(line.get_xdata(), [1, 2])
    np.testing.assert_array_equal(line.get_ydata(), [0.5, 0.7])
    assert len(fig.axes[5].get_lines()) == 2


def test_against_penalty_plots_the_metric_over_a_decreasing_log_penalty():
    fast = {"penalty": [100.0, 10.0, 0.0], "val_accuracy": [0.7, 0.6, 0.65]}
    slow = {"penalty": [300.0, 200.0], "val_accuracy": [0.8, 0.75]}
    fig = plots.against_penalty({"CIFAR10": {"fast": fast, "slow": slow}}, reference={"CIFAR10": 0.8})
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["fast", "slow", "baseline"]
    np.testing.assert_array_equal(lines[0].get_xdata(), [100.0, 10.0])      # S = 0 has no place on a log axis
    np.testing.assert_array_equal(lines[0].get_ydata(), [0.7, 0.6])
    np.testing.assert_array_equal(lines[2].get_ydata(), [0.8, 0.8])
    assert ax.get_xscale() == "log" and ax.xaxis_inverted()


def test_block_mask_greys_the_penalised_weights():
    mask = regularization.block_mask(4, 6, 2)
    fig = plots.block_mask({"layer": mask}, n_blocks=2)
    data = np.asarray(_images(fig)[0].get_array())
    assert data.shape == (4, 6)
    np.testing.assert_array_equal(data < 1.0, mask.numpy())    # grey exactly where Eq. 6 applies
    with pytest.raises(ValueError):
        plots.block_mask({"a": mask, "b": mask}, n_blocks=[2])


def test_dense_weights_centred_bwr_with_shares():
    w = {"baseline": np.array([[1.0, -0.5], [0.2, -3.0]]), "λ = 1.0": np.array([[0.1, 0.0], [0.0, 0.4]])}
    fig = plots.dense_weights(w, 2, shares={"baseline": 0.25, "λ = 1.0": 1.0}, expected=0.5,
                              clip_percentile=100)
    ims = _images(fig)
    assert all(im.get_cmap().name == "bwr" for im in ims)
    assert {im.get_clim() for im in ims} == {(-3.0, 3.0)}      # centred at 0, one scale
    assert "100.0%" in fig.axes[1].get_title() and "no structure: 50.0%" in fig.axes[0].get_title()


def test_as_image_layouts():
    rgb = plots.as_image(torch.full((3, 2, 2), 255, dtype=torch.uint8))
    assert rgb.shape == (2, 2, 3) and rgb.max() == 1.0
    assert plots.as_image(np.zeros((1, 2, 2))).shape == (2, 2)
    with pytest.raises(ValueError):
        plots.as_image(np.zeros((2, 2)))
