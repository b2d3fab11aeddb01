"""A Config checked before anything runs: each bad field refused in one line that names it
and a value that would do (:func:`validate`)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re

from jaxae import corruptions, data, losses, models, optim
from jaxae.config import BINARIZATIONS, DTYPES, LIMITS, SCALE_OUTPUTS, SEED_LIMIT, Config, ConfigError


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
    if optim.find_optimizer(config.optimizer) is None:
        raise ConfigError(
            f"unknown `optimizer` {config.optimizer!r}: use one of {', '.join(optim.OPTIMIZERS)}, or an optax "
            f"optimizer's name (adamw, lion, ...)",
            field="optimizer",
        )
    _one_of(config, "schedule", optim.SCHEDULES)
    _check_options_are_taken(config)
    named_options(config)
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


def function_options(function) -> dict[str, inspect.Parameter]:
    """The options a registered function (or an optax optimizer) takes by name: its
    keyword-only parameters and those with a default."""
    parameters = inspect.signature(function).parameters.values()
    return {
        p.name: p
        for p in parameters
        if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
    }


# Options the run itself passes: a schedule's steps per epoch, an optimizer's batch size.
RUN_OPTIONS = ("steps_per_epoch", "batch_size")
_OPTION = re.compile(r"([A-Za-z_]\w*)\.([A-Za-z_]\w*)=(.*)")


def option_owners(config: Config) -> dict[str, tuple[object, str]]:
    """The functions whose options ``Config.options`` may set, by name: the run's optimizer,
    schedule and objectives, each with the prefix of its options' own fields."""
    owners: dict[str, tuple[object, str]] = {
        name: (losses.OBJECTIVES[name], "objective") for name in (objective_name(config), *config.eval_objectives)
    }
    owners[config.schedule] = (optim.SCHEDULES[config.schedule], config.schedule)
    owners[config.optimizer] = (optim.find_optimizer(config.optimizer), config.optimizer)
    return owners


def named_options(config: Config) -> dict[str, dict]:
    """``config.options`` as ``{function name: {option: value}}``, each value of its
    default's type.

    Raises:
        ConfigError: an entry that is not NAME.OPTION=VALUE, names no function of the run or
            no option of it, sets an option that has a field of its own or that the run
            passes, repeats one, or gives a value its default's type cannot read.
    """
    owners = option_owners(config)
    found: dict[str, dict] = {}
    for entry in config.options:
        match = _OPTION.fullmatch(entry)
        if match is None:
            raise ConfigError(
                f"`options` entry {entry!r} is not NAME.OPTION=VALUE (adamw.weight_decay=0.01)", field="options"
            )
        name, option, text = match.groups()
        if name not in owners:
            objectives = ", ".join(n for n, (_, prefix) in owners.items() if prefix == "objective")
            raise ConfigError(
                f"`options` entry {entry!r} names {name}, which is not the run's optimizer ({config.optimizer}), "
                f"schedule ({config.schedule}) or objective ({objectives}): {_choose(name)}",
                field="options",
            )
        function, prefix = owners[name]
        parameters = function_options(function)
        if option not in parameters or option in RUN_OPTIONS:
            takes = ", ".join(sorted(set(parameters) - set(RUN_OPTIONS))) or "none"
            raise ConfigError(f"{name} takes no option {option!r} (its options: {takes})", field="options")
        if hasattr(config, f"{prefix}_{option}"):
            raise ConfigError(f"{name}.{option} has a field of its own: set `{prefix}_{option}`", field="options")
        if option in found.setdefault(name, {}):
            raise ConfigError(f"`options` sets {name}.{option} twice: keep one", field="options")
        found[name][option] = _option_value(entry, text, parameters[option].default)
    return found


def _choose(name: str) -> str:
    """How a run would come to read the options of the function called ``name``."""
    if optim.find_optimizer(name) is not None:
        return f"choose `optimizer` {name}, or leave the entry out"
    if name in optim.SCHEDULES:
        return f"choose `schedule` {name}, or leave the entry out"
    if name in losses.OBJECTIVES:
        return f"choose `objective` {name} or add it to `eval_objectives`, or leave the entry out"
    return "leave the entry out"


def _option_value(entry: str, text: str, default):
    """``text`` read as a value of ``default``'s type; without a default, as JSON, else as text."""
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError
            return text.lower() == "true"
        if isinstance(default, (int, float, str)):
            value = type(default)(text)
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise ConfigError(
            f"`options` entry {entry!r}: the option takes a {type(default).__name__} like its default {default!r}",
            field="options",
        ) from None
    try:
        return json.loads(text)
    except ValueError:
        return text


def _check_options_are_taken(config: Config) -> None:
    """Refuses an option field set away from its default that nothing in the run reads: an
    ``objective_<option>`` that neither the training objective nor an evaluation objective
    declares, or another optimizer's or schedule's ``<name>_<option>``."""
    defaults = Config()
    changed = {f.name for f in dataclasses.fields(Config) if getattr(config, f.name) != getattr(defaults, f.name)}
    objectives = [objective_name(config), *config.eval_objectives]
    taken = set().union(*(function_options(losses.OBJECTIVES[name]) for name in objectives))
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


def objective_name(config: Config) -> str:
    """The training objective's name: ``config.objective``, else the model's own (``vae_k``
    for two stochastic layers, whose ELBO has no closed form)."""
    if config.objective is None and config.upper_latent_dim:
        return "vae_k"
    return config.objective or losses.default_objective(models.MODELS[config.model])
