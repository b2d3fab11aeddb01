"""Optimizers and learning-rate schedules by name.

Two plain registries, each a dict from a name to a function:

- :data:`OPTIMIZERS`: ``optimizer(learning_rate, **options) -> optax.GradientTransformation``,
  where ``learning_rate`` is a number or an optax schedule (a function of the step).
- :data:`SCHEDULES`: ``schedule(learning_rate, *, steps_per_epoch, **options) -> number or
  optax schedule``: the learning rate over training, from its peak value.

Options are keyword-only with defaults. A run's :class:`jaxae.config.Config` names both;
the built-ins' options are fields called ``<name>_<option>`` (``adam_eps``,
``stages_count``), and any other option of the run's optimizer or schedule is set by name in
``Config.options`` (``options=("adamw.weight_decay=0.01",)``). An optimizer that is not
registered is looked up in optax (:func:`find_optimizer`): ``optimizer="adamw"`` trains
with ``optax.adamw``. An optimizer that declares a keyword ``batch_size`` also receives the
run's batch size (the loss it sees is the batch's mean)::

    jaxae.optim.OPTIMIZERS["adam_clipped"] = lambda learning_rate, *, clip=1.0: optax.chain(
        optax.clip_by_global_norm(clip), optax.adam(learning_rate)
    )
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def adam(
    learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """Adam (Kingma & Ba, 2015) with optax's defaults; Burda et al. (2015) use ``eps = 1e-4``."""
    return optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)


def sgd(learning_rate: optax.ScalarOrSchedule, *, momentum: float = 0.9) -> optax.GradientTransformation:
    """Stochastic gradient descent with heavy-ball momentum (``momentum = 0``: plain SGD)."""
    return optax.sgd(learning_rate, momentum=momentum or None)


class AdamIwaeState(NamedTuple):
    """:func:`scale_by_adam_iwae`'s state: steps taken, first and second moments."""

    count: jax.Array  # type: ignore[assignment]  # a field named as optax's states name theirs
    mu: optax.Updates
    nu: optax.Updates


def scale_by_adam_iwae(
    *, b1: float = 0.99, b2: float = 0.999, eps: float = 1e-4, batch_size: int = 20
) -> optax.GradientTransformation:
    """The Adam of Burda et al.'s published code (``optimizers.py`` of yburda/iwae), the rule
    that produced the paper's Table 1, as a direction to be scaled by the learning rate.

    Step ``t = 1, 2, ...`` with gradient ``g_t`` of the loss summed over the batch (the
    gradient of the batch-mean loss times ``batch_size``):
    ``direction_t = sqrt(1 - b2^t) / (1 - b1^t) * m_{t-1} / (sqrt(v_{t-1}) + eps)``, then
    ``m_t = b1 m_{t-1} + (1 - b1) g_t`` and ``v_t = b2 v_{t-1} + (1 - b2) g_t^2``, from
    ``m_0 = 0`` and ``v_0 = 1``. The code's Theano updates read every variable as it was
    before the step, so a gradient moves the parameters from the next step on (the first
    step moves nothing), and ``eps`` is added to the uncorrected ``sqrt(v)``.
    """

    def init(params: optax.Params) -> AdamIwaeState:
        return AdamIwaeState(
            count=jnp.zeros([], jnp.int32),
            mu=jax.tree.map(jnp.zeros_like, params),
            nu=jax.tree.map(jnp.ones_like, params),
        )

    def update(grads: optax.Updates, state: AdamIwaeState, params: optax.Params | None = None):
        del params
        step = (state.count + 1).astype(jnp.float32)
        correction = jnp.sqrt(1 - b2**step) / (1 - b1**step)
        direction = jax.tree.map(lambda m, v: correction * m / (jnp.sqrt(v) + eps), state.mu, state.nu)
        summed = jax.tree.map(lambda g: g * batch_size, grads)
        mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, summed)
        nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, summed)
        return direction, AdamIwaeState(optax.safe_increment(state.count), mu, nu)

    return optax.GradientTransformation(init, update)


def adam_iwae(
    learning_rate: optax.ScalarOrSchedule,
    *,
    b1: float = 0.99,
    b2: float = 0.999,
    eps: float = 1e-4,
    batch_size: int = 20,
) -> optax.GradientTransformation:
    """Burda et al.'s code's Adam (:func:`scale_by_adam_iwae`) at ``learning_rate``: its
    beta1 0.99, second moment from 1, epsilon 1e-4 on the loss summed over the batch."""
    return optax.chain(
        scale_by_adam_iwae(b1=b1, b2=b2, eps=eps, batch_size=batch_size), optax.scale_by_learning_rate(learning_rate)
    )


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformation]] = {"adam": adam, "adam_iwae": adam_iwae, "sgd": sgd}


def find_optimizer(name: str) -> Callable[..., optax.GradientTransformation] | None:
    """The optimizer called ``name``: the one registered in :data:`OPTIMIZERS`, else optax's
    function of that name whose first parameter is ``learning_rate`` (``adamw``, ``lion``,
    ``adafactor`` ...), else None."""
    if name in OPTIMIZERS:
        return OPTIMIZERS[name]
    function = getattr(optax, name, None)
    if not inspect.isfunction(function):
        return None
    return function if list(inspect.signature(function).parameters)[:1] == ["learning_rate"] else None


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
        if epoch * steps_per_epoch >= 2**31:  # a step no run reaches (the step count is int32)
            break
        boundaries[epoch * steps_per_epoch] = decay
    return optax.piecewise_constant_schedule(learning_rate, boundaries)


def stage_epochs(count: int = 8, growth: int = 3) -> int:
    """Epochs in the first ``count`` stages of :func:`stages`: ``sum(growth**i)``."""
    return sum(growth**stage for stage in range(count))


SCHEDULES: dict[str, Callable[..., optax.ScalarOrSchedule]] = {"constant": constant, "stages": stages}
