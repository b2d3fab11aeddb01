"""Pure loss functions and training objectives.

Conventions, stated once:

- Loss functions take ``(predictions, targets, ...)`` and return one value per example,
  shape ``(N,)``; the caller reduces (training takes the mean over the batch).
- Bernoulli negative log-likelihood and KL are **summed** over pixels and latent
  dimensions: nats per image, the unit VAE papers report. Squared error is the **mean**
  over pixels: "MSE per pixel".
- The KL term is ``KL(q(z|x) || N(0, I)) >= 0`` and is *added*: the VAE minimises
  ``-ELBO = reconstruction + KL``.

An objective is ``objective(model, params, inputs, targets, key) -> (loss, metrics)``:
the model reads ``inputs`` and is scored against ``targets``, both floats in [0, 1]
``(N, H, W, C)`` (the same images unless a corruption changed the inputs, see
:func:`with_inputs`); ``key`` is this step's, for any draw the objective makes; ``loss``
is ``(N,)`` and ``metrics`` a dict of ``(N,)`` arrays, per example, so that the trainer
can mask padding and average. The built-in objectives report ``mse``, so models trained
on different losses can be compared. :data:`OBJECTIVES` names them; register your own
there to train it by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxae import corruptions
from jaxae.models import AutoencoderOutput

Metrics = dict[str, jax.Array]
Objective = Callable[[nn.Module, dict, jax.Array, jax.Array, jax.Array], tuple[jax.Array, Metrics]]


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


def _forward(model: nn.Module, params, inputs: jax.Array, key: jax.Array) -> AutoencoderOutput:
    """The model's output for ``inputs``; its noise (if any) drawn from ``key``."""
    return cast(AutoencoderOutput, model.apply(params, inputs, key=key))


def reconstruction_objective(
    model: nn.Module, params, inputs: jax.Array, targets: jax.Array, key: jax.Array
) -> tuple[jax.Array, Metrics]:
    """Deterministic autoencoders: the MSE per pixel of ``sigmoid(logits)`` against ``targets``."""
    logits = _flat(_forward(model, params, inputs, key).logits).astype(jnp.float32)
    mse = squared_error(nn.sigmoid(logits), targets)
    return mse, {"mse": mse, "bce": bernoulli_nll(logits, targets)}


def elbo_objective(
    model: nn.Module, params, inputs: jax.Array, targets: jax.Array, key: jax.Array
) -> tuple[jax.Array, Metrics]:
    """Variational autoencoders: ``-ELBO`` with one reparameterized sample drawn from ``key``.

    The encoder reads ``inputs``; the Bernoulli likelihood scores ``targets``.
    """
    out = _forward(model, params, inputs, key)
    if out.mean is None or out.logvar is None:
        raise TypeError(f"the ELBO needs a posterior (mean, logvar), which {type(model).__name__} does not give")
    logits = _flat(out.logits).astype(jnp.float32)  # losses in float32 whatever the compute dtype
    reconstruction = bernoulli_nll(logits, targets)
    kl = gaussian_kl(out.mean.astype(jnp.float32), out.logvar.astype(jnp.float32))
    metrics = {"reconstruction": reconstruction, "kl": kl, "mse": squared_error(nn.sigmoid(logits), targets)}
    return reconstruction + kl, metrics


def default_objective(model: nn.Module | type[nn.Module]) -> str:
    """The name of the objective a model trains on unless told: ``elbo`` when it is variational."""
    return "elbo" if getattr(model, "variational", False) else "reconstruction"


def with_inputs(objective: Objective, corrupt: Callable[[jax.Array, jax.Array], jax.Array]) -> Objective:
    """An objective whose model reads ``corrupt(key, inputs)``, scored against the same ``targets``.

    ``corrupt`` draws from its own key, split from the step's key: denoising and
    colourisation are this with noise or grey inputs.
    """

    def corrupted_objective(model: nn.Module, params, inputs, targets, key) -> tuple[jax.Array, Metrics]:
        corrupt_key, key = jax.random.split(key)
        return objective(model, params, corrupt(corrupt_key, inputs), targets, key)

    return corrupted_objective


def binarized(objective: Objective) -> Objective:
    """An objective on images binarized afresh at each call: pixel ~ Bernoulli(grey level).

    Inputs and targets are binarized with the same draw, so a clean pair stays equal.
    Images that are already binary pass unchanged, so a test set binarized once can be
    scored with the same objective.
    """

    def binarized_objective(model: nn.Module, params, inputs, targets, key) -> tuple[jax.Array, Metrics]:
        binarize_key, key = jax.random.split(key)
        binary_inputs = corruptions.binarize(binarize_key, inputs)
        # the same draw: when inputs are the targets (training), drawn once
        binary_targets = binary_inputs if targets is inputs else corruptions.binarize(binarize_key, targets)
        return objective(model, params, binary_inputs, binary_targets, key)

    return binarized_objective


# ---------------------------------------------------------------- k-sample objectives

ESTIMATORS = ("plain", "stl", "dreg")


