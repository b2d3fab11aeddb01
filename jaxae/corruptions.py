"""What a model sees in place of the clean image: noise for denoising, grey for colourisation.

Each is ``corrupt(key, x, level) -> inputs`` on floats in [0, 1] ``(N, H, W, C)``, same
shape out; ``level`` is the noise strength (unused by ``grayscale``). The training target
stays the clean ``x`` (see :func:`jaxae.losses.with_inputs`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Corruption = Callable[[jax.Array, jax.Array, float], jax.Array]

# ITU-R BT.601 luma weights, as PIL's and TensorFlow's rgb-to-grayscale use.
LUMA = (0.299, 0.587, 0.114)


def gaussian_noise(key: jax.Array, x: jax.Array, sigma: float) -> jax.Array:
    """``clip(x + sigma * eps, 0, 1)``, ``eps ~ N(0, I)``."""
    return jnp.clip(x + sigma * jax.random.normal(key, x.shape, x.dtype), 0.0, 1.0)


def salt_and_pepper(key: jax.Array, x: jax.Array, fraction: float) -> jax.Array:
    """Sets a ``fraction`` of the pixels (all channels) to black or white, half each."""
    hit_key, salt_key = jax.random.split(key)
    pixels = (*x.shape[:-1], 1)
    hit = jax.random.bernoulli(hit_key, fraction, pixels)
    salt = jax.random.bernoulli(salt_key, 0.5, pixels).astype(x.dtype)
    return jnp.where(hit, salt, x)


def grayscale(key: jax.Array, x: jax.Array, level: float = 0.0) -> jax.Array:
    """RGB -> luma, repeated over the 3 channels (so the shape is kept). Needs ``C == 3``."""
    del key, level
    if x.shape[-1] != 3:
        raise ValueError(f"grayscale inputs need colour images (3 channels), got {x.shape[-1]}")
    luma = x @ jnp.asarray(LUMA, x.dtype)
    return jnp.repeat(luma[..., None], 3, axis=-1)


CORRUPTIONS: dict[str, Corruption] = {
    "gaussian": gaussian_noise,
    "salt_pepper": salt_and_pepper,
    "grayscale": grayscale,
}


def binarize(key: jax.Array, x: jax.Array) -> jax.Array:
    """Each pixel ``1`` with probability its grey level, else ``0`` (dynamic binarization)."""
    return jax.random.bernoulli(key, x).astype(x.dtype)
