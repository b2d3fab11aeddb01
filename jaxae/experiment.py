"""One training run, from a config to a work directory of results.

``train_and_evaluate(config, workdir)`` loads the data, builds the model, trains it with
``train.fit``, checkpoints every epoch and writes::

    workdir/config.json      the Config, as JSON
    workdir/metrics.jsonl    one record per epoch (epoch, train_loss, test_loss, ..., epoch_seconds)
    workdir/checkpoints/     Orbax checkpoints: the last few and the best by test loss
    workdir/figures/         reconstructions_epoch_XX.png, loss.png, samples.png (VAE)
    workdir/summary.json     final figures: test loss, best epoch, seconds, device

The experiment scripts in ``experiments/`` only parse flags into a Config and call this.
Training is data parallel over all devices (:mod:`jaxae.parallel`); with several
processes every process runs this function and only process 0 writes files other than
the checkpoints, which Orbax writes together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxae import corruptions, data, losses, models, parallel, plots, train
from jaxae.checkpoint import CheckpointError, Checkpoints
from jaxae.files import WriteError, atomic_write_text


class ConfigError(ValueError):
    """A configuration or work-directory problem; the message names the cause and the fix."""


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Each field is a command-line flag of the experiments."""

    model: str = _field("vae", "model: " + ", ".join(models.MODELS))
    epochs: int = _field(20, "train until this many epochs are done")
    batch_size: int = _field(128, "images per training step over all devices (each device gets batch / devices)")
    learning_rate: float = _field(1e-3, "Adam learning rate")
    latent_dim: int = _field(20, "size of the code")
    widths: tuple[int, ...] = _field((400,), "MLP hidden widths or conv channels, encoder order")
    seed: int = _field(0, "seed of every random draw of the run")
    dataset: str = _field("mnist", "mnist, fashion_mnist or a TFDS image dataset")
    data_source: str = _field("auto", "where the data comes from: " + ", ".join(data.SOURCES))
    data_dir: str | None = _field(None, "IDX folder (idx source) or TFDS data folder (tfds source)")
    plot_epochs: tuple[int, ...] = _field((10, 19), "epochs whose reconstructions are drawn (the last always is)")
    train_rows: bool = _field(False, "add a pair of rows reconstructed from training images to the figures")
    keep_checkpoints: int = _field(3, "latest checkpoints kept; the best by test loss is kept too")
    dtype: str = _field("float32", "compute dtype: float32, or bfloat16 (parameters and optimizer stay float32)")
    seeds: int = _field(1, "train this many models at once (jax.vmap), seeds seed .. seed+N-1, each in seed_<s>/")
    inputs: str = _field("clean", "what the model reads: clean, or " + ", ".join(corruptions.CORRUPTIONS))
    noise_level: float = _field(0.5, "Gaussian sigma, or the salt-and-pepper fraction of pixels")
    binarize: str = _field("none", "none, or dynamic: training pixels ~ Bernoulli(grey) at each step, test set once")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, fields: dict) -> Config:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}: the run was made by another version of jaxae")
        tuples = {name for name, f in known.items() if "tuple" in str(f.type)}
        return cls(**{k: tuple(v) if k in tuples else v for k, v in fields.items()})


# Fields that may change when a run is resumed: they do not change what was trained.
RESUMABLE_FIELDS = frozenset({"epochs", "plot_epochs", "data_source", "data_dir", "keep_checkpoints", "train_rows"})


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BINARIZATIONS = ("none", "dynamic")
TEST_BINARIZATION_KEY = 2015  # one binarized test set shared by every run, whatever its seed


