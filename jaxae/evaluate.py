"""Measurements of trained models: reconstructions, codes and PSNR over whole datasets.

Every function takes float images in [0, 1] ``(N, H, W, C)`` and works in batches, so a
whole test set fits in memory whatever the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def psnr(estimate: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: ``(N, ...)`` pairs -> ``(N,)``.

    ``10 log10(1 / MSE)`` per image; identical images give ``inf``.
    """
    error = np.asarray(estimate, np.float64) - np.asarray(target, np.float64)
    mse = np.mean(error.reshape(len(error), -1) ** 2, axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


def batched(fn: Callable[[jax.Array], jax.Array], x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """``fn`` (jitted once) over ``x`` in batches along the first axis; results concatenated."""
    jitted = jax.jit(fn)
    batches = [jitted(jnp.asarray(x[start : start + batch_size])) for start in range(0, len(x), batch_size)]
    return np.concatenate([np.asarray(batch) for batch in batches])


def reconstruct(model: nn.Module, params, x: np.ndarray) -> np.ndarray:
    """Pixel means ``sigmoid(decode(encode(x)))`` ``(N, H, W, C)``; a VAE decodes its posterior mean."""
    return batched(lambda batch: jax.nn.sigmoid(model.apply(params, batch).logits), x)


def encode(model: nn.Module, params, x: np.ndarray) -> np.ndarray:
    """Codes ``(N, latent_dim)``: ``z`` for autoencoders, the posterior mean for a VAE."""
    return batched(lambda batch: model.apply(params, batch).z, x)


def decode(model: nn.Module, params, z: np.ndarray) -> np.ndarray:
    """Pixel means ``(N, H, W, C)`` of codes ``(N, latent_dim)``."""
    return batched(lambda batch: jax.nn.sigmoid(model.apply(params, batch, method=model.decode)), z)


@dataclasses.dataclass(frozen=True)
class PCA:
    """Principal component analysis, the linear baseline for codes: ``x ~ mean + z @ components``."""

    mean: np.ndarray  # (P,)
    components: np.ndarray  # (D, P), orthonormal rows, by decreasing variance

    @classmethod
    def fit(cls, x: np.ndarray, dim: int) -> PCA:
        """The top ``dim`` components of ``x (N, ...)``, flattened per example."""
        flat = np.asarray(x, np.float64).reshape(len(x), -1)
        mean = flat.mean(0)
        covariance = np.cov(flat - mean, rowvar=False)
        _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues
        return cls(mean.astype(np.float32), vectors[:, ::-1][:, :dim].T.astype(np.float32))

    def encode(self, x: np.ndarray) -> np.ndarray:
        """``(N, ...)`` -> codes ``(N, dim)``."""
        return (np.asarray(x, np.float32).reshape(len(x), -1) - self.mean) @ self.components.T

    def decode(self, z: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """Codes ``(N, dim)`` -> images ``(N, *shape)``, clipped to [0, 1]."""
        return np.clip(z @ self.components + self.mean, 0.0, 1.0).reshape(len(z), *shape)
