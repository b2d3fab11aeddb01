"""Image colourisation: an autoencoder that reads grey images and outputs colour ones.

python -m experiments.colorize                     # Colored MNIST, built from MNIST offline
python -m experiments.colorize --dataset cifar10 --data-source tfds --latent-dim 128 --workdir runs/colorize_cifar

The offline default is Colored MNIST: each digit's stroke tinted with a hue set by its
label, jittered per image (jaxae.data.colored_mnist), so colour must be inferred from
the digit's shape. Any TFDS colour dataset works where it is prepared (on Colab, TFDS
downloads it). Reports the test PSNR of the colourised images against two baselines:
the grey input repeated over R, G, B, and the grey image tinted with the training set's
mean colour at the same luma. figures/colorize.png shows grey / colourised / original.
"""

from pathlib import Path

import jax
import numpy as np

from experiments.harness import Use, main
from jaxae import corruptions, evaluate, plots, train
from jaxae.config import Config, ConfigError
from jaxae.restore import RestoredRun

DEFAULTS = Config(
    model="conv_ae", dataset="colored_mnist", epochs=5, widths=(16, 32), inputs="grayscale", plot_epochs=()
)


def check(config: Config) -> None:
    if config.inputs != "grayscale":
        raise ConfigError(f"colorize reads grey images: --inputs grayscale, not {config.inputs}")


def mean_colour_baseline(grey: np.ndarray, train_images: np.ndarray) -> np.ndarray:
    """The grey image tinted with the mean colour of the training pixels, at the same luma.

    ``grey``: ``(N, H, W, 3)`` luma repeated; ``train_images``: ``(M, H, W, 3)`` in [0, 1].
    Colored MNIST's mean is taken over stroke pixels (non-black), where its colour is.
    """
    pixels = train_images.reshape(-1, 3)
    pixels = pixels[pixels.max(1) > 0.05]
    colour = pixels.mean(0)
    return np.clip(grey * colour / float(colour @ np.asarray(corruptions.LUMA)), 0.0, 1.0)


def analyse(run: RestoredRun, workdir: Path) -> dict:
    colour = np.asarray(train.to_float(run.test_set.images))
    grey = np.asarray(corruptions.grayscale(jax.random.key(0), colour))
    coloured = evaluate.reconstruct(run.model, run.params, grey)
    tinted = mean_colour_baseline(grey, np.asarray(train.to_float(run.train_set.images[:10_000])))
    rows = [("grey input", grey[:16]), ("colourised", coloured[:16]), ("original", colour[:16])]
    plots.image_rows(rows, workdir / "figures" / "colorize.png", title=f"{run.config.model}, epoch {run.epoch}")
    return {
        "dataset": run.config.dataset,
        "test_psnr_colourised": float(evaluate.psnr(coloured, colour).mean()),
        "test_psnr_grey": float(evaluate.psnr(grey, colour).mean()),
        "test_psnr_mean_colour": float(evaluate.psnr(tinted, colour).mean()),
    }


USE = Use("colorize", analyse, check)

if __name__ == "__main__":
    raise SystemExit(main(DEFAULTS, __doc__, use=USE))
