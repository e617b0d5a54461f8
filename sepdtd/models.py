"""The paper's networks (Table 1).

Each model is a :class:`PaperNet`, an :class:`torch.nn.Sequential` of the layers the DTD engine
(:mod:`sepdtd.dtd`) understands, taking float images in ``[0, 1]`` of shape ``(B, C, H, W)`` and
returning logits (the softmax lives in the loss, Eq. 5).

- ``"cifar10"``: Table 1's network, which we read as the classic Keras CIFAR-10 example (the paper does
  not name its source): conv 32 'same', conv 32
  'valid', max-pool, dropout 0.25, conv 64 'same', conv 64 'valid', max-pool, dropout 0.25, dense 512,
  dropout 0.5, dense 10.
- ``"mnist"``: conv 32 (3x3), avg-pool, conv 64 (2x2), avg-pool, dense 512, dense 10.
- ``"fashion_mnist"``: conv 32 (3x3), avg-pool, dense 256, dense 10.

Section 5.1 says "Dropout was applied during training to prevent overfitting" but not where; for MNIST
and Fashion-MNIST we place it where the Keras example does (0.25 after each pooling, 0.5 after the
hidden dense layer).

Weights are initialised as Keras does (Glorot-uniform weights, zero biases), and biases start at 0 so
the DTD assumption b <= 0 (Section 2.2) holds from the first step; :func:`clamp_biases_` keeps it.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["MODELS", "PaperNet", "build", "clamp_biases_", "dense_layers", "table1", "init_keras_",
           "BlockDiagonalLinear", "SEPARATE_WIDTHS", "build_separate", "TABLE1_CONV", "conv_layers", "build_depth"]

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


# ----------------------------------------------------------------------------------------------------
# Beyond the paper: separate dense layers per class (Section 4's "intuitive approach") and depth
# ----------------------------------------------------------------------------------------------------
class BlockDiagonalLinear(nn.Linear):
    """A dense layer whose weights are zero off the diagonal blocks, and stay zero during training.

    Output neuron ``j`` may only read inputs of its own block (the blocks of
    :func:`sepdtd.regularization.block_mask`: ``floor(j * n / out) == floor(i * n / in)``). The
    off-block weights are set to 0 at construction and a gradient hook zeroes their gradient, so any
    optimizer without weight decay leaves them at exactly 0 (Adam: zero gradient, zero update). It keeps
    :meth:`torch.nn.Linear.forward`, so :mod:`sepdtd.dtd` and zennit treat it as a Linear layer.

    Parameters
    ----------
    in_features, out_features : int
        Layer size.
    n_blocks : int
        Number of diagonal blocks (the number of classes).
    bias : bool, optional
        With a bias (the default).
    """

    def __init__(self, in_features: int, out_features: int, n_blocks: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        from sepdtd.regularization import block_mask

        self.n_blocks = int(n_blocks)
        self.register_buffer("keep", (~block_mask(out_features, in_features, self.n_blocks)).to(self.weight.dtype))
        self.weight.register_hook(self._mask_grad)
        self.project_()

    def _mask_grad(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * self.keep.to(grad.dtype)

    @torch.no_grad()
    def project_(self) -> BlockDiagonalLinear:
        """Zero the off-block weights in place (e.g. after loading foreign weights)."""
        self.weight.mul_(self.keep.to(self.weight.dtype))
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_blocks={self.n_blocks}"


#: Hidden widths of :func:`build_separate`: ``"split"`` divides Table 1's hidden layer among the classes
#: (about ``width / C`` neurons per class, the same total), ``"full"`` gives every class Table 1's width.
SEPARATE_WIDTHS = ("split", "full")


def build_separate(name: str, *, width: str = "split", seed: int | None = None) -> PaperNet:
    """Table 1's network with *separate dense layers per class* (the "intuitive approach" of Section 4).

    The convolutional trunk is Table 1's and shared by all classes; above it, every class ``c`` has its
    own dense stack ``features -> hidden_c -> f_c`` and no weight connects class ``c``'s hidden
    neurons to another class's output. It is written as one :class:`torch.nn.Linear` (the
    concatenation of the C hidden layers: each reads every feature) followed by a
    :class:`BlockDiagonalLinear` output layer, so it is a plain :class:`PaperNet` that DTD explains. It
    is the hard limit of Eq. 6 on the output layer: the flow of relevance from output ``c`` to the
    features is completely separated from the other classes' (Section 4), while the shared trunk is not.

    Parameters
    ----------
    name : str
        Data set / Table 1 model.
    width : {"split", "full"}
        ``"split"`` (the book's default): Table 1's hidden width divided among the classes (512 ->
        blocks of 51-52 neurons for 10 classes), i.e. the same neurons and about the same parameters and
        training cost as Table 1, only the output layer separated. ``"full"``: every class gets
        Table 1's width (``C x 512`` hidden neurons), what the paper means by "one version of the dense
        layers for each class" — about C times the dense parameters.
    seed : int, optional
        As for :func:`build`.

    Returns
    -------
    PaperNet
        With ``variant`` set to ``"separate-<width>"``.
    """
    if width not in SEPARATE_WIDTHS:
        raise ValueError(f"unknown width {width!r}: choose one of {', '.join(SEPARATE_WIDTHS)}")

    key = name.replace("-", "_").lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")

    def make() -> PaperNet:
        base = _BUILDERS[key]()
        layers = list(base)
        dense = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
        if len(dense) != 2:  # pragma: no cover - every Table 1 network has one hidden dense layer
            raise ValueError(f"{name}: expected one hidden dense layer and the output layer")
        hid, out = layers[dense[0]], layers[dense[1]]
        c = out.out_features
        hidden = hid.out_features if width == "split" else hid.out_features * c
        layers[dense[0]] = nn.Linear(hid.in_features, hidden)
        layers[dense[1]] = BlockDiagonalLinear(hidden, c, n_blocks=c)
        net = PaperNet(base.name, base.input_shape, layers)
        init_keras_(net)
        layers[dense[1]].project_()
        net.variant = f"separate-{width}"
        return net

    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


#: Convolutional layers of each Table 1 network.
TABLE1_CONV = {"mnist": 2, "fashion_mnist": 1, "cifar10": 4}


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv_layers(model: nn.Module) -> int:
    """Number of :class:`torch.nn.Conv2d` layers of ``model``."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def build_depth(name: str, n_conv: int, *, seed: int | None = None) -> PaperNet:
    """Table 1's network with fewer or more convolutional layers (the depth study of the book).

    - ``n_conv`` equal to Table 1's count (:data:`TABLE1_CONV`) gives exactly :func:`build`'s network.
    - Fewer: convolutions are removed one by one (with their ReLU) from the top stage down, and within
      a stage a 'same'-padded one before a 'valid' one. Every pooling layer (and its dropout) stays, so
      the resolution at the dense layers, and with it the dense layers' size, changes as little as the
      removed convolutions allow. ``n_conv = 0`` is a dense network on the pixels (Table 1's dense
      layers on the flattened image): DTD's :math:`z^B` rule must act on the image itself.
    - More: ``n_conv - T`` extra 3x3 convolutions with 'same' padding (+ ReLU), with the channels of
      Table 1's last convolution, are inserted after the last pooling stage, just below the dense
      layers. The dense layers' input size is unchanged, and the added layers work at the smallest
      resolution, so they are cheap; they deepen the trunk exactly where the relevance enters it.

    Parameters
    ----------
    name : str
        Data set / Table 1 model.
    n_conv : int
        Number of convolutional layers, ``>= 0``.
    seed : int, optional
        As for :func:`build`.

    Returns
    -------
    PaperNet
        With ``variant`` set to ``"depth-<n_conv>"``. Dense layers are resized to the new feature count.
    """
    key = name.replace("-", "_").lower()
    if key not in TABLE1_CONV:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    if isinstance(n_conv, bool) or not isinstance(n_conv, int) or n_conv < 0:
        raise ValueError(f"n_conv must be an int >= 0, got {n_conv!r}")

    def make() -> PaperNet:
        base = _BUILDERS[key]()
        layers = list(base)
        flat = next(i for i, m in enumerate(layers) if isinstance(m, nn.Flatten))
        stages: list[list[nn.Module]] = [[]]          # each: convs (+ReLU), then pooling (+dropout)
        for m in layers[:flat]:
            closed = stages[-1] and isinstance(stages[-1][-1], (nn.MaxPool2d, nn.AvgPool2d, nn.Dropout))
            if closed and not isinstance(m, nn.Dropout):
                stages.append([])
            stages[-1].append(m)
        head = layers[flat:]
        t = TABLE1_CONV[key]
        if n_conv > t:
            ch = [m for m in layers[:flat] if isinstance(m, nn.Conv2d)][-1].out_channels
            stages.append([mod for _ in range(n_conv - t) for mod in (nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU())])
        for _ in range(t - n_conv):
            top = max(k for k, st in enumerate(stages) if any(isinstance(m, nn.Conv2d) for m in st))
            st = stages[top]
            convs = [k for k, m in enumerate(st) if isinstance(m, nn.Conv2d)]
            same = [k for k in convs if _pair(st[k].padding) != (0, 0)]
            i = max(same) if same else max(convs)
            del st[i:i + 2]                                      # the convolution and its ReLU
        trunk = [m for st in stages for m in st] if n_conv > 0 else []
        convs = [m for m in trunk if isinstance(m, nn.Conv2d)]
        if convs:                                                # the first left reads the image's channels
            first = convs[0]
            if first.in_channels != base.input_shape[0]:
                trunk[trunk.index(first)] = nn.Conv2d(base.input_shape[0], first.out_channels, first.kernel_size,
                                                      stride=first.stride, padding=first.padding)
            for prev, conv in zip(convs, convs[1:]):
                if conv.in_channels != prev.out_channels:
                    trunk[trunk.index(conv)] = nn.Conv2d(prev.out_channels, conv.out_channels, conv.kernel_size,
                                                         stride=conv.stride, padding=conv.padding)
        with torch.no_grad():
            feats = nn.Sequential(*trunk, nn.Flatten())(torch.zeros(1, *base.input_shape)).shape[1]
        dense = [k for k, m in enumerate(head) if isinstance(m, nn.Linear)]
        head[dense[0]] = nn.Linear(feats, head[dense[0]].out_features)
        net = PaperNet(base.name, base.input_shape, trunk + head)
        net.variant = f"depth-{n_conv}"
        return init_keras_(net)

    if n_conv == TABLE1_CONV[key]:
        net = build(key, seed=seed)
        net.variant = f"depth-{n_conv}"
        return net
    if seed is None:
        return make()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()
