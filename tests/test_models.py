import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import build, latent, layers, models
from jaxae import config as config_


def init(model, shape):
    x = jnp.asarray(np.random.default_rng(0).random((3, *shape)), jnp.float32)
    params = model.init(jax.random.key(0), x, key=jax.random.key(1))
    return params, x


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_encode_decode_shapes(name, shape):
    widths = (16, 32) if name.startswith("conv") else (64, 32)
    model = models.MODELS[name](image_shape=shape, widths=widths, latent_dim=5)
    params, x = init(model, shape)
    code = model.apply(params, x, method=model.encode)
    if model.variational:
        mean, logvar = code
        assert mean.shape == logvar.shape == (3, 5)
    else:
        assert code.shape == (3, 5)
    z = jnp.ones((4, 5))
    assert model.apply(params, z, method=model.decode).shape == (4, *shape)
    out = model.apply(params, x, key=jax.random.key(2))
    assert out.logits.shape == x.shape and out.z.shape == (3, 5)


@pytest.mark.parametrize(
    "model", [models.VAE(widths=(32,), latent_dim=4), models.ConvVAE(widths=(8, 16), latent_dim=4)]
)
def test_vae_noise_comes_from_the_key_only(model):
    params, x = init(model, (28, 28, 1))
    a = model.apply(params, x, key=jax.random.key(7))
    b = model.apply(params, x, key=jax.random.key(7))
    c = model.apply(params, x, key=jax.random.key(8))
    np.testing.assert_array_equal(a.z, b.z)
    assert not np.allclose(a.z, c.z)
    deterministic = model.apply(params, x)
    np.testing.assert_array_equal(deterministic.z, deterministic.mean)


def test_reparameterize_moments():
    mean, logvar = jnp.array([1.0, -2.0]), jnp.log(jnp.array([0.25, 4.0]))
    z = jax.vmap(lambda k: latent.reparameterize(k, mean, logvar))(jax.random.split(jax.random.key(0), 200_000))
    np.testing.assert_allclose(z.mean(0), mean, atol=0.02)
    np.testing.assert_allclose(z.var(0), jnp.exp(logvar), rtol=0.02)


def test_conv_vae_replaces_the_code_layer_by_mean_and_logvar_layers():
    params, _ = init(models.ConvVAE(), (28, 28, 1))
    layers = params["params"]
    assert "to_code" not in layers and layers["to_mean"]["kernel"].shape == layers["to_logvar"]["kernel"].shape
    assert layers["to_mean"]["kernel"].shape == (7 * 7 * 32, 20)
    conv_ae_params, _ = init(models.ConvAutoencoder(), (28, 28, 1))
    assert (
        jax.tree.reduce(lambda n, p: n + p.size, params, 0)
        - jax.tree.reduce(lambda n, p: n + p.size, conv_ae_params, 0)
        == 7 * 7 * 32 * 20 + 20
    )


def test_default_mlp_sizes_match_the_pytorch_examples_vae():
    model = models.VAE()
    params, _ = init(model, (28, 28, 1))
    # fc1 784x400, fc21/fc22 400x20, fc3 20x400, fc4 400x784, with biases
    expected = (784 * 400 + 400) + 2 * (400 * 20 + 20) + (20 * 400 + 400) + (400 * 784 + 784)
    assert sum(p.size for p in jax.tree.leaves(params)) == expected


def test_conv_model_rejects_sizes_it_cannot_halve():
    config = config_.Config(model="conv_ae", widths=(16, 32, 64))
    with pytest.raises(config_.ConfigError, match="multiples of 8"):
        build.build_model(config, (28, 28, 1))


@pytest.mark.parametrize("kernel_size", [2, 3, 4, 5])
@pytest.mark.parametrize(
    ("ours", "reference", "out_hw"),
    [(layers.Conv2x, nn.Conv, (4, 3)), (layers.ConvTranspose2x, nn.ConvTranspose, (16, 12))],
)
def test_patch_matmul_layers_equal_flax_strided_convolutions(ours, reference, out_hw, kernel_size):
    """Ours run channels-first, (C, N, H, W); Flax's on (N, H, W, C). Values, gradients
    and forward-mode derivatives, with respect to parameters and input, agree."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 6, 3))
    ours = ours(4, kernel_size=kernel_size)
    reference = reference(4, (kernel_size, kernel_size), strides=(2, 2), padding="SAME")

    def ours_nhwc(params, x):
        return ours.apply(params, x.transpose(3, 0, 1, 2)).transpose(1, 2, 3, 0)

    params = jax.tree.map(lambda p: p + 0.1, ours.init(jax.random.key(1), x.transpose(3, 0, 1, 2)))
    expected = reference.apply(params, x)
    assert expected.shape == (2, *out_hw, 4)
    np.testing.assert_allclose(ours_nhwc(params, x), expected, atol=1e-5)
    grad = jax.grad(lambda p, x, f: jnp.sum(jnp.sin(f(p, x))), argnums=(0, 1))
    for a, b in zip(
        jax.tree.leaves(grad(params, x, ours_nhwc)), jax.tree.leaves(grad(params, x, reference.apply)), strict=True
    ):
        np.testing.assert_allclose(a, b, atol=1e-4)
    tangents = (jax.tree.map(jnp.ones_like, params), jnp.cos(x))
    _, ours_tangent = jax.jvp(ours_nhwc, (params, x), tangents)
    _, expected_tangent = jax.jvp(reference.apply, (params, x), tangents)
    np.testing.assert_allclose(ours_tangent, expected_tangent, atol=1e-4)


@pytest.mark.parametrize("layer", [layers.conv_2x, layers.conv_transpose_2x], ids=["conv_2x", "conv_transpose_2x"])
def test_a_patch_layers_input_gradient_gathers_windows_instead_of_summing_them(layer):
    """Differentiated as written, the input gradient would add up each pixel's share of
    the 9 windows it lies in; it is the dual layer's forward computation instead."""
    x, kernel = jnp.ones((16, 2, 8, 8)), jnp.ones((3, 3, 16, 8))
    y, input_gradient = jax.vjp(lambda x: layer(x, kernel), x)
    jaxpr = jax.make_jaxpr(input_gradient)(y)
    assert "add_any" not in {str(eqn.primitive) for eqn in jaxpr.jaxpr.eqns}
    assert "dot_general" in str(jaxpr)


def test_initialisation_is_pytorchs_uniform_fan_in():
    params = models.VAE().init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), key=jax.random.key(1))["params"]
    for layer, fan_in in (("encoder", 784), ("to_mean", 400), ("decoder", 20)):
        found = params[layer]["Dense_0"] if layer != "to_mean" else params[layer]
        bound = 1 / np.sqrt(fan_in)
        for leaf in (found["kernel"], found["bias"]):
            assert float(jnp.abs(leaf).max()) <= bound
            assert float(jnp.abs(leaf).max()) > 0.9 * bound  # uniform over the whole range
        np.testing.assert_allclose(float(jnp.std(found["kernel"])), bound / np.sqrt(3), rtol=0.05)
