"""A run's configuration, its validation, and the things it describes: model, objective,
optimizer and data.

:class:`Config` is one frozen dataclass: every field is a command-line flag of the
experiments, and ``config.json`` in a run's work directory. Objectives, optimizers and
schedules are named by the registries of the modules that own them
(:data:`jaxae.losses.OBJECTIVES`, :data:`jaxae.optim.OPTIMIZERS`,
:data:`jaxae.optim.SCHEDULES`), so a researcher registers one from Python and names it here.

Errors name the Config field at fault in backticks (`epochs`), and :class:`ConfigError`
carries it as ``field``; the command line shows the fields as flags.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import corruptions, data, losses, models, optim, train


class ConfigError(ValueError):
    """A configuration or work-directory problem: the message names the cause and the fix,
    with Config fields (and ``train_and_evaluate``'s options) in backticks.

    Attributes:
        field: the Config field at fault, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Each field is a command-line flag of the experiments."""

    model: str = _field("vae", "model: " + ", ".join(models.MODELS))
    objective: str | None = _field(
        None, "training objective by name (jaxae.losses.OBJECTIVES); default: the model's, elbo or reconstruction"
    )
    objective_samples: int = _field(5, "k-sample objectives (iwae, vae_k): samples per image")
    objective_estimator: str = _field(
        "plain", "k-sample objectives' gradient estimator: " + ", ".join(losses.ESTIMATORS)
    )
    epochs: int = _field(20, "train until this many epochs are done")
    batch_size: int = _field(128, "images per training step over all devices (each device gets batch / devices)")
    optimizer: str = _field("adam", "optimizer by name (jaxae.optim.OPTIMIZERS): " + ", ".join(optim.OPTIMIZERS))
    learning_rate: float = _field(1e-3, "learning rate (the schedule's peak)")
    adam_b1: float = _field(0.9, "Adam's first-moment decay")
    adam_b2: float = _field(0.999, "Adam's second-moment decay")
    adam_eps: float = _field(1e-8, "Adam's epsilon (Burda et al. 2015: 1e-4)")
    sgd_momentum: float = _field(0.9, "SGD's momentum (0: plain SGD)")
    schedule: str = _field("constant", "learning-rate schedule (jaxae.optim.SCHEDULES): " + ", ".join(optim.SCHEDULES))
    stages_count: int = _field(8, "stages schedule: how many stages (stage i runs growth**i epochs)")
    stages_growth: int = _field(3, "stages schedule: each stage runs this many times the epochs of the one before")
    stages_decay: float = _field(10 ** (-1 / 7), "stages schedule: the learning rate's factor from a stage to the next")
    init_output_bias: bool = _field(
        False, "start the decoder's output bias at the logit of the mean training pixel (Burda et al. 2015)"
    )
    latent_dim: int = _field(20, "size of the code")
    widths: tuple[int, ...] = _field((400,), "MLP hidden widths or conv channels, encoder order")
    upper_widths: tuple[int, ...] = _field((), "hvae: hidden widths between the first and a second stochastic layer")
    upper_latent_dim: int = _field(0, "hvae: units of a second stochastic layer (0: one layer)")
    scale_output: str = _field(
        "logvar",
        "hvae: what its Gaussians' scale units give: logvar (sigma = exp(out / 2)) or log_sigma "
        "(sigma = exp(out), Burda et al.'s code)",
    )
    seed: int = _field(0, "seed of every random draw of the run")
    dataset: str = _field("mnist", "mnist, fashion_mnist or a TFDS image dataset")
    data_source: str = _field("auto", "where the data comes from: " + ", ".join(data.SOURCES))
    data_dir: str | None = _field(None, "IDX folder (idx source) or TFDS data folder (tfds source)")
    train_images: int | None = _field(None, "train on only the first N training images; without it, on all")
    test_images: int | None = _field(None, "evaluate on only the first N test images; without it, on all")
    eval_objectives: tuple[str, ...] = _field((), "more objectives to score the test set with each epoch, by name")
    eval_batch_size: int = _field(1000, "test images per evaluation batch")
    plot_epochs: tuple[int, ...] = _field((10, 19), "epochs whose reconstructions are drawn (the last always is)")
    train_rows: bool = _field(False, "add training originals and their reconstructions to the figures")
    keep_checkpoints: int = _field(3, "latest checkpoints kept; the best by test loss is kept too")
    tensorboard: bool = _field(
        False, 'also write TensorBoard event files into <workdir>/tensorboard (pip install "jaxae[tensorboard]")'
    )
    dtype: str = _field("float32", "compute dtype: float32, or bfloat16 (parameters and optimizer stay float32)")
    seeds: int = _field(1, "train this many models at once (jax.vmap), seeds seed .. seed+N-1, each in seed_<s>/")
    inputs: str = _field("clean", "what the model reads: clean, or " + ", ".join(corruptions.CORRUPTIONS))
    noise_level: float = _field(0.5, "Gaussian sigma, or the salt-and-pepper fraction of pixels")
    binarize: str = _field("none", "none, or dynamic: training pixels ~ Bernoulli(grey) at each step, test set once")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, fields: dict) -> Config:
        """The Config of a ``config.json``; fields it lacks (written before they existed)
        take their defaults, which are the values such a run used."""
        if not isinstance(fields, dict):
            raise ConfigError(f"a config is a JSON object of fields, not {type(fields).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}: the run was made by another version of jaxae")
        for name, value in fields.items():
            if not _has_json_type(value, str(known[name].type)):
                raise ConfigError(f"`{name}` holds {value!r:.40}, not a {known[name].type}", field=name)
        tuples = {name for name, f in known.items() if "tuple" in str(f.type)}
        values: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in fields.items()}
        return cls(**values)


def _has_json_type(value, annotation: str) -> bool:
    """Whether a JSON value fits a Config field's annotation (``int``, ``str | None``, ``tuple[int, ...]``...)."""
    if annotation.startswith("tuple["):
        item = annotation.removeprefix("tuple[").split(",")[0]
        return isinstance(value, (list, tuple)) and all(_has_json_type(v, item) for v in value)
    if annotation.endswith(" | None") and value is None:
        return True
    kinds = {"bool": (bool,), "int": (int,), "float": (int, float), "str": (str,)}[annotation.removesuffix(" | None")]
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


# Fields that may change when a run is resumed: they do not change what was trained.
RESUMABLE_FIELDS = frozenset(
    {"epochs", "plot_epochs", "data_source", "data_dir", "keep_checkpoints", "train_rows", "eval_objectives"}
    | {"tensorboard"}
    | {"eval_batch_size", "stages_count"}  # later stages do not change the epochs of earlier ones
)

# Upper bounds far past any run this machine or a TPU pod could hold, so that a typo's
# 10^20 is refused here in one line, not as an overflow or a failed allocation later.
LIMITS = {
    "epochs": 10**7,
    "batch_size": 2**24,
    "latent_dim": 2**24,
    "widths": 2**24,
    "upper_widths": 2**24,
    "upper_latent_dim": 2**24,
    "objective_samples": 2**20,
    "seeds": 256,  # each seed also holds an open lock on its folder
    "eval_batch_size": 2**24,
    "keep_checkpoints": 10**4,
    "stages_count": 1000,
    "stages_growth": 10**6,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BINARIZATIONS = ("none", "dynamic")
SCALE_OUTPUTS = ("logvar", "log_sigma")
SEED_LIMIT = 2**32  # jax.random.key(seed) keeps 32 bits: seed 2^32 would train seed 0's model
TEST_BINARIZATION_KEY = 2015  # one binarized test set shared by every run, whatever its seed


def _one_of(config: Config, name: str, choices) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"unknown `{name}` {value!r}: use one of {', '.join(choices)}", field=name)


def validate(config: Config) -> None:
    """Raises ConfigError naming the first bad field and a valid value."""
    positive: tuple[str, ...] = (
        "epochs",
        "batch_size",
        "latent_dim",
        "keep_checkpoints",
        "seeds",
        "eval_batch_size",
        "stages_count",
    )
    positive += ("objective_samples",)
    for name in (*positive, "stages_growth"):
        if getattr(config, name) <= 0:
            raise ConfigError(f"`{name}` must be positive, got {getattr(config, name)}", field=name)
    for name, most in LIMITS.items():
        values = getattr(config, name)
        if max(values if isinstance(values, tuple) else [values], default=0) > most:
            shown = str(values) if len(str(values)) <= 30 else f"{str(values)[:12]}... ({len(str(values))} digits)"
            raise ConfigError(f"`{name}` must be at most {most:,}, got {shown}", field=name)
    for name in ("learning_rate", "adam_eps", "stages_decay"):
        if not (math.isfinite(getattr(config, name)) and getattr(config, name) > 0):
            raise ConfigError(f"`{name}` must be a positive number, got {getattr(config, name)}", field=name)
    for name in ("adam_b1", "adam_b2", "sgd_momentum"):
        if not 0 <= getattr(config, name) < 1:
            raise ConfigError(f"`{name}` must be in [0, 1), got {getattr(config, name)}", field=name)
    if not 0 <= config.seed <= SEED_LIMIT - config.seeds:
        raise ConfigError(
            f"`seed` must be in [0, 2^32 - `seeds`] (jax.random.key takes 32 bits), got {config.seed}", field="seed"
        )
    try:
        data.normalize_name(config.dataset)
    except data.DataError as error:
        raise ConfigError(str(error).replace("unknown dataset", "unknown `dataset`"), field="dataset") from None
    for name in ("train_images", "test_images"):
        if (value := getattr(config, name)) is not None and value <= 0:
            raise ConfigError(f"`{name}` must be positive, got {value}: leave it out for all", field=name)
    _one_of(config, "model", models.MODELS)
    if not config.widths or min(config.widths) <= 0:
        raise ConfigError(f"`widths` must be one or more positive integers, got {config.widths}", field="widths")
    if config.plot_epochs and min(config.plot_epochs) <= 0:
        raise ConfigError(f"`plot_epochs` must be positive epochs, got {config.plot_epochs}", field="plot_epochs")
    if config.upper_latent_dim and config.model != "hvae":
        raise ConfigError(f"`upper_latent_dim` needs `model` hvae, not {config.model}", field="upper_latent_dim")
    if config.upper_latent_dim < 0 or (config.upper_latent_dim and not config.upper_widths):
        raise ConfigError("`upper_latent_dim` needs `upper_widths`, and may not be negative", field="upper_latent_dim")
    _one_of(config, "scale_output", SCALE_OUTPUTS)
    if config.scale_output != "logvar" and config.model != "hvae":
        raise ConfigError(f"`scale_output` {config.scale_output} needs `model` hvae", field="scale_output")
    if config.init_output_bias and config.model not in models.MLP_DECODERS:
        raise ConfigError(
            f"`init_output_bias` needs an MLP decoder ({', '.join(models.MLP_DECODERS)}), not {config.model}",
            field="init_output_bias",
        )
    if config.objective is not None:
        _one_of(config, "objective", losses.OBJECTIVES)
    if config.upper_latent_dim and objective_name(config) in ("elbo", "reconstruction"):
        raise ConfigError(
            "two stochastic layers train on a k-sample objective: `objective` vae_k or iwae", field="objective"
        )
    for name in config.eval_objectives:
        if name not in losses.OBJECTIVES:
            raise ConfigError(
                f"unknown objective {name!r} in `eval_objectives`: use names of {', '.join(losses.OBJECTIVES)}",
                field="eval_objectives",
            )
    _one_of(config, "objective_estimator", losses.ESTIMATORS)
    _one_of(config, "optimizer", optim.OPTIMIZERS)
    _one_of(config, "schedule", optim.SCHEDULES)
    _check_options_are_taken(config)
    _one_of(config, "dtype", DTYPES)
    _one_of(config, "inputs", ("clean", *corruptions.CORRUPTIONS))
    limit = 1.0 if config.inputs == "salt_pepper" else math.inf
    if not (0 <= config.noise_level <= limit):
        raise ConfigError(
            f"`noise_level` must be in [0, {limit}] with `inputs` {config.inputs}, not {config.noise_level}",
            field="noise_level",
        )
    _one_of(config, "binarize", BINARIZATIONS)
    _one_of(config, "data_source", data.SOURCES)


def keyword_options(function) -> set[str]:
    """The keyword-only option names of a registered function."""
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY}


