"""jaxae: autoencoders in JAX and Flax.

Modules: ``data`` (datasets as uint8 arrays), ``models`` (linen modules), ``latent`` (the
latent-variable protocol), ``layers`` (what they are built of), ``losses`` (pure losses
and the objectives by name), ``optim`` (optimizers and learning-rate schedules by name),
``corruptions`` (noisy and grey inputs), ``train`` (jitted epochs and ``fit`` of one
model), ``seeds`` (several seeds of a model trained at once), ``parallel`` (device mesh,
several processes), ``checkpoint`` (Orbax), ``config`` (a run's Config), ``validation``
(its checks), ``build`` (what it describes, built), ``runner`` (``train_and_evaluate``: a
whole run into a work directory), ``workdir`` (a work directory checked, guarded and
locked), ``seed_run`` (one seed's run from start to summary), ``restore`` (a run read
back: ``restore_run``), ``evaluate`` (reconstructions, codes, PSNR, PCA, IW-NLL),
``probe`` (classifiers on frozen features), ``plots`` and ``epoch_figures`` (figures),
``files`` (atomic writes), ``log_routing`` (logs to a file within a context),
``tensorboard`` (event files).
"""

import importlib

__all__ = [
    "checkpoint",
    "config",
    "corruptions",
    "data",
    "build",
    "epoch_figures",
    "evaluate",
    "files",
    "log_routing",
    "latent",
    "layers",
    "losses",
    "models",
    "optim",
    "parallel",
    "plots",
    "probe",
    "restore",
    "runner",
    "seed_run",
    "seeds",
    "tensorboard",
    "train",
    "validation",
    "workdir",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """``jaxae.<module>`` imports the module when first used, so ``import jaxae`` loads
    neither Orbax nor matplotlib nor TFDS until a module that needs them is touched."""
    if name in __all__:
        return importlib.import_module(f"jaxae.{name}")
    raise AttributeError(f"module 'jaxae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
