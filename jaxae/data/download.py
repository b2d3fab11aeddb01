"""MNIST's IDX files from public mirrors, tried in turn."""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jaxae.data.common import IDX_STEMS, MNIST_MIRRORS, DataError, logger, usable_cache_dir
from jaxae.data.idx import _load_idx
from jaxae.files import atomic_write


def _try_download(name: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        return _load_download(name, split, None)
    except DataError as error:
        logger.info("download unavailable: %s", error)
        return None


def _load_download(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    if name != "mnist":
        raise DataError(f"`data_source` download serves mnist only, not {name!r}: use `data_source` tfds")
    with _cache_or_temporary() as cache:
        folder = cache / "mnist-idx"
        folder.mkdir(parents=True, exist_ok=True)
        for stem in IDX_STEMS[split]:
            target = folder / f"{stem}.gz"
            if not target.exists():
                _fetch_from_mirrors(f"{stem}.gz", target)
        return _load_idx(name, split, folder)


@contextlib.contextmanager
def _cache_or_temporary() -> Iterator[Path]:
    """The cache folder, or a temporary folder for this load when the cache is unusable."""
    cache = usable_cache_dir()
    if cache is not None:
        yield cache
        return
    with tempfile.TemporaryDirectory(prefix="jaxae-") as temporary:
        yield Path(temporary)


def _copy_from(source: BinaryIO, target: BinaryIO) -> None:
    shutil.copyfileobj(source, target)


def _fetch_from_mirrors(filename: str, target: Path) -> None:
    errors = []
    for mirror in MNIST_MIRRORS:
        try:
            with urllib.request.urlopen(mirror + filename, timeout=20) as response:
                atomic_write(target, functools.partial(_copy_from, response))
            return
        except OSError as error:
            errors.append(f"{mirror}: {getattr(error, 'reason', error)}")
    raise DataError(
        f"could not download {filename} from any mirror ({'; '.join(errors)}): "
        f"check the network, or use `data_source` bundled"
    )
