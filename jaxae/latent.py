"""The latent-variable protocol, and the diagonal Gaussians it is built of.

A latent-variable model says how to draw its posterior chain and how to score it:
:class:`GaussianLatent` gives one Gaussian layer's, which :class:`jaxae.models.VAE` and
:class:`jaxae.models.ConvVAE` take as they are and :class:`jaxae.models.HierarchicalVAE`
extends to a chain. :func:`jaxae.losses.log_weights` (the k-sample bounds) and
:func:`jaxae.evaluate.active_units` use nothing else.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array, samples: int | None = None) -> jax.Array:
    """Samples ``z = mean + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` drawn from ``key``:
    shaped as ``mean``, or ``(samples, *mean.shape)`` when ``samples`` is given."""
    shape = mean.shape if samples is None else (samples, *mean.shape)
    eps = jax.random.normal(key, shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


def log_normal(z: jax.Array, mean: jax.Array | float = 0.0, logvar: jax.Array | float = 0.0) -> jax.Array:
    """``log N(z; mean, exp(logvar))`` of a diagonal Gaussian, summed over the last axis."""
    return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + logvar + (z - mean) ** 2 * jnp.exp(-logvar), axis=-1)


def float32(gaussian: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """A Gaussian's (mean, logvar) in float32, whatever the compute dtype: densities are scored in float32."""
    mean, logvar = gaussian
    return mean.astype(jnp.float32), logvar.astype(jnp.float32)


class GaussianLatent:
    """The latent-variable protocol of a model with one diagonal Gaussian layer: ``encode(x)``
    gives ``q(z | x)`` as (mean, logvar), the prior is ``N(0, I)``, ``decode(z)`` gives
    ``p(x | z)``'s Bernoulli logits. Called through ``model.apply(params, ..., method=...)``.

    A model with a chain of stochastic layers ``z_1 .. z_L`` (:class:`HierarchicalVAE`)
    overrides these four; the k-sample objectives and the evaluation use nothing else.
    Draws and densities are float32; ``zs`` is the chain, layer ``l`` of shape ``(k, N, D_l)``.
    """

    @property
    def depth(self) -> int:
        """The number of stochastic layers."""
        return 1

    def sample_posterior(self, x: jax.Array, key: jax.Array, samples: int) -> tuple[list[jax.Array], jax.Array]:
        """``samples`` reparameterized draws of the chain from ``q(z | x)``, ``[(k, N, D)]``,
        and ``log q(z | x)`` of each, ``(k, N)``: scored from the Gaussians that drew them,
        so a gradient through both passes the encoder once."""
        mean, logvar = float32(self.encode(x))  # type: ignore[attr-defined]
        z = reparameterize(key, mean, logvar, samples)
        return [z], log_normal(z, mean, logvar)

    def log_posterior(self, x: jax.Array, zs: list[jax.Array]) -> jax.Array:
        """``log q(z | x)`` of each draw, ``(k, N)``, for draws made elsewhere."""
        return log_normal(zs[0], *float32(self.encode(x)))  # type: ignore[attr-defined]

    def log_prior(self, zs: list[jax.Array]) -> jax.Array:
        """``log p(z)`` of each draw under ``N(0, I)``: ``(k, N)``."""
        return log_normal(zs[0])

    def posterior_means(self, x: jax.Array, key: jax.Array) -> list[jax.Array]:
        """Each layer's posterior mean, ``[(N, D)]``; ``key`` draws the layers below an upper one."""
        return [self.encode(x)[0]]  # type: ignore[attr-defined]
