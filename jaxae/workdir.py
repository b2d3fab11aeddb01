"""A run's work directory: checked before a run starts, written as it trains, read back after.

Layout::

    workdir/config.json      the Config, as JSON
    workdir/metrics.jsonl    one record per epoch (epoch, train_loss, test_loss, ..., epoch_seconds,
                             elapsed_seconds: the run's wall time so far, over every call that trained it)
    workdir/checkpoints/     Orbax checkpoints: the last few and the best by test loss
    workdir/figures/         reconstructions_epoch_XX.png, loss.png, samples.png (VAE)
    workdir/summary.json     final figures: test loss, best epoch, seconds, device, host
    workdir/params.npz       optional: one epoch's parameters alone (:func:`save_params`), which
                             :func:`restore_run` reads when the run keeps no checkpoints

A run of several seeds writes ``config.json`` and ``summary.json`` at the top and one such
folder per seed, ``seed_<s>/``. :func:`restore_run` reads any of them back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from jaxae import data, models, parallel, seeds, train
from jaxae.checkpoint import LOG_FILE, CheckpointError, Checkpoints
from jaxae.config import RESUMABLE_FIELDS, Config, ConfigError, build_model, load_split
from jaxae.epoch_figures import RunFigures
from jaxae.files import WriteError, atomic_write, atomic_write_text, remove_temporaries

if TYPE_CHECKING:
    from jaxae.tensorboard import EventWriter

PARAMS_FILE = "params.npz"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", PARAMS_FILE)
RUN_FOLDERS = ("checkpoints", "figures", "tensorboard")
LOCK_FILE = ".lock"


def check_workdir(workdir: Path, config: Config, *, resume: bool, overwrite: bool) -> None:
    """Refuses to mix runs: a workdir holding another run needs ``resume`` or ``overwrite``;
    ``overwrite`` deletes only a run jaxae wrote (one with a ``config.json``); a run's
    files may not be links to elsewhere, nor a run live inside another's checkpoints."""
    _check_place(workdir)
    saved_path = workdir / "config.json"
    if resume and not overwrite and not saved_path.exists():
        raise ConfigError(
            f"nothing to resume: {workdir} holds no run (no config.json); check the path, or leave out `resume` "
            f"to start a run there",
            field="workdir",
        )
    if saved_path.exists() and not (resume or overwrite):
        raise ConfigError(f"{workdir} already holds a run: pass `resume` to continue it or `overwrite` to replace it")
    if overwrite and saved_path.is_file():
        try:
            read_config(workdir)
        except ConfigError as error:
            reason = re.search(r"\((.*)\): restore it", str(error))
            raise ConfigError(
                f"{saved_path} is not a jaxae run's config ({reason[1] if reason else error}), and `overwrite` "
                f"deletes only jaxae runs: move its files away or choose another `workdir`",
                field="workdir",
            ) from None
    if overwrite and not saved_path.is_file():
        found = [name for name in RUN_FILES[1:] + RUN_FOLDERS if (workdir / name).exists()]
        if found:
            raise ConfigError(
                f"{workdir} holds {', '.join(found)} but no config.json: it is not a jaxae run, and `overwrite` "
                f"deletes only those; move its files away or choose another `workdir`",
                field="workdir",
            )
    if saved_path.exists() and resume:
        differ = config_differences(read_config(workdir), config)
        if differ:
            raise ConfigError(
                f"cannot resume {workdir} with a different config: {', '.join(differ)}; "
                f"use the saved values or a new `workdir`"
            )


def config_differences(saved: Config, config: Config) -> list[str]:
    """The fields, other than the resumable ones, in which two configs differ, as
    ``name (saved -> new)``: what makes them two different runs."""
    return [
        f"{name} ({getattr(saved, name)!r} -> {getattr(config, name)!r})"
        for name in config.to_json()
        if name not in RESUMABLE_FIELDS and getattr(saved, name) != getattr(config, name)
    ]