def validate(config: Config) -> None:
    """Raises ConfigError naming the first bad field and a valid value."""
    positive = ("epochs", "batch_size", "latent_dim", "keep_checkpoints", "seeds")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ConfigError(f"--learning-rate must be a positive number, got {config.learning_rate}")
    if config.model not in models.MODELS:
        raise ConfigError(f"unknown --model {config.model!r}: use one of {', '.join(models.MODELS)}")
    if not config.widths or min(config.widths) <= 0:
        raise ConfigError(f"--widths must be one or more positive integers, got {config.widths}")
    if config.plot_epochs and min(config.plot_epochs) <= 0:
        raise ConfigError(f"--plot-epochs must be positive epoch numbers, got {config.plot_epochs}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype {config.dtype!r}: use one of {', '.join(DTYPES)}")
    inputs = ("clean", *corruptions.CORRUPTIONS)
    if config.inputs not in inputs:
        raise ConfigError(f"unknown --inputs {config.inputs!r}: use one of {', '.join(inputs)}")
    limit = 1.0 if config.inputs == "salt_pepper" else math.inf
    if not (0 <= config.noise_level <= limit):
        raise ConfigError(
            f"--noise-level must be in [0, {limit}] with --inputs {config.inputs}, not {config.noise_level}"
        )
    if config.binarize not in BINARIZATIONS:
        raise ConfigError(f"unknown --binarize {config.binarize!r}: use one of {', '.join(BINARIZATIONS)}")
    if config.data_source not in data.SOURCES:
        raise ConfigError(f"unknown --data-source {config.data_source!r}: use one of {', '.join(data.SOURCES)}")


def build_model(config: Config, image_shape: tuple[int, int, int]):
    """The linen module a config describes, for images of ``image_shape`` (H, W, C)."""
    model_class = models.MODELS[config.model]
    try:
        return model_class(
            image_shape=image_shape,
            widths=tuple(config.widths),
            latent_dim=config.latent_dim,
            dtype=DTYPES[config.dtype],
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None


def corrupt_function(config: Config):
    """``corrupt(key, x) -> inputs`` for ``config.inputs``, or None for clean inputs."""
    if config.inputs == "clean":
        return None
    corruption = corruptions.CORRUPTIONS[config.inputs]
    return lambda key, x: corruption(key, x, config.noise_level)


def build_objective(config: Config, model) -> losses.Objective:
    """The model's objective, reading corrupted inputs when ``config.inputs`` asks for them."""
    objective = losses.objective_for(model)
    corrupt = corrupt_function(config)
    objective = objective if corrupt is None else losses.with_inputs(objective, corrupt)
    return losses.binarized(objective) if config.binarize == "dynamic" else objective


def load_data(config: Config) -> tuple[data.Dataset, data.Dataset]:
    """The run's train and test sets; with ``--binarize dynamic`` the test set binarized once."""
    train_set = data.load(config.dataset, "train", config.data_source, config.data_dir)
    test_set = data.load(config.dataset, "test", config.data_source, config.data_dir)
    if config.binarize == "dynamic":
        test_set = dataclasses.replace(test_set, images=binarize_test_set(test_set.images))
    return train_set, test_set


def binarize_test_set(images: np.ndarray) -> np.ndarray:
    """uint8 images -> uint8 0/255, each pixel on with probability its grey level, drawn
    once with :data:`TEST_BINARIZATION_KEY`."""
    key = jax.random.key(TEST_BINARIZATION_KEY)
    return np.asarray(corruptions.binarize(key, train.to_float(jnp.asarray(images))) * 255).astype(np.uint8)


def check_workdir(workdir: Path, config: Config, *, resume: bool, overwrite: bool) -> None:
    """Refuses to mix runs: a workdir holding another run needs --resume or --overwrite."""
    saved_path = workdir / "config.json"
    if saved_path.exists() and not (resume or overwrite):
        raise ConfigError(f"{workdir} already holds a run: pass --resume to continue it or --overwrite to replace it")
    if saved_path.exists() and resume:
        saved = Config.from_json(json.loads(saved_path.read_text()))
        differ = [
            f"{name} ({getattr(saved, name)!r} -> {getattr(config, name)!r})"
            for name in config.to_json()
            if name not in RESUMABLE_FIELDS and getattr(saved, name) != getattr(config, name)
        ]
        if differ:
            raise ConfigError(
                f"cannot resume {workdir} with a different config: {', '.join(differ)}; "
                f"use the saved values or a new --workdir"
            )


def write_workdir(workdir: Path, config: Config, *, overwrite: bool) -> None:
    """Clears a previous run when ``overwrite``, then writes ``config.json``."""
    if overwrite:
        for name in ("checkpoints", "figures"):
            shutil.rmtree(workdir / name, ignore_errors=True)
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            (workdir / name).unlink(missing_ok=True)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "config.json", json.dumps(config.to_json(), indent=2))
    except OSError as error:
        cause = error.__cause__ if isinstance(error, WriteError) else error
        raise ConfigError(f"cannot write to --workdir {workdir} ({cause.strerror}): choose a writable folder") from None


