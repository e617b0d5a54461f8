r"""The toy network of Figure 2 (Section 3): why explanations of a weaker class diffuse.

The paper's toy example classifies images that contain a blue circle and/or an orange square. The
*input layer* holds the summed colour intensities of the image, one neuron per colour (``blue``,
``orange``), because circles are almost always blue and squares almost always orange. A hidden layer
of two ReLU neurons, one per colour "feature", feeds two outputs, ``circle`` and ``square``. Every
connection has weight :data:`THICK` = 1.0 (a neuron and the class it belongs to) or :data:`THIN` = 0.1
(a neuron and the other class):

.. code-block:: text

    blue   --1.0--> h_circle --1.0--> circle
       \ 0.1       x        0.1 x
    orange --1.0--> h_square --1.0--> square

All biases are zero and every input is non-negative, so the z+ rule (Eq. 3) is used in every layer.
Explaining a class means starting the relevance at that class's output and setting all other outputs
to zero (Figure 2b). For an image in which the circle dominates (e.g. :data:`EXAMPLE_INPUT`, summed
blue intensity 10 and orange 1), the explanation of *square* puts most of its relevance on the blue
input: the highly activated circle neuron passes relevance through its thin (0.1) connection to the
square output, and that alone outweighs the square's own evidence. This is *diffusion*.

Everything here is plain NumPy on a handful of numbers, so each value can be checked by hand (see
``tests/test_toy.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "THIN", "THICK", "INPUTS", "HIDDEN", "OUTPUTS", "EXAMPLE_INPUT",
    "ToyNetwork", "ToyExplanation", "paper_network", "separated_network", "zplus", "explain",
]

THIN = 0.1
"""Weight of a thin connection in Figure 2 (a neuron and the *other* class)."""
THICK = 1.0
"""Weight of a thick connection in Figure 2 (a neuron and *its* class)."""

INPUTS = ("blue", "orange")
"""Input neurons: summed blue and summed orange intensity of the image."""
HIDDEN = ("h_circle", "h_square")
"""Hidden ReLU neurons: the circle-like (blue) and square-like (orange) feature."""
OUTPUTS = ("circle", "square")
"""Output neurons (class scores)."""

EXAMPLE_INPUT = np.array([10.0, 1.0])
"""An image dominated by a large blue circle, with a small orange square: summed blue intensity 10,
summed orange intensity 1."""


@dataclass(frozen=True)
class ToyNetwork:
    """A two-layer ReLU network without biases, weights stored as ``(out, in)`` like ``torch.nn.Linear``.

    Attributes
    ----------
    w_hidden : numpy.ndarray
        ``(2, 2)`` weights from :data:`INPUTS` to :data:`HIDDEN`; ``w_hidden[j, i]`` is the paper's
        :math:`w_{ij}`.
    w_out : numpy.ndarray
        ``(2, 2)`` weights from :data:`HIDDEN` to :data:`OUTPUTS`.
    """

    w_hidden: np.ndarray
    w_out: np.ndarray

    def __post_init__(self) -> None:
        for name in ("w_hidden", "w_out"):
            w = np.asarray(getattr(self, name), dtype=float)
            if w.shape != (2, 2):
                raise ValueError(f"{name} must have shape (2, 2), got {w.shape}")
            object.__setattr__(self, name, w)

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Activations of the hidden layer and the outputs for the input ``x`` (Eq. 2 with b = 0).

        Parameters
        ----------
        x : numpy.ndarray
            ``(2,)`` non-negative summed intensities ``(blue, orange)``.

        Returns
        -------
        hidden, output : numpy.ndarray
            ``(2,)`` each.
        """
        x = _check_input(x)
        hidden = np.maximum(0.0, self.w_hidden @ x)
        return hidden, np.maximum(0.0, self.w_out @ hidden)


def paper_network() -> ToyNetwork:
    """The network of Figure 2: thick (1.0) connections within a class, thin (0.1) across classes."""
    w = np.array([[THICK, THIN], [THIN, THICK]])
    return ToyNetwork(w_hidden=w, w_out=w.copy())