def data_digest(*images: np.ndarray) -> str:
    """SHA-256 of the images a run trains and is tested on: a resume on other data is refused."""
    digest = hashlib.sha256()
    for array in images:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _check_place(workdir: Path) -> None:
    """Refuses a workdir inside another run's checkpoints, or whose run files are links."""
    for folder in (workdir.resolve(), *workdir.resolve().parents):
        if folder.name == "checkpoints" and (folder.parent / "config.json").is_file():
            raise ConfigError(
                f"{workdir} is inside the checkpoints of the run in {folder.parent}: choose another `workdir`",
                field="workdir",
            )
    links = [name for name in RUN_FILES + RUN_FOLDERS + (LOG_FILE,) if (workdir / name).is_symlink()]
    checkpoints = workdir / "checkpoints"
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        links += [f"checkpoints/{path.name}" for path in sorted(checkpoints.iterdir()) if path.is_symlink()]
    if links:
        raise ConfigError(
            f"{', '.join(links)} in {workdir} is a link to elsewhere: a run keeps its own files; "
            f"remove the link or choose another `workdir`",
            field="workdir",
        )


def write_workdir(workdir: Path, config: Config, *, overwrite: bool) -> None:
    """Clears a previous run when ``overwrite``, then writes ``config.json``."""
    try:
        if overwrite:
            for name in RUN_FOLDERS:
                if (workdir / name).exists():
                    shutil.rmtree(workdir / name)
            for name in RUN_FILES:
                (workdir / name).unlink(missing_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "config.json", json.dumps(config.to_json(), indent=2))
    except OSError as error:
        raise _unwritable(workdir, error) from None


def _unwritable(workdir: Path, error: OSError) -> ConfigError:
    """The one-line error for a workdir that cannot be written, naming the OS's reason."""
    cause = error.__cause__ if isinstance(error, WriteError) else error
    reason = cause.strerror if isinstance(cause, OSError) else cause
    return ConfigError(f"cannot write to `workdir` {workdir} ({reason}): choose a writable folder", field="workdir")


@contextlib.contextmanager
def owned(config: Config, workdir: Path) -> Iterator[None]:
    """:func:`locked` on ``workdir`` and, for several seeds, on each ``seed_<s>/`` too, so
    that no other run writes into a seed's folder while the seeds train. A seed's folder
    that is a link to elsewhere is refused before anything is locked or written."""
    seeds = [folder for _, folder in seed_workdirs(config, workdir)] if config.seeds > 1 else []
    links = [folder.name for folder in seeds if folder.is_symlink()]
    if links:
        raise ConfigError(
            f"{', '.join(links)} in {workdir} is a link to elsewhere: each seed keeps its own folder; "
            f"remove the link or choose another `workdir`",
            field="workdir",
        )
    with contextlib.ExitStack() as stack:
        for folder in (workdir, *seeds):
            stack.enter_context(locked(folder))
        yield


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Holds an OS lock on ``workdir/.lock`` while a run owns ``workdir``: a second process
    is refused with the owner's pid. The OS releases the lock when its process ends, even
    by ``kill -9``, so no lock outlives its run; the file goes when the run ends. A workdir
    this call created and nothing else used is removed again. Process 0 locks for every
    process of a multi-host run."""
    if not parallel.is_primary():
        yield
        return
    created = not workdir.exists()
    path = workdir / LOCK_FILE
    if path.is_symlink():
        raise ConfigError(
            f"{LOCK_FILE} in {workdir} is a link to elsewhere: a run keeps its own files; remove the link",
            field="workdir",
        )
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        descriptor = _lock(path)
    except OSError as error:
        raise _unwritable(workdir, error) from None
    if descriptor is None:
        owner = _read_owner(path)
        raise ConfigError(
            f"{workdir} is in use by process {owner}: wait for it to end (or stop it), or choose another `workdir`",
            field="workdir",
        )
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a newcomer then locks a new file
        os.close(descriptor)
        if created and not any(workdir.iterdir()):
            workdir.rmdir()


def _lock(path: Path) -> int | None:
    """An open descriptor holding ``flock`` on ``path``, with this pid written in; None
    when another process holds it. Retries when the file was replaced meanwhile."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # a link: ELOOP, refused
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(descriptor).st_ino:  # the owner before us did not unlink it meanwhile
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(os.getpid()).encode(), 0)
            return descriptor
        os.close(descriptor)


