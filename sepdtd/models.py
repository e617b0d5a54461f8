"""The paper's networks (Table 1).

Each model is a :class:`PaperNet`, an :class:`torch.nn.Sequential` of the layers the DTD engine
(:mod:`sepdtd.dtd`) understands, taking float images in ``[0, 1]`` of shape ``(B, C, H, W)`` and
returning logits (the softmax lives in the loss, Eq. 5).

- ``"cifar10"``: the classic Keras CIFAR-10 example that Table 1 describes: conv 32 'same', conv 32
  'valid', max-pool, dropout 0.25, conv 64 'same', conv 64 'valid', max-pool, dropout 0.25, dense 512,
  dropout 0.5, dense 10.
- ``"mnist"``: conv 32 (3x3), avg-pool, conv 64 (2x2), avg-pool, dense 512, dense 10.
- ``"fashion_mnist"``: conv 32 (3x3), avg-pool, dense 256, dense 10.

Table 1 says "Dropout was applied during training"; for MNIST and Fashion-MNIST we place it where the
Keras example does (0.25 after each pooling, 0.5 after the hidden dense layer).

Weights are initialised as Keras does (Glorot-uniform weights, zero biases), and biases start at 0 so
the DTD assumption b <= 0 (Section 2.2) holds from the first step; :func:`clamp_biases_` keeps it.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["MODELS", "PaperNet", "build", "clamp_biases_", "dense_layers", "table1", "init_keras_"]

MODELS = ("mnist", "fashion_mnist", "cifar10")


class PaperNet(nn.Sequential):
    """A :class:`torch.nn.Sequential` that knows which data set it was built for.

    Attributes
    ----------
    name : str
        Data set / model name, one of :data:`MODELS`.
    input_shape : tuple of int
        ``(C, H, W)`` of one input image.
    n_classes : int
        Number of outputs (the number of diagonal blocks of Eq. 6).
    """

    def __init__(self, name: str, input_shape: tuple[int, int, int], layers: list[nn.Module]):
        super().__init__(*layers)
        self.name = name
        self.input_shape = tuple(input_shape)
        self.n_classes = int(layers[-1].out_features)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_shape={self.input_shape}"


def _cifar10() -> PaperNet:
    layers = [
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(64 * 6 * 6, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, 10),
    ]
    return PaperNet("cifar10", (3, 32, 32), layers)


def _mnist() -> PaperNet:
    layers = [
        nn.Conv2d(1, 32, 3), nn.ReLU(),
        nn.AvgPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 2), nn.ReLU(),
        nn.AvgPool2d(2), nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(64 * 6 * 6, 512), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(512, 10),
    ]
    return PaperNet("mnist", (1, 28, 28), layers)


def _fashion_mnist() -> PaperNet:
    layers = [
        nn.Conv2d(1, 32, 3), nn.ReLU(),
        nn.AvgPool2d(2), nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(32 * 13 * 13, 256), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(256, 10),
    ]
    return PaperNet("fashion_mnist", (1, 28, 28), layers)


_BUILDERS = {"mnist": _mnist, "fashion_mnist": _fashion_mnist, "cifar10": _cifar10}


def init_keras_(model: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every Conv2d/Linear, in place (Keras' defaults)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def build(name: str, *, seed: int | None = None) -> PaperNet:
    """Build the Table 1 network for data set ``name``.

    Parameters
    ----------
    name : str
        ``"mnist"``, ``"fashion_mnist"`` or ``"cifar10"``.
    seed : int, optional
        If given, the initial weights are drawn after ``torch.manual_seed(seed)`` inside a forked RNG,
        so the same seed gives the same weights and the global RNG state is left untouched.

    Returns
    -------
    PaperNet
        Freshly initialised (Glorot-uniform weights, zero biases), in training mode.
    """
    key = name.replace("-", "_").lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if seed is None:
        return init_keras_(_BUILDERS[key]())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return init_keras_(_BUILDERS[key]())


@torch.no_grad()
def clamp_biases_(model: nn.Module) -> nn.Module:
    """Project every Conv2d/Linear bias onto b <= 0 in place (DTD's assumption, Section 2.2)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.clamp_(max=0.0)
    return model


def dense_layers(model: nn.Module) -> Iterator[nn.Linear]:
    """The model's dense layers (the ones Eq. 6 regularizes), input to output."""
    return (m for m in model.modules() if isinstance(m, nn.Linear))


def table1(model: PaperNet) -> list[dict]:
    """Rows describing ``model`` layer by layer, as in Table 1 (plus output shapes and parameters).

    Each row has ``layer`` (Table 1's notation, e.g. ``Cov(32,3,3)``, ``MaxP``, ``D(512)``), ``type``
    (the torch class name), ``output_shape`` and ``params``. Rows are derived from the module with a
    forward pass on a zero input, so the table cannot drift from the code.
    """
    rows = []
    x = torch.zeros(1, *model.input_shape)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for m in model:
            x = m(x)
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                label = f"Cov({m.out_channels},{kh},{kw})" + (" same" if m.padding != (0, 0) else "")
            elif isinstance(m, nn.Linear):
                label = f"D({m.out_features})"
            elif isinstance(m, nn.MaxPool2d):
                label = "MaxP"
            elif isinstance(m, nn.AvgPool2d):
                label = "AvgP"
            else:
                continue
            rows.append({
                "layer": label,
                "type": type(m).__name__,
                "output_shape": tuple(x.shape[1:]),
                "params": sum(p.numel() for p in m.parameters()),
            })
    model.train(was_training)
    return rows
