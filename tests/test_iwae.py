"""The k-sample objectives (IWAE bound, VAE with k samples) and their gradient estimators."""

import re
from pathlib import Path

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from jaxae import build, config, evaluate, latent, losses, models, train, validation


@pytest.fixture(scope="module")
def tiny_vae():
    """A VAE on 4x4 binary images with a 2-d code, small enough for thousands of gradient draws."""
    model = models.VAE(image_shape=(4, 4, 1), widths=(8,), latent_dim=2)
    x = (jax.random.uniform(jax.random.key(0), (6, 4, 4, 1)) < 0.4).astype(jnp.float32)
    params = model.init(jax.random.key(1), x)
    return model, params, x


def objective(name, samples, estimator):
    return build.build_objective(
        config.Config(objective=name, objective_samples=samples, objective_estimator=estimator)
    )


def conv_vae():
    """A convolutional VAE: its latents come from the protocol's one-layer defaults, as the VAE's."""
    model = models.ConvVAE(image_shape=(4, 4, 1), widths=(2,), latent_dim=2)
    x = (jax.random.uniform(jax.random.key(0), (6, 4, 4, 1)) < 0.4).astype(jnp.float32)
    return model, model.init(jax.random.key(1), x), x


@pytest.mark.parametrize("which", ["vae", "conv_vae"])
def test_one_sample_bound_is_the_one_sample_elbo_and_the_iw_nll(tiny_vae, which):
    model, params, x = tiny_vae if which == "vae" else conv_vae()
    key = jax.random.key(3)
    loss, metrics = objective("iwae", 1, "plain")(model, params, x, x, key)
    mean, logvar = model.apply(params, x, method=model.encode)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, (1, *mean.shape))[0]
    logits = model.apply(params, z, method=model.decode)
    one_sample_elbo = -losses.bernoulli_nll(logits, x) + latent.log_normal(z) - latent.log_normal(z, mean, logvar)
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
        validation.validate(config.Config(objective="iwae", objective_estimator="rws"))
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


def test_the_bound_converges_to_the_exact_likelihood_of_a_two_dimensional_code(tiny_vae):
    """With a 2-d code, ``log p(x) = log ∫ p(x|z) p(z) dz`` is a grid sum: the exact answer."""
    model, params, x = tiny_vae
    grid = jnp.linspace(-7, 7, 561)
    z = jnp.stack(jnp.meshgrid(grid, grid), -1).reshape(-1, 2)
    logits = model.apply(params, z, method=model.decode)
    log_joint = -jax.vmap(lambda image: losses.bernoulli_nll(logits, image[None]))(x) + latent.log_normal(z)
    exact = -(jax.scipy.special.logsumexp(log_joint, axis=1) + 2 * jnp.log(grid[1] - grid[0]))
    key = jax.random.key(6)
    one_sample = jax.vmap(lambda k: evaluate.importance_weighted_nll(model, params, x, k, samples=1))
    negative_elbo = one_sample(jax.random.split(key, 500)).mean(0)
    assert np.all(negative_elbo > exact + 0.05)  # the ELBO's gap
    np.testing.assert_allclose(evaluate.importance_weighted_nll(model, params, x, key, samples=5000), exact, atol=0.02)


