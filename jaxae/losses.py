"""Pure loss functions and training objectives.

Conventions, stated once:

- Loss functions take ``(predictions, targets, ...)`` and return one value per example,
  shape ``(N,)``; the caller reduces (training takes the mean over the batch).
- Bernoulli negative log-likelihood and KL are **summed** over pixels and latent
  dimensions: nats per image, the unit VAE papers report. Squared error is the **mean**
  over pixels: "MSE per pixel".
- The KL term is ``KL(q(z|x) || N(0, I)) >= 0`` and is *added*: the VAE minimises
  ``-ELBO = reconstruction + KL``.

An objective is ``objective(model, params, x, key) -> (loss (N,), metrics)``, with ``x``
floats in [0, 1] ``(N, H, W, C)`` and ``metrics`` a dict of ``(N,)`` arrays. Every
objective reports ``mse`` so that models trained on different losses can be compared.
The built-in ones also take ``inputs=``: what the model reads when it is not ``x``
itself (noisy or grey images; see :func:`with_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae import corruptions

Metrics = dict[str, jax.Array]
Objective = Callable[[nn.Module, dict, jax.Array, jax.Array], tuple[jax.Array, Metrics]]


def _flat(x: jax.Array) -> jax.Array:
    # (N, H, W, C) -> (N, H*W*C): a free reshape that keeps elementwise work vectorised
    # (XLA on CPU is several times slower on arrays whose minor dimension is C=1).
    return x.reshape(x.shape[0], -1)


def bernoulli_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Negative Bernoulli log-likelihood in nats, summed over pixels.

    Computed stably as ``max(l, 0) - t * l + log1p(exp(-|l|))``.

    Args:
        logits: ``(N, ...)`` logits of the pixel probabilities.
        targets: ``(N, ...)`` pixel values in [0, 1] (binary or grey levels).

    Returns:
        ``(N,)``.
    """
    logits, targets = _flat(logits), _flat(targets)
    nll = jnp.maximum(logits, 0) - targets * logits + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return jnp.sum(nll, axis=1)


def squared_error(predictions: jax.Array, targets: jax.Array) -> jax.Array:
    """Squared error averaged over pixels: ``(N, ...)`` -> ``(N,)``."""
    return jnp.mean((_flat(predictions) - _flat(targets)) ** 2, axis=1)


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Closed-form ``KL(N(mean, exp(logvar)) || N(0, I))``, summed over dimensions.

    Args:
        mean: ``(N, D)``.
        logvar: ``(N, D)``.

    Returns:
        ``(N,)``, non-negative.
    """
    return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=-1)


def negative_elbo(logits: jax.Array, targets: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """``-ELBO = bernoulli_nll + gaussian_kl``, in nats per example: ``(N,)``."""
    return bernoulli_nll(logits, targets) + gaussian_kl(mean, logvar)


def reconstruction_objective(
    model: nn.Module, params, x: jax.Array, key: jax.Array, *, inputs: jax.Array | None = None
) -> tuple[jax.Array, Metrics]:
    """Deterministic autoencoders: minimise the MSE per pixel of ``sigmoid(logits)``.

    The model reads ``inputs`` (default ``x``) and is scored against ``x``.
    """
    inputs = x if inputs is None else inputs
    logits = _flat(model.apply(params, inputs, key=key).logits).astype(jnp.float32)
    mse = squared_error(nn.sigmoid(logits), x)
    return mse, {"mse": mse, "bce": bernoulli_nll(logits, x)}


def elbo_objective(
    model: nn.Module, params, x: jax.Array, key: jax.Array, *, inputs: jax.Array | None = None
) -> tuple[jax.Array, Metrics]:
    """Variational autoencoders: minimise ``-ELBO`` with one reparameterized sample.

    The encoder reads ``inputs`` (default ``x``); the likelihood scores ``x``.
    """
    out = model.apply(params, x if inputs is None else inputs, key=key)
    logits = _flat(out.logits).astype(jnp.float32)  # losses in float32 whatever the compute dtype
    reconstruction = bernoulli_nll(logits, x)
    kl = gaussian_kl(out.mean.astype(jnp.float32), out.logvar.astype(jnp.float32))
    metrics = {"reconstruction": reconstruction, "kl": kl, "mse": squared_error(nn.sigmoid(logits), x)}
    return reconstruction + kl, metrics


def with_inputs(objective: Objective, corrupt: Callable[[jax.Array, jax.Array], jax.Array]) -> Objective:
    """An objective whose model reads ``corrupt(key, x)`` and is scored against the clean ``x``.

    ``corrupt`` draws from its own key, split from the step's key: denoising and
    colourisation are this with noise or grey inputs.
    """

    def corrupted_objective(model: nn.Module, params, x: jax.Array, key: jax.Array) -> tuple[jax.Array, Metrics]:
        corrupt_key, key = jax.random.split(key)
        return objective(model, params, x, key, inputs=corrupt(corrupt_key, x))

    return corrupted_objective


def binarized(objective: Objective) -> Objective:
    """An objective on images binarized afresh at each call: pixel ~ Bernoulli(grey level).

    Images that are already binary pass unchanged, so a test set binarized once can be
    scored with the same objective.
    """

    def binarized_objective(model: nn.Module, params, x: jax.Array, key: jax.Array) -> tuple[jax.Array, Metrics]:
        binarize_key, key = jax.random.split(key)
        return objective(model, params, corruptions.binarize(binarize_key, x), key)

    return binarized_objective


def objective_for(model: nn.Module) -> Objective:
    """The objective a model trains on by default: ``-ELBO`` when it is variational."""
    return elbo_objective if getattr(model, "variational", False) else reconstruction_objective
