"""jaxae: autoencoders in JAX and Flax.

Modules: ``data`` (datasets as uint8 arrays), ``models`` (linen modules), ``losses``
(pure losses and objectives), ``train`` (jitted epochs and ``fit``), ``checkpoint``
(Orbax), ``plots`` (figures), ``experiment`` (a whole run into a work directory),
``files`` (atomic writes).
"""

from jaxae import checkpoint, data, experiment, files, losses, models, plots, train

__all__ = ["checkpoint", "data", "experiment", "files", "losses", "models", "plots", "train"]
__version__ = "0.1.0"
