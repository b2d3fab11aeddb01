"""A finished (or interrupted) run read back: its Config, model and parameters, from its
checkpoints or from the parameters alone (``params.npz``), which :func:`save_params` writes."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from jaxae import data, seeds, train
from jaxae.build import build_model, load_split
from jaxae.checkpoint import CheckpointError, Checkpoints
from jaxae.config import Config, ConfigError
from jaxae.files import atomic_write
from jaxae.workdir import PARAMS_FILE, read_config, seed_workdirs


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
