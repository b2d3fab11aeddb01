"""The k-sample objectives (IWAE bound, VAE with k samples) and their gradient estimators."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import config, evaluate, losses, models


@pytest.fixture(scope="module")
def tiny_vae():
    """A VAE on 4x4 binary images with a 2-d code, small enough for thousands of gradient draws."""
    model = models.VAE(image_shape=(4, 4, 1), widths=(8,), latent_dim=2)
    x = (jax.random.uniform(jax.random.key(0), (6, 4, 4, 1)) < 0.4).astype(jnp.float32)
    params = model.init(jax.random.key(1), x)
    return model, params, x


def objective(name, samples, estimator):
    return config.build_objective(
        config.Config(objective=name, objective_samples=samples, objective_estimator=estimator)
    )


def test_one_sample_bound_is_the_one_sample_elbo_and_the_iw_nll(tiny_vae):
    model, params, x = tiny_vae
    key = jax.random.key(3)
    loss, metrics = objective("iwae", 1, "plain")(model, params, x, x, key)
    mean, logvar = model.apply(params, x, method=model.encode)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (1, *mean.shape))[0]
    logits = model.apply(params, z, method=model.decode)
    one_sample_elbo = -losses.bernoulli_nll(logits, x) + losses.log_normal(z) - losses.log_normal(z, mean, logvar)
    np.testing.assert_allclose(loss, -one_sample_elbo, rtol=1e-5)
    np.testing.assert_allclose(objective("vae_k", 1, "plain")(model, params, x, x, key)[0], loss, rtol=1e-6)
    chunk_key = jax.random.split(key, 1)[0]  # the evaluation draws its one chunk from split(key)
    np.testing.assert_allclose(
        evaluate.importance_weighted_nll(model, params, x, key, samples=1),
        objective("iwae", 1, "plain")(model, params, x, x, chunk_key)[0],
        rtol=1e-5,
    )
    assert metrics["mse"].shape == (6,)


def test_the_bound_tightens_with_k_and_the_vae_average_does_not(tiny_vae, estimator="plain"):
    """(Whatever the estimator: it changes gradients, never values, as the next test checks.)"""
    model, params, x = tiny_vae
    keys = jax.random.split(jax.random.key(4), 400)

    def mean_loss(name, k):
        return float(jnp.mean(jax.vmap(lambda key: objective(name, k, estimator)(model, params, x, x, key)[0])(keys)))

    iwae = [mean_loss("iwae", k) for k in (1, 5, 50)]
    vae = [mean_loss("vae_k", k) for k in (1, 5, 50)]
    assert iwae == sorted(iwae, reverse=True) and iwae[0] - iwae[-1] > 0.05
    np.testing.assert_allclose(vae, vae[0], rtol=0.01)  # the mean of k ELBOs has the ELBO's expectation


def encoder_and_decoder_gradients(model, params, x, name, k, estimator, draws=3000):
    """Gradients of the batch's mean loss for ``draws`` keys: (encoder leaves, decoder leaves), each ``(draws, P)``."""
    loss = objective(name, k, estimator)

    def gradient(key):
        grads = jax.grad(lambda p: jnp.mean(loss(model, p, x, x, key)[0]))(params)["params"]
        encoder = [grads[layer] for layer in ("encoder", "to_mean", "to_logvar")]
        flat = jax.flatten_util.ravel_pytree
        return flat(encoder)[0], flat(grads["decoder"])[0]

    return jax.jit(jax.vmap(gradient))(jax.random.split(jax.random.key(7), draws))


def same_expectation(a: jax.Array, b: jax.Array) -> bool:
    """Whether two sets of draws ``(M, P)`` share their mean, every coordinate within 4.5 standard errors."""
    se = jnp.sqrt(jnp.var(a, 0) / len(a) + jnp.var(b, 0) / len(b)) + 1e-7
    return float(jnp.max(jnp.abs(a.mean(0) - b.mean(0)) / se)) < 4.5


