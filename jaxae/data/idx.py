"""IDX files (MNIST's own format), read with their headers and sizes checked."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from jaxae.data.cache import verify_mnist
from jaxae.data.common import (
    _IDX_IMAGES_MAGIC,
    _IDX_LABELS_MAGIC,
    IDX_STEMS,
    KNOWN_IDX_DIRS,
    KNOWN_IDX_PACKAGES,
    DataError,
)

# More than any IDX dataset needs (EMNIST byclass: 550 MB); a header announcing more is refused.
MAX_IDX_BYTES = 2**31
MAX_IDX_ITEM_BYTES = 2**24  # one image of 4096 x 4096: a header announcing bigger ones is a bomb


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """One IDX file, gzipped or not, as a uint8 array, its header validated.

    The header is read first and no more than the size it announces is decompressed (plus
    one byte, to detect trailing data), so a gzip bomb costs no memory.
    """
    with path.open("rb") as file:
        gzipped = file.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gzipped else path.open("rb") as file:
            shape = _idx_shape(file, expected_magic, path)
            size = math.prod(shape)
            if 0 in shape[1:] or (len(shape) > 1 and math.prod(shape[1:]) > MAX_IDX_ITEM_BYTES):
                raise DataError(
                    f"{path} announces items of shape {shape[1:]} ({len(shape) and shape[0]} of them): an IDX "
                    f"dataset holds items of 1 to {MAX_IDX_ITEM_BYTES:,} bytes; the file is corrupt, replace it"
                )
            if size > MAX_IDX_BYTES:
                raise DataError(
                    f"{path} announces {shape}, {size} bytes, more than any IDX dataset: it is corrupt; replace it"
                )
            body = file.read(size + 1)
    except (OSError, EOFError) as error:
        raise DataError(f"{path} is not a valid gzip file ({error}); download it again") from None
    if len(body) != size:
        raise DataError(
            f"{path} holds {'more' if len(body) > size else 'fewer'} bytes than its header {shape} needs: "
            f"the file is truncated or corrupt; download it again"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def _idx_shape(file, expected_magic: int, path: Path) -> tuple[int, ...]:
    """Reads an IDX header (magic, then one big-endian int32 per dimension) from ``file``."""
    head = file.read(4)
    if len(head) < 4:
        raise DataError(f"{path} is truncated (only {len(head)} bytes); download it again")
    magic = int.from_bytes(head, "big")
    if magic != expected_magic:
        raise DataError(
            f"{path} has IDX magic 0x{magic:08x}, expected 0x{expected_magic:08x}: "
            f"wrong or mislabelled file; check the file names"
        )
    ndim = magic & 0xFF
    dims = file.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(f"{path} is truncated inside its header; download it again")
    return tuple(int.from_bytes(dims[4 * i : 4 * i + 4], "big") for i in range(ndim))


def _find_idx_pair(folder: Path, split: str) -> tuple[Path, Path] | None:
    """The images and labels files of a split in an IDX folder, or None."""
    found = []
    for stem in IDX_STEMS[split]:
        variants = {stem, stem.replace("-idx", ".idx")}
        candidates = [folder / (v + ext) for v in sorted(variants) for ext in ("", ".gz")]
        existing = [c for c in candidates if c.is_file()]
        if not existing:
            return None
        found.append(existing[0])
    return found[0], found[1]


def _load_idx(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    if data_dir is None:
        known = KNOWN_IDX_DIRS.get(name)
        if known is None:
            raise DataError("`data_source` idx needs `data_dir`: the folder holding the IDX files")
        data_dir = known
    folder = Path(data_dir)
    if not folder.is_dir():
        hint = f" ({KNOWN_IDX_PACKAGES[name]})" if name in KNOWN_IDX_PACKAGES else ""
        raise DataError(f"IDX folder {folder} does not exist: pass the folder that holds the files{hint}")
    pair = _find_idx_pair(folder, split)
    if pair is None:
        stems = " and ".join(IDX_STEMS[split])
        raise DataError(f"{folder} lacks the {split} IDX files: expected {stems} (optionally .gz)")
    images = read_idx(pair[0], _IDX_IMAGES_MAGIC)
    labels = read_idx(pair[1], _IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise DataError(
            f"{pair[0].name} has {len(images)} images but {pair[1].name} has {len(labels)} "
            f"labels: the files belong to different datasets; replace them"
        )
    if name == "mnist" and folder not in KNOWN_IDX_DIRS.values():
        verify_mnist(split, images, labels)
    return images[..., None], labels
