"""The experiment scripts, run as users run them: `python -m experiments.<name>` in a subprocess."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from jaxae import plots
from tests.helpers import read_metrics

ROWS = {"ae": 4, "vae": 4, "conv_ae": 8, "conv_vae": 4}  # test originals and reconstructions (+ train ones for conv_ae)


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
    assert summary["host"].endswith(f"{os.cpu_count()} cores")  # times are quoted with their machine
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


@pytest.mark.slow
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


def test_resume_alone_continues_to_the_runs_own_epochs(mnist_slice_dir, tmp_path, capsys):
    from experiments import harness, vae

    flags = [*slice_flags(mnist_slice_dir, tmp_path), "--widths", "16", "--plot-epochs", "1"]
    assert harness.main(vae.DEFAULTS, vae.__doc__, [*flags, "--epochs", "1"]) == 0
    assert " after 1 epoch (best" in capsys.readouterr().out  # not "1 epochs"
    assert harness.main(vae.DEFAULTS, vae.__doc__, [*flags, "--resume"]) == 0  # the script's default is 20
    out = capsys.readouterr().out
    assert "resuming to the run's own 1 epoch (pass --epochs to train longer)" in out
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1]
    assert harness.main(vae.DEFAULTS, vae.__doc__, [*flags, "--resume", "--epochs", "2"]) == 0
    assert "resuming to the run's own" not in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2]
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2


def test_a_run_resumed_on_another_machine_names_both_in_its_records_summary_and_table(
    mnist_slice_dir, tmp_path, monkeypatch
):
    from experiments import harness, tables, vae
    from jaxae import parallel

    flags = [*slice_flags(mnist_slice_dir, tmp_path), "--widths", "16", "--plot-epochs", "1"]
    monkeypatch.setattr(parallel, "host_description", lambda: "Machine A, 2 cores")
    assert harness.main(vae.DEFAULTS, vae.__doc__, [*flags, "--epochs", "2"]) == 0
    monkeypatch.setattr(parallel, "host_description", lambda: "Machine B, 1 of 2 cores")
    assert harness.main(vae.DEFAULTS, vae.__doc__, [*flags, "--resume", "--epochs", "3"]) == 0
    assert [r["host"] for r in read_metrics(tmp_path)] == ["Machine A, 2 cores"] * 2 + ["Machine B, 1 of 2 cores"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["host"] == "Machine B, 1 of 2 cores"  # the last call's machine, as before
    assert summary["epochs_by_host"] == {"Machine A, 2 cores": 2, "Machine B, 1 of 2 cores": 1}
    assert tables.trained_on(summary) == "Machine A, 2 cores (2 epochs), then Machine B, 1 of 2 cores (1 epoch)"
    assert tables.trained_on({**summary, "epochs_by_host": {"Machine B, 1 of 2 cores": 3}}) == summary["host"]


def test_loss_curves_tick_whole_epochs_only(tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.append(fig))
    history = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 1.1 / e} for e in (1, 2, 3, 4)]
    plots.loss_curves(history, tmp_path / "loss.png", ylabel="loss")
    (axes,) = drawn[0].axes
    ticks = [t for t in axes.get_xticks() if 1 <= t <= 4]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


@pytest.mark.slow
def test_commands_from_a_normal_install_work_or_say_they_need_a_checkout(tmp_path):
    """`pip install .` (not editable) ships jaxae and experiments without the README or the
    committed runs: every command's --help works and names the command as it is typed;
    experiments.tables, which rewrites the checkout's README, says so in one line."""
    site, source = tmp_path / "site", tmp_path / "source"  # a copy: the build leaves build/ behind
    root = Path(__file__).resolve().parents[1]
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    for package in ("jaxae", "experiments"):
        shutil.copytree(root / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(source)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    script = """
import contextlib, io, json, pkgutil, runpy, sys
import experiments
assert experiments.__file__.startswith(sys.argv[1]), experiments.__file__
found = {}
for module in pkgutil.iter_modules(experiments.__path__):
    if module.name in ("cli", "harness"):
        continue
    sys.argv = [module.name, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_module(f"experiments.{module.name}", run_name="__main__", alter_sys=True)
    found[module.name] = out.getvalue()
print(json.dumps(found))
"""
    env = {**os.environ, "PYTHONPATH": str(site)}
    helps = subprocess.run(
        [sys.executable, "-c", script, str(site)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert helps.returncode == 0, helps.stderr
    helps = json.loads(helps.stdout)
    assert {"vae", "ae", "conv_ae", "conv_vae", "nll", "benchmark", "tables", "torch_reference"} <= set(helps)
    for name, text in helps.items():
        assert text.startswith(f"usage: python -m experiments.{name}"), (name, text[:80])
    assert "(default: runs/vae)" in " ".join(helps["vae"].split())
    result = subprocess.run(
        [sys.executable, "-m", "experiments.tables", "--check"], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert (
        result.stderr.startswith("error: experiments.tables rebuilds docs/results.md and docs/iwae.md")
        and "run it in a clone" in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1
