"""The uses of autoencoders: corruptions, probes, metrics, and each experiment on a tiny run."""

import colorsys
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments import colorize, compare, compress, generate
from experiments.harness import main, main_study
from jaxae import corruptions, data, evaluate, losses, models, plots, probe, train


def images(shape=(64, 8, 8, 3), seed=0):
    return jnp.asarray(np.random.default_rng(seed).random(shape), jnp.float32)


def test_gaussian_noise_has_the_asked_spread_and_stays_in_range():
    x = jnp.full((200, 28, 28, 1), 0.5)
    noisy = corruptions.gaussian_noise(jax.random.key(0), x, 0.1)
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    np.testing.assert_allclose(float(jnp.std(noisy - x)), 0.1, rtol=0.02)


def test_salt_and_pepper_hits_the_asked_fraction_of_pixels_with_black_or_white():
    x = jnp.full((100, 28, 28, 3), 0.5)
    noisy = corruptions.salt_and_pepper(jax.random.key(0), x, 0.2)
    hit = np.asarray(noisy[..., 0] != 0.5)
    np.testing.assert_allclose(hit.mean(), 0.2, atol=0.01)
    assert set(np.unique(np.asarray(noisy))) == {0.0, 0.5, 1.0}
    np.testing.assert_array_equal(noisy[..., 0], noisy[..., 2])  # a pixel is hit in every channel
    np.testing.assert_allclose(float(noisy[hit].mean()), 0.5, atol=0.02)  # salt and pepper, half each


