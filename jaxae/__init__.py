"""jaxae: autoencoders in JAX and Flax.

Modules: ``data`` (datasets as uint8 arrays), ``models`` (linen modules), ``losses``
(pure losses and objectives), ``corruptions`` (noisy and grey inputs), ``train``
(jitted epochs and ``fit``), ``parallel`` (device mesh, several processes),
``checkpoint`` (Orbax), ``evaluate`` (reconstructions, codes, PSNR, PCA), ``probe``
(classifiers on frozen features), ``plots`` (figures), ``experiment`` (a whole run into
a work directory, and back), ``files`` (atomic writes).
"""

from jaxae import (
    checkpoint,
    corruptions,
    data,
    evaluate,
    experiment,
    files,
    losses,
    models,
    parallel,
    plots,
    probe,
    train,
)

__all__ = [
    "checkpoint",
    "corruptions",
    "data",
    "evaluate",
    "experiment",
    "files",
    "losses",
    "models",
    "parallel",
    "plots",
    "probe",
    "train",
]
__version__ = "0.1.0"