def _read_owner(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:32] or "unknown"
    except OSError:
        return "unknown"


def prepare_workdir(workdir: Path, config: Config, *, resume: bool, overwrite: bool) -> None:
    """Every process checks the workdir; process 0 writes it; all wait until it is written."""
    check_workdir(workdir, config, resume=resume, overwrite=overwrite)
    parallel.sync(f"checked {workdir}")  # before any process writes
    if parallel.is_primary():
        write_workdir(workdir, config, overwrite=overwrite)
    parallel.sync(f"written {workdir}")


def write_history(path: Path, history: list[dict]) -> None:
    """``metrics.jsonl``: one JSON record per epoch."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in history))


def seed_workdirs(config: Config, workdir: Path) -> list[tuple[Config, Path]]:
    """Each seed's config and folder: ``workdir`` itself for one seed, else ``workdir/seed_<s>``."""
    if config.seeds == 1:
        return [(config, workdir)]
    seeds = range(config.seed, config.seed + config.seeds)
    return [(dataclasses.replace(config, seed=s, seeds=1), workdir / f"seed_{s}") for s in seeds]


class SeedRun:
    """The files of one seed's run: checkpoints, metrics, figures and summary in ``workdir``.

    Its keys come from ``jax.random.key(config.seed)``, split into the initialisation, the
    training and the figures' keys, so a seed trains alike alone or beside others. ``started``
    is when this call began (``time.perf_counter()``); a resumed run's seconds add to those
    its earlier calls saved.
    """

    def __init__(
        self,
        model,
        tx,
        config: Config,
        workdir: Path,
        train_set: data.Dataset,
        test_set: data.Dataset,
        mesh,
        started: float,
        data_digest: str,
    ):
        self.model, self.tx, self.config, self.workdir, self.mesh = model, tx, config, workdir, mesh
        self.started = started
        self.image_shape = train_set.images.shape[1:]
        self.root_key = jax.random.key(config.seed)
        self.init_key, self.train_key, sample_key = jax.random.split(self.root_key, 3)
        self.figures = RunFigures(model, config, workdir / "figures", train_set.images, test_set.images, sample_key)
        self.output_bias = models.mean_pixel_logits(train_set.images) if config.init_output_bias else None
        self.data_digest = data_digest  # of the images it trains and is tested on (:func:`data_digest`)
        self._checkpoints: Checkpoints | None = None
        self.events: EventWriter | None = None  # when the run writes TensorBoard events
        self.history: list[dict] = []

    @property
    def checkpoints(self) -> Checkpoints:
        """The run's checkpoints, open from :meth:`start` to :meth:`close`."""
        if self._checkpoints is None:
            raise RuntimeError(f"the run in {self.workdir} has not started")
        return self._checkpoints

    def start(self, *, resume: bool, overwrite: bool, fall_back: bool, log: Callable[[str], None]) -> train.TrainState:
        """Prepares the folder; returns the fresh state, or the latest checkpoint's on resume."""
        prepare_workdir(self.workdir, self.config, resume=resume, overwrite=overwrite)
        if parallel.is_primary():
            for folder in (self.workdir, self.workdir / "figures"):
                remove_temporaries(folder)
        state = train.create_state(
            self.model, self.tx, self.image_shape, key=self.init_key, output_bias=self.output_bias
        )
        state = parallel.replicate(state, self.mesh)  # restored checkpoints land replicated too
        damaged_to = self.workdir / "unreadable_checkpoints" if resume and fall_back else None
        try:
            self._checkpoints = Checkpoints(
                self.workdir / "checkpoints", keep=self.config.keep_checkpoints, damaged_to=damaged_to
            )
        except CheckpointError as error:
            raise CheckpointError(
                f"{error}: pass `fall_back` with `resume` to set it aside and continue from the newest readable "
                f"checkpoint, or `overwrite` to start again"
            ) from None
        for moved in self.checkpoints.set_aside_on_open:
            log(
                f"the checkpoint of epoch {moved.name} is unreadable (its metrics file is damaged): moved it to {moved}"
            )
        if resume and self.checkpoints.latest_epoch() is not None:
            state, meta = self._restore_newest(state, fall_back=fall_back, log=log)
            self.history = meta["history"]
            log(f"resumed {self.workdir} from epoch {meta['epoch']}")
            self._draw_missing_figures(state, meta["epoch"])
        elif resume:
            log(f"no checkpoint in {self.workdir}: starting from epoch 0")
        if parallel.is_primary():
            write_history(self.workdir / "metrics.jsonl", self.history)
        self.start_epoch = len(self.history)
        if self.config.tensorboard and parallel.is_primary():
            from jaxae.tensorboard import EventWriter

            self.events = EventWriter(self.workdir, first_epoch=self.start_epoch + 1)
        self.earlier_seconds = _saved_seconds(self.history)
        return state

    def elapsed_seconds(self) -> float:
        """The run's wall time: its earlier calls' (up to their last saved epoch) and this one's."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def _restore_newest(self, template, *, fall_back: bool, log: Callable[[str], None]):
        """``(state, meta)`` of the latest checkpoint; with ``fall_back``, of the newest readable one."""
        for epoch in reversed(self.checkpoints.epochs()):
            try:
                return self._checked(*self.checkpoints.restore(template, epoch), epoch)
            except CheckpointError as error:
                if not fall_back:
                    raise CheckpointError(
                        f"{error}: pass `fall_back` with `resume` to set it aside and continue from the newest "
                        f"readable checkpoint, or `overwrite` to start again"
                    ) from None
                moved = self.checkpoints.set_aside(epoch, self.workdir / "unreadable_checkpoints")
                log(f"{error}: moved it to {moved}")
        raise CheckpointError(f"no readable checkpoint left in {self.workdir}: `overwrite` to start again")

    def _checked(self, state, meta: dict, epoch: int):
        """``(state, meta)`` of a checkpoint that is this run's, on this run's data.

        Raises:
            CheckpointError: the checkpoint holds another run's state (its stored config differs).
            ConfigError: the run trained on other data (a resume would mix two datasets in one history).
        """
        try:
            differ = config_differences(Config.from_json(meta["config"]), self.config)
        except (ConfigError, TypeError, KeyError):
            differ = ["its config is unreadable"]
        if differ:
            raise CheckpointError(
                f"the checkpoint of epoch {epoch} in {self.workdir} holds another run's state ({'; '.join(differ)})"
            )
        if meta.get("data_digest", self.data_digest) != self.data_digest:  # older checkpoints have none
            raise ConfigError(
                f"{self.workdir} trained on other data than `dataset` {self.config.dataset} from "
                f"`data_source` {self.config.data_source} gives now (another `data_dir`?): resume it on its own data, "
                f"or choose another `workdir`",
                field="data_dir",
            )
        return state, meta

    def end_epoch(self, state: train.TrainState, record: dict) -> None:
        """Checkpoint, metrics and, at plot epochs, figures; the checkpoint first, so that
        the files never describe an epoch that was not saved."""
        record = {**record, "elapsed_seconds": self.elapsed_seconds()}
        self.history.append(record)
        meta = {
            "epoch": record["epoch"],
            "config": self.config.to_json(),
            "image_shape": list(self.image_shape),
            "history": self.history,
            "key": jax.random.key_data(self.root_key).tolist(),
            "data_digest": self.data_digest,
        }
        self.checkpoints.save(record["epoch"], state, meta, record["test_loss"])
        if not parallel.is_primary():
            return
        write_history(self.workdir / "metrics.jsonl", self.history)
        if record["epoch"] in self.config.plot_epochs or record["epoch"] == self.config.epochs:
            self.figures.epoch(jax.device_get(state.params), record["epoch"], self.history)
            if self.events is not None:
                self.events.image("reconstructions", self.figures.epoch_files(record["epoch"])[0], record["epoch"])
        if self.events is not None:
            self.events.epoch(record)

    def _draw_missing_figures(self, state: train.TrainState, epoch: int) -> None:
        """Draws the restored epoch's figures when a run was killed after saving it but
        before drawing them."""
        if not parallel.is_primary() or not (epoch in self.config.plot_epochs or epoch == self.config.epochs):
            return
        if not all(path.exists() for path in self.figures.epoch_files(epoch)):
            self.figures.epoch(jax.device_get(state.params), epoch, self.history)

    def close(self) -> None:
        """Closes the checkpoints (waiting for the last to be written) and the event files."""
        if self.events is not None:
            self.events.close()
        if self._checkpoints is not None:
            self._checkpoints.close()

    def finish(self, state: train.TrainState) -> dict:
        """Final figures and ``summary.json``. A call that trained no epoch (a finished run
        resumed) keeps the summary as it was: its machine and seconds are the training's."""
        if self.model.variational and parallel.is_primary():
            self.figures.samples(jax.device_get(state.params))
        kept = self.workdir / "summary.json"
        if len(self.history) == self.start_epoch and kept.exists():
            return json.loads(kept.read_text())
        final = self.history[-1] if self.history else {}
        summary = {
            "model": self.config.model,
            "dataset": self.config.dataset,
            "seed": self.config.seed,
            "epochs": final.get("epoch", 0),
            "test_loss": final.get("test_loss"),
            **({"test_mse": final["test_mse"]} if "test_mse" in final else {}),  # objectives that report it
            "best_epoch": self.checkpoints.best_epoch(),
            "best_test_loss": min((r["test_loss"] for r in self.history), default=None),
            "train_seconds": sum(r["epoch_seconds"] for r in self.history),
            "total_seconds": self.elapsed_seconds(),
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


def _saved_seconds(history: list[dict]) -> float:
    """Wall time of the calls that trained ``history``; its training seconds for records
    written before they kept their elapsed time."""
    if not history:
        return 0.0
    return history[-1].get("elapsed_seconds", sum(r["epoch_seconds"] for r in history))


@dataclasses.dataclass(frozen=True)
class RestoredRun:
    """A finished (or interrupted) run, read back from its work directory.

    Attributes:
        config: the run's Config.
        model: its linen module.
        params: its parameters after ``epoch`` epochs; for a run of several seeds, with a
            leading seed axis ``(S, ...)`` (``seeds`` lists them).
        epoch: the epoch the parameters are from.
        workdir: where the run is.
        seeds: the seeds, in the order of ``params``' leading axis.

    The data is loaded when first asked for: ``run.train_set``, ``run.test_set`` (the test
    set binarized, when the run trained on binarized images).
    """

    config: Config
    model: nn.Module
    params: dict
    epoch: int
    workdir: Path
    seeds: tuple[int, ...]

    @functools.cached_property
    def train_set(self) -> data.Dataset:
        return load_split(self.config, "train")

    @functools.cached_property
    def test_set(self) -> data.Dataset:
        return load_split(self.config, "test")


def read_config(workdir: Path) -> Config:
    """The Config in ``workdir/config.json``.

    Raises:
        ConfigError: ``workdir`` holds no run; when it holds runs in its folders (a
            study), the message names them.
    """
    path = workdir / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        runs = sorted(p.parent.name for p in workdir.glob("*/config.json"))
        if runs:
            raise ConfigError(
                f"{workdir} holds the runs {', '.join(runs)}, each in its folder: restore one of them, "
                f"for example {workdir / runs[0]}"
            ) from None
        raise ConfigError(f"{workdir} holds no run (no config.json): train one there first") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path} ({getattr(error, 'strerror', None) or error})") from None
    try:
        return Config.from_json(json.loads(text))
    except (ValueError, TypeError, RecursionError) as error:  # ConfigError is a ValueError
        reason = "nested too deeply" if isinstance(error, RecursionError) else f"{error}"
        raise ConfigError(
            f"{path} is not a readable jaxae config ({reason:.120}): restore it, or `overwrite` the run"
        ) from None