def _check_options_are_taken(config: Config) -> None:
    """Refuses an option field set away from its default that nothing in the run reads: an
    ``objective_<option>`` that neither the training objective nor an evaluation objective
    declares, or another optimizer's or schedule's ``<name>_<option>``."""
    defaults = Config()
    changed = {f.name for f in dataclasses.fields(Config) if getattr(config, f.name) != getattr(defaults, f.name)}
    objectives = [objective_name(config), *config.eval_objectives]
    taken = set().union(*(keyword_options(losses.OBJECTIVES[name]) for name in objectives))
    for name in sorted(changed):
        if name.startswith("objective_") and name.removeprefix("objective_") not in taken:
            raise ConfigError(
                f"`{name}` is set, but the run's objectives ({', '.join(objectives)}) take no "
                f"{name.removeprefix('objective_')} option: leave it out, or choose an objective that takes it",
                field=name,
            )
    for kind, registry in (("optimizer", optim.OPTIMIZERS), ("schedule", optim.SCHEDULES)):
        chosen = getattr(config, kind)
        for name in sorted(changed):
            owner = max((n for n in registry if name.startswith(f"{n}_")), key=len, default=chosen)
            if owner != chosen:
                raise ConfigError(
                    f"`{name}` is an option of the {owner} {kind}, but the run's `{kind}` is {chosen}: "
                    f"leave it out, or choose `{kind}` {owner}",
                    field=name,
                )


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


