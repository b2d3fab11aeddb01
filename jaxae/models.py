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

import functools
import math
from collections.abc import Sequence
from typing import ClassVar, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from jaxae.latent import GaussianLatent, float32, log_normal, reparameterize
from jaxae.layers import MLP, Conv2x, ConvTranspose2x, dense, glorot_dense

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


class VAE(GaussianLatent, nn.Module):
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
        self.to_mean = dense(self.latent_dim, self.widths[-1], self.dtype)
        self.to_logvar = dense(self.latent_dim, self.widths[-1], self.dtype)
        self.decoder = MLP((*reversed(self.widths), math.prod(self.image_shape)), dtype=self.dtype)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``(N, H, W, C)`` -> (mean, logvar), each ``(N, latent_dim)``."""
        h = self.encoder(x.reshape(x.shape[0], -1))
        return self.to_mean(h), self.to_logvar(h)

    def decode(self, z: jax.Array) -> jax.Array:
        """``(N, latent_dim)`` -> logits ``(N, H, W, C)``."""
        return self.decoder(z).reshape(z.shape[0], *self.image_shape)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> AutoencoderOutput:
        return variational_call(self, x, key)


class ConvAutoencoder(nn.Module):
    """Strided 3x3 convolutions down, a dense code, stride-2 3x3 transposed convolutions up.

    For 28x28 and ``widths=(16, 32)``: 28 -> 14 -> 7x7x32 -> code -> 7x7x32 -> 14 -> 28.
    The code layers are dense: the same function as a 7x7 'VALID' convolution to a 1x1
    map and its transpose, computed as a matrix product.
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
                f"{type(self).__name__} halves the image {len(self.widths)} times, so height and width "
                f"must be multiples of {factor}; got {height}x{width}: use fewer widths"
            )
        super().__post_init__()

    def setup(self):
        height, width, channels = self.image_shape
        factor = 2 ** len(self.widths)
        self.feature_shape = (height // factor, width // factor, self.widths[-1])
        self.down = [Conv2x(f, dtype=self.dtype) for f in self.widths]
        self.to_code = dense(self.latent_dim, math.prod(self.feature_shape), self.dtype)
        self.from_code = dense(math.prod(self.feature_shape), self.latent_dim, self.dtype)
        self.up = [ConvTranspose2x(f, dtype=self.dtype) for f in (*reversed(self.widths[:-1]), channels)]

    def features(self, x: jax.Array) -> jax.Array:
        """The strided convolutions: ``(N, H, W, C)`` -> flattened features ``(N, h * w * widths[-1])``."""
        x = x.transpose(3, 0, 1, 2)  # the convolutions run channels-first
        for conv in self.down:
            x = nn.relu(conv(x))
        return x.transpose(1, 2, 3, 0).reshape(x.shape[1], -1)

    def encode(self, x: jax.Array) -> jax.Array:
        """``(N, H, W, C)`` -> ``(N, latent_dim)``."""
        return self.to_code(self.features(x))

    def decode(self, z: jax.Array) -> jax.Array:
        """``(N, latent_dim)`` -> logits ``(N, H, W, C)``."""
        x = nn.relu(self.from_code(z)).reshape(z.shape[0], *self.feature_shape).transpose(3, 0, 1, 2)
        for i, deconv in enumerate(self.up):
            x = deconv(x)
            if i < len(self.up) - 1:
                x = nn.relu(x)
        x = x.transpose(1, 2, 3, 0)
        # Materialised flat, so that a loss over the flattened logits and targets runs on
        # (N, H*W*C): XLA would otherwise move both reshapes past it and run it on
        # (N, H, W, 1), where XLA:CPU's fused elementwise kernels are ~40x slower.
        flat = jax.lax.optimization_barrier(x.reshape(x.shape[0], -1))
        return flat.reshape(x.shape)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> AutoencoderOutput:
        z = self.encode(x)
        return AutoencoderOutput(logits=self.decode(z), z=z)


class ConvVAE(GaussianLatent, ConvAutoencoder):
    """Variational autoencoder with the convolutional encoder and decoder of
    :class:`ConvAutoencoder`: the dense code layer becomes a Gaussian posterior."""

    variational: ClassVar[bool] = True  # encode returns (mean, logvar)

    def setup(self):
        super().setup()
        size = math.prod(self.feature_shape)
        self.to_mean = dense(self.latent_dim, size, self.dtype)
        self.to_logvar = dense(self.latent_dim, size, self.dtype)

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:  # type: ignore[override]  # a posterior, not a code
        """``(N, H, W, C)`` -> (mean, logvar), each ``(N, latent_dim)``."""
        h = self.features(x)
        return self.to_mean(h), self.to_logvar(h)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> AutoencoderOutput:
        return variational_call(self, x, key)


def variational_call(model: nn.Module, x: jax.Array, key: jax.Array | None) -> AutoencoderOutput:
    """Encode to (mean, logvar), sample ``z`` with ``key`` (the mean when None), decode."""
    mean, logvar = model.encode(x)
    z = mean if key is None else reparameterize(key, mean, logvar)
    return AutoencoderOutput(logits=model.decode(z), z=z, mean=mean, logvar=logvar)


class HierarchicalVAE(GaussianLatent, nn.Module):
    """Burda et al.'s (2015) VAE: stochastic layers ``z_1 .. z_L`` of diagonal Gaussians,
    tanh MLPs between them, Glorot-uniform weights.

    ``q(z_1 | x)`` reads ``x`` through ``widths`` to ``latent_dim`` units; each entry
    ``(widths_l, dim_l)`` of ``upper`` adds a layer: ``q(z_{l+1} | z_l)`` and
    ``p(z_l | z_{l+1})`` through ``widths_l``, with ``z_{l+1}`` of ``dim_l`` units; the top
    layer's prior is ``N(0, I)`` and ``p(x | z_1)`` is Bernoulli through ``widths``
    reversed. One stochastic layer: 784-200-200-50 (``upper=()``); two, the paper's:
    ``latent_dim=100, upper=(((100, 100), 50),)``. Each Gaussian's scale units output a
    log-variance, or with ``scale_output="log_sigma"`` a log standard deviation (the
    code's). ``encode`` and ``decode`` are the bottom layer's, so codes, reconstructions
    and samples of ``z_1`` work as for :class:`VAE`; the upper layers are
    :meth:`upper_posterior` and :meth:`upper_prior`, and the whole chain is drawn and
    scored through the latent-variable protocol (:class:`jaxae.latent.GaussianLatent`),
    which the k-sample objectives use (the closed-form ELBO holds for one layer only).
    """

    variational: ClassVar[bool] = True
    image_shape: Shape = (28, 28, 1)
    widths: Sequence[int] = (200, 200)
    latent_dim: int = 50
    upper: Sequence[tuple[Sequence[int], int]] = ()
    scale_output: str = "logvar"  # or "log_sigma": sigma = exp(output), as Burda et al.'s code
    dtype: jnp.dtype | None = None

    @property
    def depth(self) -> int:
        """The number of stochastic layers."""
        return 1 + len(self.upper)

    def setup(self):
        mlp = functools.partial(MLP, activate_last=True, dtype=self.dtype, activation=jnp.tanh, glorot=True)
        gaussian = functools.partial(glorot_dense, dtype=self.dtype)
        dims = [self.latent_dim, *(dim for _, dim in self.upper)]
        self.encoder, self.to_mean, self.to_logvar = mlp(self.widths), gaussian(dims[0]), gaussian(dims[0])
        self.decoder = MLP(
            (*reversed(self.widths), math.prod(self.image_shape)), dtype=self.dtype, activation=jnp.tanh, glorot=True
        )
        self.q_hidden = [mlp(widths) for widths, _ in self.upper]
        self.q_mean = [gaussian(dim) for dim in dims[1:]]
        self.q_logvar = [gaussian(dim) for dim in dims[1:]]
        self.p_hidden = [mlp(tuple(reversed(widths))) for widths, _ in self.upper]
        self.p_mean = [gaussian(dim) for dim in dims[:-1]]
        self.p_logvar = [gaussian(dim) for dim in dims[:-1]]

    def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``q(z_1 | x)``: ``(N, H, W, C)`` -> (mean, logvar), each ``(N, latent_dim)``."""
        h = self.encoder(x.reshape(x.shape[0], -1))
        return self.to_mean(h), self._logvar(self.to_logvar(h))

    def _logvar(self, output: jax.Array) -> jax.Array:
        """A Gaussian layer's scale output as a log-variance."""
        return 2 * output if self.scale_output == "log_sigma" else output

    def decode(self, z: jax.Array) -> jax.Array:
        """``p(x | z_1)``: ``(N, latent_dim)`` -> logits ``(N, H, W, C)``."""
        return self.decoder(z).reshape(z.shape[0], *self.image_shape)

    def upper_posterior(self, z: jax.Array, layer: int) -> tuple[jax.Array, jax.Array]:
        """``q(z_{layer+1} | z_layer)`` for ``layer = 1 .. depth-1``: (mean, logvar) in float32,
        for draws ``z (..., D_layer)``."""
        return self._upper(self.q_hidden, self.q_mean, self.q_logvar, z, layer)

    def upper_prior(self, z: jax.Array, layer: int) -> tuple[jax.Array, jax.Array]:
        """``p(z_layer | z_{layer+1})`` for ``layer = 1 .. depth-1``: (mean, logvar) in float32,
        for draws ``z (..., D_{layer+1})``."""
        return self._upper(self.p_hidden, self.p_mean, self.p_logvar, z, layer)

    def _upper(self, hidden, to_mean, to_logvar, z: jax.Array, layer: int) -> tuple[jax.Array, jax.Array]:
        """A Gaussian of the chain read from draws ``z (..., D)``, as one batch of rows."""
        h = hidden[layer - 1](z.reshape(-1, z.shape[-1]))
        mean, logvar = to_mean[layer - 1](h), self._logvar(to_logvar[layer - 1](h))
        shape = (*z.shape[:-1], mean.shape[-1])
        return float32((mean.reshape(shape), logvar.reshape(shape)))

    # The latent-variable protocol (see GaussianLatent) for the chain: layer l > 1 draws with
    # fold_in(key, l - 1).

    def sample_posterior(self, x: jax.Array, key: jax.Array, samples: int) -> tuple[list[jax.Array], jax.Array]:
        """``samples`` draws of the chain ``z_1 .. z_L`` from ``q``, ``[(k, N, D_l)]``, and
        ``log q`` of each, ``(k, N)``."""
        zs, log_q = super().sample_posterior(x, key, samples)
        for layer in range(1, self.depth):
            mean, logvar = self.upper_posterior(zs[-1], layer)
            zs.append(reparameterize(jax.random.fold_in(key, layer), mean, logvar))
            log_q += log_normal(zs[-1], mean, logvar)
        return zs, log_q

    def log_posterior(self, x: jax.Array, zs: list[jax.Array]) -> jax.Array:
        """``log q(z_1 | x) + sum_l log q(z_{l+1} | z_l)``: ``(k, N)``."""
        log_q = super().log_posterior(x, zs)
        for layer in range(1, self.depth):
            log_q += log_normal(zs[layer], *self.upper_posterior(zs[layer - 1], layer))
        return log_q

    def log_prior(self, zs: list[jax.Array]) -> jax.Array:
        """``log N(z_L; 0, I) + sum_l log p(z_l | z_{l+1})``: ``(k, N)``."""
        log_p = log_normal(zs[-1])
        for layer in range(1, self.depth):
            log_p += log_normal(zs[layer - 1], *self.upper_prior(zs[layer], layer))
        return log_p

    def posterior_means(self, x: jax.Array, key: jax.Array) -> list[jax.Array]:
        """``E[z_1 | x]``, then ``E[z_l | z_{l-1}]`` at one draw of ``z_{l-1}`` (with
        ``fold_in(key, l - 1)``), as Burda et al.'s code measures active units: ``[(N, D_l)]``."""
        mean, logvar = float32(self.encode(x))
        means = [mean]
        for layer in range(1, self.depth):
            z = reparameterize(jax.random.fold_in(key, layer), mean, logvar)
            mean, logvar = self.upper_posterior(z, layer)
            means.append(mean)
        return means

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> AutoencoderOutput:
        out = variational_call(self, x, key)
        if self.is_initializing():  # linen creates a layer's parameters where it is first called
            self.log_prior(self.sample_posterior(x, jax.random.key(0), 1)[0])
        return out


def mean_pixel_logits(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, H, W, C)`` -> ``(H*W*C,)`` float32 logits of each pixel's mean grey
    level, clipped to [0.001, 0.999] as Burda et al. do, so blank corners stay finite."""
    mean = np.clip(images.reshape(len(images), -1).mean(axis=0, dtype=np.float64) / 255, 0.001, 0.999)
    return np.log(mean / (1 - mean)).astype(np.float32)


def with_output_bias(model: nn.Module, params: dict, bias: jax.Array) -> dict:
    """``params`` of a model with an MLP ``decoder`` (ae, vae, hvae) whose last layer's bias
    is ``bias (H*W*C,)``: the decoder then starts at the mean image (Burda et al., 2015)."""
    last = cast(MLP, model.bind(params).decoder).output_layer
    decoder = params["params"]["decoder"]
    if decoder[last]["bias"].shape != bias.shape:
        raise ValueError(f"the decoder's output bias has shape {decoder[last]['bias'].shape}, not {bias.shape}")
    layer = {**decoder[last], "bias": jnp.asarray(bias, decoder[last]["bias"].dtype)}
    return {**params, "params": {**params["params"], "decoder": {**decoder, last: layer}}}


MLP_DECODERS = ("ae", "vae", "hvae")

MODELS: dict[str, type[nn.Module]] = {
    "ae": MLPAutoencoder,
    "vae": VAE,
    "conv_ae": ConvAutoencoder,
    "conv_vae": ConvVAE,
    "hvae": HierarchicalVAE,
}