def test_grayscale_is_the_luma_repeated_and_refuses_single_channel_images():
    x = images()
    grey = corruptions.grayscale(jax.random.key(0), x)
    expected = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    for channel in range(3):
        np.testing.assert_allclose(grey[..., channel], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        corruptions.grayscale(jax.random.key(0), x[..., :1])


def test_with_inputs_feeds_the_corruption_and_scores_the_clean_image():
    model = models.MLPAutoencoder(image_shape=(8, 8, 3), widths=(16,), latent_dim=4)
    x = images()
    params = model.init(jax.random.key(0), x)
    zeros = losses.with_inputs(losses.reconstruction_objective, lambda key, x: jnp.zeros_like(x))
    loss, _ = zeros(model, params, x, x, jax.random.key(1))
    expected, _ = losses.reconstruction_objective(model, params, jnp.zeros_like(x), x, jax.random.key(1))
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    clean, _ = losses.reconstruction_objective(model, params, x, x, jax.random.key(1))
    assert not np.allclose(loss, clean)


def test_psnr_matches_its_definition():
    target = np.zeros((2, 4, 4, 1))
    estimate = np.stack([np.full((4, 4, 1), 0.1), np.zeros((4, 4, 1))])
    np.testing.assert_allclose(evaluate.psnr(estimate, target), [20.0, np.inf])


def test_linear_probe_on_pixels_beats_chance_by_far(mnist_train, mnist_test):
    train_x, test_x = (np.asarray(train.to_float(d.images[:n])) for d, n in ((mnist_train, 5000), (mnist_test, 1000)))
    classifier = probe.fit_classifier(train_x, mnist_train.labels[:5000], key=jax.random.key(0), epochs=10)
    assert classifier.accuracy(test_x, mnist_test.labels[:1000]) > 0.8
    np.testing.assert_allclose(classifier.predict_proba(test_x[:5]).sum(1), 1, rtol=1e-5)


def test_quantization_round_trip_error_halves_with_each_bit():
    codes = np.random.default_rng(0).normal(size=(5000, 6))
    low, high = compress.code_range(codes)
    errors = []
    for bits in (4, 5, 6, 8):
        restored = compress.dequantize(compress.quantize(codes, low, high, bits), low, high, bits)
        inside = (codes > low) & (codes < high)
        error = np.abs(restored - codes)[inside]
        assert error.max() <= (high - low).max() / (2**bits - 1) / 2 + 1e-6
        errors.append(error.mean())
    assert errors == sorted(errors, reverse=True)
    np.testing.assert_allclose(errors[0] / errors[1], 2, rtol=0.1)


def test_classifier_score_spans_one_to_the_class_count():
    uniform = np.full((100, 10), 0.1)
    confident_balanced = np.eye(10)[np.arange(100) % 10]
    assert generate.classifier_score(uniform) == pytest.approx(1.0)
    assert generate.classifier_score(confident_balanced) == pytest.approx(10.0, rel=1e-6)


def test_interpolation_starts_and_ends_at_the_codes():
    a, b = np.zeros((3, 4)), np.ones((3, 4))
    path = generate.interpolate(a, b, 5)
    assert path.shape == (3, 5, 4)
    np.testing.assert_allclose(path[:, 0], a)
    np.testing.assert_allclose(path[:, -1], b)
    np.testing.assert_allclose(path[:, 2], 0.5)


def run_use(module, mnist_slice_dir, workdir, *flags, capsys):
    """``python -m experiments.<module> ...`` on the MNIST slice, in this process; its figures."""
    script = importlib.import_module(f"experiments.{module}")
    argv = [
        *("--workdir", str(workdir)),
        *("--dataset", "mnist_slice", "--data-source", "idx", "--data-dir", str(mnist_slice_dir)),
        *("--batch-size", "32", *flags),
    ]
    if hasattr(script, "STUDY"):
        code = main_study(script.DEFAULTS, script.__doc__, script.STUDY, argv)
    else:
        code = main(script.DEFAULTS, script.__doc__, argv, use=script.USE)
    out, err = capsys.readouterr()
    assert code == 0, err[-3000:]
    summary = json.loads((workdir / "summary.json").read_text())
    assert out.strip().splitlines()[-1].startswith(f"{module}: ")
    return summary[module]


def test_denoise_experiment_removes_noise(mnist_slice_dir, tmp_path, capsys):
    flags = ("--model", "ae", "--epochs", "4", "--widths", "128", "--latent-dim", "16", "--learning-rate", "3e-3")
    results = run_use("denoise", mnist_slice_dir, tmp_path, *flags, capsys=capsys)
    assert results["inputs"] == "gaussian" and results["noise_level"] == 0.5
    assert results["test_psnr_denoised"] > results["test_psnr_noisy"] + 1.0
    with Image.open(tmp_path / "figures" / "denoise.png") as image:
        assert image.size == (640, 400)  # three pairs of rows of 8


def test_compress_experiment_loses_quality_as_bits_fall(mnist_slice_dir, tmp_path, capsys):
    flags = ("--epochs", "10", "--widths", "128", "--latent-dim", "8", "--learning-rate", "3e-3")
    results = run_use("compress", mnist_slice_dir, tmp_path, *flags, capsys=capsys)
    assert results["raw_bytes"] == 784 and 50 < results["png_bytes"] < 784
    assert [results[f"bytes_{b}"] for b in ("float32", "8bit", "6bit", "4bit")] == [32, 8, 6, 4]
    psnr = [results[f"psnr_{b}"] for b in ("float32", "8bit", "6bit", "4bit")]
    assert psnr[0] > 13  # the codes carry the digits, not only the mean image (about 12 dB)
    assert psnr[1] > psnr[0] - 0.005 and psnr[1] > psnr[2] - 0.005 and psnr[2] > psnr[3] + 0.01
    assert (tmp_path / "figures" / "rate_distortion.png").exists()


@pytest.mark.slow
def test_generate_experiment_scores_its_samples(mnist_slice_dir, tmp_path, capsys):
    results = run_use(
        "generate", mnist_slice_dir, tmp_path, "--epochs", "3", "--widths", "64", "--latent-dim", "4", capsys=capsys
    )
    assert 1 <= results["classifier_score_samples"] <= 10 and 1 <= results["classifier_score_test_images"] <= 10
    assert sum(results["sample_label_counts"]) == generate.SAMPLES
    with Image.open(tmp_path / "figures" / "interpolation.png") as image:
        assert image.size[1] > image.size[0] * 0.5  # 8 rows of 10 steps


def test_uses_refuse_what_they_cannot_measure(tmp_path, capsys):
    for module, flags, message in [
        ("denoise", ["--inputs", "clean"], "error: denoise needs noisy inputs: --inputs gaussian or salt_pepper"),
        ("generate", ["--model", "ae"], "error: generate samples a prior: use --model vae or conv_vae, not ae"),
        ("compress", ["--seeds", "2"], "error: compress measures one model: drop --seeds"),
    ]:
        script = importlib.import_module(f"experiments.{module}")
        code = main(script.DEFAULTS, script.__doc__, [*flags, "--workdir", str(tmp_path / module)], use=script.USE)
        error = capsys.readouterr().err
        assert code == 2 and error.startswith(message), error
        assert not (tmp_path / module).exists()


def test_colored_mnist_tints_each_digit_by_its_label_and_is_deterministic(mnist_slice_dir):
    a = data.load("colored_mnist_slice", "train", "idx", mnist_slice_dir)
    b = data.load("colored_mnist_slice", "train", "idx", mnist_slice_dir)
    grey = data.load("mnist_slice", "train", "idx", mnist_slice_dir)
    assert a.images.shape == (512, 28, 28, 3) and a.images.dtype == np.uint8
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, grey.labels)
    np.testing.assert_array_equal(a.images.max(-1) == 0, grey.images[..., 0] == 0)  # strokes coloured, background black
    hues = []
    for image in a.images.astype(float):
        r, g, b_ = (image[..., c].sum() for c in range(3))
        hues.append(colorsys.rgb_to_hsv(r, g, b_)[0])
    hues = np.asarray(hues)
    for label in range(10):
        distance = np.abs((hues[a.labels == label] - label / 10 + 0.5) % 1 - 0.5)
        assert np.median(distance) < 0.04, label


