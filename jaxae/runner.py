"""One training run, from a config to a work directory of results.

``train_and_evaluate(config, workdir)`` loads the data, builds the model, objective and
optimizer the config names, trains with ``train.fit``, checkpoints every epoch and writes
the work directory described in :mod:`jaxae.workdir`, which
:func:`jaxae.restore.restore_run` reads back.

The experiment scripts in ``experiments/`` only parse flags into a Config and call this.
Training is data parallel over all devices (:mod:`jaxae.parallel`); with several
processes every process runs this function and only process 0 writes files other than
the checkpoints, which Orbax writes together.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxae import parallel, seeds, train
from jaxae.build import build_eval_objectives, build_model, build_objective, build_optimizer, load_data
from jaxae.config import Config, ConfigError
from jaxae.files import atomic_write_text
from jaxae.seed_run import SeedRun
from jaxae.validation import objective_name, validate
from jaxae.workdir import check_workdir, data_digest, owned, prepare_workdir, seed_workdirs


def train_and_evaluate(
    config: Config,
    workdir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    fall_back: bool = False,
    log: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    quiet: bool = False,
) -> dict:
    """Trains the configured model(s) and writes the run's work directory.

    With ``config.seeds = N > 1``, N models with seeds ``seed .. seed + N - 1`` train at
    once (``jax.vmap``); each writes the files of a single run into ``workdir/seed_<s>/``,
    exactly as a run with that seed alone would, and ``workdir/summary.json`` sums them up.

    Args:
        config: the run.
        workdir: where everything goes.
        resume: continue from the latest checkpoint in ``workdir``.
        overwrite: delete a previous run in ``workdir`` first.
        fall_back: on resume, set unreadable checkpoints aside (into
            ``workdir/unreadable_checkpoints``) and continue from the newest readable one;
            without it an unreadable latest checkpoint raises CheckpointError.
        log: receives one-line messages (data source, resume point); default: printed.
        on_epoch: receives each epoch's record, as ``metrics.jsonl`` keeps it (with N seeds,
            each metric is a list); default: one printed line per epoch.
        quiet: print nothing (a ``log`` or ``on_epoch`` given still receives its calls).

    Returns:
        The summary written to ``workdir/summary.json``.

    Raises:
        ConfigError, data.DataError: bad configuration or data, before anything is written.
        train.TrainingDiverged: the loss became NaN or infinite; the checkpoints of earlier
            epochs stay, and nothing of the bad epoch is saved.
        CheckpointError, WriteError: a checkpoint or file could not be saved (a full disk)
            or, on resume, read; the checkpoints saved before stay.
    """
    workdir = Path(workdir)
    validate(config)
    speaks = not quiet and parallel.is_primary()
    log = log or (print_flushed if speaks else _silent)
    on_epoch = on_epoch or (functools.partial(print_epoch, epochs=config.epochs) if speaks else _silent)
    if fall_back and not resume:
        raise ConfigError("`fall_back` only applies when resuming: add `resume`", field="fall_back")
    with owned(config, workdir):  # one process owns a workdir, and its seeds' folders, at a time
        return _train_and_evaluate(
            config, workdir, resume=resume, overwrite=overwrite, fall_back=fall_back, log=log, on_epoch=on_epoch
        )


def check_objectives(config: Config, model, params, images: np.ndarray) -> None:
    """Checks the run's objectives keep the contract on a batch of ``images`` (shapes
    only, nothing computed; ``params`` may be abstract): one loss per image, metrics of one
    value per image, none named ``loss``; and that each can score the model at all. Raises
    ConfigError naming the objective, before anything is written."""
    batch = jax.ShapeDtypeStruct((len(images), *images.shape[1:]), jnp.float32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    named = {objective_name(config): build_objective(config), **build_eval_objectives(config)}
    for name, objective in named.items():
        try:
            loss, metrics = jax.eval_shape(lambda p, x, k, o=objective: o(model, p, x, x, k), params, batch, key)
        except Exception as error:  # whatever the objective raised, told in one line
            raise ConfigError(
                f"objective {name} cannot score model {config.model} ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:120] if str(error) else ''}): choose an objective that fits the model",
                field="objective",
            ) from None
        wrong = {"loss": loss} if getattr(loss, "shape", None) != (len(images),) else {}
        wrong |= {k: v for k, v in dict(metrics).items() if getattr(v, "shape", None) != (len(images),)}
        if wrong:
            shapes = ", ".join(f"{k} {getattr(v, 'shape', type(v).__name__)}" for k, v in wrong.items())
            raise ConfigError(
                f"objective {name} returns {shapes} for a batch of {len(images)} images: the loss and every metric "
                f"must have one value per image, shape ({len(images)},)",
                field="objective",
            )
        if "loss" in metrics:
            raise ConfigError(
                f"objective {name} reports a metric named loss, which would replace its loss in the records: rename it",
                field="objective",
            )


def _check_memory(config: Config, num_params: int, image_shape: tuple[int, ...]) -> None:
    """Refuses a run whose parameters and activations cannot fit the device's memory,
    estimated from the shapes before anything is allocated (a lower bound: XLA needs more)."""
    pixels = math.prod(image_shape)
    width = sum(config.widths) + sum(config.upper_widths) + config.latent_dim + config.upper_latent_dim
    samples = max(config.objective_samples, 1)
    rows = max(config.batch_size, config.eval_batch_size) * samples * config.seeds  # images x draws in one step
    needed = 4 * (4 * num_params * config.seeds + 2 * rows * (2 * width + pixels))
    available = _device_memory()
    if needed > 0.9 * available:
        raise ConfigError(
            f"the run needs at least {needed / 2**30:,.1f} GiB ({config.seeds} seed(s) of {num_params:,} parameters, "
            f"{rows:,} images x draws a step), more than the {available / 2**30:,.1f} GiB of "
            f"{jax.local_devices()[0].device_kind}: lower `objective_samples`, `seeds`, `batch_size` or the model",
            field="objective_samples" if samples > 1 else "batch_size",
        )


def _device_memory() -> int:
    """Bytes of memory of the first device: its own (accelerators), else the host's RAM."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}  # this process's own device
    except jax.errors.JaxRuntimeError:
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _silent(_) -> None:
    pass