def test_the_output_bias_starts_at_the_logit_of_the_mean_training_pixel(mnist_small):
    import optax

    from jaxae import train

    images = np.zeros((4, 2, 2, 1), np.uint8)
    images[:2, 0, 0] = 255  # pixel (0, 0) is on in half the images, the rest never are
    never = np.log(0.001 / 0.999)
    np.testing.assert_allclose(models.mean_pixel_logits(images), [0.0, never, never, never], rtol=1e-6)

    model = models.HierarchicalVAE()
    expected = models.mean_pixel_logits(mnist_small[0])
    state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0), output_bias=expected)
    plain = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
    np.testing.assert_array_equal(state.params["params"]["decoder"]["Dense_2"]["bias"], expected)
    assert not np.any(plain.params["params"]["decoder"]["Dense_2"]["bias"])  # Glorot's zero biases otherwise
    same = jax.tree.map(np.array_equal, state.params, plain.params)
    assert sum(not leaf for leaf in jax.tree.leaves(same)) == 1  # nothing else moved
    with pytest.raises(ValueError, match="the decoder's output bias has shape"):
        models.with_output_bias(model, state.params, expected[:10])
    shallow = models.VAE(widths=(8,), latent_dim=2)  # a decoder of two layers: the last is its second
    biased = models.with_output_bias(shallow, train.init_params(shallow, (28, 28, 1), jax.random.key(0)), expected)
    np.testing.assert_array_equal(biased["params"]["decoder"]["Dense_1"]["bias"], expected)
    with pytest.raises(config.ConfigError, match="`init_output_bias` needs an MLP decoder"):
        validation.validate(config.Config(model="conv_ae", init_output_bias=True))


def iwae_command(mnist_slice_dir, workdir, *flags, capsys):
    """``python -m experiments.iwae`` on the MNIST slice, in this process: (exit code, stdout, stderr)."""
    from experiments import iwae
    from experiments.harness import main_study

    argv = ["--workdir", str(workdir), "--dataset", "mnist_slice", "--data-source", "idx"]
    code = main_study(iwae.DEFAULTS, iwae.__doc__, iwae.STUDY, [*argv, "--data-dir", str(mnist_slice_dir), *flags])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_iwae_command_trains_rows_resumes_to_more_stages_and_measures_once(mnist_slice_dir, tmp_path, capsys):
    import json

    rows = ("--rows", "vae-1l-k1", "iwae-1l-k1", "--iw-samples", "20")
    code, out, err = iwae_command(mnist_slice_dir, tmp_path, *rows, "--stages", "1", capsys=capsys)
    assert code == 0, err[-3000:]
    plan = re.search(r"iwae-1l-k1: epochs 1\.\.1 of 1, 1 seed, 26 steps of (\d+\.\d) ms: (\d+\.\d+) h", out)
    assert plan and out.index("the plan") < out.index("training iwae-1l-k1")  # said before training
    assert 0 < float(plan[1]) < 100  # a batch-20 step of Burda et al.'s model, not a compile
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["iwae-1l-k1"]  # one objective at k = 1
    run = json.loads((tmp_path / "iwae-1l-k1" / "config.json").read_text())
    assert (run["widths"], run["latent_dim"], run["batch_size"]) == ([200, 200], 50, 20)
    assert (run["optimizer"], run["scale_output"]) == ("adam_iwae", "log_sigma")  # the authors' code's setup
    assert run["init_output_bias"] and run["epochs"] == 1 and run["binarize"] == "dynamic"
    table = json.loads((tmp_path / "summary.json").read_text())["iwae"]
    vae, iwae = table["rows"]
    assert vae["nll"] == iwae["nll"] and (vae["paper_nll"], iwae["paper_nll"]) == (86.76, 86.76)
    assert vae["difference"] == pytest.approx(vae["nll"] - 86.76, abs=0.011) and 0 < vae["nll"] < 500
    assert len(vae["active_units"]) == 1 and 0 <= vae["active_units"][0] <= 50
    assert "| vae-1l-k1 | 86.76 |" in out and (tmp_path / "table.md").read_text() in out
    measured = (tmp_path / "iwae-1l-k1" / "table.json").read_text()
    from jaxae.restore import restore_run

    trained = restore_run(tmp_path / "iwae-1l-k1")
    start = models.mean_pixel_logits(build.load_split(trained.config, "train").images)
    assert np.abs(trained.params["params"]["decoder"]["Dense_2"]["bias"] - start).mean() < 0.3  # started there

    code, out, err = iwae_command(mnist_slice_dir, tmp_path, *rows, "--stages", "2", "--resume", capsys=capsys)
    assert code == 0, err[-3000:]
    assert "resumed" in out and "epoch   4/4" in out and "iwae-1l-k1: epochs 2..4 of 4" in out
    history = [json.loads(line) for line in (tmp_path / "iwae-1l-k1" / "metrics.jsonl").read_text().splitlines()]
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    assert json.loads((tmp_path / "iwae-1l-k1" / "table.json").read_text())["epochs"] == 4  # measured anew
    again = (tmp_path / "iwae-1l-k1" / "table.json").read_text()
    code, out, err = iwae_command(mnist_slice_dir, tmp_path, *rows, "--stages", "2", "--resume", capsys=capsys)
    assert code == 0 and (tmp_path / "iwae-1l-k1" / "table.json").read_text() == again != measured


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--rows", "iwae-3l-k5"), "unknown row 'iwae-3l-k5': use all, or <vae|iwae>-<1|2>l-k<samples>"),
        (("--rows", "vae-1l-k0"), "unknown row 'vae-1l-k0'"),
        (("--rows", "all", "--stages", "9"), "--stages must be 1..8, got 9"),
        (("--rows", "all", "--estimator", "rws"), "unknown --estimator 'rws': use one of plain, stl, dreg"),
        (("--rows", "iwae-1l-k7"), "row iwae-1l-k7 has k = 7, which the paper did not run (k of 1, 5 or 50): pass"),
        ((), "the following arguments are required: --rows"),
    ],
)
def test_iwae_command_refuses_bad_rows_and_stages_in_one_line(mnist_slice_dir, tmp_path, capsys, flags, message):
    try:
        code, _, err = iwae_command(mnist_slice_dir, tmp_path / "table", *flags, capsys=capsys)
    except SystemExit as exit_:  # argparse's own errors
        code, err = exit_.code, capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "table").exists()