def test_dreg_and_stl_keep_the_gradients_expectation_where_theory_says_and_lower_its_variance(tiny_vae):
    model, params, x = tiny_vae
    plain = encoder_and_decoder_gradients(model, params, x, "iwae", 50, "plain")
    dreg = encoder_and_decoder_gradients(model, params, x, "iwae", 50, "dreg")
    stl = encoder_and_decoder_gradients(model, params, x, "iwae", 50, "stl")
    assert same_expectation(plain[0], dreg[0]) and same_expectation(plain[1], dreg[1])  # DReG: unbiased
    np.testing.assert_array_equal(plain[1].shape, stl[1].shape)
    for lower in (dreg, stl):  # the encoder's gradient, summed variance over its parameters
        assert float(jnp.var(lower[0], 0).sum()) < 0.5 * float(jnp.var(plain[0], 0).sum())
    one_plain = encoder_and_decoder_gradients(model, params, x, "iwae", 1, "plain")
    one_stl = encoder_and_decoder_gradients(model, params, x, "iwae", 1, "stl")
    assert same_expectation(one_plain[0], one_stl[0]) and same_expectation(one_plain[1], one_stl[1])  # k = 1: unbiased
    assert not same_expectation(plain[0], stl[0])  # k = 50: STL is biased (Tucker et al., 2018)


def test_the_estimator_changes_the_gradient_never_the_value(tiny_vae):
    model, params, x = tiny_vae
    key = jax.random.key(11)
    values = [objective("iwae", 5, e)(model, params, x, x, key)[0] for e in losses.ESTIMATORS]
    for value in values[1:]:
        np.testing.assert_allclose(value, values[0], rtol=1e-6)


def test_unknown_estimator_is_refused_naming_the_field():
    with pytest.raises(config.ConfigError, match="unknown `objective_estimator` 'rws'") as raised:
        config.validate(config.Config(objective="iwae", objective_estimator="rws"))
    assert raised.value.field == "objective_estimator"


def two_layer_vae():
    """784 is too wide for many draws: a 4x4 image, 3 then 2 latent units."""
    return models.HierarchicalVAE(image_shape=(4, 4, 1), widths=(8,), latent_dim=3, upper=(((6,), 2),))


def test_a_hierarchy_whose_upper_layer_is_switched_off_has_the_one_layer_likelihood(tiny_vae):
    _, _, x = tiny_vae
    model = two_layer_vae()
    params = model.init(jax.random.key(2), x)["params"]
    off = {
        name: jax.tree.map(jnp.zeros_like, params[name])
        for name in ("q_mean_0", "q_logvar_0", "p_mean_0", "p_logvar_0")
    }
    params = {"params": {**params, **off}}  # q(z2 | z1) = p(z2) = N(0, I) and p(z1 | z2) = N(0, I)
    one_layer = models.HierarchicalVAE(image_shape=(4, 4, 1), widths=(8,), latent_dim=3)
    lower = {
        "params": {k: v for k, v in params["params"].items() if k in ("encoder", "to_mean", "to_logvar", "decoder")}
    }
    key = jax.random.key(5)
    two = evaluate.importance_weighted_nll(model, params, x, key, samples=50)
    one = evaluate.importance_weighted_nll(one_layer, lower, x, key, samples=50)
    np.testing.assert_allclose(two, one, rtol=1e-5)
    with_upper = evaluate.importance_weighted_nll(model, model.init(jax.random.key(2), x), x, key, samples=50)
    assert not np.allclose(with_upper, one, rtol=1e-3)  # a live upper layer does change it


def test_dreg_is_unbiased_and_lowers_the_variance_on_two_stochastic_layers(tiny_vae):
    _, _, x = tiny_vae
    model = two_layer_vae()
    params = model.init(jax.random.key(3), x)

    def gradients(estimator):
        loss = objective("iwae", 20, estimator)

        def gradient(key):
            grads = jax.grad(lambda p: jnp.mean(loss(model, p, x, x, key)[0]))(params)["params"]
            return jax.flatten_util.ravel_pytree(
                {k: v for k, v in grads.items() if k.startswith(("q_", "to_", "enc"))}
            )[0]

        return jax.jit(jax.vmap(gradient))(jax.random.split(jax.random.key(8), 3000))

    plain, dreg = gradients("plain"), gradients("dreg")
    assert same_expectation(plain, dreg)
    assert float(jnp.var(dreg, 0).sum()) < 0.5 * float(jnp.var(plain, 0).sum())


def test_active_units_count_the_posterior_means_that_vary(tiny_vae):
    _, _, x = tiny_vae
    model = two_layer_vae()
    params = model.init(jax.random.key(2), x)
    params["params"]["to_mean"]["kernel"] = params["params"]["to_mean"]["kernel"].at[:, 0].set(0.0)
    counts = evaluate.active_units(model, params, np.asarray(x), jax.random.key(0), threshold=1e-8)
    assert counts[0] == 2 and 0 <= counts[1] <= 2  # unit 0 of z1 ignores the image
    assert evaluate.active_units(model, params, np.asarray(x), jax.random.key(0), threshold=1e6) == [0, 0]