def test_colorize_needs_colour_images(mnist_slice_dir, tmp_path, capsys):
    flags = ["--workdir", str(tmp_path / "run"), "--dataset", "mnist_slice", "--data-source", "idx"]
    code = main(colorize.DEFAULTS, colorize.__doc__, [*flags, "--data-dir", str(mnist_slice_dir)], use=colorize.USE)
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: --inputs grayscale needs colour images and mnist_slice has 1 channel(s)")


def test_colorize_experiment_reports_psnr_against_both_baselines(mnist_slice_dir, tmp_path, capsys):
    flags = ("--dataset", "colored_mnist_slice", "--model", "ae", "--epochs", "2", "--widths", "64")
    results = run_use("colorize", mnist_slice_dir, tmp_path, *flags, capsys=capsys)
    colour = data.load("colored_mnist_slice", "test", "idx", mnist_slice_dir).images / 255.0
    grey = np.repeat((colour @ np.asarray(corruptions.LUMA))[..., None], 3, -1)
    assert results["test_psnr_grey"] == pytest.approx(float(evaluate.psnr(grey, colour).mean()), rel=1e-5)
    assert results["test_psnr_mean_colour"] > results["test_psnr_grey"]  # the mean tint is closer than grey
    assert 5 < results["test_psnr_colourised"] < 60
    with Image.open(tmp_path / "figures" / "colorize.png") as image:
        assert image.mode in ("RGB", "RGBA")


@pytest.mark.slow
def test_latent_study_probes_2d_codes_against_pca(mnist_slice_dir, tmp_path, capsys):
    results = run_use("latent", mnist_slice_dir, tmp_path, "--epochs", "3", "--widths", "64", capsys=capsys)
    assert results["latent_dim"] == 2
    for name in ("ae", "vae", "pca"):
        assert 0 < results[f"test_mse_{name}"] < 0.12
        assert 0 <= results[f"probe_accuracy_{name}"] <= 1
    assert results["probe_accuracy_pca"] > 0.25  # chance is 0.1
    for figure in ("latent_codes.png", "vae_manifold.png"):
        assert (tmp_path / "figures" / figure).exists()
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["latent_dim"] == 2  # each model is a full run


