"""What a Config describes, built: its model, objectives, optimizer and data. These are the
only readers of the library's registries (:data:`jaxae.models.MODELS`,
:data:`jaxae.losses.OBJECTIVES`, :data:`jaxae.optim.OPTIMIZERS`, :data:`jaxae.optim.SCHEDULES`)."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import corruptions, data, losses, models, optim, train
from jaxae.config import DTYPES, TEST_BINARIZATION_KEY, Config, ConfigError
from jaxae.validation import function_options, named_options, objective_name, option_owners


def build_model(config: Config, image_shape: tuple[int, int, int]):
    """The linen module a config describes, for images of ``image_shape`` (H, W, C)."""
    model_class = models.MODELS[config.model]
    upper: dict[str, Any] = {}
    if config.upper_latent_dim:
        upper["upper"] = ((tuple(config.upper_widths), config.upper_latent_dim),)
    if config.model == "hvae":
        upper["scale_output"] = config.scale_output
    try:
        return model_class(
            image_shape=tuple(image_shape),
            widths=tuple(config.widths),
            latent_dim=config.latent_dim,
            dtype=DTYPES[config.dtype],
            **upper,
        )
    except ValueError as error:
        raise ConfigError(str(error), field="widths") from None


def corrupt_function(config: Config):
    """``corrupt(key, x) -> inputs`` for ``config.inputs``, or None for clean inputs."""
    if config.inputs == "clean":
        return None
    corruption = corruptions.CORRUPTIONS[config.inputs]
    return lambda key, x: corruption(key, x, config.noise_level)


def build_objective(config: Config, name: str | None = None) -> losses.Objective:
    """The objective ``name`` (default: the training one), reading corrupted inputs when
    ``config.inputs`` asks for them, on binarized images when ``config.binarize`` does."""
    name = name or objective_name(config)
    objective = losses.OBJECTIVES[name]
    options = _options(config, name)  # samples, estimator: for the k-sample objectives
    objective = functools.partial(objective, **options) if options else objective
    corrupt = corrupt_function(config)
    objective = objective if corrupt is None else losses.with_inputs(objective, corrupt)
    return losses.binarized(objective) if config.binarize == "dynamic" else objective


def build_eval_objectives(config: Config) -> dict[str, losses.Objective]:
    """The objectives of ``config.eval_objectives``, by name, wrapped as the training one."""
    return {name: build_objective(config, name) for name in config.eval_objectives}


def _options(config: Config, name: str) -> dict:
    """The options ``config`` gives the run's function called ``name`` (its optimizer,
    schedule or an objective, :func:`jaxae.validation.option_owners`): its
    ``<prefix>_<option>`` fields and its entries of ``config.options``."""
    function, prefix = option_owners(config)[name]
    names = [option for option in function_options(function) if hasattr(config, f"{prefix}_{option}")]
    return {option: getattr(config, f"{prefix}_{option}") for option in names} | named_options(config).get(name, {})


def build_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The named optimizer over the named learning-rate schedule, with the config's options."""
    schedule = optim.SCHEDULES[config.schedule]
    learning_rate = schedule(
        config.learning_rate,
        steps_per_epoch=steps_per_epoch,
        **_options(config, config.schedule),
    )
    for step in (0, steps_per_epoch * config.epochs):  # a negative rate would train uphill
        rate = float(learning_rate(step) if callable(learning_rate) else learning_rate)
        if not (math.isfinite(rate) and rate >= 0):
            raise ConfigError(
                f"schedule {config.schedule} gives the learning rate {rate} at step {step}: a rate must be a "
                f"finite number >= 0",
                field="schedule",
            )
    optimizer = optim.find_optimizer(config.optimizer)
    if optimizer is None:
        raise ConfigError(f"unknown `optimizer` {config.optimizer!r}", field="optimizer")
    options = _options(config, config.optimizer)
    if "batch_size" in function_options(optimizer):  # the loss is the batch's mean
        options["batch_size"] = config.batch_size
    return optimizer(learning_rate, **options)


def load_data(config: Config) -> tuple[data.Dataset, data.Dataset]:
    """The run's train and test sets; with ``binarize`` dynamic the test set binarized once."""
    return load_split(config, "train"), load_split(config, "test")


def load_split(config: Config, split: str) -> data.Dataset:
    """One split of the run's data, as :func:`load_data` gives it: with ``train_images`` or
    ``test_images``, its first images (the test set binarized whole first, so that its first
    images are the same whatever their number)."""
    dataset = data.load(config.dataset, split, config.data_source, config.data_dir)
    if split == "test" and config.binarize == "dynamic":
        dataset = dataclasses.replace(dataset, images=binarize_test_set(dataset.images))
    name = f"{split}_images"
    keep = getattr(config, name)
    if keep is None:
        return dataset
    if keep > len(dataset):
        raise ConfigError(
            f"`{name}` {keep} exceeds the {len(dataset)} {'training' if split == 'train' else 'test'} images of "
            f"{config.dataset}: use {len(dataset)} or less, or leave it out for all",
            field=name,
        )
    return dataclasses.replace(dataset, images=dataset.images[:keep], labels=dataset.labels[:keep])


def binarize_test_set(images: np.ndarray) -> np.ndarray:
    """uint8 images -> uint8 0/255, each pixel on with probability its grey level, drawn
    once with :data:`TEST_BINARIZATION_KEY`."""
    key = jax.random.key(TEST_BINARIZATION_KEY)
    return np.asarray(corruptions.binarize(key, train.to_float(jnp.asarray(images))) * 255).astype(np.uint8)