def log_weights(
    model: nn.Module, params, inputs: jax.Array, targets: jax.Array, key: jax.Array, *, samples: int, estimator: str
) -> tuple[jax.Array, jax.Array]:
    """``log w_i = log p(x, z_i) - log q(z_i | x)`` for ``samples`` draws ``z_i ~ q(z | x)``:
    ``(k, N)``, and the logits decoded from the first draw, ``(N, H*W*C)``.

    The model draws and scores its latents through the latent-variable protocol
    (:class:`jaxae.latent.GaussianLatent`: ``sample_posterior``, ``log_posterior``,
    ``log_prior``, ``decode``), for one stochastic layer or a chain of them alike; ``q``
    reads ``inputs`` and the Bernoulli likelihood scores ``targets``.

    The estimator decides the gradient, never the value:

    - ``plain``: the reparameterization gradient through every term;
    - ``stl``: "sticking the landing" (Roeder et al., 2017): ``log q`` sees the
      posterior's parameters as constants, dropping the score term of zero expectation;
    - ``dreg``: as ``stl``, and the gradient reaching the encoder through ``z_i`` is
      multiplied by the normalised weight ``w_i / sum_j w_j``: weighted once more by the
      bound's own weights, this is Tucker et al.'s (2018) doubly reparameterized gradient.
    """
    zs, log_q = model.apply(params, inputs, key, samples, method=model.sample_posterior)
    flat_targets = _flat(targets)

    def log_joint(params, zs):
        z = zs[0]
        logits = model.apply(params, z.reshape(-1, z.shape[-1]), method=model.decode).astype(jnp.float32)
        logits = logits.reshape(samples, *flat_targets.shape)
        log_likelihood = -jax.vmap(bernoulli_nll, in_axes=(0, None))(logits, flat_targets)
        return log_likelihood + model.apply(params, zs, method=model.log_prior), logits[0]

    if estimator == "plain":  # log q scored as the draws were made: the gradient passes the encoder once
        log_p, logits = log_joint(params, zs)
        return log_p - log_q, logits

    def joint_minus_q(params, zs):  # log q of constant posterior parameters, as a function of the draws
        log_p, logits = log_joint(params, zs)
        return log_p - model.apply(jax.lax.stop_gradient(params), inputs, zs, method=model.log_posterior), logits

    if estimator == "dreg":
        return _reweighted_path_gradient(joint_minus_q)(params, zs)
    return joint_minus_q(params, zs)


def _reweighted_path_gradient(log_weights_of: Callable) -> Callable:
    """``log_weights_of(params, zs) -> (k, N)`` whose gradient with respect to each draw's
    latents ``zs[l][i]`` is multiplied by ``softmax(log w)_i``. Each ``log w_i`` depends on
    draw ``i``'s latents alone, so one backward pass gives it: the rows of the cotangents
    for draw ``i`` times its weight."""

    @jax.custom_vjp
    def reweighted(params, z):
        return log_weights_of(params, z)

    def forward(params, z):
        (values, aux), pullback = jax.vjp(log_weights_of, params, z)
        return (values, aux), (pullback, jax.nn.softmax(values, axis=0), aux)

    def backward(residuals, cotangents):
        pullback, weights, aux = residuals
        d_params, d_zs = pullback((cotangents[0], jnp.zeros_like(aux)))
        return d_params, [d_z * weights[..., None] for d_z in d_zs]

    reweighted.defvjp(forward, backward)
    return reweighted


def _mse(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """MSE per pixel of the first draw's reconstruction, as :func:`elbo_objective` reports it."""
    return jax.lax.stop_gradient(squared_error(nn.sigmoid(logits), targets))


def iwae_objective(
    model: nn.Module,
    params,
    inputs: jax.Array,
    targets: jax.Array,
    key: jax.Array,
    *,
    samples: int = 5,
    estimator: str = "plain",
) -> tuple[jax.Array, Metrics]:
    """Burda et al.'s (2015) importance-weighted bound: ``-log (1/k sum_i w_i)`` per example.

    With ``samples = 1`` it is the one-sample ``-ELBO`` (a sampled KL); it tightens as
    ``samples`` grows. Gradients by ``estimator``: ``plain``, ``stl`` or ``dreg`` (see
    :func:`log_weights`, which holds them: the log-sum-exp's own gradient weighs each
    ``log w_i`` by its normalised weight); the value is the same whichever.
    """
    log_w, logits = log_weights(model, params, inputs, targets, key, samples=samples, estimator=estimator)
    bound = jax.scipy.special.logsumexp(log_w, axis=0) - jnp.log(samples)
    return -bound, {"mse": _mse(logits, targets)}


def vae_k_objective(
    model: nn.Module,
    params,
    inputs: jax.Array,
    targets: jax.Array,
    key: jax.Array,
    *,
    samples: int = 5,
    estimator: str = "plain",
) -> tuple[jax.Array, Metrics]:
    """ "VAE with k samples" (Burda et al., 2015): the mean of ``samples`` one-sample ``-ELBO``
    estimates (sampled KL). ``estimator`` ``stl`` drops the score term; ``dreg`` is ``stl``
    for this objective, whose weights are all ``1/k``."""
    estimator = "stl" if estimator == "dreg" else estimator
    log_w, logits = log_weights(model, params, inputs, targets, key, samples=samples, estimator=estimator)
    return -jnp.mean(log_w, axis=0), {"mse": _mse(logits, targets)}


OBJECTIVES: dict[str, Objective] = {
    "reconstruction": reconstruction_objective,
    "elbo": elbo_objective,
    "iwae": iwae_objective,
    "vae_k": vae_k_objective,
}
