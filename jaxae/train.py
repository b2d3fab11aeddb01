"""Training: a TrainState, jit-compiled epochs, evaluation over a whole split, and `fit`.

One epoch is one jitted call. The dataset sits on the device as uint8; the epoch shuffles
it with its key and ``lax.scan`` walks the batches, so the host loop runs once per epoch.
The last partial batch is padded and masked, never dropped: every image counts once per
epoch in training and in evaluation.

Every jitted function runs over a device mesh (:mod:`jaxae.parallel`): each batch is
split over all devices, the state and data are replicated, and XLA sums the gradients
across devices. The batch size is global: it must divide by the number of devices.

Randomness is explicit. ``fit`` derives every epoch's key as ``fold_in(train_key, epoch)``,
so a run resumed from epoch ``k`` draws exactly the keys an uninterrupted run would.

This module trains one model. Each per-model function goes through a ``vectorize(fn,
in_axes)`` that leaves it as it is; :mod:`jaxae.seeds` passes ``jax.vmap`` instead, to
train several seeds at once.
"""

from __future__ import annotations

import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from jaxae import models, parallel
from jaxae.losses import Objective

TrainState = train_state.TrainState
EpochCallback = Callable[[TrainState, dict], None]
Vectorize = Callable[[Callable, tuple], Callable]  # (fn, in_axes) -> fn over a batch of models, or fn


def one_model(fn: Callable, in_axes: tuple) -> Callable:
    """The default ``vectorize``: ``fn`` as it is, for one model."""
    return fn


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch."""


def create_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, int, int],
    *,
    key: jax.Array,
    output_bias: np.ndarray | None = None,
) -> TrainState:
    """Initialises parameters and optimizer state for images of ``image_shape`` (H, W, C);
    ``output_bias (H*W*C,)``, when given, replaces the decoder's last bias
    (:func:`jaxae.models.with_output_bias`)."""
    params = init_params(model, image_shape, key)
    if output_bias is not None:
        params = models.with_output_bias(model, params, jnp.asarray(output_bias))
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    return state.replace(step=jnp.zeros((), jnp.int32))  # an array, so checkpoints restore its dtype


def init_params(model: nn.Module, image_shape: tuple[int, int, int], key: jax.Array) -> dict:
    """Fresh parameters of ``model`` for images of ``image_shape`` (H, W, C), drawn from ``key``."""
    params_key, noise_key = jax.random.split(key)
    return _init_function(model, tuple(image_shape))(params_key, noise_key)


@functools.cache
def _init_function(model: nn.Module, image_shape: tuple[int, int, int]) -> Callable:
    # One compiled initialiser per model and shape: compiling it takes seconds on a CPU.
    dummy = np.zeros((1, *image_shape), np.float32)  # not a jax array: safe to build under a trace
    return jax.jit(lambda params_key, noise_key: model.init(params_key, dummy, key=noise_key))


def to_float(images: jax.Array) -> jax.Array:
    """uint8 ``(N, H, W, C)`` -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def batch_indices(order: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array]:
    """Cuts an index order ``(N,)`` into ``(B, batch_size)`` indices and a 0/1 mask.

    The last batch is padded with index 0 and mask 0.
    """
    n = order.shape[0]
    num_batches = math.ceil(n / batch_size)
    pad = num_batches * batch_size - n
    indices = jnp.concatenate([order, jnp.zeros(pad, order.dtype)]).reshape(num_batches, batch_size)
    mask = (jnp.arange(num_batches * batch_size) < n).astype(jnp.float32).reshape(num_batches, batch_size)
    return indices, mask


def _masked_sums(loss: jax.Array, metrics: dict, mask: jax.Array) -> dict:
    sums = {name: jnp.sum(value * mask) for name, value in metrics.items()}
    return {"loss": jnp.sum(loss * mask), **sums, "count": jnp.sum(mask)}


def _means(sums: dict) -> dict:
    """Per-batch sums ``(B,)`` -> per-example means over the whole pass."""
    totals = jax.tree.map(jnp.sum, sums)
    count = totals.pop("count")
    return {name: value / count for name, value in totals.items()}


def make_train_step(model: nn.Module, objective: Objective) -> Callable:
    """``train_step(state, images uint8 (B, H, W, C), mask (B,), key) -> (state, sums)``."""

    def train_step(state: TrainState, images: jax.Array, mask: jax.Array, key: jax.Array):
        x = to_float(images)

        def loss_fn(params):
            loss, metrics = objective(model, params, x, x, key)
            return jnp.sum(loss * mask) / jnp.sum(mask), (loss, metrics)

        grads, (loss, metrics) = jax.grad(loss_fn, has_aux=True)(state.params)
        return state.apply_gradients(grads=grads), _masked_sums(loss, metrics, mask)

    return train_step


