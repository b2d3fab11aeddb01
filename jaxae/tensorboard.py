"""TensorBoard event files of a run: each epoch's metrics as scalars and its reconstruction
grids as images, in ``workdir/tensorboard``, which TensorBoard reads (its log folder: ``runs``).

Written with tensorboardX, which needs neither TensorFlow nor PyTorch (an optional extra:
``pip install "jaxae[tensorboard]"``); imported only when a run asks for events.
"""

from __future__ import annotations

import numbers
import time
from pathlib import Path

import numpy as np

from jaxae.config import ConfigError

FOLDER = "tensorboard"


class EventWriter:
    """One run's events. ``first_epoch`` is the first epoch this call trains: events that a
    killed earlier call wrote for it or later epochs are purged, as their checkpoint was lost."""

    def __init__(self, workdir: Path, first_epoch: int):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError(
                '`tensorboard` needs tensorboardX: pip install "jaxae[tensorboard]" (or tensorboardX)',
                field="tensorboard",
            ) from None
        # tensorboardX names a file by the second it opens it and truncates a file of that
        # name: a suffix in nanoseconds keeps a resumed call from erasing the earlier call's
        # events, and sorts the files in the order TensorBoard must read them.
        self.writer = SummaryWriter(
            str(workdir / FOLDER),
            purge_step=first_epoch if first_epoch > 1 else None,
            filename_suffix=f".{time.time_ns():020d}",
        )

    def epoch(self, record: dict) -> None:
        """Every number of an epoch's record (``metrics.jsonl``'s) as a scalar at step ``epoch``."""
        for name, value in record.items():
            if name != "epoch" and isinstance(value, numbers.Real) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, record["epoch"])
        self.writer.flush()

    def image(self, tag: str, png: Path, epoch: int) -> None:
        """A figure the run drew, as an image at step ``epoch``."""
        from PIL import Image

        with Image.open(png) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(tag, pixels, epoch, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
