"""One seed's run, from start to summary: where an epoch ends.

:meth:`SeedRun.start` prepares the work directory and gives the fresh state, or the latest
checkpoint's on resume; :meth:`SeedRun.end_epoch` records an epoch (its metrics, figures
and checkpoint); :meth:`SeedRun.finish` writes the summary. :func:`jaxae.runner.train_and_evaluate`
drives one per seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import jax

from jaxae import data, models, parallel, train
from jaxae.checkpoint import CheckpointError, Checkpoints
from jaxae.config import Config, ConfigError
from jaxae.epoch_figures import RunFigures
from jaxae.files import atomic_write_text, remove_temporaries
from jaxae.workdir import config_differences, prepare_workdir, write_history

if TYPE_CHECKING:
    from jaxae.tensorboard import EventWriter


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
        self.host = parallel.host_description()  # the machine of this call, named in each epoch's record

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
        record = {**record, "elapsed_seconds": self.elapsed_seconds(), "host": self.host}
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
            "host": self.host,
            "epochs_by_host": epochs_by_host(self.history),
            "devices": jax.device_count(),
            "processes": jax.process_count(),
        }
        if parallel.is_primary():
            atomic_write_text(self.workdir / "summary.json", json.dumps(summary, indent=2))
        return summary


def epochs_by_host(history: list[dict]) -> dict[str, int]:
    """How many epochs each machine trained, in the order they trained them: a run resumed
    elsewhere names every machine, not only the last. Records written before they named
    their machine are left out."""
    hosts = [record["host"] for record in history if "host" in record]
    return {host: hosts.count(host) for host in dict.fromkeys(hosts)}


def _saved_seconds(history: list[dict]) -> float:
    """Wall time of the calls that trained ``history``; its training seconds for records
    written before they kept their elapsed time."""
    if not history:
        return 0.0
    return history[-1].get("elapsed_seconds", sum(r["epoch_seconds"] for r in history))