def restore_run(workdir: str | Path, epoch: int | None = None) -> RestoredRun:
    """Reads back a run's Config, model and parameters after ``epoch`` (default: the latest).

    No optimizer state and no data are read. A run of several seeds comes back with its
    parameters on a leading seed axis (:func:`jaxae.seeds.stack`); ``workdir/seed_<s>`` is one seed alone.

    Raises:
        ConfigError: ``workdir`` holds no run or no checkpoint.
        CheckpointError: the checkpoint is unreadable or corrupted.
    """
    workdir = Path(workdir)
    config = read_config(workdir)
    folders = seed_workdirs(config, workdir)
    restored = [_restore_params(seed_config, folder, epoch) for seed_config, folder in folders]
    epochs = {found_epoch for _, _, found_epoch in restored}
    if len(epochs) > 1:
        raise ConfigError(f"the seeds of {workdir} stopped at different epochs {sorted(epochs)}: name one `epoch`")
    model, params, found_epoch = restored[0]
    if len(restored) > 1:
        params = seeds.stack([p for _, p, _ in restored])
    return RestoredRun(config, model, params, found_epoch, workdir, tuple(c.seed for c, _ in folders))


def save_params(run: RestoredRun) -> Path:
    """Writes ``run.workdir/params.npz``: its parameters alone (float32, one array per path
    such as ``params/encoder/Dense_0/kernel``) with their epoch and image shape, about 1.7 MB
    for Burda et al.'s 1-layer model. :func:`restore_run` reads it when the run keeps no
    ``checkpoints/``, so a run can be kept, shared and measured again without them."""
    if len(run.seeds) > 1:
        raise ConfigError(f"{run.workdir} holds {len(run.seeds)} seeds: save each seed_<s> folder's parameters")
    arrays = {
        "/".join(path): np.asarray(leaf, np.float32) for path, leaf in traverse_util.flatten_dict(run.params).items()
    }
    arrays |= {"epoch": np.asarray(run.epoch), "image_shape": np.asarray(run.model.image_shape)}
    path = run.workdir / PARAMS_FILE
    atomic_write(path, lambda f: np.savez(f, **arrays))  # type: ignore[arg-type]  # numpy's stub: ** as allow_pickle
    return path