def test_the_claims_are_judged_on_the_rows_measured_beyond_their_noise():
    from experiments import iwae

    def rows(**nll):
        return {n.replace("_", "-"): {"nll": v, "nll_stderr": 0.25, "active_units": [10]} for n, v in nll.items()}

    measured = rows(iwae_1l_k1=90.0, vae_1l_k50=89.5, iwae_1l_k50=88.0, iwae_1l_k50_dreg=87.5, iwae_1l_k50_stl=88.1)
    measured["iwae-1l-k50"]["active_units"] = [20]
    verdicts = iwae.claims(measured)
    falls = verdicts["1l: IWAE's NLL falls with k more than the VAE's"]
    assert falls["holds"] is True and falls["margin"] == pytest.approx(1.5) and falls["noise"] == 0.25
    units = verdicts["1l: IWAE k=50 keeps more active units than VAE k=50"]
    assert units["holds"] is True and units["margin"] == 10 and units["active_units"]["iwae-1l-k50"] == 20
    assert verdicts["dreg beats the plain gradient at k=50 (1l)"]["holds"] is True  # by 0.5 > 0.25
    stl = verdicts["stl beats the plain gradient at k=50 (1l)"]
    assert stl["holds"] is None and stl["margin"] == pytest.approx(-0.1)  # worse, but within the noise
    assert verdicts["2l: IWAE's NLL falls with k more than the VAE's"]["margin"] is None  # no 2-layer rows
    assert verdicts["2 stochastic layers beat 1, every pair"]["holds"] is None
    measured |= rows(iwae_2l_k50=88.5)
    assert iwae.claims(measured)["2 stochastic layers beat 1, every pair"]["holds"] is False
    measured |= rows(vae_1l_k5=89.8, iwae_1l_k5=89.6)  # at k = 5 IWAE leads by less: the verdict is the least lead
    falls = iwae.claims(measured)["1l: IWAE's NLL falls with k more than the VAE's"]
    assert falls["holds"] is None and falls["margin"] == pytest.approx(0.2) and "vae-1l-k5" in falls["nll"]
    del measured["vae-1l-k50"]  # k = 5 alone: judged on it
    falls = iwae.claims(measured)["1l: IWAE's NLL falls with k more than the VAE's"]
    assert falls["margin"] == pytest.approx(0.2) and set(falls["nll"]) == {"iwae-1l-k1", "vae-1l-k5", "iwae-1l-k5"}
    assert "| stl beats the plain gradient at k=50 (1l) | within noise | -0.10 (noise 0.25) |" in iwae.markdown(
        {"iw_samples": 5000, "stages": 3, "epochs": 13, "rows": [], "claims": verdicts}
    )


