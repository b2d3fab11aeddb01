"""Denoising autoencoder: trained on corrupted MNIST to give back the clean image.

python -m experiments.denoise                                   # Gaussian noise, sigma 0.5
python -m experiments.denoise --inputs salt_pepper --noise-level 0.2 --workdir runs/denoise_sp

Reports the test PSNR of the noisy inputs and of the denoised outputs, both against the
clean images (mean over the 10,000 test images of 10 log10(1 / MSE)); figures/denoise.png
shows noisy / denoised / clean rows.
"""

from pathlib import Path

import jax
import numpy as np

from experiments.harness import Use, main
from jaxae import evaluate, plots, train
from jaxae.build import corrupt_function
from jaxae.config import Config, ConfigError
from jaxae.restore import RestoredRun

DEFAULTS = Config(
    model="conv_ae",
    epochs=5,
    widths=(16, 32),
    inputs="gaussian",
    noise_level=0.5,
    plot_epochs=(),
)


def check(config: Config) -> None:
    if config.inputs not in ("gaussian", "salt_pepper"):
        raise ConfigError(f"denoise needs noisy inputs: --inputs gaussian or salt_pepper, not {config.inputs}")


def analyse(run: RestoredRun, workdir: Path) -> dict:
    clean = np.asarray(train.to_float(run.test_set.images))
    noisy = np.asarray(corrupt_function(run.config)(jax.random.key(run.config.seed + 1), clean))
    denoised = evaluate.reconstruct(run.model, run.params, noisy)
    rows = [("noisy", noisy[:16]), ("denoised", denoised[:16]), ("clean", clean[:16])]
    title = f"{run.config.model}, {run.config.inputs} noise {run.config.noise_level}, epoch {run.epoch}"
    plots.image_rows(rows, workdir / "figures" / "denoise.png", title=title)
    return {
        "inputs": run.config.inputs,
        "noise_level": run.config.noise_level,
        "test_psnr_noisy": float(evaluate.psnr(noisy, clean).mean()),
        "test_psnr_denoised": float(evaluate.psnr(denoised, clean).mean()),
    }


USE = Use("denoise", analyse, check)

if __name__ == "__main__":
    raise SystemExit(main(DEFAULTS, __doc__, use=USE))
