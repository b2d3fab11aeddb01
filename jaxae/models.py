"""Autoencoder architectures as Flax linen modules.

Every model takes images as floats in [0, 1], shape ``(N, H, W, C)``, and has

- ``encode(x)``: the code, ``(N, latent_dim)`` (for the VAE: the posterior's mean and
  log-variance, each ``(N, latent_dim)``);
- ``decode(z)``: Bernoulli logits ``(N, H, W, C)``; ``jax.nn.sigmoid`` gives pixels;
- ``__call__(x, *, key=None)``: an :class:`AutoencoderOutput`. The VAE draws its noise
  from ``key``; with ``key=None`` it decodes the posterior mean (deterministic).

Models are plain pure functions of their parameters: ``model.apply(params, x, key=key)``,
``model.apply(params, x, method=model.encode)``. :data:`MODELS` maps names to classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

Shape = tuple[int, int, int]


@struct.dataclass
class AutoencoderOutput:
    """What a forward pass returns.

    Attributes:
        logits: ``(N, H, W, C)`` Bernoulli logits of the reconstruction.
        z: ``(N, latent_dim)`` the code that was decoded.
        mean: ``(N, latent_dim)`` posterior mean (variational models), else None.
        logvar: ``(N, latent_dim)`` posterior log-variance (variational models), else None.
    """

    logits: jax.Array
    z: jax.Array
    mean: jax.Array | None = None
    logvar: jax.Array | None = None


def reparameterize(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
    """Samples ``z = mean + exp(logvar / 2) * eps``, ``eps ~ N(0, I)`` drawn from ``key``."""
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * logvar) * eps


class MLP(nn.Module):
    """Dense layers with ReLU between them (and after the last when ``activate_last``)."""

    widths: Sequence[int]
    activate_last: bool = False
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.widths):
            x = nn.Dense(width, dtype=self.dtype)(x)
            if i < len(self.widths) - 1 or self.activate_last:
                x = nn.relu(x)
        return x


class MLPAutoencoder(nn.Module):
    """Fully connected autoencoder: 784-400-20-400-784 by default."""

    variational: ClassVar[bool] = False
    image_shape: Shape = (28, 28, 1)
    widths: Sequence[int] = (400,)  # hidden layer widths, encoder order
    latent_dim: int = 20
    dtype: jnp.dtype | None = None

    def setup(self):
        self.encoder = MLP((*self.widths, self.latent_dim), dtype=self.dtype)
        self.decoder = MLP((*reversed(self.widths), math.prod(self.image_shape)), dtype=self.dtype)

    def encode(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, C)`` -> ``(N, latent_dim)``."""
        return self.encoder(x.reshape(x.shape[0], -1))

    def decode(self, z: jax.Array) -> jax.Array:
        """``(N, latent_dim)`` -> logits ``(N, H, W, C)``."""
        return self.decoder(z).reshape(z.shape[0], *self.image_shape)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> AutoencoderOutput:
        z = self.encode(x)
        return AutoencoderOutput(logits=self.decode(z), z=z)


class VAE(nn.Module):
    """Variational autoencoder with MLP encoder and decoder (Kingma & Welling, 2014).

    The encoder gives a diagonal Gaussian posterior; ``__call__`` samples it with the
    reparameterization trick using the explicit ``key``.
    """

    variational: ClassVar[bool] = True  # encode returns (mean, logvar)
    image_shape: Shape = (28, 28, 1)
    widths: Sequence[int] = (400,)  # hidden layer widths, encoder order
    latent_dim: int = 20
    dtype: jnp.dtype | None = None

    def setup(self):
        self.encoder = MLP(self.widths, activate_last=True, dtype=self.dtype)
        self.to_mean = nn.Dense(self.latent_dim, dtype=self.dtype)
        self.to_logvar = nn.Dense(self.latent_dim, dtype=self.dtype)
        self.decoder = MLP((*reversed(self.widths), math.prod(self.image_shape)), dtype=self.dtype)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(N, H, W, C)`` -> (mean, logvar), each ``(N, latent_dim)``."""
        h = self.encoder(x.reshape(x.shape[0], -1))
        return self.to_mean(h), self.to_logvar(h)

    def decode(self, z: jax.Array) -> jax.Array:
        """``(N, latent_dim)`` -> logits ``(N, H, W, C)``."""
        return self.decoder(z).reshape(z.shape[0], *self.image_shape)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> AutoencoderOutput:
        mean, logvar = self.encode(x)
        z = mean if key is None else reparameterize(key, mean, logvar)
        return AutoencoderOutput(logits=self.decode(z), z=z, mean=mean, logvar=logvar)


class ConvAutoencoder(nn.Module):
    """Strided 3x3 convolutions down, a full-size convolution to the code, transposed
    convolutions back up. For 28x28 and ``widths=(16, 32)``: 28 -> 14 -> 7 -> 1x1 code
    -> 7 -> 14 -> 28.
    """

    variational: ClassVar[bool] = False
    image_shape: Shape = (28, 28, 1)
    widths: Sequence[int] = (16, 32)  # channels of the strided convolutions
    latent_dim: int = 20
    dtype: jnp.dtype | None = None

    def __post_init__(self):
        height, width, _ = self.image_shape
        factor = 2 ** len(self.widths)
        if height % factor or width % factor:
            raise ValueError(
                f"ConvAutoencoder halves the image {len(self.widths)} times, so height and width "
                f"must be multiples of {factor}; got {height}x{width}: use fewer widths"
            )
        super().__post_init__()

    def setup(self):
        height, width, channels = self.image_shape
        factor = 2 ** len(self.widths)
        code_window = (height // factor, width // factor)
        self.down = [nn.Conv(f, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype) for f in self.widths]
        self.to_code = nn.Conv(self.latent_dim, code_window, padding="VALID", dtype=self.dtype)
        self.from_code = nn.ConvTranspose(self.widths[-1], code_window, padding="VALID", dtype=self.dtype)
        self.up = [
            nn.ConvTranspose(f, (3, 3), strides=(2, 2), padding="SAME", dtype=self.dtype)
            for f in (*reversed(self.widths[:-1]), channels)
        ]

    def encode(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, C)`` -> ``(N, latent_dim)``."""
        for conv in self.down:
            x = nn.relu(conv(x))
        return self.to_code(x).reshape(x.shape[0], self.latent_dim)

    def decode(self, z: jax.Array) -> jax.Array:
        """``(N, latent_dim)`` -> logits ``(N, H, W, C)``."""
        x = nn.relu(self.from_code(z.reshape(z.shape[0], 1, 1, self.latent_dim)))
        for i, deconv in enumerate(self.up):
            x = deconv(x)
            if i < len(self.up) - 1:
                x = nn.relu(x)
        return x

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> AutoencoderOutput:
        z = self.encode(x)
        return AutoencoderOutput(logits=self.decode(z), z=z)


MODELS: dict[str, type[nn.Module]] = {
    "ae": MLPAutoencoder,
    "vae": VAE,
    "conv_ae": ConvAutoencoder,
}
