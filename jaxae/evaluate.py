"""Measurements of trained models: reconstructions, codes and PSNR over whole datasets.

Every function takes images ``(N, H, W, C)`` as the datasets hold them, uint8 in 0..255
(converted as training converts them, ``x / 255``), or as floats in [0, 1]; any other
images are refused with a ValueError (:func:`as_images`). Each works in batches, so a
whole test set fits in memory whatever the model. Each compiles once per model and batch
shape, however often it is called: its jitted program is kept per model, and parameters
and data are arguments, never constants baked into the program.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxae import losses
from jaxae.models import AutoencoderOutput


def as_images(x, name: str = "images"):
    """Images as the models read them: uint8 ``x / 255`` as float32, floats in [0, 1] as
    they are (a traced array inside ``jax.jit`` is not range-checked).

    Raises:
        ValueError: floats outside [0, 1] or not finite, or another dtype; the message
            names ``name`` and the fix.
    """
    dtype = np.dtype(x.dtype) if hasattr(x, "dtype") else np.asarray(x).dtype
    if dtype == np.uint8:
        return x.astype(jnp.float32) / 255.0 if isinstance(x, jax.Array) else np.asarray(x, np.float32) / 255.0
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{name} must be uint8 (0..255) or floats in [0, 1], not {dtype}: convert them to one")
    if not isinstance(x, jax.core.Tracer) and np.size(x):
        low, high = float(np.min(x)), float(np.max(x))
        if not (0.0 <= low and high <= 1.0):  # also refuses NaN
            raise ValueError(
                f"{name} are floats in [{low:g}, {high:g}], not in [0, 1]: pass uint8 images, or floats divided by 255"
            )
    return x


def psnr(estimate: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB: image pairs ``(N, ...)`` -> ``(N,)``.

    ``10 log10(1 / MSE)`` per image on [0, 1] (uint8 images are divided by 255); identical
    images give ``inf``.
    """
    estimate, target = as_images(estimate, "estimates"), as_images(target, "targets")
    error = np.asarray(estimate, np.float64) - np.asarray(target, np.float64)
    mse = np.mean(error.reshape(len(error), -1) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


def batched(fn: Callable[[object, jax.Array], jax.Array], params, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """``fn(params, batch)`` (jitted once) over ``x`` in batches along the first axis; results concatenated.

    ``params`` is an argument, not a closure, so it is not baked into the program as constants.
    """
    jitted = _jit(fn)
    batches = [jitted(params, jnp.asarray(x[start : start + batch_size])) for start in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(batch) for batch in batches])


_jit = functools.cache(jax.jit)  # one jitted wrapper, and so one compile, per function


@functools.cache
def _reconstruction(model: nn.Module) -> Callable:
    return lambda params, batch: jax.nn.sigmoid(cast(AutoencoderOutput, model.apply(params, batch)).logits)


@functools.cache
def _code(model: nn.Module) -> Callable:
    return lambda params, batch: cast(AutoencoderOutput, model.apply(params, batch)).z


@functools.cache
def _decoding(model: nn.Module) -> Callable:
    return lambda params, batch: jax.nn.sigmoid(cast(jax.Array, model.apply(params, batch, method=model.decode)))


def reconstruct(model: nn.Module, params, x: np.ndarray) -> np.ndarray:
    """Pixel means ``sigmoid(decode(encode(x)))`` ``(N, H, W, C)``; a VAE decodes its posterior mean."""
    return batched(_reconstruction(model), params, as_images(x))


def encode(model: nn.Module, params, x: np.ndarray) -> np.ndarray:
    """Codes ``(N, latent_dim)``: ``z`` for autoencoders, the posterior mean for a VAE."""
    return batched(_code(model), params, as_images(x))


def decode(model: nn.Module, params, z: np.ndarray) -> np.ndarray:
    """Pixel means ``(N, H, W, C)`` of codes ``(N, latent_dim)``."""
    return batched(_decoding(model), params, z)


def objective_values(model: nn.Module, objective, params, x: np.ndarray, key: jax.Array) -> np.ndarray:
    """``objective``'s per-example loss ``(N,)`` on images ``x`` (inputs and targets), batch ``b``
    drawing with ``fold_in(key, b)``: for example the one-sample ``-ELBO`` of a test set."""
    return _batched_with_keys(_objective_values(model, objective), params, as_images(x), key, 1000)


def _batched_with_keys(fn: Callable, params, x: np.ndarray, key: jax.Array, batch_size: int) -> np.ndarray:
    """``fn(params, batch, fold_in(key, b))`` over batches ``b`` of ``x``; results concatenated."""
    batches = [
        fn(params, jnp.asarray(x[start : start + batch_size]), jax.random.fold_in(key, b))
        for b, start in enumerate(range(0, len(x), batch_size))
    ]
    return np.concatenate([np.asarray(batch) for batch in batches])


@functools.cache
def _objective_values(model: nn.Module, objective) -> Callable:
    return jax.jit(lambda params, x, key: objective(model, params, x, x, key)[0])


# Draws per step of the importance-weighted NLL. With 100 images a step decodes 10^4 codes:
# their (10^4, 784) logits stay in a CPU's cache, where 500 draws (50,000 rows) ran 2x
# slower, and the scan's steps are still long enough to hide their overhead.
NLL_CHUNK = 100


def check_samples(samples: int, chunk: int = NLL_CHUNK, name: str = "samples") -> None:
    """Raises ValueError, naming ``name``, unless ``samples`` draws go in chunks of
    ``chunk``: positive, and a multiple of ``chunk`` when above it."""
    if samples <= 0 or (samples > chunk and samples % chunk):
        raise ValueError(f"{name} must be positive, and a multiple of {chunk} above it; got {samples}")


def importance_weighted_nll(
    model: nn.Module, params, x: jax.Array, key: jax.Array, *, samples: int, chunk: int = NLL_CHUNK
) -> jax.Array:
    """Burda et al.'s (2015) importance-weighted estimate of ``-log p(x)`` in nats, ``(N,)``.

    ``-log (1/k sum_i p(x|z_i) p(z_i) / q(z_i|x))`` with ``k = samples`` draws
    ``z_i ~ q(z|x)``: an upper bound on the NLL that tightens as ``k`` grows; ``k = 1``
    is a one-sample estimate of ``-ELBO``. The draws go in chunks of ``chunk``, combined
    with a running log-sum-exp, so memory does not grow with ``k``.

    Args:
        model: a variational model (``encode`` gives mean and log-variance).
        x: images in [0, 1] ``(N, H, W, C)``, scored under the Bernoulli decoder.
        key: the draws' key; chunk ``c`` uses ``split(key, samples // chunk)[c]``.
    """
    check_samples(samples, chunk)
    chunk = min(chunk, samples)
    x = as_images(x)

    def body(total: jax.Array, chunk_key: jax.Array):
        log_w, _ = losses.log_weights(model, params, x, x, chunk_key, samples=chunk, estimator="plain")
        return jnp.logaddexp(total, jax.scipy.special.logsumexp(log_w, axis=0)), None

    total, _ = jax.lax.scan(body, jnp.full(x.shape[0], -jnp.inf), jax.random.split(key, samples // chunk))
    return jnp.log(samples) - total


def dataset_nll(
    model: nn.Module,
    params,
    images: np.ndarray,
    key: jax.Array,
    *,
    samples: int,
    batch_size: int = 100,
    chunk: int = NLL_CHUNK,
) -> np.ndarray:
    """:func:`importance_weighted_nll` of every image ``(N,)``; batch ``b`` draws with ``fold_in(key, b)``.

    For a number comparable with Burda et al.'s, ``images`` are binarized once, as every
    jaxae run's test set is: ``jaxae.build.binarize_test_set(test.images)``.
    """
    images = as_images(images)
    return _batched_with_keys(_dataset_nll(model, samples, chunk), params, images, key, batch_size)


@functools.cache
def _dataset_nll(model: nn.Module, samples: int, chunk: int) -> Callable:
    return jax.jit(lambda params, x, key: importance_weighted_nll(model, params, x, key, samples=samples, chunk=chunk))


def active_units(model: nn.Module, params, x: np.ndarray, key: jax.Array, *, threshold: float = 0.01) -> list[int]:
    """Burda et al.'s (2015) active units of each stochastic layer: the dimensions whose
    posterior mean varies over the images ``x`` with variance above ``threshold``.

    Each layer's mean is the model's ``posterior_means`` (for a chain: ``E[z_l | z_{l-1}]``
    at one draw of ``z_{l-1}`` from ``key``, as the paper's code measures it).
    """
    means = _posterior_means(model)
    x = as_images(x)
    batches = [means(params, jnp.asarray(x[start : start + 1000]), key) for start in range(0, len(x), 1000)]
    per_layer = [np.concatenate([np.asarray(batch[layer]) for batch in batches]) for layer in range(len(batches[0]))]
    return [int(np.sum(np.var(mean, axis=0) > threshold)) for mean in per_layer]


@functools.cache
def _posterior_means(model: nn.Module) -> Callable:
    return jax.jit(lambda params, x, key: model.apply(params, x, key, method=model.posterior_means))


@dataclasses.dataclass(frozen=True)
class PCA:
    """Principal component analysis, the linear baseline for codes: ``x ~ mean + z @ components``."""

    mean: np.ndarray  # (P,)
    components: np.ndarray  # (D, P), orthonormal rows, by decreasing variance

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> PCA:
        """The top ``dim`` components of images ``x (N, ...)``, flattened per example."""
        flat = np.asarray(as_images(x), np.float64).reshape(len(x), -1)
        mean = flat.mean(0)
        covariance = np.cov(flat - mean, rowvar=False)
        _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
        return cls(mean.astype(np.float32), vectors[:, ::-1][:, :dim].T.astype(np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Images ``(N, ...)`` -> codes ``(N, dim)``."""
        return (np.asarray(as_images(x), np.float32).reshape(len(x), -1) - self.mean) @ self.components.T

    def decode(self, z: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Codes ``(N, dim)`` -> images ``(N, *shape)``, clipped to [0, 1]."""
        return np.clip(z @ self.components + self.mean, 0.0, 1.0).reshape(len(z), *shape)