def make_train_epoch(
    model: nn.Module,
    objective: Objective,
    batch_size: int,
    *,
    mesh: jax.sharding.Mesh | None = None,
    vectorize: Vectorize = one_model,
) -> Callable:
    """A jitted ``train_epoch(state, images uint8 (N, H, W, C), key) -> (state, means)``.

    Each global batch of ``batch_size`` images is split over the devices of ``mesh``
    (default: all devices). ``vectorize`` is applied to the epoch of one model with the
    in_axes ``(0, None, 0)`` (see :mod:`jaxae.seeds`). The state argument is donated: do
    not use it after the call.

    Raises:
        ValueError: ``batch_size`` does not divide by the number of devices.
    """
    mesh = parallel.data_mesh() if mesh is None else mesh
    parallel.check_batch_size(batch_size, mesh)
    split = parallel.batch_sharding(mesh)
    train_step = make_train_step(model, objective)

    def train_epoch(state: TrainState, images: jax.Array, key: jax.Array):
        order_key, steps_key = jax.random.split(key)
        indices, mask = batch_indices(jax.random.permutation(order_key, images.shape[0]), batch_size)
        step_keys = jax.random.split(steps_key, indices.shape[0])

        rows = images.reshape(images.shape[0], -1)  # gather whole rows, not (H, W, 1) blocks

        def body(state, batch):
            batch_indices_, batch_mask, step_key = parallel_batch(batch, split)
            batch_images = rows[batch_indices_].reshape(-1, *images.shape[1:])  # each device gathers its slice
            return train_step(state, batch_images, batch_mask, step_key)

        state, sums = jax.lax.scan(body, state, (indices, mask, step_keys))
        return state, _means(sums)

    return _jit_over_mesh(vectorize(train_epoch, (0, None, 0)), mesh, donate=True)


def parallel_batch(batch: tuple[jax.Array, jax.Array, jax.Array], sharding) -> tuple:
    """Splits a batch's indices and mask over the devices; the key stays whole."""
    indices, mask, key = batch
    constrain = jax.lax.with_sharding_constraint
    return constrain(indices, sharding), constrain(mask, sharding), key


# XLA:CPU's default copy insertion copies a scanned epoch's parameters and optimizer moments
# at every step when an update reads a value's old version beside the new one (adam_iwae's
# direction reads both old moments): 42 copies a step for Burda et al.'s 1-layer model, 20%
# of a batch-20 step. Region-based analysis sees that the reads come first and drops them;
# the results are bit for bit the same.
CPU_COMPILER_OPTIONS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def compiler_options(mesh: jax.sharding.Mesh) -> dict[str, bool]:
    """XLA options for programs over ``mesh``: :data:`CPU_COMPILER_OPTIONS` when its devices
    are CPUs, less any option that the user's ``XLA_FLAGS`` sets (theirs wins)."""
    if mesh.devices.flat[0].platform != "cpu":
        return {}
    flags = os.environ.get("XLA_FLAGS", "")
    return {name: value for name, value in CPU_COMPILER_OPTIONS.items() if f"--{name}" not in flags}


def _jit_over_mesh(fn: Callable, mesh: jax.sharding.Mesh, *, donate: bool = False) -> Callable:
    """``jax.jit`` with every argument and result replicated over ``mesh``, compiled with
    :func:`compiler_options`.

    Arguments on other devices are moved there (one process); with several processes
    pass arrays made by :func:`jaxae.parallel.replicate`.
    """
    replicated = parallel.replicated(mesh)
    return jax.jit(
        fn,
        in_shardings=replicated,
        out_shardings=replicated,
        donate_argnums=0 if donate else (),
        compiler_options=compiler_options(mesh),
    )