def objective_name(config: Config) -> str:
    """The training objective's name: ``config.objective``, else the model's own (``vae_k``
    for two stochastic layers, whose ELBO has no closed form)."""
    if config.objective is None and config.upper_latent_dim:
        return "vae_k"
    return config.objective or losses.default_objective(models.MODELS[config.model])


def corrupt_function(config: Config):
    """``corrupt(key, x) -> inputs`` for ``config.inputs``, or None for clean inputs."""
    if config.inputs == "clean":
        return None
    corruption = corruptions.CORRUPTIONS[config.inputs]
    return lambda key, x: corruption(key, x, config.noise_level)


def build_objective(config: Config, name: str | None = None) -> losses.Objective:
    """The objective ``name`` (default: the training one), reading corrupted inputs when
    ``config.inputs`` asks for them, on binarized images when ``config.binarize`` does."""
    objective = losses.OBJECTIVES[name or objective_name(config)]
    options = _options(config, "objective", objective)  # samples, estimator: for the k-sample objectives
    objective = functools.partial(objective, **options) if options else objective
    corrupt = corrupt_function(config)
    objective = objective if corrupt is None else losses.with_inputs(objective, corrupt)
    return losses.binarized(objective) if config.binarize == "dynamic" else objective


def build_eval_objectives(config: Config) -> dict[str, losses.Objective]:
    """The objectives of ``config.eval_objectives``, by name, wrapped as the training one."""
    return {name: build_objective(config, name) for name in config.eval_objectives}


