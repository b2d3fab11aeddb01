"""Integrity and the cache: the canonical MNIST digests, and arrays saved checksummed under the cache folder."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from jaxae.data.common import MNIST_SHA256, DataError, cache_dir, logger, usable_cache_dir
from jaxae.files import atomic_write


def sha256_of(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def verify_mnist(split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Raises DataError unless the arrays are exactly canonical MNIST."""
    found = {
        "images": sha256_of(images.reshape(-1, 28, 28)),
        "labels": sha256_of(labels.astype(np.uint8)),
    }
    for kind, digest in found.items():
        if digest != MNIST_SHA256[(split, kind)]:
            raise DataError(
                f"MNIST {split} {kind} do not match the canonical SHA-256 (got {digest[:12]}...): "
                f"the copy is corrupt; delete it and load again"
            )


def _cache_path(name: str, split: str) -> Path:
    return cache_dir() / f"{name}-{split}.npz"


def _read_cache(name: str, split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached arrays, or None when absent or failing their checks (then rebuilt)."""
    path = _cache_path(name, split)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as stored:
            images, labels = stored["images"], stored["labels"]
            digest = str(stored["sha256"])
        if digest != sha256_of(images) + sha256_of(labels):
            raise DataError("stored checksum does not match the arrays")
        if name == "mnist":
            verify_mnist(split, images, labels)
    except Exception as error:  # any unreadable or mismatching file is rebuilt
        logger.warning("ignoring corrupt cache %s (%s); rebuilding it", path, error)
        return None
    return images, labels


def _write_cache(name: str, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Saves the arrays atomically: a temporary file in the same folder, then a rename."""
    if usable_cache_dir() is None:
        return
    path = _cache_path(name, split)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = np.array(sha256_of(images) + sha256_of(labels))
        atomic_write(path, lambda f: np.savez(f, images=images, labels=labels, sha256=digest))
    except OSError as error:  # a read-only or full disk costs speed, not correctness
        logger.warning("could not cache %s (%s)", path, error)