def prepare_workdir(workdir: Path, config: Config, *, resume: bool, overwrite: bool) -> None:
    """Every process checks the workdir; process 0 writes it; all wait until it is written."""
    check_workdir(workdir, config, resume=resume, overwrite=overwrite)
    parallel.sync(f"checked {workdir}")  # before any process writes
    if parallel.is_primary():
        write_workdir(workdir, config, overwrite=overwrite)
    parallel.sync(f"written {workdir}")


def _write_history(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in history))


def train_and_evaluate(
    config: Config,
    workdir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    fall_back: bool = False,
    log: Callable[[str], None] = lambda message: None,
    on_epoch: Callable[[dict], None] = lambda record: None,
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
        log: receives one-line messages (data source, resume point).
        on_epoch: receives each epoch's record (with N seeds, each metric is a list).

    Returns:
        The summary written to ``workdir/summary.json``.

    Raises:
        ConfigError, data.DataError: bad configuration or data, before anything is written.
        train.TrainingDiverged: the loss became NaN or infinite; the checkpoints of earlier
            epochs stay, and nothing of the bad epoch is saved.
        CheckpointError, WriteError: a checkpoint or file could not be saved (a full disk)
            or, on resume, read; the checkpoints saved before stay.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    validate(config)
    if fall_back and not resume:
        raise ConfigError("--fall-back only applies when resuming: add --resume")
    check_workdir(workdir, config, resume=resume, overwrite=overwrite)  # before the data is loaded
    train_set, test_set = load_data(config)
    log(train_set.describe())
    log(test_set.describe())
    if config.inputs == "grayscale" and train_set.images.shape[-1] != 3:
        raise ConfigError(
            f"--inputs grayscale needs colour images and {config.dataset} has {train_set.images.shape[-1]} channel(s): "
            f"use --dataset colored_mnist, or a colour TFDS dataset such as cifar10"
        )
    if config.batch_size > len(train_set):
        raise ConfigError(
            f"--batch-size {config.batch_size} exceeds the {len(train_set)} training images: "
            f"use {len(train_set)} or less"
        )
    mesh = parallel.data_mesh()
    try:
        parallel.check_batch_size(config.batch_size, mesh, name="--batch-size")
    except ValueError as error:
        raise ConfigError(str(error)) from None
    log(
        f"{jax.default_backend()}: {mesh.size} device(s) in {jax.process_count()} process(es), "
        f"{config.batch_size // mesh.size} images per device per step"
    )
    model = build_model(config, train_set.images.shape[1:])
    if config.seeds > 1:
        prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)
    seeds = range(config.seed, config.seed + config.seeds)
    tx = optax.adam(config.learning_rate)  # one optimizer object, so that the seeds' states stack
    if config.seeds > 1:
        seed_configs = [(dataclasses.replace(config, seed=s, seeds=1), workdir / f"seed_{s}") for s in seeds]
    else:
        seed_configs = [(config, workdir)]
    runs = [SeedRun(model, tx, c, folder, train_set, test_set, mesh) for c, folder in seed_configs]
    states = [run.start(resume=resume, overwrite=overwrite, fall_back=fall_back, log=log) for run in runs]
    start_epochs = {len(run.history) for run in runs}
    if len(start_epochs) > 1:
        raise ConfigError(f"the seeds of {workdir} stopped at different epochs {sorted(start_epochs)}: use --overwrite")
    stacked = config.seeds > 1
    state = train.stack(states) if stacked else states[0]
    train_key = jnp.stack([run.train_key for run in runs]) if stacked else runs[0].train_key

    def on_epoch_end(state: train.TrainState, record: dict) -> None:
        for i, run in enumerate(runs):
            if stacked:
                run.end_epoch(
                    train.unstack(state, i), {k: v[i] if isinstance(v, list) else v for k, v in record.items()}
                )
            else:
                run.end_epoch(state, record)
        on_epoch(record)

    try:
        state, _ = train.fit(
            state,
            model,
            build_objective(config, model),
            train_set.images,
            test_set.images,
            key=train_key,
            epochs=config.epochs,
            batch_size=config.batch_size,
            start_epoch=start_epochs.pop(),
            on_epoch_end=on_epoch_end,
            mesh=mesh,
        )
    except train.TrainingDiverged as error:
        kept = runs[0].checkpoints.latest_epoch()
        kept_text = "no checkpoint was saved" if kept is None else f"the checkpoint of epoch {kept} is kept"
        raise train.TrainingDiverged(f"{error}; {kept_text} in {workdir}") from None
    else:
        summaries = [run.finish(train.unstack(state, i) if stacked else state, started) for i, run in enumerate(runs)]
    finally:
        for run in runs:
            run.checkpoints.close()
    if not stacked:
        return summaries[0]
    finals = np.array([s["test_loss"] for s in summaries])
    summary = {
        "model": config.model,
        "seeds": list(seeds),
        "test_loss_mean": float(finals.mean()),
        "test_loss_std": float(finals.std(ddof=1)),
        "per_seed": summaries,
        "total_seconds": time.perf_counter() - started,
    }
    if parallel.is_primary():
        atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary


