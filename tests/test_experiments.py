"""The experiment scripts, run as users run them: `python -m experiments.<name>` in a subprocess."""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

from jaxae import plots
from tests.test_checkpoint import read_metrics

ROWS = {"ae": 4, "vae": 4, "conv_ae": 6, "conv_vae": 4}  # originals and test reconstructions (+ train rows for conv_ae)


def run(module, *flags, cwd=None, env=None):
    command = [sys.executable, "-m", f"experiments.{module}", *flags]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def slice_flags(mnist_slice_dir, workdir):
    return [
        "--dataset",
        "mnist_slice",
        "--data-source",
        "idx",
        "--data-dir",
        str(mnist_slice_dir),
        "--workdir",
        str(workdir),
        "--batch-size",
        "64",
        "--latent-dim",
        "4",
    ]


@pytest.mark.parametrize("module", ["ae", "vae", "conv_ae", "conv_vae"])
def test_experiment_writes_its_workdir(module, mnist_slice_dir, tmp_path):
    widths = ["--widths", "8", "16"] if module.startswith("conv") else ["--widths", "32"]
    result = run(module, *slice_flags(mnist_slice_dir, tmp_path), "--epochs", "2", "--plot-epochs", "1", *widths)
    assert result.returncode == 0, result.stderr
    assert "mnist_slice/train: 512 images 28x28x1 from idx" in result.stdout
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert {"train_loss", "test_loss", "test_mse", "epoch_seconds"} <= set(r)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["test_loss"] == records[-1]["test_loss"] and summary["total_seconds"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["model"] == module
    figures = tmp_path / "figures"
    for epoch in (1, 2):
        with Image.open(figures / f"reconstructions_epoch_{epoch:02d}.png") as image:
            assert image.size == plots.grid_size(ROWS[module], 8)
    with Image.open(figures / "loss.png") as image:
        assert image.size == (600, 400)
    assert (figures / "samples.png").exists() == module.endswith("vae")
    if module.endswith("vae"):
        with Image.open(figures / "samples.png") as image:
            assert image.size == plots.grid_size(8, 8, labelled=False)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]


def test_a_later_run_loads_its_programs_from_the_compilation_cache(mnist_slice_dir, tmp_path):
    cache = tmp_path / "xla"
    flags = [*slice_flags(mnist_slice_dir, tmp_path / "run"), "--epochs", "1", "--widths", "32", "--overwrite"]
    env = {**os.environ, "JAX_DEBUG_LOG_MODULES": "jax._src.compiler"}  # logs each cache hit

    def loaded(result) -> set[str]:
        assert result.returncode == 0, result.stderr
        return {name for name in ("jit_train_epoch", "jit_evaluate") if f"cache hit for '{name}'" in result.stderr}

    assert loaded(run("vae", *flags, "--compilation-cache", str(cache), env=env)) == set()
    assert {path.name.split("-")[0] for path in cache.iterdir()} >= {"jit_train_epoch", "jit_evaluate"}
    assert loaded(run("vae", *flags, "--compilation-cache", str(cache), env=env)) == {"jit_train_epoch", "jit_evaluate"}
    warm = {**env, "JAX_COMPILATION_CACHE_DIR": str(cache)}  # '' wins over JAX's own setting
    assert loaded(run("vae", *flags, "--compilation-cache", "", env=warm)) == set()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs must be positive"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--latent-dim", "0"], "--latent-dim must be positive"),
        (["--batch-size", "100000"], "exceeds the 512 training images"),
        (["--learning-rate", "nan"], "--learning-rate must be a positive number"),
    ],
)
def test_bad_flags_give_one_line_and_exit_2(flags, message, mnist_slice_dir, tmp_path):
    result = run("vae", *slice_flags(mnist_slice_dir, tmp_path / "w"), *flags)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_missing_data_gives_one_line_and_exit_2(tmp_path):
    result = run(
        "vae",
        "--dataset",
        "mnist_slice",
        "--data-source",
        "idx",
        "--data-dir",
        str(tmp_path / "none"),
        "--workdir",
        str(tmp_path / "w"),
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: IDX folder") and "Traceback" not in result.stderr


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_figures_are_written_in_the_format_their_suffix_names(tmp_path, suffix, magic):
    history = [{"epoch": e, "train_loss": 2.0 / e, "test_loss": 2.1 / e} for e in (1, 2)]
    path = plots.loss_curves(history, tmp_path / f"loss{suffix}", ylabel="loss")
    assert path.read_bytes().startswith(magic)
