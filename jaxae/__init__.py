"""jaxae: autoencoders in JAX and Flax.

Modules: ``data`` (datasets as uint8 arrays), ``models`` (linen modules), ``losses``
(pure losses and the objectives by name), ``optim`` (optimizers and learning-rate
schedules by name), ``corruptions`` (noisy and grey inputs), ``train`` (jitted epochs and
``fit``), ``parallel`` (device mesh, several processes), ``checkpoint`` (Orbax),
``config`` (a run's Config and what it builds), ``experiment`` (``train_and_evaluate``: a
whole run into a work directory), ``workdir`` (a work directory checked, written and read
back with ``restore_run``), ``evaluate`` (reconstructions, codes, PSNR, PCA, IW-NLL),
``probe`` (classifiers on frozen features), ``plots`` and ``epoch_figures`` (figures),
``files`` (atomic writes).
"""

from jaxae import (
    checkpoint,
    config,
    corruptions,
    data,
    epoch_figures,
    evaluate,
    experiment,
    files,
    losses,
    models,
    optim,
    parallel,
    plots,
    probe,
    train,
    workdir,
)

__all__ = [
    "checkpoint",
    "config",
    "corruptions",
    "data",
    "epoch_figures",
    "evaluate",
    "experiment",
    "files",
    "losses",
    "models",
    "optim",
    "parallel",
    "plots",
    "probe",
    "train",
    "workdir",
]
__version__ = "0.1.0"