def _options(config: Config, prefix: str, function) -> dict:
    """The keyword options of ``function`` that ``config`` has as ``<prefix>_<option>`` fields."""
    names = keyword_options(function)
    return {name: getattr(config, f"{prefix}_{name}") for name in names if hasattr(config, f"{prefix}_{name}")}


def build_optimizer(config: Config, steps_per_epoch: int) -> optax.GradientTransformation:
    """The named optimizer over the named learning-rate schedule, with the config's options."""
    schedule = optim.SCHEDULES[config.schedule]
    learning_rate = schedule(
        config.learning_rate, steps_per_epoch=steps_per_epoch, **_options(config, config.schedule, schedule)
    )
    for step in (0, steps_per_epoch * config.epochs):  # a negative rate would train uphill
        rate = float(learning_rate(step) if callable(learning_rate) else learning_rate)
        if not (math.isfinite(rate) and rate >= 0):
            raise ConfigError(
                f"schedule {config.schedule} gives the learning rate {rate} at step {step}: a rate must be a "
                f"finite number >= 0",
                field="schedule",
            )
    optimizer = optim.OPTIMIZERS[config.optimizer]
    options = _options(config, config.optimizer, optimizer)
    if "batch_size" in keyword_options(optimizer):  # the loss is the batch's mean
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