def separated_network() -> ToyNetwork:
    """Figure 2's network with the thin cross-class connections removed (weights 0).

    This is the limit that the block-wise regularization of Section 4 pushes towards: information of
    one class no longer flows into the other class's neurons.
    """
    w = np.array([[THICK, 0.0], [0.0, THICK]])
    return ToyNetwork(w_hidden=w, w_out=w.copy())


def zplus(x: np.ndarray, w: np.ndarray, relevance: np.ndarray) -> np.ndarray:
    r"""Redistribute the relevance of one layer's outputs onto its inputs with the z+ rule (Eq. 3).

    .. math:: R_i = \sum_j \frac{x_i w_{ij}^+}{\sum_{i'} x_{i'} w_{i'j}^+} R_j

    Parameters
    ----------
    x : numpy.ndarray
        ``(n_in,)`` non-negative inputs of the layer.
    w : numpy.ndarray
        ``(n_out, n_in)`` weights (``w[j, i]`` connects input ``i`` to output ``j``).
    relevance : numpy.ndarray
        ``(n_out,)`` relevance of the outputs.

    Returns
    -------
    numpy.ndarray
        ``(n_in,)`` relevance of the inputs. An output whose denominator is zero passes no relevance
        (its relevance is zero anyway for a ReLU neuron without positive input).
    """
    x = np.asarray(x, dtype=float)
    relevance = np.asarray(relevance, dtype=float)
    z = np.asarray(w, dtype=float).clip(min=0.0) * x[None, :]  # z[j, i] = x_i w_ij^+
    denom = z.sum(axis=1)
    share = np.divide(relevance, denom, out=np.zeros_like(relevance), where=denom > 0)
    return (z * share[:, None]).sum(axis=0)


@dataclass(frozen=True)
class ToyExplanation:
    """The z+ explanation of one class of the toy network, layer by layer.

    Attributes
    ----------
    cls : str
        The explained class, one of :data:`OUTPUTS`.
    x, hidden, output : numpy.ndarray
        Activations of the input, hidden and output layer.
    r_output, r_hidden, r_input : numpy.ndarray
        Relevance of each layer's neurons; ``r_output`` is the output of ``cls`` with every other output
        set to zero (Figure 2b).
    """

    cls: str
    x: np.ndarray
    hidden: np.ndarray
    output: np.ndarray
    r_output: np.ndarray
    r_hidden: np.ndarray
    r_input: np.ndarray
    network: ToyNetwork = field(repr=False)

    @property
    def total(self) -> float:
        """Relevance that entered at the output (z+ conserves it: equals ``r_input.sum()``)."""
        return float(self.r_output.sum())

    def input_share(self, name: str) -> float:
        """Fraction of the input relevance on input ``name`` (``"blue"`` or ``"orange"``)."""
        total = float(self.r_input.sum())
        return float(self.r_input[INPUTS.index(name)]) / total if total > 0 else float("nan")


def explain(network: ToyNetwork, x: np.ndarray, cls: str) -> ToyExplanation:
    """Explain class ``cls`` of ``network`` for input ``x`` with the z+ rule in both layers.

    Parameters
    ----------
    network : ToyNetwork
        E.g. :func:`paper_network`.
    x : numpy.ndarray
        ``(2,)`` summed intensities ``(blue, orange)``, non-negative.
    cls : str
        ``"circle"`` or ``"square"``; all other outputs start with zero relevance (Section 3).

    Returns
    -------
    ToyExplanation
    """
    if cls not in OUTPUTS:
        raise ValueError(f"unknown class {cls!r}: choose one of {OUTPUTS}")
    x = _check_input(x)
    hidden, output = network.forward(x)
    r_output = np.zeros_like(output)
    k = OUTPUTS.index(cls)
    r_output[k] = output[k]
    r_hidden = zplus(hidden, network.w_out, r_output)
    r_input = zplus(x, network.w_hidden, r_hidden)
    return ToyExplanation(cls, x, hidden, output, r_output, r_hidden, r_input, network)


def _check_input(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if x.shape != (2,):
        raise ValueError(f"the toy input is (blue, orange), shape (2,); got shape {x.shape}")
    if (x < 0).any():
        raise ValueError(f"summed intensities are non-negative (the z+ rule needs x >= 0); got {x}")
    return x
