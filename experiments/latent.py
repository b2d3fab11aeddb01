"""Dimensionality reduction: 2-D codes of an autoencoder and a VAE, against PCA.

python -m experiments.latent                        # AE and VAE with 2-D codes, 10 epochs each
python -m experiments.latent --latent-dim 5 --epochs 20 --workdir runs/latent5

Trains both models (runs in <workdir>/ae and <workdir>/vae) and fits PCA to the
training images at the same dimension. Reports, on the test set, the reconstruction
MSE per pixel of each and the accuracy of a linear probe (softmax regression trained
on the training codes). With 2-D codes, figures/latent_codes.png scatters the test codes
coloured by digit and figures/vae_manifold.png decodes a 20x20 lattice of the VAE's
latent space through the Gaussian quantiles.
"""

import argparse
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments.harness import Study, main_study
from jaxae import evaluate, plots, probe, train
from jaxae.config import Config
from jaxae.restore import restore_run

DEFAULTS = Config(epochs=10, latent_dim=2, plot_epochs=())
LATTICE = 20


def variants(config: Config, args: argparse.Namespace) -> dict[str, Config]:
    return {model: dataclasses.replace(config, model=model) for model in ("ae", "vae")}


def probe_accuracy(codes: tuple[np.ndarray, np.ndarray], labels: tuple[np.ndarray, np.ndarray], seed: int) -> float:
    """Test accuracy of a linear probe trained on the training codes: ``codes`` and ``labels`` are (train, test)."""
    classifier = probe.fit_classifier(codes[0], labels[0], key=jax.random.key(seed), epochs=10)
    return classifier.accuracy(codes[1], labels[1])


def analyse(variants: dict[str, Config], workdir: Path, args: argparse.Namespace) -> dict:
    runs = {name: restore_run(workdir / name) for name in variants}
    any_run = runs["vae"]
    train_set, test_set, dim = any_run.train_set, any_run.test_set, any_run.config.latent_dim
    train_x, test_x = (np.asarray(train.to_float(s.images)) for s in (train_set, test_set))
    pca = evaluate.PCA.fit(train_x, dim)
    codes = {"pca": (pca.encode(train_x), pca.encode(test_x))}
    reconstructions = {"pca": pca.decode(codes["pca"][1], test_x.shape[1:])}
    for name, run in runs.items():
        codes[name] = (evaluate.encode(run.model, run.params, train_x), evaluate.encode(run.model, run.params, test_x))
        reconstructions[name] = evaluate.reconstruct(run.model, run.params, test_x)
    results = {"latent_dim": dim}
    for name in ("ae", "vae", "pca"):
        results[f"test_mse_{name}"] = float(np.mean((reconstructions[name] - test_x) ** 2))
        labels = (train_set.labels, test_set.labels)
        results[f"probe_accuracy_{name}"] = probe_accuracy(codes[name], labels, any_run.config.seed)
    if dim == 2:
        panels = {
            f"{name.upper()} (probe {results[f'probe_accuracy_{name}']:.0%})": (codes[name][1], test_set.labels)
            for name in ("ae", "vae", "pca")
        }
        plots.code_scatter(panels, workdir / "figures" / "latent_codes.png", title="2-D codes of the test images")
        quantiles = jax.scipy.stats.norm.ppf(jnp.linspace(0.05, 0.95, LATTICE))
        lattice = np.stack(np.meshgrid(quantiles, quantiles[::-1]), axis=-1).reshape(-1, 2)
        vae = runs["vae"]
        plots.image_grid(
            evaluate.decode(vae.model, vae.params, lattice),
            workdir / "figures" / "vae_manifold.png",
            columns=LATTICE,
            title="VAE: decoded 2-D latent lattice",
        )
    return results


STUDY = Study("latent", variants, analyse)

if __name__ == "__main__":
    raise SystemExit(main_study(DEFAULTS, __doc__, STUDY))
