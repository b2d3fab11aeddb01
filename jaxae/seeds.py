"""Several seeds of one model, trained as one program.

Their states and keys are stacked along a leading seed axis ``(S, ...)`` and each
per-model function of :mod:`jaxae.train` is vmapped over that axis: every model trains
exactly as it would alone with its own key, on the same images in its own order. On a CPU
S small models share each matrix product; on an accelerator they fill it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import train
from jaxae.losses import Objective


def vectorize(fn: Callable, in_axes: tuple) -> Callable:
    """``fn`` over a leading seed axis of the arguments whose ``in_axes`` entry is 0."""
    return jax.vmap(fn, in_axes=in_axes)


@jax.jit
def stack(trees: list):
    """Pytrees of one seed each -> one pytree with a leading seed axis (one program for the
    whole tree, not one eager op and compile per leaf shape)."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


@jax.jit
def unstack(tree, index: int):
    """One seed's slice of a stacked pytree (one program for every seed's index)."""
    return jax.tree.map(lambda leaf: leaf[index], tree)


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """``jax.random.key(s)`` for each seed, stacked ``(S,)``."""
    return jnp.stack([jax.random.key(seed) for seed in seeds])


def create_states(
    model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, int, int], *, keys: jax.Array
) -> train.TrainState:
    """One fresh state per key of ``keys (S,)`` (:func:`jaxae.train.create_state`), stacked."""
    return stack([train.create_state(model, tx, image_shape, key=key) for key in keys])


def start(
    model: nn.Module, tx: optax.GradientTransformation, image_shape: tuple[int, int, int], seeds: Sequence[int]
) -> tuple[train.TrainState, jax.Array, train.Vectorize]:
    """Fresh training of one seed or several: the state (stacked over the seeds when
    several), the key (``(S,)`` when several) and the ``vectorize`` that the per-model
    functions of :mod:`jaxae.train` take for them (``make_train_epoch``, ``epoch_key``)."""
    if len(seeds) == 1:
        key = jax.random.key(seeds[0])
        return train.create_state(model, tx, image_shape, key=key), key, train.one_model
    keys = seed_keys(seeds)
    return create_states(model, tx, image_shape, keys=keys), keys, vectorize


def seed_record(record: dict, index: int) -> dict:
    """One seed's figures of an epoch's record, whose per-seed figures are lists."""
    return {name: value[index] if isinstance(value, list) else value for name, value in record.items()}


def fit(
    states: list[train.TrainState],
    model: nn.Module,
    objective: Objective,
    train_images: np.ndarray,
    test_images: np.ndarray,
    *,
    keys: list[jax.Array],
    on_epoch_end: Callable[[list[train.TrainState], dict], None] | None = None,
    **options,
) -> list[train.TrainState]:
    """:func:`jaxae.train.fit` of one model per state, each with its key of ``keys``; one
    model trains alone, several at once.

    ``on_epoch_end(states, record)`` receives each seed's state after the epoch and the
    epoch's record, whose figures are lists over the seeds when there are several
    (:func:`seed_record` picks one seed's). ``options`` are :func:`jaxae.train.fit`'s.

    Returns:
        Each seed's final state.
    """
    if len(states) == 1:
        one = None if on_epoch_end is None else lambda state, record: on_epoch_end([state], record)
        state, _ = train.fit(
            states[0], model, objective, train_images, test_images, key=keys[0], on_epoch_end=one, **options
        )
        return [state]

    def end(state: train.TrainState, record: dict) -> None:
        if on_epoch_end is not None:
            on_epoch_end([unstack(state, i) for i in range(len(states))], record)

    state, _ = train.fit(
        stack(states),
        model,
        objective,
        train_images,
        test_images,
        key=jnp.stack(keys),
        on_epoch_end=end,
        vectorize=vectorize,
        **options,
    )
    return [unstack(state, i) for i in range(len(states))]
