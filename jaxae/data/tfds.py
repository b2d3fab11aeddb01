"""TFDS datasets: prepared ones read without TensorFlow where their format allows."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from jaxae.data.common import TF_INSTALL, DataError


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
