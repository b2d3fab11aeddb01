import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxae import losses, models, train


def small_model(name):
    widths = (8, 16) if name.startswith("conv") else (64,)
    return models.MODELS[name](widths=widths, latent_dim=8)


def fit_small(name, images, epochs=3, seed=0):
    model = small_model(name)
    objective = losses.OBJECTIVES[losses.default_objective(model)]
    state = train.create_state(model, optax.adam(3e-3), (28, 28, 1), key=jax.random.key(seed))
    before = train.make_evaluate(model, {"loss": objective})(state.params, images[1], jax.random.key(0))["loss"]
    state, history = train.fit(
        state, model, objective, images[0], images[1], key=jax.random.key(seed + 1), epochs=epochs, batch_size=64
    )
    return state, float(before["loss"]), history


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_real_training_lowers_the_test_loss(name, mnist_small):
    _, before, history = fit_small(name, mnist_small)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    losses_ = [r["test_loss"] for r in history]
    assert losses_[-1] < losses_[0] < before
    assert losses_[-1] < 0.75 * before
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(r["epoch_seconds"] > 0 for r in history)


def test_same_seed_gives_bitwise_identical_parameters(mnist_small):
    a, _, _ = fit_small("vae", mnist_small, epochs=2, seed=3)
    b, _, _ = fit_small("vae", mnist_small, epochs=2, seed=3)
    c, _, _ = fit_small("vae", mnist_small, epochs=2, seed=4)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(x, y)
    pairs = zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params), strict=True)
    assert not all(np.array_equal(x, y) for x, y in pairs)


def test_batch_indices_cover_every_example_once():
    order = jax.random.permutation(jax.random.key(0), 10)
    indices, mask = train.batch_indices(order, 4)
    assert indices.shape == mask.shape == (3, 4)
    assert sorted(np.asarray(indices)[np.asarray(mask) > 0].tolist()) == list(range(10))
    assert np.asarray(mask).sum() == 10


def test_evaluation_covers_the_last_partial_batch(mnist_small):
    model = small_model("ae")
    state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
    images = mnist_small[1][:250]
    means = train.make_evaluate(model, {"mse": losses.reconstruction_objective}, batch_size=100)(
        state.params, jnp.asarray(images), jax.random.key(0)
    )["mse"]
    x = train.to_float(images)
    loss, metrics = losses.reconstruction_objective(model, state.params, x, x, None)
    np.testing.assert_allclose(means["loss"], loss.mean(), rtol=1e-5)
    np.testing.assert_allclose(means["bce"], metrics["bce"].mean(), rtol=1e-5)


def test_nan_loss_stops_with_the_epoch_named(mnist_small):
    model = small_model("ae")
    state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))

    def broken(model, params, inputs, targets, key):
        loss, metrics = losses.reconstruction_objective(model, params, inputs, targets, key)
        return loss * jnp.nan, metrics

    with pytest.raises(train.TrainingDiverged, match="in epoch 1"):
        train.fit(state, model, broken, *mnist_small, key=jax.random.key(0), epochs=2, batch_size=64)


def test_one_seed_or_several_start_as_each_would_alone_and_take_one_epoch_function(mnist_small):
    from jaxae import seeds

    model, images = small_model("vae"), jnp.asarray(mnist_small[0][:128])
    objective = losses.OBJECTIVES["elbo"]
    alone = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(5))
    ends = {}
    for chosen in ([5], [5, 6]):
        state, key, vectorize = seeds.start(model, optax.adam(1e-3), (28, 28, 1), chosen)
        first = state.params if len(chosen) == 1 else seeds.unstack(state.params, 0)
        assert all(map(np.array_equal, jax.tree.leaves(first), jax.tree.leaves(alone.params)))
        epoch = train.make_train_epoch(model, objective, 64, vectorize=vectorize)
        ends[len(chosen)], _ = epoch(state, images, train.epoch_key(key, 1, vectorize=vectorize))
    for x, y in zip(jax.tree.leaves(ends[1].params), jax.tree.leaves(seeds.unstack(ends[2].params, 0)), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)  # seed 5 trains as it does alone
    first, second = (seeds.unstack(ends[2].params, i)["params"]["to_mean"]["bias"] for i in (0, 1))
    assert not np.allclose(first, second)


def _compiled_iwae_epoch(images):
    """One compiled epoch of a small batch-20 IWAE trained by adam_iwae, and its starting state."""
    from experiments import iwae
    from jaxae import build, config

    run = config.Config(**{**vars(iwae.DEFAULTS), "widths": (37,), "latent_dim": 11, "objective_samples": 2})
    model = build.build_model(run, (28, 28, 1))
    tx = build.build_optimizer(run, steps_per_epoch=len(images) // run.batch_size)
    state = train.create_state(model, tx, (28, 28, 1), key=jax.random.key(0))
    epoch = train.make_train_epoch(model, build.build_objective(run), run.batch_size)
    return epoch.lower(state, images, jax.random.key(1)).compile(), state


def _parameter_copies(compiled, params) -> int:
    """Copies in the compiled program of arrays shaped as a 2-D parameter (or its moments)."""
    shapes = {f"f32[{','.join(map(str, leaf.shape))}]" for leaf in jax.tree.leaves(params) if leaf.ndim == 2}
    return sum(
        line.split(" = ")[1].startswith(shape)
        for line in compiled.as_text().splitlines()
        if " copy(" in line
        for shape in shapes
    )


def test_cpu_epochs_copy_no_parameter_at_each_step_and_train_bit_for_bit_as_xla_s_default(mnist_small, monkeypatch):
    images = jnp.asarray(mnist_small[0][:200])
    compiled, state = _compiled_iwae_epoch(images)
    monkeypatch.setattr(train, "CPU_COMPILER_OPTIONS", {})
    default, default_state = _compiled_iwae_epoch(images)
    # XLA:CPU's default copies each weight and both its moments in every step of the scan;
    # with region analysis, none.
    assert _parameter_copies(default, state.params) >= 3 * 3
    assert _parameter_copies(compiled, state.params) == 0
    ours, _ = compiled(state, images, jax.random.key(1))
    xlas, _ = default(default_state, images, jax.random.key(1))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xlas), strict=True):
        np.testing.assert_array_equal(a, b)
    _, start = _compiled_iwae_epoch(images)
    assert not np.array_equal(jax.tree.leaves(ours.params)[0], jax.tree.leaves(start.params)[0])  # it trained


def test_the_user_s_xla_flags_win_over_jaxae_s_compiler_options(monkeypatch):
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert train.compiler_options(mesh) == train.CPU_COMPILER_OPTIONS
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_copy_insertion_use_region_analysis=false")
    assert train.compiler_options(mesh) == {}
