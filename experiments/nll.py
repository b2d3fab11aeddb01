"""Test negative log-likelihood of VAEs on dynamically binarized MNIST, as papers report it.

python -m experiments.nll                                   # 2 VAEs, 100 epochs each, k = 5000
python -m experiments.nll --epochs 10 --iw-samples 500 --workdir runs/nll_quick

Trains the default VAE (784-400-20) and a deeper one (two hidden layers of 200, 50-d
code, as Burda et al., 2015) on dynamically binarized MNIST (training pixels resampled
as Bernoulli(grey level) at every step, the test set binarized once with a fixed key);
runs in <workdir>/vae_400_20 and <workdir>/vae_200x2_50. Reports the test -ELBO and the
importance-weighted NLL estimate with k samples per image. Literature anchor: about
86.8 nats for the deeper VAE after 3,280 epochs (Burda et al., k = 5000).
"""

import argparse
import dataclasses
from pathlib import Path

import jax
import numpy as np

from experiments.cli import check_iw_samples
from experiments.harness import Study, main_study
from jaxae import evaluate, losses, train
from jaxae.config import Config
from jaxae.restore import RestoredRun, restore_run

DEFAULTS = Config(model="vae", epochs=100, binarize="dynamic", plot_epochs=())
ARCHITECTURES = {"vae_400_20": ((400,), 20), "vae_200x2_50": ((200, 200), 50)}


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--iw-samples", type=int, default=5000, help="importance samples per test image (k)")


def variants(config: Config, args: argparse.Namespace) -> dict[str, Config]:
    check_iw_samples(args.iw_samples)
    return {
        name: dataclasses.replace(config, model="vae", widths=widths, latent_dim=dim, binarize="dynamic")
        for name, (widths, dim) in ARCHITECTURES.items()
    }


def measure(run: RestoredRun, samples: int) -> dict:
    """Test -ELBO and IW-NLL (mean over the binarized test set) of one trained VAE."""
    test = np.asarray(train.to_float(run.test_set.images))
    key = jax.random.key(run.config.seed + 3)
    nll = evaluate.dataset_nll(run.model, run.params, test, key, samples=samples)
    elbo = evaluate.objective_values(run.model, losses.elbo_objective, run.params, test, key)
    return {
        "epochs": run.epoch,
        "test_negative_elbo": float(elbo.mean()),
        "test_iw_nll": float(nll.mean()),
        "test_iw_nll_stderr": float(nll.std(ddof=1) / np.sqrt(len(nll))),
    }


def analyse(variants: dict[str, Config], workdir: Path, args: argparse.Namespace) -> dict:
    results = {"iw_samples": args.iw_samples}
    for name in variants:
        figures = measure(restore_run(workdir / name), args.iw_samples)  # its test set is the binarized one
        results |= {f"{name}_{key}": value for key, value in figures.items()}
    return results


STUDY = Study("nll", variants, analyse, add_flags, fixed=("model", "seeds", "widths", "latent_dim", "binarize"))

if __name__ == "__main__":
    raise SystemExit(main_study(DEFAULTS, __doc__, STUDY))
