"""A run's configuration: :class:`Config`, one frozen dataclass whose every field is a
command-line flag of the experiments and a key of ``config.json`` in a run's work directory.

This module is the schema alone: it imports nothing of the library, so reading a config
costs no model or data code. :mod:`jaxae.validation` checks a Config; :mod:`jaxae.build`
turns it into a model, objective, optimizer and data, through the registries of the modules
that own them (:data:`jaxae.losses.OBJECTIVES`, :data:`jaxae.optim.OPTIMIZERS`, ...).

Errors name the Config field at fault in backticks (`epochs`), and :class:`ConfigError`
carries it as ``field``; the command line shows the fields as flags.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from typing import Any

import jax.numpy as jnp


class ConfigError(ValueError):
    """A configuration or work-directory problem: the message names the cause and the fix,
    with Config fields (and ``train_and_evaluate``'s options) in backticks.

    Attributes:
        field: the Config field at fault, when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


def _field(default, help: str, registry: str | None = None, *, resume: str | None = None):
    """A Config field with its help; ``registry`` (``"module:NAME"``) names the registry whose
    names replace ``{names}`` in the help when it is shown (:func:`field_help`). ``resume``
    says whether a resumed run may change it: ``"any"`` (it does not change what was
    trained), ``"saved"`` (as "any", and the command line keeps the run's own value unless
    the flag is given), or None (it may not)."""
    return dataclasses.field(default=default, metadata={"help": help, "registry": registry, "resume": resume})


def field_help(field: dataclasses.Field) -> str:
    """A Config field's help, with the names its registry holds now (those registered later included)."""
    registry = field.metadata.get("registry")
    if registry is None:
        return field.metadata["help"]
    module, name = registry.split(":")
    return field.metadata["help"].format(names=", ".join(getattr(importlib.import_module(module), name)))


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Each field is a command-line flag of the experiments."""

    model: str = _field("vae", "model: {names}", "jaxae.models:MODELS")
    objective: str | None = _field(
        None, "training objective by name (jaxae.losses.OBJECTIVES); default: the model's, elbo or reconstruction"
    )
    objective_samples: int = _field(5, "k-sample objectives (iwae, vae_k): samples per image")
    objective_estimator: str = _field(
        "plain", "k-sample objectives' gradient estimator: {names}", "jaxae.losses:ESTIMATORS"
    )
    epochs: int = _field(20, "train until this many epochs are done", resume="saved")
    batch_size: int = _field(128, "images per training step over all devices (each device gets batch / devices)")
    optimizer: str = _field(
        "adam",
        "optimizer by name (jaxae.optim.OPTIMIZERS): {names}, or an optax optimizer's (adamw, lion, ...)",
        "jaxae.optim:OPTIMIZERS",
    )
    learning_rate: float = _field(1e-3, "learning rate (the schedule's peak)")
    adam_b1: float = _field(0.9, "Adam's first-moment decay")
    adam_b2: float = _field(0.999, "Adam's second-moment decay")
    adam_eps: float = _field(1e-8, "Adam's epsilon (Burda et al. 2015: 1e-4)")
    sgd_momentum: float = _field(0.9, "SGD's momentum (0: plain SGD)")
    schedule: str = _field(
        "constant", "learning-rate schedule (jaxae.optim.SCHEDULES): {names}", "jaxae.optim:SCHEDULES"
    )
    stages_count: int = _field(8, "stages schedule: how many stages (stage i runs growth**i epochs)", resume="any")
    stages_growth: int = _field(3, "stages schedule: each stage runs this many times the epochs of the one before")
    stages_decay: float = _field(10 ** (-1 / 7), "stages schedule: the learning rate's factor from a stage to the next")
    options: tuple[str, ...] = _field(
        (),
        "options that have no field of their own, as NAME.OPTION=VALUE, for the run's optimizer, schedule or "
        "objectives by their names: adamw.weight_decay=0.01",
    )
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
    data_source: str = _field("auto", "where the data comes from: {names}", "jaxae.data:SOURCES", resume="any")
    data_dir: str | None = _field(None, "IDX folder (idx source) or TFDS data folder (tfds source)", resume="any")
    train_images: int | None = _field(None, "train on only the first N training images; without it, on all")
    test_images: int | None = _field(None, "evaluate on only the first N test images; without it, on all")
    eval_objectives: tuple[str, ...] = _field(
        (), "more objectives to score the test set with each epoch, by name", resume="any"
    )
    eval_batch_size: int = _field(1000, "test images per evaluation batch", resume="any")
    plot_epochs: tuple[int, ...] = _field(
        (10, 19), "epochs whose reconstructions are drawn (the last always is)", resume="any"
    )
    train_rows: bool = _field(False, "add training originals and their reconstructions to the figures", resume="any")
    keep_checkpoints: int = _field(3, "latest checkpoints kept; the best by test loss is kept too", resume="any")
    tensorboard: bool = _field(
        False,
        'also write TensorBoard event files into <workdir>/tensorboard (pip install "jaxae[tensorboard]")',
        resume="any",
    )
    dtype: str = _field("float32", "compute dtype: float32, or bfloat16 (parameters and optimizer stay float32)")
    seeds: int = _field(1, "train this many models at once (jax.vmap), seeds seed .. seed+N-1, each in seed_<s>/")
    inputs: str = _field("clean", "what the model reads: clean, or {names}", "jaxae.corruptions:CORRUPTIONS")
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
            if not _has_json_type(value, name):
                raise ConfigError(f"`{name}` holds {value!r:.40}, not a {known[name].type}", field=name)
        tuples = {name for name in known if field_type(name)[1]}
        values: dict[str, Any] = {k: tuple(v) if k in tuples else v for k, v in fields.items()}
        return cls(**values)


def field_type(name: str) -> tuple[type, bool, bool]:
    """A Config field's value type, whether it is a tuple of them, and whether it may be None:
    ``tuple[int, ...]`` -> ``(int, True, False)``, ``str | None`` -> ``(str, False, True)``."""
    hint = _FIELD_TYPES[name]
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True, False
    if isinstance(hint, types.UnionType):  # X | None
        return next(a for a in typing.get_args(hint) if a is not type(None)), False, True
    return hint, False, False


def _has_json_type(value, name: str) -> bool:
    """Whether a JSON value fits Config field ``name``'s type."""
    kind, is_tuple, optional = field_type(name)
    if is_tuple:
        return isinstance(value, (list, tuple)) and all(_is(v, kind) for v in value)
    return (optional and value is None) or _is(value, kind)


def _is(value, kind: type) -> bool:
    """``isinstance`` as JSON means it: an int is a float, a bool is no number."""
    kinds = (int, float) if kind is float else (kind,)
    return isinstance(value, kinds) and (kind is bool or not isinstance(value, bool))


_FIELD_TYPES = typing.get_type_hints(Config)

# Fields that a resumed run may change (they do not change what was trained; a later stage
# does not change the epochs of earlier ones), and those of them that the command line keeps
# at the run's own value unless given: from each field's ``resume``.
RESUMABLE_FIELDS = frozenset(f.name for f in dataclasses.fields(Config) if f.metadata["resume"])
SAVED_WHEN_RESUMED = tuple(f.name for f in dataclasses.fields(Config) if f.metadata["resume"] == "saved")

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