class SeedRun:
    """The files of one seed's run: checkpoints, metrics, figures and summary in ``workdir``."""

    def __init__(self, model, tx, config: Config, workdir: Path, train_set: data.Dataset, test_set: data.Dataset, mesh):
        self.model, self.tx, self.config, self.workdir, self.mesh = model, tx, config, workdir, mesh
        self.image_shape = train_set.images.shape[1:]
        self.root_key = jax.random.key(config.seed)
        self.init_key, self.train_key, sample_key = jax.random.split(self.root_key, 3)
        self.figures = RunFigures(model, config, workdir / "figures", train_set.images, test_set.images, sample_key)
        self.checkpoints: Checkpoints | None = None
        self.history: list[dict] = []

    def start(self, *, resume: bool, overwrite: bool, fall_back: bool, log: Callable[[str], None]) -> train.TrainState:
        """Prepares the folder; returns the fresh state, or the latest checkpoint's on resume."""
        prepare_workdir(self.workdir, self.config, resume=resume, overwrite=overwrite)
        state = train.create_state(self.model, self.tx, self.image_shape, key=self.init_key)
        state = parallel.replicate(state, self.mesh)  # restored checkpoints land replicated too
        self.checkpoints = Checkpoints(self.workdir / "checkpoints", keep=self.config.keep_checkpoints)
        if resume and self.checkpoints.latest_epoch() is not None:
            state, meta = self._restore_newest(state, fall_back=fall_back, log=log)
            self.history = meta["history"]
            log(f"resumed {self.workdir} from epoch {meta['epoch']}")
        elif resume:
            log(f"no checkpoint in {self.workdir}: starting from epoch 0")
        if parallel.is_primary():
            _write_history(self.workdir / "metrics.jsonl", self.history)
        return state

    def _restore_newest(self, template, *, fall_back: bool, log: Callable[[str], None]):
        """``(state, meta)`` of the latest checkpoint; with ``fall_back``, of the newest readable one."""
        for epoch in reversed(self.checkpoints.epochs()):
            try:
                return self.checkpoints.restore(template, epoch)
            except CheckpointError as error:
                if not fall_back:
                    raise CheckpointError(
                        f"{error}: pass --fall-back with --resume to set it aside and continue from the newest "
                        f"readable checkpoint, or --overwrite to start again"
                    ) from None
                moved = self.checkpoints.set_aside(epoch, self.workdir / "unreadable_checkpoints")
                log(f"{error}: moved it to {moved}")
        raise CheckpointError(f"no readable checkpoint left in {self.workdir}: --overwrite to start again")

    def end_epoch(self, state: train.TrainState, record: dict) -> None:
        """Checkpoint, metrics and, at plot epochs, figures; the checkpoint first, so that
        the files never describe an epoch that was not saved."""
        self.history.append(record)
        meta = {
            "epoch": record["epoch"],
            "config": self.config.to_json(),
            "history": self.history,
            "key": jax.random.key_data(self.root_key).tolist(),
        }
        self.checkpoints.save(record["epoch"], state, meta, record["test_loss"])
        if not parallel.is_primary():
            return
        _write_history(self.workdir / "metrics.jsonl", self.history)
        if record["epoch"] in self.config.plot_epochs or record["epoch"] == self.config.epochs:
            self.figures.epoch(jax.device_get(state.params), record["epoch"], self.history)

    def finish(self, state: train.TrainState, started: float) -> dict:
        """Final figures and ``summary.json``."""
        if getattr(self.model, "variational", False) and parallel.is_primary():
            self.figures.samples(jax.device_get(state.params))
        final = self.history[-1] if self.history else {}
        summary = {
            "model": self.config.model,
            "dataset": self.config.dataset,
            "seed": self.config.seed,
            "epochs": final.get("epoch", 0),
            "test_loss": final.get("test_loss"),
            "test_mse": final.get("test_mse"),
            "best_epoch": self.checkpoints.best_epoch(),
            "best_test_loss": min((r["test_loss"] for r in self.history), default=None),
            "train_seconds": sum(r["epoch_seconds"] for r in self.history),
            "total_seconds": time.perf_counter() - started,
            "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
            "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind,
            "host": parallel.host_description(),
            "devices": jax.device_count(),
            "processes": jax.process_count(),
        }
        if parallel.is_primary():
            atomic_write_text(self.workdir / "summary.json", json.dumps(summary, indent=2))
        return summary