@pytest.mark.slow
def test_features_study_probes_each_model_and_size(mnist_slice_dir, tmp_path, capsys):
    flags = ("--epochs", "2", "--models", "ae", "--latent-dims", "4", "16")
    results = run_use("features", mnist_slice_dir, tmp_path, *flags, capsys=capsys)
    assert set(results) == {
        "probe_accuracy_pixels",
        "probe_accuracy_pca_4",
        "probe_accuracy_pca_16",
        "probe_accuracy_ae_4",
        "probe_accuracy_ae_16",
    }
    assert results["probe_accuracy_pixels"] > 0.7 and results["probe_accuracy_pca_16"] > 0.5
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ae_16", "ae_4", "figures"]


def test_colorize_runs_on_a_tfds_colour_dataset(empty_cache, tmp_path, capsys):
    flags = [*("--dataset", "cifar10", "--data-source", "tfds", "--workdir", str(tmp_path)), "--epochs", "1"]
    flags += [*("--batch-size", "16", "--model", "ae", "--widths", "32", "--latent-dim", "8")]
    with tfds.testing.mock_data(num_examples=64):
        code = main(colorize.DEFAULTS, "", flags, use=colorize.USE)
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "summary.json").read_text())["colorize"]
    assert results["dataset"] == "cifar10" and np.isfinite(results["test_psnr_colourised"])
    with Image.open(tmp_path / "figures" / "colorize.png") as image:
        assert image.size == plots.grid_size(6, 8)


def test_colorize_on_an_absent_tfds_dataset_says_how_to_get_it(empty_cache, tmp_path, capsys):
    flags = ["--dataset", "cifar10", "--data-source", "tfds", "--workdir", str(tmp_path / "run")]
    code = main(colorize.DEFAULTS, "", flags, use=colorize.USE)
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("error: ") and data.TF_INSTALL in error
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_nll_study_reports_a_bound_below_the_elbo(mnist_slice_dir, tmp_path, capsys):
    results = run_use("nll", mnist_slice_dir, tmp_path, "--epochs", "2", "--iw-samples", "20", capsys=capsys)
    assert results["iw_samples"] == 20
    for name in ("vae_400_20", "vae_200x2_50"):
        assert results[f"{name}_epochs"] == 2
        assert 0 < results[f"{name}_test_iw_nll"] < results[f"{name}_test_negative_elbo"]
    config = json.loads((tmp_path / "vae_200x2_50" / "config.json").read_text())
    assert (config["widths"], config["latent_dim"], config["binarize"]) == ([200, 200], 50, "dynamic")


@pytest.mark.slow
def test_compare_study_states_the_claim_with_numbers(mnist_slice_dir, tmp_path, capsys):
    results = run_use("compare", mnist_slice_dir, tmp_path, "--epochs", "1", "--seeds", "2", capsys=capsys)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ae", "conv_ae", "conv_vae", "figures", "vae"]
    for model in ("ae", "vae", "conv_ae", "conv_vae"):
        assert results[f"{model}_final_test_mse_sd"] > 0  # two seeds, two different runs
        assert sorted(p.name for p in (tmp_path / model).iterdir() if p.is_dir()) == ["seed_0", "seed_1"]
    assert results["claim"].startswith(("holds", "does not hold")) and "x ae's time per epoch" in results["claim"]
    assert (tmp_path / "figures" / "test_mse.png").exists()


def test_first_epoch_from_which_one_curve_stays_below_another():
    assert compare.first_epoch_from_which_lower(np.array([3, 2, 1.0]), np.array([2, 2, 2.0])) == 3
    assert compare.first_epoch_from_which_lower(np.array([1, 3, 1.0]), np.array([2, 2, 2.0])) == 3
    assert compare.first_epoch_from_which_lower(np.array([1, 1, 1.0]), np.array([2, 2, 2.0])) == 1
    assert compare.first_epoch_from_which_lower(np.array([1, 1, 3.0]), np.array([2, 2, 2.0])) is None
