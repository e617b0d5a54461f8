"""sepdtd — a reproducible companion to *Separable explanations of neural network decisions* (Rieger).

Modules, one concept each: :mod:`sepdtd.data` (data sets), :mod:`sepdtd.models` (Table 1),
:mod:`sepdtd.dtd` (Deep Taylor Decomposition, Eq. 1-4), :mod:`sepdtd.regularization` (Eq. 5-6),
:mod:`sepdtd.metrics` (Eq. 7), :mod:`sepdtd.training`, :mod:`sepdtd.experiments`, :mod:`sepdtd.plots`,
:mod:`sepdtd.report`. Importing the package imports none of torchvision.
"""
__version__ = "0.1.0"