def test_iwae_rows_name_their_objective_samples_estimator_and_layers():
    import argparse

    from experiments import iwae

    args = argparse.Namespace(rows=["all", "iwae-1l-k3-dreg"], estimator="stl", stages=2, iw_samples=5000, any_k=True)
    runs = iwae.variants(iwae.DEFAULTS, args)
    assert len(runs) == 10 + 1  # 12 rows, the two k = 1 pairs sharing their runs, and one more
    dreg, vae = runs["iwae-1l-k3-dreg"], runs["vae-2l-k50-stl"]
    assert (dreg.objective, dreg.objective_samples, dreg.objective_estimator) == ("iwae", 3, "dreg")
    assert (vae.objective, vae.objective_samples, vae.objective_estimator) == ("vae_k", 50, "stl")
    assert (vae.latent_dim, vae.upper_widths, vae.upper_latent_dim) == (100, (100, 100), 50)
    assert (dreg.latent_dim, dreg.upper_latent_dim) == (50, 0)
    assert dreg.epochs == 4 and dreg.stages_count == 2 and runs["iwae-2l-k1-stl"].objective == "iwae"


def test_a_two_layer_row_has_the_papers_layer_sizes():
    """Burda et al.'s code, ``latent_units=[100, 50]``: q 784-200-200-(100) then 100-100-(50);
    p 50-100-100-(100) then 100-200-200-784; each Gaussian a mean and a scale layer."""
    import argparse

    from experiments import iwae

    args = argparse.Namespace(rows=["iwae-2l-k5"], estimator="plain", stages=1, iw_samples=5000, any_k=False)
    row = iwae.variants(iwae.DEFAULTS, args)["iwae-2l-k5"]
    model = build.build_model(row, (28, 28, 1))
    params = train.init_params(model, (28, 28, 1), jax.random.key(0))
    kernels = sorted(leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params) if "kernel" in str(path))

    def chain(units):  # the code's random_linear_then_tanh_chain
        return list(zip(units, units[1:], strict=False))

    gaussian = [(200, 100), (200, 100), (100, 50), (100, 50), (100, 100), (100, 100)]  # mean and sigma of each
    expected = chain([784, 200, 200]) + chain([100, 100, 100]) + chain([50, 100, 100])
    expected += chain([100, 200, 200, 784]) + gaussian
    assert kernels == sorted(expected)
    assert model.scale_output == "log_sigma"


def test_log_sigma_outputs_twice_the_log_variance_of_the_same_weights():
    plain = models.HierarchicalVAE(image_shape=(4, 4, 1), widths=(8,), latent_dim=3, upper=(((6,), 2),))
    code = plain.clone(scale_output="log_sigma")
    params = train.init_params(plain, (4, 4, 1), jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (5, 4, 4, 1))
    z = jax.random.normal(jax.random.key(3), (5, 3))
    for method, args in ((plain.encode, (x,)), (plain.upper_posterior, (z, 1))):
        mean, logvar = plain.apply(params, *args, method=method)
        mean_code, logvar_code = code.apply(params, *args, method=getattr(code, method.__name__))
        np.testing.assert_array_equal(mean, mean_code)
        np.testing.assert_allclose(logvar_code, 2 * logvar, rtol=1e-6)
    with pytest.raises(config.ConfigError, match="`scale_output` log_sigma needs `model` hvae"):
        validation.validate(config.Config(model="vae", scale_output="log_sigma"))


