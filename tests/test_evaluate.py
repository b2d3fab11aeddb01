"""The importance-weighted NLL against the ELBO and an exact marginal likelihood; binarization."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import build, corruptions, evaluate, latent, losses, models, train, validation
from jaxae import config as config_


@pytest.fixture(scope="module")
def vae_and_images(mnist_test):
    model = models.VAE(widths=(64,), latent_dim=4)
    x = train.to_float(jnp.asarray(mnist_test.images[:40]))
    return model, model.init(jax.random.key(0), x), x


def test_one_sample_bound_is_the_one_sample_elbo(vae_and_images):
    model, params, x = vae_and_images
    key = jax.random.key(3)
    nll = evaluate.importance_weighted_nll(model, params, x, key, samples=1)
    mean, logvar = model.apply(params, x, method=model.encode)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.split(key, 1)[0], (1, *mean.shape))[0]
    logits = model.apply(params, z, method=model.decode)
    elbo = -losses.bernoulli_nll(logits, x) + latent.log_normal(z) - latent.log_normal(z, mean, logvar)
    np.testing.assert_allclose(nll, -elbo, rtol=1e-5)


def test_one_sample_bound_averages_to_the_analytic_elbo(vae_and_images):
    model, params, x = vae_and_images
    keys = jax.random.split(jax.random.key(0), 500)
    draws = jax.vmap(lambda k: evaluate.importance_weighted_nll(model, params, x, k, samples=1))(keys)
    negative_elbo = jnp.mean(
        jax.vmap(lambda k: losses.elbo_objective(model, params, x, x, k)[0])(keys), axis=0
    )  # analytic KL, sampled reconstruction
    standard_error = jnp.std(draws, axis=0) / np.sqrt(len(keys))
    assert float(jnp.max(jnp.abs(draws.mean(0) - negative_elbo) / (standard_error + 1e-3))) < 4.5


def test_bound_tightens_as_samples_grow(vae_and_images):
    model, params, x = vae_and_images
    means = [
        float(evaluate.importance_weighted_nll(model, params, x, jax.random.key(1), samples=k, chunk=50).mean())
        for k in (1, 10, 100, 1000)
    ]
    assert means == sorted(means, reverse=True) and means[0] - means[-1] > 0.1


def test_estimate_converges_to_the_exact_marginal_likelihood():
    """Three binary pixels, a 1-d code: log p(x) = log ∫ p(x|z) N(z; 0, 1) dz by quadrature."""
    model = models.VAE(image_shape=(1, 3, 1), widths=(8,), latent_dim=1)
    images = jnp.asarray(list(itertools.product([0.0, 1.0], repeat=3))).reshape(8, 1, 3, 1)
    params = model.init(jax.random.key(5), images)
    points, step = 40_001, 20 / 40_000
    grid = jnp.linspace(-10, 10, points)[:, None]
    logits = model.apply(params, grid, method=model.decode).reshape(points, 1, 3)
    targets = images.reshape(8, 3)
    log_joint = -jax.vmap(lambda row: losses.bernoulli_nll(jnp.broadcast_to(row, (8, 3)), targets))(logits)
    log_joint = log_joint + latent.log_normal(grid)[:, None]
    exact = -(jax.scipy.special.logsumexp(log_joint, axis=0) + np.log(step))
    np.testing.assert_allclose(float(jnp.sum(jnp.exp(-exact))), 1.0, rtol=1e-4)  # a distribution over 8 images
    estimate = evaluate.importance_weighted_nll(model, params, images, jax.random.key(0), samples=20_000, chunk=2000)
    np.testing.assert_allclose(estimate, exact, atol=0.01)
    one_sample = evaluate.importance_weighted_nll(model, params, images, jax.random.key(0), samples=1)
    assert float(jnp.mean(one_sample - exact)) > float(jnp.mean(estimate - exact))


def test_dataset_nll_covers_every_image_with_its_own_draws(vae_and_images):
    model, params, x = vae_and_images
    nll = evaluate.dataset_nll(model, params, np.asarray(x), jax.random.key(0), samples=10, batch_size=16)
    assert nll.shape == (40,) and np.all(np.isfinite(nll))
    first_key = jax.random.fold_in(jax.random.key(0), 0)
    first = evaluate.importance_weighted_nll(model, params, x[:16], first_key, samples=10)
    np.testing.assert_allclose(nll[:16], first, rtol=1e-5)


def test_binarization_draws_bernoulli_pixels_and_keeps_binary_images(mnist_test):
    x = train.to_float(jnp.asarray(mnist_test.images[:200]))
    binary = corruptions.binarize(jax.random.key(0), x)
    assert set(np.unique(np.asarray(binary))) == {0.0, 1.0}
    np.testing.assert_allclose(float(binary.mean()), float(x.mean()), rtol=0.03)
    np.testing.assert_array_equal(corruptions.binarize(jax.random.key(1), binary), binary)
    model = models.VAE(widths=(32,), latent_dim=4)
    params = model.init(jax.random.key(0), x)
    objective = losses.binarized(losses.elbo_objective)
    on_binary, _ = objective(model, params, binary, binary, jax.random.key(2))
    direct, _ = losses.elbo_objective(model, params, binary, binary, jax.random.split(jax.random.key(2))[1])
    np.testing.assert_allclose(on_binary, direct, rtol=1e-6)


def test_dynamic_binarization_binarizes_the_test_set_once(slice_config):
    config = dataclasses.replace(slice_config, binarize="dynamic")
    (_, test_a), (_, test_b) = build.load_data(config), build.load_data(dataclasses.replace(config, seed=9))
    assert set(np.unique(test_a.images)) == {0, 255}
    np.testing.assert_array_equal(test_a.images, test_b.images)  # the same for every run
    grey = build.load_data(slice_config)[1].images
    np.testing.assert_allclose(test_a.images.mean(), grey.mean(), rtol=0.05)
    with pytest.raises(config_.ConfigError, match="`binarize`") as raised:
        validation.validate(dataclasses.replace(slice_config, binarize="static"))
    assert raised.value.field == "binarize"


def _every_measurement(model, params, key):
    """Each public measurement of jaxae.evaluate on images ``x``, as a function of ``x``."""
    objective = losses.OBJECTIVES["elbo"]
    return {
        "reconstruct": lambda x: evaluate.reconstruct(model, params, x),
        "encode": lambda x: evaluate.encode(model, params, x),
        "objective_values": lambda x: evaluate.objective_values(model, objective, params, x, key),
        "importance_weighted_nll": lambda x: evaluate.importance_weighted_nll(model, params, x, key, samples=4),
        "dataset_nll": lambda x: evaluate.dataset_nll(model, params, x, key, samples=4),
        "active_units": lambda x: np.asarray(evaluate.active_units(model, params, x, key)),
        "psnr": lambda x: evaluate.psnr(x[::-1], x),
        "PCA": lambda x: evaluate.PCA.fit(x, 3).encode(x),
    }


@pytest.mark.parametrize(
    "name",
    ["reconstruct", "encode", "objective_values", "importance_weighted_nll", "dataset_nll", "active_units"]
    + ["psnr", "PCA"],
)
def test_every_measurement_reads_uint8_as_training_does_and_refuses_floats_out_of_range(
    vae_and_images, mnist_test, name
):
    model, params, _ = vae_and_images
    measure = _every_measurement(model, params, jax.random.key(5))[name]
    raw = mnist_test.images[:40]  # uint8, as datasets and restore_run's test_set hold them
    from_uint8 = np.asarray(measure(raw))
    from_float = np.asarray(measure(np.asarray(raw, np.float32) / 255))
    assert np.all(np.isfinite(from_uint8[np.isfinite(from_float)])) and not np.isnan(from_uint8).any()
    np.testing.assert_allclose(from_uint8, from_float, rtol=1e-5)
    for bad, shown in ((np.asarray(raw, np.float32), "[0, 255]"), (np.full(raw.shape, np.nan, np.float32), "nan")):
        with pytest.raises(ValueError, match=r"not in \[0, 1\]: pass uint8 images, or floats divided by 255") as e:
            measure(bad)
        assert shown in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(ValueError, match="must be uint8 .* not int64"):
        measure(raw.astype(np.int64))