def print_flushed(message: str) -> None:
    print(message, flush=True)


def print_epoch(record: dict, *, epochs: int) -> None:
    """``epoch   3/20  train 105.21  test 104.12  4.5 s``; several seeds' losses as mean±sd."""

    def loss(value) -> str:
        values = np.atleast_1d(np.asarray(value, float))
        return f"{values.mean():.5g}" + (f"±{values.std(ddof=1):.2g}" if len(values) > 1 else "")

    seconds = float(np.max(record["epoch_seconds"]))
    print(
        f"epoch {record['epoch']:>{len(str(epochs))}}/{epochs}  train {loss(record['train_loss'])}  "
        f"test {loss(record['test_loss'])}  {seconds:.1f} s",
        flush=True,
    )


def _train_and_evaluate(
    config: Config,
    workdir: Path,
    *,
    resume: bool,
    overwrite: bool,
    fall_back: bool,
    log: Callable[[str], None],
    on_epoch: Callable[[dict], None],
) -> dict:
    """:func:`train_and_evaluate` in a locked ``workdir``."""
    started = time.perf_counter()
    check_workdir(workdir, config, resume=resume, overwrite=overwrite)  # before the data is loaded
    train_set, test_set = load_data(config)
    log(train_set.describe())
    log(test_set.describe())
    _check_data(config, train_set.images, test_set.images)
    mesh = parallel.data_mesh()
    try:
        parallel.check_batch_size(config.batch_size, mesh, name="`batch_size`")
    except ValueError as error:
        raise ConfigError(str(error), field="batch_size") from None
    log(
        f"{jax.default_backend()}: {mesh.size} device(s) in {jax.process_count()} process(es), "
        f"{config.batch_size // mesh.size} images per device per step"
    )
    model = build_model(config, train_set.images.shape[1:])
    shapes = jax.eval_shape(lambda: train.init_params(model, train_set.images.shape[1:], jax.random.key(0)))
    _check_memory(config, sum(leaf.size for leaf in jax.tree.leaves(shapes)), train_set.images.shape[1:])
    check_objectives(config, model, shapes, train_set.images[:2])
    tx = build_optimizer(config, steps_per_epoch=math.ceil(len(train_set) / config.batch_size))  # one for all seeds
    if config.seeds > 1:
        prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)
    folders = seed_workdirs(config, workdir)
    digest = data_digest(train_set.images, test_set.images)  # once for all seeds
    runs = [SeedRun(model, tx, c, folder, train_set, test_set, mesh, started, digest) for c, folder in folders]
    states = [run.start(resume=resume, overwrite=overwrite, fall_back=fall_back, log=log) for run in runs]
    start_epochs = {len(run.history) for run in runs}
    if len(start_epochs) > 1:
        raise ConfigError(
            f"the seeds of {workdir} stopped at different epochs {sorted(start_epochs)}: `overwrite` to start again"
        )

    def on_epoch_end(states: list[train.TrainState], record: dict) -> None:
        for index, (run, state) in enumerate(zip(runs, states, strict=True)):
            run.end_epoch(state, seeds.seed_record(record, index))
        on_epoch(record)

    try:
        states = seeds.fit(
            states,
            model,
            build_objective(config),
            train_set.images,
            test_set.images,
            keys=[run.train_key for run in runs],
            epochs=config.epochs,
            batch_size=config.batch_size,
            start_epoch=start_epochs.pop(),
            on_epoch_end=on_epoch_end,
            mesh=mesh,
            evaluate_with=build_eval_objectives(config),
            eval_batch_size=config.eval_batch_size,
        )
    except train.TrainingDiverged as error:
        kept = runs[0].checkpoints.latest_epoch()
        kept_text = "no checkpoint was saved" if kept is None else f"the checkpoint of epoch {kept} is kept"
        raise train.TrainingDiverged(f"{error}; {kept_text} in {workdir}") from None
    else:
        summaries = [run.finish(state) for run, state in zip(runs, states, strict=True)]
    finally:
        for run in runs:
            run.close()
    return summaries[0] if len(runs) == 1 else _seeds_summary(config, workdir, summaries)