def _restore_params(config: Config, workdir: Path, epoch: int | None) -> tuple[nn.Module, dict, int]:
    """The model of one seed's run and its parameters, restored without optimizer state:
    from its checkpoints, or from ``params.npz`` when it keeps none."""
    if not (workdir / "checkpoints").exists() and (workdir / PARAMS_FILE).exists():
        return _read_params(config, workdir / PARAMS_FILE, epoch)
    with Checkpoints(workdir / "checkpoints", keep=config.keep_checkpoints) as checkpoints:
        epoch = checkpoints.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise ConfigError(f"{workdir} has no checkpoint: train it (or `resume` it) first")
        image_shape = _image_shape(config, checkpoints, epoch)
        model = build_model(config, image_shape)
        template = jax.eval_shape(lambda: train.init_params(model, image_shape, jax.random.key(0)))
        params, _ = checkpoints.restore_params(template, epoch)
    return model, jax.device_get(params), epoch


def _read_params(config: Config, path: Path, epoch: int | None) -> tuple[nn.Module, dict, int]:
    """The model and parameters of a ``params.npz``, checked against the model's own shapes."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        saved_epoch = int(arrays.pop("epoch"))
        height, width, channels = (int(n) for n in arrays.pop("image_shape"))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{path} is not a readable parameter file ({error}): save it again") from None
    if epoch is not None and epoch != saved_epoch:
        raise ConfigError(f"{path} holds epoch {saved_epoch}, not {epoch}: leave `epoch` out")
    image_shape = (height, width, channels)
    model = build_model(config, image_shape)
    template = jax.eval_shape(lambda: train.init_params(model, image_shape, jax.random.key(0)))
    expected = {"/".join(p): leaf.shape for p, leaf in traverse_util.flatten_dict(template).items()}
    found = {name: array.shape for name, array in arrays.items()}
    if found != expected:
        raise CheckpointError(f"{path} does not hold the parameters of the run's model {config.model}: save it again")
    params = traverse_util.unflatten_dict({tuple(name.split("/")): array for name, array in arrays.items()})
    return model, params, saved_epoch


def _image_shape(config: Config, checkpoints: Checkpoints, epoch: int) -> tuple[int, int, int]:
    """The run's image shape, from its checkpoint (older ones lack it: from its test set)."""
    try:
        meta = checkpoints.metadata(epoch)
    except CheckpointError:
        meta = {}
    if "image_shape" in meta:
        return tuple(meta["image_shape"])
    return load_split(config, "test").images.shape[1:]
