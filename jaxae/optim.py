"""Optimizers and learning-rate schedules by name.

Two plain registries, each a dict from a name to a function:

- :data:`OPTIMIZERS`: ``optimizer(learning_rate, **options) -> optax.GradientTransformation``,
  where ``learning_rate`` is a number or an optax schedule (a function of the step).
- :data:`SCHEDULES`: ``schedule(learning_rate, *, steps_per_epoch, **options) -> number or
  optax schedule``: the learning rate over training, from its peak value.

Options are keyword-only with defaults. A run's :class:`jaxae.config.Config` names both
and carries their options as fields called ``<name>_<option>`` (``adam_eps``,
``stages_count``); a function registered from Python takes the options the Config has
under its name and its own defaults for the rest::

    jaxae.optim.OPTIMIZERS["adamw"] = lambda learning_rate, *, weight_decay=1e-4: optax.adamw(
        learning_rate, weight_decay=weight_decay
    )
"""

from __future__ import annotations

from collections.abc import Callable

import optax


def adam(
    learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba, 2015) with optax's defaults; Burda et al. (2015) use ``eps = 1e-4``."""
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def sgd(learning_rate: optax.ScalarOrSchedule, *, momentum: float = 0.9) -> optax.GradientTransformation:
    """Stochastic gradient descent with heavy-ball momentum (``momentum = 0``: plain SGD)."""
    return optax.sgd(learning_rate, momentum=momentum or None)


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {"adam": adam, "sgd": sgd}


def constant(learning_rate: float, *, steps_per_epoch: int) -> optax.ScalarOrSchedule:
    """The same rate throughout. A number, not a schedule function, so the optimizer state
    has no step count of its own (and checkpoints of constant-rate runs keep one layout)."""
    del steps_per_epoch
    return learning_rate


def stages(
    learning_rate: float, *, steps_per_epoch: int, count: int = 8, growth: int = 3, decay: float = 10 ** (-1 / 7)
) -> optax.Schedule:
    """Burda et al.'s (2015) schedule: stage ``i = 0 .. count-1`` runs ``growth**i`` epochs at
    ``learning_rate * decay**i``; after the last stage the rate stays at its value.

    The defaults are the paper's: 8 stages of 1, 3, 9, ..., 2187 epochs (3280 in all),
    the rate falling from 1e-3 by a factor ``10**(-1/7)`` per stage, to 1e-4 in the last.
    """
    boundaries, epoch = {}, 0
    for stage in range(1, count):
        epoch += growth ** (stage - 1)
        boundaries[epoch * steps_per_epoch] = decay
    return optax.piecewise_constant_schedule(learning_rate, boundaries)


def stage_epochs(count: int = 8, growth: int = 3) -> int:
    """Epochs in the first ``count`` stages of :func:`stages`: ``sum(growth**i)``."""
    return sum(growth**stage for stage in range(count))


SCHEDULES: dict[str, Callable[..., optax.ScalarOrSchedule]] = {"constant": constant, "stages": stages}