@pytest.mark.slow
def test_iwae_rows_over_seeds_keep_their_parameters_measure_again_and_join_seeds_trained_apart(
    mnist_slice_dir, tmp_path, capsys
):
    import json
    import shutil

    from experiments import iwae
    from jaxae.restore import restore_run

    flags = ["--workdir", str(tmp_path), "--dataset", "mnist_slice", "--data-source", "idx"]
    flags += ["--data-dir", str(mnist_slice_dir), "--rows", "iwae-1l-k1", "--stages", "1", "--iw-samples", "20"]
    assert iwae.main([*flags, "--seeds", "2"]) == 0, capsys.readouterr().err[-3000:]
    seeds = [tmp_path / "iwae-1l-k1" / f"seed_{s}" for s in (0, 1)]
    kept = [json.loads((folder / "table.json").read_text()) for folder in seeds]
    row = json.loads((tmp_path / "summary.json").read_text())["iwae"]["rows"][0]
    assert row["seeds"] == 2 and kept[0]["test_nll"] != kept[1]["test_nll"]
    assert row["nll"] == round((kept[0]["test_nll"] + kept[1]["test_nll"]) / 2, 2)
    assert row["nll_seed_sd"] == round(abs(kept[0]["test_nll"] - kept[1]["test_nll"]) / 2**0.5, 2)
    out = capsys.readouterr().out
    assert "| iwae-1l-k1 | 86.76 |" in out and out.rstrip().splitlines()[-1].startswith("| iwae-1l-k1 |")  # ends so
    assert "claim" not in out  # every claim needs rows that were not run

    trained = [restore_run(folder).params for folder in seeds]
    for folder in seeds:
        shutil.rmtree(folder / "checkpoints")
    assert iwae.main([*flags, "--seeds", "2", "--measure-only"]) == 0
    out = capsys.readouterr().out
    for folder, figures, params in zip(seeds, kept, trained, strict=True):
        restored = restore_run(folder)
        jax.tree.map(np.testing.assert_array_equal, restored.params, params)
        line = next(line for line in out.splitlines() if str(folder) in line)
        assert "from its params.npz" in line and f"test NLL {figures['test_nll']:.2f}" in line
        assert f"table.json: {figures['test_nll']:.2f}" in line
    assert not any((folder / "checkpoints").exists() for folder in seeds)  # nothing was trained

    (seeds[1] / "params.npz").unlink()  # only its figures are kept
    assert iwae.main([*flags, "--seeds", "2", "--resume"]) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert "iwae-1l-k1: trained (1 epochs)" in out and "training iwae-1l-k1" not in out
    assert not any((folder / "checkpoints").exists() for folder in seeds)  # finished runs are not trained again
    assert json.loads((tmp_path / "summary.json").read_text())["iwae"]["rows"][0] == row

    # the same two seeds trained apart, each in a workdir of its own, make the same row
    apart = [tmp_path / "apart" / name for name in ("seed0", "seed1", "other_rate", "in_progress")]
    for workdir, folder in zip(apart, [*seeds, seeds[1], seeds[1]], strict=True):
        shutil.copytree(folder, workdir / "iwae-1l-k1")
    here = ["--workdir", str(apart[0]), *flags[2:], "--resume", "--seeds-from"]
    assert iwae.main([*here, str(apart[1])]) == 0, capsys.readouterr().err[-3000:]
    out = capsys.readouterr().out
    assert f"iwae-1l-k1: trained (1 epochs)\n  iwae-1l-k1: seed 1 from {apart[1] / 'iwae-1l-k1'}, 1 epochs\n" in out
    assert "training iwae-1l-k1" not in out
    assert json.loads((apart[0] / "summary.json").read_text())["iwae"]["rows"][0] == row

    (apart[3] / "iwae-1l-k1" / "metrics.jsonl").write_text("")  # a run of seed 1 still training
    assert iwae.main([*here, str(apart[3])]) == 0, capsys.readouterr().err[-3000:]
    assert "seed 1 from" in (out := capsys.readouterr().out) and "0 epochs: left out until it finishes" in out
    alone = json.loads((apart[0] / "summary.json").read_text())["iwae"]["rows"][0]
    assert alone["seeds"] == 1 and alone["nll"] == round(kept[0]["test_nll"], 2)

    saved = apart[2] / "iwae-1l-k1" / "config.json"
    saved.write_text(saved.read_text().replace('"learning_rate": 0.001', '"learning_rate": 0.002'))
    for seeds_from, message in [
        (apart[0], "holds seed 0 of iwae-1l-k1, as --workdir does: pass each seed once"),
        (apart[2], "is not iwae-1l-k1 with another seed, it differs in learning_rate (0.002 -> 0.001)"),
        (tmp_path / "missing", "is not a folder: pass the --workdir of runs of other seeds"),
    ]:
        assert iwae.main([*here, str(seeds_from)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err


def test_a_runs_figures_are_titled_by_what_it_trains():
    import argparse

    from experiments import iwae
    from jaxae.epoch_figures import run_title

    args = argparse.Namespace(
        rows=["iwae-2l-k50-dreg", "vae-1l-k5"], estimator="plain", stages=1, iw_samples=100, any_k=False
    )
    runs = iwae.variants(iwae.DEFAULTS, args)
    assert run_title(runs["iwae-2l-k50-dreg"]) == "hvae, iwae k = 50, dreg"
    assert run_title(runs["vae-1l-k5"]) == "hvae, vae_k k = 5"
    assert run_title(config.Config()) == "vae, elbo"


@pytest.mark.slow
def test_the_table_shows_only_what_was_measured_on_the_run_as_it_is(mnist_slice_dir, tmp_path, capsys):
    import json
    import shutil

    from experiments import iwae

    flags = ["--workdir", str(tmp_path), "--dataset", "mnist_slice", "--data-source", "idx"]
    flags += ["--data-dir", str(mnist_slice_dir), "--rows", "iwae-1l-k1", "--iw-samples", "20"]
    assert iwae.main([*flags, "--stages", "2"]) == 0
    cache = tmp_path / "iwae-1l-k1" / "table.json"
    measured = json.loads(cache.read_text())["test_nll"]
    capsys.readouterr()

    edited = json.loads(cache.read_text()) | {"test_nll": 80.0}  # better than the paper, by hand
    cache.write_text(json.dumps(edited))
    assert iwae.main([*flags, "--stages", "1", "--resume"]) == 0  # rows of 4 epochs, asked for 1 stage
    out = capsys.readouterr().out
    assert "does not hold measurements of these parameters at k = 20: measuring again" in out
    assert "80.00" not in out and f"| iwae-1l-k1 | 86.76 | {measured:.2f} |" in out
    assert "2 of 8 stages (4 epochs of 3280)" in out  # what the rows ran, not what --stages said

    assert iwae.main([*flags, "--stages", "2", "--overwrite", "--learning-rate", "3e-3"]) == 0
    retrained = json.loads(cache.read_text())
    assert retrained["test_nll"] != measured and "measuring again" in capsys.readouterr().out

    flags += ["--learning-rate", "3e-3", "--stages", "2", "--resume"]
    for damage in ("[1, 2]", "", "{" * 100_000):
        cache.write_text(damage)
        assert iwae.main(flags) == 0
        assert json.loads(cache.read_text())["test_nll"] == retrained["test_nll"]  # measured again, the same
    import subprocess
    import sys

    holder = "import sys, time\nfrom pathlib import Path\nfrom jaxae import workdir\n"
    holder += "with workdir.locked(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(600)\n"
    owner = subprocess.Popen([sys.executable, "-c", holder, str(cache.parent)], stdout=subprocess.PIPE, text=True)
    try:  # another process owns the row (an --overwrite training it, say): it is not measured meanwhile
        assert owner.stdout.readline().strip() == "locked"
        cache.unlink()
        assert iwae.main(flags) == 2 and "is in use by process" in capsys.readouterr().err
        assert not cache.exists()
    finally:
        owner.kill()
        owner.wait(timeout=30)
    cache.mkdir()
    assert iwae.main(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {cache} is a folder, not a file jaxae wrote: remove it") and err.count("\n") == 1
    shutil.rmtree(cache)


RESULTS = Path(__file__).resolve().parents[1] / "experiments" / "results"


def test_committed_parameters_restore_and_are_the_ones_their_table_measured():
    import json

    from jaxae.checkpoint import state_digest
    from jaxae.restore import restore_run

    files = sorted(RESULTS.glob("iwae*/**/params.npz"))
    assert len(files) >= 4
    for path in files:
        run = restore_run(path.parent)  # from params.npz: these folders keep no checkpoints
        kept = json.loads((path.parent / "table.json").read_text())
        assert run.epoch == kept["epochs"] and state_digest(run.params) == kept["params_digest"], path


def full_schedule_run(folder: Path) -> tuple[config.Config, int]:
    """A committed full-schedule row's config, checked to be the code's setup on all 8
    stages, and the epochs its metrics record (each line one epoch, the last its number)."""
    import json

    history = (folder / "metrics.jsonl").read_text().splitlines()
    run = config.Config.from_json(json.loads((folder / "config.json").read_text()))
    setup = (run.optimizer, run.scale_output, run.schedule, run.stages_count, run.epochs)
    assert setup == ("adam_iwae", "log_sigma", "stages", 8, 3280)
    assert len(history) == json.loads(history[-1])["epoch"]
    return run, len(history)


@pytest.mark.parametrize(
    ("row", "objective", "latents"),
    [
        ("iwae-1l-k1", ("iwae", 1), (50, (), 0)),
        ("iwae-2l-k1", ("iwae", 1), (100, (100, 100), 50)),
        ("iwae-1l-k5", ("iwae", 5), (50, (), 0)),
        ("vae-1l-k5", ("vae_k", 5), (50, (), 0)),
        ("iwae-2l-k5", ("iwae", 5), (100, (100, 100), 50)),
    ],
)
def test_the_committed_full_schedule_runs_finished_and_resume_trains_nothing_more(row, objective, latents):
    from experiments import iwae
    from jaxae.restore import restore_run

    folder = RESULTS / "iwae_full" / row
    run, epochs = full_schedule_run(folder)
    assert (run.latent_dim, tuple(run.upper_widths), run.upper_latent_dim) == latents
    assert (run.objective, run.objective_samples) == objective and epochs == 3280
    assert iwae.finished(run, folder)  # its parameters and measurements stand in for checkpoints
    assert restore_run(folder).epoch == 3280


@pytest.mark.parametrize(
    ("row", "objective", "latents", "seed"),
    [
        ("iwae_full/vae-2l-k5", ("vae_k", 5), (100, (100, 100), 50), 0),
        ("iwae_full_seed1/iwae-1l-k5", ("iwae", 5), (50, (), 0), 1),
    ],
)
def test_the_committed_full_schedule_runs_in_progress_continue_from_their_checkpoints(row, objective, latents, seed):
    """A row in progress restores with the code as it is now, optimizer state included, at
    the epoch its metrics reached, and is not taken for finished: ``--resume`` trains it on."""
    from experiments import iwae
    from jaxae import checkpoint

    folder = RESULTS / row
    run, epochs = full_schedule_run(folder)
    assert (run.latent_dim, tuple(run.upper_widths), run.upper_latent_dim) == latents
    assert (run.objective, run.objective_samples, run.seed) == (*objective, seed) and epochs < run.epochs
    model = build.build_model(run, (28, 28, 1))
    template = train.create_state(model, build.build_optimizer(run, 3000), (28, 28, 1), key=jax.random.key(0))
    with checkpoint.Checkpoints(folder / "checkpoints") as saved:
        state, meta = saved.restore(template, saved.latest_epoch())
    assert meta["epoch"] == epochs
    assert int(state.step) == 3000 * epochs and int(state.opt_state[0].count) == 3000 * epochs
    assert not iwae.finished(run, folder)


def test_committed_two_layer_parameters_score_their_chain_as_the_paper_writes_the_model(mnist_test):
    """The latent-variable protocol against the 2-layer model written out in numpy from the
    committed parameters: ``log w = log p(x | z1) + log p(z1 | z2) + log p(z2) - log q(z1 | x) - log q(z2 | z1)``."""
    from jaxae.restore import restore_run

    run = restore_run(RESULTS / "iwae" / "iwae-2l-k50" / "seed_0")
    weights = {
        "/".join(k.key for k in path): np.asarray(v, np.float64)
        for path, v in jax.tree_util.tree_leaves_with_path(run.params["params"])
    }
    x = build.binarize_test_set(mnist_test.images[:8]).astype(np.float32) / 255
    key = jax.random.key(7)
    zs, log_q_drawn = run.model.apply(run.params, x, key, 3, method=run.model.sample_posterior)
    log_q_scored = run.model.apply(run.params, x, zs, method=run.model.log_posterior)
    log_w, _ = losses.log_weights(run.model, run.params, x, x, key, samples=3, estimator="plain")
    assert [z.shape for z in zs] == [(3, 8, 100), (3, 8, 50)] and log_w.shape == (3, 8)

    def dense(name, h):
        return h @ weights[f"{name}/kernel"] + weights[f"{name}/bias"]

    def mlp(name, h, layers):
        for i in range(layers):
            h = np.tanh(dense(f"{name}/Dense_{i}", h))
        return h

    def log_normal(z, mean, log_sigma):  # the code's Gaussians output log sigma
        return np.sum(-0.5 * np.log(2 * np.pi) - log_sigma - 0.5 * ((z - mean) / np.exp(log_sigma)) ** 2, axis=-1)

    z1, z2 = (np.asarray(z, np.float64) for z in zs)
    h = mlp("encoder", x.reshape(8, -1).astype(np.float64), 2)
    log_q = log_normal(z1, dense("to_mean", h), dense("to_logvar", h))
    h = mlp("q_hidden_0", z1, 2)
    log_q += log_normal(z2, dense("q_mean_0", h), dense("q_logvar_0", h))
    h = mlp("p_hidden_0", z2, 2)
    log_p = log_normal(z2, 0.0, 0.0) + log_normal(z1, dense("p_mean_0", h), dense("p_logvar_0", h))
    logits = dense("decoder/Dense_2", mlp("decoder", z1, 2))
    targets = x.reshape(8, -1)
    log_likelihood = np.sum(targets * logits - np.logaddexp(0, logits), axis=-1)
    np.testing.assert_allclose(log_w, log_likelihood + log_p - log_q, rtol=2e-5)
    np.testing.assert_allclose(log_q_drawn, log_q, rtol=2e-5)  # as drawn and as scored again
    np.testing.assert_allclose(log_q_scored, log_q, rtol=2e-5)


@pytest.mark.parametrize("row", ["iwae-1l-k50", "iwae-2l-k50"])
def test_committed_parameters_measure_again_the_active_units_their_table_holds(row):
    import json

    from experiments.iwae import measure_run
    from jaxae.restore import restore_run

    folder = RESULTS / "iwae" / row / "seed_0"
    kept = json.loads((folder / "table.json").read_text())
    assert measure_run(restore_run(folder), samples=1)["active_units"] == kept["active_units"]