def make_evaluate(
    model: nn.Module,
    objectives: dict[str, Objective],
    batch_size: int = 1000,
    *,
    mesh: jax.sharding.Mesh | None = None,
    vectorize: Vectorize = one_model,
) -> Callable:
    """A jitted ``evaluate(params, images uint8 (N, H, W, C), key) -> {name: means}`` over all N images.

    One pass over the images scores every objective of ``objectives``, each with the
    batch's key. Batches of about ``batch_size`` (rounded up to a multiple of the device
    count) are split over the devices of ``mesh`` (default: all). ``vectorize`` as in
    :func:`make_train_epoch`.
    """
    mesh = parallel.data_mesh() if mesh is None else mesh
    split = parallel.batch_sharding(mesh)

    def evaluate(params, images: jax.Array, key: jax.Array):
        size = -(-min(batch_size, images.shape[0]) // mesh.size) * mesh.size
        indices, mask = batch_indices(jnp.arange(images.shape[0]), size)
        keys = jax.random.split(key, indices.shape[0])

        rows = images.reshape(images.shape[0], -1)

        def body(_, batch):
            batch_indices_, batch_mask, batch_key = parallel_batch(batch, split)
            x = to_float(rows[batch_indices_]).reshape(-1, *images.shape[1:])
            sums = {}
            for name, objective in objectives.items():
                loss, metrics = objective(model, params, x, x, batch_key)
                sums[name] = _masked_sums(loss, metrics, batch_mask)
            return None, sums

        _, sums = jax.lax.scan(body, None, (indices, mask, keys))
        return {name: _means(totals) for name, totals in sums.items()}

    return _jit_over_mesh(vectorize(evaluate, (0, None, 0)), mesh)


# The training objective's name among those fit scores the test set with: its metrics are
# recorded as test_<metric>, the others' as test_<name>_<metric>. (A space: no registered name.)
TRAINING_OBJECTIVE = "training objective"


def epoch_key(key: jax.Array, epoch: int, *, vectorize: Vectorize = one_model) -> jax.Array:
    """The key of ``epoch``: ``fold_in(key, epoch)``."""
    return vectorize(jax.random.fold_in, (0, None))(key, epoch)


def fit(
    state: TrainState,
    model: nn.Module,
    objective: Objective,
    train_images: np.ndarray,
    test_images: np.ndarray,
    *,
    key: jax.Array,
    epochs: int,
    batch_size: int,
    start_epoch: int = 0,
    on_epoch_end: EpochCallback | None = None,
    mesh: jax.sharding.Mesh | None = None,
    vectorize: Vectorize = one_model,
    evaluate_with: dict[str, Objective] | None = None,
    eval_batch_size: int = 1000,
) -> tuple[TrainState, list[dict]]:
    """Trains epochs ``start_epoch + 1 .. epochs`` and evaluates on the test set after each.

    Args:
        state: the state after ``start_epoch`` epochs (fresh: 0).
        train_images, test_images: uint8 ``(N, H, W, C)``; put on the device once.
        key: the run's training key; epoch ``e`` trains with ``fold_in(key, e)`` and every
            evaluation uses the same key, so test figures compare across epochs.
        on_epoch_end: called as ``on_epoch_end(state, record)`` after each epoch.
        mesh: the devices to train on (default: all, over all processes); ``batch_size``
            is the global batch. Every process passes the same arguments.
        vectorize: applied to each function of one model with its in_axes; ``jax.vmap``
            trains ``S`` models at once, ``state`` and ``key`` carrying a leading axis
            (:func:`jaxae.seeds.fit`).
        evaluate_with: more objectives to score the test set with, by name, besides
            the training objective (a tighter bound, the ELBO of a model trained on
            another objective).
        eval_batch_size: test images per evaluation batch.

    Returns:
        The final state and one record per epoch trained: ``epoch``, ``train_<metric>``,
        ``test_<metric>`` (``loss`` and the training objective's metrics),
        ``test_<name>_<metric>`` for each objective of ``evaluate_with``, and
        ``epoch_seconds``. Over ``S`` models each metric is a list of ``S`` values.

    Raises:
        TrainingDiverged: a loss became NaN or infinite; ``state`` from before that epoch
            was already handed to ``on_epoch_end``.
    """
    keys = vectorize(jax.random.split, (0,))(key)
    train_key, eval_key = keys[..., 0], keys[..., 1]
    mesh = parallel.data_mesh() if mesh is None else mesh
    train_epoch = make_train_epoch(model, objective, batch_size, mesh=mesh, vectorize=vectorize)
    objectives = {TRAINING_OBJECTIVE: objective, **(evaluate_with or {})}
    evaluate = make_evaluate(model, objectives, eval_batch_size, mesh=mesh, vectorize=vectorize)
    state, train_images, test_images, train_key, eval_key = parallel.replicate(
        (state, train_images, test_images, train_key, eval_key), mesh
    )
    history = []
    for epoch in range(start_epoch + 1, epochs + 1):
        start = time.perf_counter()
        state, train_means = train_epoch(state, train_images, epoch_key(train_key, epoch, vectorize=vectorize))
        test_means = evaluate(state.params, test_images, eval_key)
        train_means, test_means = jax.device_get((train_means, test_means))
        record: dict[str, Any] = {"epoch": epoch}
        record |= {f"train_{name}": np.asarray(value).tolist() for name, value in train_means.items()}
        for objective_name, means in test_means.items():
            prefix = "test_" if objective_name == TRAINING_OBJECTIVE else f"test_{objective_name}_"
            record |= {f"{prefix}{name}": np.asarray(value).tolist() for name, value in means.items()}
        record["epoch_seconds"] = time.perf_counter() - start
        if not np.all(np.isfinite([record["train_loss"], record["test_loss"]])):
            raise TrainingDiverged(
                f"loss became {record['train_loss']} (train) / {record['test_loss']} (test) in epoch {epoch}: "
                f"lower the `learning_rate` and start again"
            )
        history.append(record)
        if on_epoch_end is not None:
            on_epoch_end(state, record)
    return state, history