def _check_data(config: Config, images: np.ndarray, test_images: np.ndarray) -> None:
    """Refuses data the config cannot train on, naming the field to change."""
    for split, found in (("training", images), ("test", test_images)):
        if len(found) == 0:
            raise ConfigError(f"`dataset` {config.dataset} has no {split} images: give it some", field="dataset")
    if images.shape[1:] != test_images.shape[1:]:
        raise ConfigError(
            f"`dataset` {config.dataset} has training images of shape {images.shape[1:]} but test images of "
            f"{test_images.shape[1:]}: the splits come from different datasets",
            field="dataset",
        )
    if config.inputs == "grayscale" and images.shape[-1] != 3:
        raise ConfigError(
            f"`inputs` grayscale needs colour images and {config.dataset} has {images.shape[-1]} channel(s): "
            f"use `dataset` colored_mnist, or a colour TFDS dataset such as cifar10",
            field="inputs",
        )
    if config.batch_size > len(images):
        raise ConfigError(
            f"`batch_size` {config.batch_size} exceeds the {len(images)} training images: use {len(images)} or less",
            field="batch_size",
        )


def _seeds_summary(config: Config, workdir: Path, summaries: list[dict]) -> dict:
    """``workdir/summary.json`` of a run of several seeds: mean and spread, and each seed's summary."""
    finals = np.array([s["test_loss"] for s in summaries])
    summary = {
        "model": config.model,
        "seeds": [s["seed"] for s in summaries],
        "test_loss_mean": float(finals.mean()),
        "test_loss_std": float(finals.std(ddof=1)),
        "per_seed": summaries,
        "total_seconds": max(s["total_seconds"] for s in summaries),
    }
    if parallel.is_primary():
        atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary
