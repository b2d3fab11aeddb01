"""One training run, from a config to a work directory of results.

``train_and_evaluate(config, workdir)`` loads the data, builds the model, trains it with
``train.fit``, checkpoints every epoch and writes::

    workdir/config.json      the Config, as JSON
    workdir/metrics.jsonl    one record per epoch (epoch, train_loss, test_loss, ..., epoch_seconds)
    workdir/checkpoints/     Orbax checkpoints: the last few and the best by test loss
    workdir/figures/         reconstructions_epoch_XX.png, loss.png, samples.png (VAE)
    workdir/summary.json     final figures: test loss, best epoch, seconds, device

The experiment scripts in ``experiments/`` only parse flags into a Config and call this.
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

from jaxae import data, losses, models, plots, train
from jaxae.checkpoint import Checkpoints


class ConfigError(ValueError):
    """A configuration or work-directory problem; the message names the cause and the fix."""


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a run. Each field is a command-line flag of the experiments."""

    model: str = _field("vae", "model: " + ", ".join(models.MODELS))
    epochs: int = _field(20, "train until this many epochs are done")
    batch_size: int = _field(128, "images per training step")
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


def validate(config: Config) -> None:
    """Raises ConfigError naming the first bad field and a valid value."""
    positive = ("epochs", "batch_size", "latent_dim", "keep_checkpoints")
    for name in positive:
        if getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(config, name)}")
    if not (math.isfinite(config.learning_rate) and config.learning_rate > 0):
        raise ConfigError(f"--learning-rate must be a positive number, got {config.learning_rate}")
    if config.model not in models.MODELS:
        raise ConfigError(f"unknown model {config.model!r}: use one of {', '.join(models.MODELS)}")
    if not config.widths or min(config.widths) <= 0:
        raise ConfigError(f"--widths must be one or more positive integers, got {config.widths}")
    if config.data_source not in data.SOURCES:
        raise ConfigError(f"unknown --data-source {config.data_source!r}: use one of {', '.join(data.SOURCES)}")


def build_model(config: Config, image_shape: tuple[int, int, int]):
    """The linen module a config describes, for images of ``image_shape`` (H, W, C)."""
    model_class = models.MODELS[config.model]
    try:
        return model_class(image_shape=image_shape, widths=tuple(config.widths), latent_dim=config.latent_dim)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def prepare_workdir(workdir: Path, config: Config, *, resume: bool, overwrite: bool) -> None:
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
    if overwrite:
        for name in ("checkpoints", "figures"):
            shutil.rmtree(workdir / name, ignore_errors=True)
        for name in ("config.json", "metrics.jsonl", "summary.json"):
            (workdir / name).unlink(missing_ok=True)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        _write_text(workdir / "config.json", json.dumps(config.to_json(), indent=2))
    except OSError as error:
        raise ConfigError(f"cannot write to --workdir {workdir} ({error.strerror}): choose a writable folder") from None


def _write_text(path: Path, text: str) -> None:
    """Writes a file atomically: a temporary sibling, then a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _write_history(path: Path, history: list[dict]) -> None:
    _write_text(path, "".join(json.dumps(record) + "\n" for record in history))


def train_and_evaluate(
    config: Config,
    workdir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda message: None,
    on_epoch: Callable[[dict], None] = lambda record: None,
) -> dict:
    """Trains the configured model and writes the run's work directory.

    Args:
        config: the run.
        workdir: where everything goes.
        resume: continue from the latest checkpoint in ``workdir``.
        overwrite: delete a previous run in ``workdir`` first.
        log: receives one-line messages (data source, resume point).
        on_epoch: receives each epoch's record.

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ConfigError, data.DataError: bad configuration or data, before anything is written.
        train.TrainingDiverged: the loss became NaN; the checkpoints of earlier epochs stay.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    validate(config)
    train_set = data.load(config.dataset, "train", config.data_source, config.data_dir)
    test_set = data.load(config.dataset, "test", config.data_source, config.data_dir)
    log(train_set.describe())
    log(test_set.describe())
    if config.batch_size > len(train_set):
        raise ConfigError(f"--batch-size {config.batch_size} exceeds the {len(train_set)} training images")
    image_shape = train_set.images.shape[1:]
    model = build_model(config, image_shape)
    prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)

    root_key = jax.random.key(config.seed)
    init_key, train_key, sample_key = jax.random.split(root_key, 3)
    state = train.create_state(model, optax.adam(config.learning_rate), image_shape, key=init_key)
    checkpoints = Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints)
    history: list[dict] = []
    if resume and checkpoints.latest_epoch() is not None:
        state, meta = checkpoints.restore(state)
        history = meta["history"]
        log(f"resumed {workdir} from epoch {meta['epoch']}")
    elif resume:
        log(f"no checkpoint in {workdir}: starting from epoch 0")
    _write_history(workdir / "metrics.jsonl", history)

    figures = RunFigures(model, config, workdir / "figures", train_set.images, test_set.images, sample_key)

    def on_epoch_end(state: train.TrainState, record: dict) -> None:
        history.append(record)
        meta = {
            "epoch": record["epoch"],
            "config": config.to_json(),
            "history": history,
            "key": jax.random.key_data(root_key).tolist(),
        }
        checkpoints.save(record["epoch"], state, meta, record["test_loss"])
        with open(workdir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if record["epoch"] in config.plot_epochs or record["epoch"] == config.epochs:
            figures.epoch(state.params, record["epoch"], history)
        on_epoch(record)

    start_epoch = history[-1]["epoch"] if history else 0
    try:
        state, _ = train.fit(
            state,
            model,
            losses.objective_for(model),
            train_set.images,
            test_set.images,
            key=train_key,
            epochs=config.epochs,
            batch_size=config.batch_size,
            start_epoch=start_epoch,
            on_epoch_end=on_epoch_end,
        )
        if getattr(model, "variational", False):
            figures.samples(state.params)
        best_epoch = checkpoints.best_epoch()
    finally:
        checkpoints.close()
    final = history[-1] if history else {}
    summary = {
        "model": config.model,
        "dataset": config.dataset,
        "epochs": final.get("epoch", 0),
        "test_loss": final.get("test_loss"),
        "test_mse": final.get("test_mse"),
        "best_epoch": best_epoch,
        "best_test_loss": min((r["test_loss"] for r in history), default=None),
        "train_seconds": sum(r["epoch_seconds"] for r in history),
        "total_seconds": time.perf_counter() - started,
        "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
        "backend": jax.default_backend(),
        "device": jax.devices()[0].device_kind,
    }
    _write_text(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary


class RunFigures:
    """The figures of a run, drawn from fixed batches so that epochs compare."""

    def __init__(self, model, config: Config, folder: Path, train_images, test_images, sample_key):
        self.model, self.config, self.folder = model, config, folder
        self.test_images = train.to_float(jnp.asarray(test_images[:16]))
        self.train_images = train.to_float(jnp.asarray(train_images[:16]))
        self.prior_z = jax.random.normal(sample_key, (64, config.latent_dim))
        self._reconstruct = jax.jit(lambda params, x: jax.nn.sigmoid(model.apply(params, x).logits))
        self._decode = jax.jit(lambda params, z: jax.nn.sigmoid(model.apply(params, z, method=model.decode)))

    def epoch(self, params, epoch: int, history: list[dict]) -> None:
        """``reconstructions_epoch_XX.png`` (originals on top, test reconstructions below) and ``loss.png``."""
        groups = [("test originals", self.test_images)]
        if self.config.train_rows:
            groups.append(("train reconstructions", self._reconstruct(params, self.train_images)))
        groups.append(("test reconstructions", self._reconstruct(params, self.test_images)))
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
