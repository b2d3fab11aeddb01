"""Losses checked through jax.jit against values computed independently in numpy."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from jaxae import losses

rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(4, 5, 3, 1)).astype(np.float32) * 3
TARGETS = rng.random((4, 5, 3, 1)).astype(np.float32)
MEAN = rng.normal(size=(4, 6)).astype(np.float32)
LOGVAR = rng.normal(size=(4, 6)).astype(np.float32) * 0.5


def test_bernoulli_nll_matches_the_definition():
    p = 1 / (1 + np.exp(-LOGITS.astype(np.float64)))
    expected = -(TARGETS * np.log(p) + (1 - TARGETS) * np.log(1 - p)).reshape(4, -1).sum(1)
    np.testing.assert_allclose(jax.jit(losses.bernoulli_nll)(LOGITS, TARGETS), expected, rtol=1e-5)


def test_squared_error_is_the_mean_over_pixels():
    expected = ((LOGITS - TARGETS) ** 2).reshape(4, -1).mean(1)
    np.testing.assert_allclose(jax.jit(losses.squared_error)(LOGITS, TARGETS), expected, rtol=1e-6)


def test_closed_form_kl_matches_monte_carlo():
    """KL(q || p) = E_q[log q(z) - log p(z)], estimated with 400k samples."""
    mean, logvar = MEAN[:2], LOGVAR[:2]
    std = np.exp(0.5 * logvar)
    z = mean + std * np.random.default_rng(1).normal(size=(400_000, *mean.shape))
    log_q = -0.5 * (((z - mean) / std) ** 2 + np.log(2 * np.pi) + logvar)
    log_p = -0.5 * (z**2 + np.log(2 * np.pi))
    monte_carlo = (log_q - log_p).sum(-1).mean(0)
    np.testing.assert_allclose(jax.jit(losses.gaussian_kl)(mean, logvar), monte_carlo, rtol=0.01)


def test_kl_is_zero_exactly_at_the_prior_and_positive_elsewhere():
    assert float(jnp.abs(losses.gaussian_kl(jnp.zeros((1, 3)), jnp.zeros((1, 3)))).max()) == 0.0
    assert bool((jax.jit(losses.gaussian_kl)(MEAN, LOGVAR) > 0).all())


def test_gradients_match_finite_differences():
    check_grads(lambda z: losses.bernoulli_nll(z, TARGETS).sum(), (LOGITS,), order=1, modes=["rev"], atol=0.05)
    check_grads(lambda m, v: losses.gaussian_kl(m, v).sum(), (MEAN, LOGVAR), order=2, modes=["rev"], atol=0.05)
    check_grads(lambda p: losses.squared_error(p, TARGETS).sum(), (LOGITS,), order=1, modes=["rev"], atol=0.05)
