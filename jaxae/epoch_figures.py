"""The figures a run draws as it trains, from fixed batches so that epochs compare:
reconstructions at chosen epochs, the loss curves, and samples from the prior."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import losses, plots, train
from jaxae.build import corrupt_function
from jaxae.config import Config
from jaxae.validation import function_options, objective_name

LOSS_UNITS = {"elbo": "-ELBO (nats per image)", "reconstruction": "MSE per pixel"}


def run_title(config: Config) -> str:
    """What a run trains, for its figures' titles: ``vae, elbo`` or ``hvae, iwae k = 50, dreg``."""
    name = objective_name(config)
    options = function_options(losses.OBJECTIVES[name])
    title = f"{config.model}, {name}" + (f" k = {config.objective_samples}" if "samples" in options else "")
    return title + (
        f", {config.objective_estimator}" if "estimator" in options and config.objective_estimator != "plain" else ""
    )


@functools.cache
def _image_functions(model) -> tuple:
    # One compiled pair per model, shared by every run of it (the seeds of a study).
    reconstruct = jax.jit(lambda params, x: jax.nn.sigmoid(model.apply(params, x).logits))
    decode = jax.jit(lambda params, z: jax.nn.sigmoid(model.apply(params, z, method=model.decode)))
    return reconstruct, decode


class RunFigures:
    """The figures of one run, written into ``folder``.

    The images drawn are the first 16 of each split, the corrupted inputs (when the run
    reads corrupted images) and the 64 prior codes come from ``sample_key``: the same at
    every epoch and after a resume.
    """

    def __init__(self, model, config: Config, folder: Path, train_images, test_images, sample_key: jax.Array):
        self.model, self.config, self.folder = model, config, folder
        self.test_images = train.to_float(jnp.asarray(test_images[:16]))
        self.train_images = train.to_float(jnp.asarray(train_images[:16]))
        corrupt = corrupt_function(config)
        self.test_inputs = None if corrupt is None else corrupt(jax.random.fold_in(sample_key, 1), self.test_images)
        self.prior_z = jax.random.normal(sample_key, (64, config.latent_dim))
        self._reconstruct, self._decode = _image_functions(model)

    def epoch_files(self, epoch: int) -> tuple[Path, Path]:
        """The files :meth:`epoch` writes: the reconstructions and the loss curves."""
        return self.folder / f"reconstructions_epoch_{epoch:02d}.png", self.folder / "loss.png"

    def epoch(self, params, epoch: int, history: list[dict]) -> None:
        """``reconstructions_epoch_XX.png`` (originals on top, test reconstructions below) and ``loss.png``.

        With ``train_rows``, training originals and their reconstructions come first.
        """
        groups = []
        if self.config.train_rows:
            groups.append(("train originals", self.train_images))
            groups.append(("train reconstructions", self._reconstruct(params, self.train_images)))
        groups.append(("test originals", self.test_images))
        if self.test_inputs is None:
            groups.append(("test reconstructions", self._reconstruct(params, self.test_images)))
        else:
            groups.append((f"test inputs ({self.config.inputs})", self.test_inputs))
            groups.append(("test reconstructions", self._reconstruct(params, self.test_inputs)))
        name = f"{self.config.model} on {self.config.dataset}, epoch {epoch}"
        plots.image_rows(
            [(label, np.asarray(x)) for label, x in groups],
            self.epoch_files(epoch)[0],
            title=name,
        )
        objective = objective_name(self.config)
        unit = LOSS_UNITS.get(objective, f"{objective} loss")
        plots.loss_curves(history, self.epoch_files(epoch)[1], ylabel=unit, title=f"{run_title(self.config)}: loss")

    def samples(self, params) -> None:
        """``samples.png``: 64 decodings of a fixed draw from the prior N(0, I)."""
        images = np.asarray(self._decode(params, self.prior_z))
        plots.image_grid(images, self.folder / "samples.png", title=f"{self.config.model}: samples from the prior")