class RunFigures:
    """The figures of a run, drawn from fixed batches so that epochs compare."""

    def __init__(self, model, config: Config, folder: Path, train_images, test_images, sample_key):
        self.model, self.config, self.folder = model, config, folder
        self.test_images = train.to_float(jnp.asarray(test_images[:16]))
        self.train_images = train.to_float(jnp.asarray(train_images[:16]))
        corrupt = corrupt_function(config)
        self.test_inputs = None if corrupt is None else corrupt(jax.random.fold_in(sample_key, 1), self.test_images)
        self.prior_z = jax.random.normal(sample_key, (64, config.latent_dim))
        self._reconstruct = jax.jit(lambda params, x: jax.nn.sigmoid(model.apply(params, x).logits))
        self._decode = jax.jit(lambda params, z: jax.nn.sigmoid(model.apply(params, z, method=model.decode)))

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
            self.folder / f"reconstructions_epoch_{epoch:02d}.png",
            title=name,
        )
        unit = "-ELBO (nats per image)" if getattr(self.model, "variational", False) else "MSE per pixel"
        plots.loss_curves(history, self.folder / "loss.png", ylabel=unit, title=f"{self.config.model} loss")

    def samples(self, params) -> None:
        """``samples.png``: 64 decodings of a fixed draw from the prior N(0, I)."""
        images = np.asarray(self._decode(params, self.prior_z))
        plots.image_grid(images, self.folder / "samples.png", title=f"{self.config.model}: samples from the prior")


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """A finished (or interrupted) run, read back from its work directory."""

    config: Config
    model: object
    params: dict
    epoch: int
    train_set: data.Dataset
    test_set: data.Dataset


def restore_run(workdir: str | Path, epoch: int | None = None) -> RestoredRun:
    """Reads ``config.json``, reloads the data and restores ``epoch``'s parameters (default: latest).

    Raises:
        ConfigError: ``workdir`` holds no run or no checkpoint.
    """
    workdir = Path(workdir)
    try:
        config = Config.from_json(json.loads((workdir / "config.json").read_text()))
    except FileNotFoundError:
        raise ConfigError(f"{workdir} holds no run (no config.json): train one there first") from None
    train_set, test_set = load_data(config)
    image_shape = train_set.images.shape[1:]
    model = build_model(config, image_shape)
    template = train.create_state(model, optax.adam(config.learning_rate), image_shape, key=jax.random.key(0))
    with Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints) as checkpoints:
        epoch = checkpoints.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise ConfigError(f"{workdir} has no checkpoint: train it (or --resume it) first")
        state, _ = checkpoints.restore(template, epoch)
    return RestoredRun(config, model, jax.device_get(state.params), epoch, train_set, test_set)
