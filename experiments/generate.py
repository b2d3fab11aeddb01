"""Image generation with a VAE: samples from the prior and walks between test digits.

python -m experiments.generate                         # the MLP VAE, 20 epochs
python -m experiments.generate --model conv_vae --widths 16 32 --epochs 10 --workdir runs/generate_conv

Measured with an MLP classifier trained on the real training images: the classifier
score exp(E[KL(p(y|x) || p(y))]) of 10,000 prior samples (10 at most, for confident and
balanced digits; the real test images give the reference), their mean top-class
confidence and the label spread. figures/samples_prior.png shows 64 samples,
figures/interpolation.png the decoded straight lines between 8 pairs of test codes.
"""

from pathlib import Path

import jax
import numpy as np

from experiments.harness import Use, main
from jaxae import evaluate, models, plots, probe, train
from jaxae.config import Config, ConfigError
from jaxae.restore import RestoredRun

DEFAULTS = Config(model="vae", epochs=20, plot_epochs=())
SAMPLES, PAIRS, STEPS = 10_000, 8, 10


def check(config: Config) -> None:
    if not models.MODELS[config.model].variational:
        raise ConfigError(f"generate samples a prior: use --model vae or conv_vae, not {config.model}")


def classifier_score(probabilities: np.ndarray) -> float:
    """``exp(E_x KL(p(y|x) || p(y)))`` for class probabilities ``(N, classes)``."""
    marginal = probabilities.mean(0)
    kl = np.sum(probabilities * (np.log(probabilities + 1e-12) - np.log(marginal + 1e-12)), axis=1)
    return float(np.exp(kl.mean()))


def interpolate(codes_a: np.ndarray, codes_b: np.ndarray, steps: int) -> np.ndarray:
    """Straight lines ``(P, steps, D)`` from each code in ``codes_a (P, D)`` to ``codes_b``."""
    t = np.linspace(0.0, 1.0, steps)[None, :, None]
    return (1 - t) * codes_a[:, None] + t * codes_b[:, None]


def analyse(run: RestoredRun, workdir: Path) -> dict:
    key = jax.random.key(run.config.seed + 2)
    prior_key, classifier_key = jax.random.split(key)
    z = np.asarray(jax.random.normal(prior_key, (SAMPLES, run.config.latent_dim)))
    samples = evaluate.decode(run.model, run.params, z)
    real = np.asarray(train.to_float(run.test_set.images))
    train_images = np.asarray(train.to_float(run.train_set.images))
    classifier = probe.fit_classifier(train_images, run.train_set.labels, key=classifier_key, hidden=(256,), epochs=3)
    sample_probabilities, real_probabilities = classifier.predict_proba(samples), classifier.predict_proba(real)
    codes = evaluate.encode(run.model, run.params, real[: 2 * PAIRS])
    path = interpolate(codes[:PAIRS], codes[PAIRS:], STEPS).reshape(PAIRS * STEPS, -1)
    name = f"{run.config.model}, epoch {run.epoch}"
    plots.image_grid(samples[:64], workdir / "figures" / "samples_prior.png", title=f"{name}: samples from N(0, I)")
    plots.image_grid(
        evaluate.decode(run.model, run.params, path),
        workdir / "figures" / "interpolation.png",
        columns=STEPS,
        title=f"{name}: test code to test code",
    )
    counts = np.bincount(sample_probabilities.argmax(1), minlength=sample_probabilities.shape[1])
    return {
        "classifier_test_accuracy": classifier.accuracy(real, run.test_set.labels),
        "classifier_score_samples": classifier_score(sample_probabilities),
        "classifier_score_test_images": classifier_score(real_probabilities),
        "mean_confidence_samples": float(sample_probabilities.max(1).mean()),
        "mean_confidence_test_images": float(real_probabilities.max(1).mean()),
        "sample_label_counts": counts.tolist(),
    }


USE = Use("generate", analyse, check)

if __name__ == "__main__":
    raise SystemExit(main(DEFAULTS, __doc__, use=USE))
