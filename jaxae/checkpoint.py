"""Orbax checkpoints of a run: the train state and JSON metadata, one checkpoint per epoch.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed mid-save leaves the previous checkpoints intact. Each checkpoint also stores
a SHA-256 digest of its arrays, checked on restore: a corrupted file (a flipped bit
that Orbax would read back without complaint) raises :class:`CheckpointError` instead of
restoring wrong values. The last ``keep`` checkpoints are kept, and the one with the
lowest test loss.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxae import parallel
from jaxae.log_routing import ROUTED_TILL_EXIT, QuietFileHandler, routed_logs, routed_thread_errors
from jaxae.train import TrainState


class CheckpointError(RuntimeError):
    """A checkpoint could not be saved or read back; the message names the epoch and the fix."""


def state_digest(state) -> str:
    """SHA-256 over the dtype, shape and bytes of every leaf of ``state``.

    Replicated arrays are read from this process's first copy, so every process of a
    multi-process run computes the same digest.
    """
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(state):
        array = np.asarray(leaf.addressable_data(0) if isinstance(leaf, jax.Array) else leaf)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


DIGESTS = ("digest", "params_digest", "meta_digest")

# Orbax reports a failed write from each of its writer threads, with tracebacks: hundreds
# of lines for one full disk. While a run's checkpoints are open they go to this file
# beside them, and the run's own error stays one line.
LOG_FILE = "orbax.log"
ORBAX_LOGGERS = ("absl", "asyncio", "concurrent.futures")


def meta_digest(meta: dict) -> str:
    """SHA-256 of a checkpoint's JSON metadata, keys sorted."""
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def _reason(error: BaseException) -> str:
    """The first line of an error, short enough for a one-line message."""
    lines = str(error).strip().splitlines()
    text = lines[0] if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class Checkpoints:
    """The checkpoints of one run, numbered by epoch.

    Each holds ``state`` (params, optimizer state, step) and ``meta``, a JSON dict that
    the caller fills (config, key, metrics history), stored with a digest of ``state``.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3, damaged_to: Path | None = None):
        """Opens (or creates) ``directory``. Orbax reads every checkpoint's metrics when it
        opens them: a checkpoint whose metrics file is damaged raises CheckpointError, or with
        ``damaged_to`` is moved there first (listed in ``set_aside_on_open``)."""
        policy = ocp.checkpoint_managers.AnyPreservationPolicy(
            [
                ocp.checkpoint_managers.LatestN(n=keep),
                ocp.checkpoint_managers.BestN(get_metric_fn=lambda m: m["test_loss"], reverse=True, n=1),
            ]
        )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            best_fn=lambda m: m["test_loss"],  # makes Orbax store the metrics BestN ranks by
            best_mode="min",
            enable_async_checkpointing=False,
            create=True,
            cleanup_tmp_directories=True,  # a save cut short by kill -9 leaves a temporary folder
        )
        self.directory = Path(directory).absolute()
        self.set_aside_on_open = []
        for epoch in _damaged_metrics(self.directory):
            if damaged_to is None:
                raise CheckpointError(
                    f"the checkpoint of epoch {epoch} in {self.directory} is unreadable (its metrics file is damaged)"
                )
            if parallel.is_primary():
                damaged_to.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(damaged_to / str(epoch), ignore_errors=True)
                shutil.move(self.directory / str(epoch), damaged_to / str(epoch))
            self.set_aside_on_open.append(damaged_to / str(epoch))
        parallel.sync(f"opened {self.directory}")
        self._log = QuietFileHandler(self.directory.parent / LOG_FILE)
        self._routing = contextlib.ExitStack()  # undone by close()
        self._routing.enter_context(routed_logs(self._log, ORBAX_LOGGERS))
        self._failed = False
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, epoch: int, state: TrainState, meta: dict, test_loss: float) -> None:
        """Saves the state after ``epoch`` epochs; returns once it is complete on disk.

        Raises:
            CheckpointError: the save failed (a full disk, say); the earlier checkpoints stay.
        """
        meta = {**meta, "digest": state_digest(state), "params_digest": state_digest(state.params)}
        meta["meta_digest"] = meta_digest(meta)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        # TensorStore's threads report a failing write before Orbax raises: routed from the start
        routing = contextlib.ExitStack()
        if not self._failed:
            routing.enter_context(routed_thread_errors(self._log))
        try:
            self._manager.save(epoch, args=args, metrics={"test_loss": test_loss}, force=True)
            self._manager.wait_until_finished()
            routing.close()
            return
        except Exception as error:
            failure = error
        self._routing.enter_context(routing.pop_all())  # they go on failing till the process ends
        self._failed = True
        with contextlib.suppress(Exception):  # Orbax's other writer threads may still be failing
            self._manager.wait_until_finished()
        self._manager.reload()  # forget the step that was not written
        kept = self.latest_epoch()
        raise CheckpointError(
            f"could not save the checkpoint of epoch {epoch} in {self.directory} ({_reason(failure)}); "
            + ("no earlier checkpoint" if kept is None else f"the checkpoint of epoch {kept} is intact")
            + f": {_fix(failure, epoch)}, then `resume`"
        ) from failure

    def epochs(self) -> list[int]:
        """Epochs with a saved checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def best_epoch(self) -> int | None:
        """The kept epoch with the lowest test loss."""
        return self._manager.best_step()

    def restore(self, template: TrainState, epoch: int | None = None) -> tuple[TrainState, dict]:
        """Restores ``(state, meta)`` of ``epoch`` (default: the latest) into ``template``'s structure.

        Raises:
            CheckpointError: there is no such checkpoint, or it is unreadable or corrupted.
        """
        epoch = self._existing(epoch)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
        state, meta = self._restore(epoch, args)
        meta, digests = self._checked(meta, epoch)
        saved = digests.get("digest")  # checkpoints written before digests were stored have none
        if saved is not None and saved != state_digest(state):
            raise CheckpointError(
                f"the checkpoint of epoch {epoch} in {self.directory} is corrupted (its arrays do not match its digest)"
            )
        return state, meta

    def restore_params(self, template, epoch: int | None = None) -> tuple[dict, dict]:
        """Restores ``(params, meta)`` of ``epoch`` (default: the latest) and nothing else:
        no optimizer state is read. ``template`` has the parameters' structure, shapes and
        dtypes (``jax.ShapeDtypeStruct`` leaves will do).

        Raises:
            CheckpointError: there is no such checkpoint, or it is unreadable or corrupted.
        """
        epoch = self._existing(epoch)
        abstract = {"params": jax.tree.map(ocp.utils.to_shape_dtype_struct, template)}
        restore_args = jax.tree.map(lambda leaf: ocp.ArrayRestoreArgs(sharding=_local_sharding()), abstract)
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True),
            meta=ocp.args.JsonRestore(),
        )
        restored, meta = self._restore(epoch, args)
        params = restored["params"]
        meta, digests = self._checked(meta, epoch)
        saved = digests.get("params_digest")  # checkpoints written before it was stored have none
        if saved is not None and saved != state_digest(params):
            raise CheckpointError(
                f"the checkpoint of epoch {epoch} in {self.directory} is corrupted (its parameters do not match "
                f"their digest)"
            )
        return params, meta

    def metadata(self, epoch: int | None = None) -> dict:
        """The JSON metadata saved with ``epoch`` (default: the latest), without its arrays.

        Raises:
            CheckpointError: there is no such checkpoint, or it is unreadable.
        """
        epoch = self._existing(epoch)
        _, meta = self._restore(epoch, ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return self._checked(meta, epoch)[0]

    def _checked(self, meta: dict, epoch: int) -> tuple[dict, dict]:
        """``meta`` without its digests, and the digests; raises CheckpointError when the
        metadata (the history, the keys) no longer matches the digest saved with it."""
        digests = {name: meta.pop(name) for name in DIGESTS if name in meta}
        if "meta_digest" in digests and digests["meta_digest"] != meta_digest(
            {**meta, **{k: v for k, v in digests.items() if k != "meta_digest"}}
        ):
            raise CheckpointError(
                f"the checkpoint of epoch {epoch} in {self.directory} is corrupted (its metadata does not match "
                f"its digest)"
            )
        return meta, digests

    def _existing(self, epoch: int | None) -> int:
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None or epoch not in self.epochs():
            raise CheckpointError(f"no checkpoint of epoch {epoch} in {self.directory}: kept {self.epochs()}")
        return epoch

    def _restore(self, epoch: int, args) -> tuple[Any, dict]:
        """``(state, meta)`` as Orbax reads them, the digests still in ``meta``."""
        try:
            restored = self._manager.restore(epoch, args=args)
        except Exception as error:
            raise CheckpointError(
                f"the checkpoint of epoch {epoch} in {self.directory} is unreadable ({_reason(error)})"
            ) from error
        if not isinstance(restored.meta, dict):
            raise CheckpointError(f"the checkpoint of epoch {epoch} in {self.directory} is corrupted (bad metadata)")
        return restored.get("state"), dict(restored.meta)

    def set_aside(self, epoch: int, folder: Path) -> Path:
        """Moves the checkpoint of ``epoch`` to ``folder/<epoch>``: out of the run, kept for inspection.

        With several processes, process 0 moves it and every process waits for the move.
        """
        target = folder / str(epoch)
        if parallel.is_primary():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(target, ignore_errors=True)
            shutil.move(self.directory / str(epoch), target)
        parallel.sync(f"set aside checkpoint {epoch}")
        self._manager.reload()
        return target

    def close(self) -> None:
        """Waits for Orbax's writers, then gives Orbax's logs back. After a failed save the
        writers that failed go on reporting until the process ends (Orbax gives no handle
        on them), so their logs and the thread hooks stay routed to the log file."""
        try:
            self._manager.close()
        finally:
            if self._failed:  # Orbax's failed writers report until the process ends: route them till then
                ROUTED_TILL_EXIT.append(self._routing)  # (collected, its contexts would end)
            else:
                self._routing.close()
                with contextlib.suppress(OSError):  # flushing the log on a full disk
                    self._log.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _fix(failure: BaseException, epoch: int) -> str:
    """What to do about a failed save, from its cause: only a full disk asks for disk space."""
    causes: list[BaseException] = []
    error: BaseException | None = failure
    while error is not None and len(causes) < 20:
        causes.append(error)
        error = error.__cause__ or error.__context__
    if any(isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) for e in causes):
        return "free disk space"
    if any(isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS) for e in causes):
        return "make the checkpoints folder writable"
    if any("already exists" in str(e).lower() for e in causes):
        return f"move away what stands at checkpoint {epoch} (a link, or a folder another run left)"
    return "check the checkpoints folder (a link there, a damaged disk)"


def _damaged_metrics(directory: Path) -> list[int]:
    """The epochs whose stored metrics (Orbax's ``<epoch>/metrics/metrics``) are not a JSON object."""
    damaged = []
    for folder in sorted(directory.glob("[0-9]*")) if directory.is_dir() else []:
        path = folder / "metrics" / "metrics"
        try:
            readable = folder.name.isdigit() and isinstance(json.loads(path.read_text()), dict)
        except FileNotFoundError:
            readable = True  # a checkpoint without metrics: Orbax reads none
        except (OSError, ValueError, RecursionError):
            readable = False
        if folder.name.isdigit() and not readable:
            damaged.append(int(folder.name))
    return damaged


def _local_sharding() -> jax.sharding.Sharding:
    """Where parameters read for measurement go: this process's first device."""
    return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
