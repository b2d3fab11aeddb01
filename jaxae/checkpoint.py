"""Orbax checkpoints of a run: the train state and JSON metadata, one checkpoint per epoch.

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed mid-save leaves the previous checkpoints intact. The last ``keep`` checkpoints
are kept, and the one with the lowest test loss.
"""

from __future__ import annotations

from pathlib import Path

import orbax.checkpoint as ocp

from jaxae.train import TrainState


class Checkpoints:
    """The checkpoints of one run, numbered by epoch.

    Each holds ``state`` (params, optimizer state, step) and ``meta``, a JSON dict that
    the caller fills (config, key, metrics history).
    """

    def __init__(self, directory: str | Path, *, keep: int = 3):
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
        )
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, epoch: int, state: TrainState, meta: dict, test_loss: float) -> None:
        """Saves the state after ``epoch`` epochs; returns once it is complete on disk."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self._manager.save(epoch, args=args, metrics={"test_loss": test_loss}, force=True)
        self._manager.wait_until_finished()

    def epochs(self) -> list[int]:
        """Epochs with a saved checkpoint, ascending."""
        return sorted(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def best_epoch(self) -> int | None:
        """The kept epoch with the lowest test loss."""
        return self._manager.best_step()

    def restore(self, template: TrainState, epoch: int | None = None) -> tuple[TrainState, dict]:
        """Restores ``(state, meta)`` of ``epoch`` (default: the latest) into ``template``'s structure."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(template), meta=ocp.args.JsonRestore())
        restored = self._manager.restore(epoch, args=args)
        return restored.state, restored.meta

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
