"""Classifiers on fixed features: the linear probe of representation learning, and a
small MLP used to score generated images.

Features are standardised with the training set's mean and spread; the classifier is
trained with Adam on the softmax cross-entropy, full passes in a jitted ``lax.scan``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import evaluate, layers, train


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A trained classifier: ``predict_proba(features (N, D)) -> (N, classes)``."""

    model: layers.MLP
    params: dict
    mean: np.ndarray
    scale: np.ndarray

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = (np.asarray(features, np.float32).reshape(len(features), -1) - self.mean) / self.scale
        return evaluate.batched(_probabilities(self.model), self.params, x, 10_000)

    def accuracy(self, features: np.ndarray, labels: np.ndarray) -> float:
        return float(np.mean(self.predict_proba(features).argmax(1) == np.asarray(labels)))


def fit_classifier(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    key: jax.Array,
    hidden: Sequence[int] = (),
    epochs: int = 20,
    min_steps: int = 2000,
    batch_size: int = 256,
    learning_rate: float = 1e-3,
    num_classes: int | None = None,
) -> Classifier:
    """Trains softmax regression (``hidden=()``, the linear probe) or an MLP classifier.

    Args:
        features: ``(N, ...)`` floats, flattened per example.
        labels: ``(N,)`` integer classes.
        key: the initialisation and shuffling key.
        epochs: passes over the data, raised until there are ``min_steps`` updates.
    """
    flat = np.asarray(features, np.float32).reshape(len(features), -1)
    labels = np.asarray(labels, np.int32)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    mean, scale = flat.mean(0), flat.std(0) + 1e-6
    x = jnp.asarray((flat - mean) / scale)
    model = layers.MLP((*hidden, num_classes))
    epochs = max(epochs, math.ceil(min_steps / math.ceil(len(x) / batch_size)))
    init_key, order_key = jax.random.split(key)
    params = model.init(init_key, x[:1])
    run = _trainer(model, epochs, batch_size, learning_rate)
    return Classifier(model, run(params, x, jnp.asarray(labels), order_key), mean, scale)


@functools.cache
def _probabilities(model: layers.MLP):
    return lambda params, batch: jax.nn.softmax(cast(jax.Array, model.apply(params, batch)))


@functools.cache
def _trainer(model: layers.MLP, epochs: int, batch_size: int, learning_rate: float):
    """``run(params, x (N, D), labels (N,), key) -> params``, jitted once per model and settings:
    the features are an argument, not constants in the program."""
    tx = optax.adam(learning_rate)

    def loss_fn(params, batch, batch_labels, mask):
        losses = optax.softmax_cross_entropy_with_integer_labels(model.apply(params, batch), batch_labels)
        return jnp.sum(losses * mask) / jnp.sum(mask)

    @jax.jit
    def run(params, x, labels, key):
        def epoch(carry, epoch_key):
            indices, mask = train.batch_indices(jax.random.permutation(epoch_key, len(x)), batch_size)

            def step(carry, batch):
                params, opt_state = carry
                batch_indices, batch_mask = batch
                grads = jax.grad(loss_fn)(params, x[batch_indices], labels[batch_indices], batch_mask)
                updates, opt_state = tx.update(grads, opt_state, params)
                return (optax.apply_updates(params, updates), opt_state), None

            return jax.lax.scan(step, carry, (indices, mask))[0], None

        (params, _), _ = jax.lax.scan(epoch, (params, tx.init(params)), jax.random.split(key, epochs))
        return params

    return run
