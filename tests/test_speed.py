"""The benchmark's figures are consistent, vmapped seeds train as separate runs, bfloat16 trains."""

import argparse
import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from experiments import benchmark
from jaxae import losses, models, runner, train
from jaxae.build import build_model
from jaxae.config import DTYPES
from tests.conftest import FAST_COMPILE_FLAG
from tests.helpers import read_metrics, restore_latest


def test_benchmark_row_is_consistent(mnist_small):
    images = mnist_small[0]
    cache_setting = jax.config.jax_compilation_cache_dir
    row = benchmark.benchmark(benchmark.model_config("vae", 64, "float32"), images, epochs=2)
    assert jax.config.jax_compilation_cache_dir == cache_setting  # the benchmark's own folder is gone
    assert row["compile_seconds"] > 0 and row["epoch_seconds"] > 0
    assert row["first_epoch_seconds"] > row["compile_seconds"]
    assert row["cache_hit"] and row["first_epoch_cached_seconds"] > row["cached_compile_seconds"] > 0
    assert row["images_per_second"] == pytest.approx(len(images) / row["epoch_seconds"])
    assert row["gflops_per_second"] == pytest.approx(row["flops_per_epoch"] / row["epoch_seconds"] / 1e9)
    # Dense layers of 784-400-20(x2)-400-784: forward, backward to weights, backward to
    # activations (not to the input): 2 * (2 * 651,200 + 337,600) FLOPs per image.
    matmul_flops = 2 * (2 * 651_200 + 337_600) * len(images)
    assert matmul_flops < row["flops_per_epoch"] < 1.25 * matmul_flops


@pytest.mark.slow
def test_benchmark_command_writes_its_table(tmp_path, capsys):
    output = tmp_path / "bench.json"
    argv = [
        "--quick",
        "--models",
        "vae",
        "--vae-batch-sizes",
        "256",
        "--batch-size",
        "256",
        "--seeds",
        "2",
        "--epochs",
        "1",
        "--nll-images",
        "20",
        "--nll-chunks",
        "50",
        "100",
        "--iwae-samples",
        "5",
        "--torch",
        "no",
        "--rounds",
        "2",
        "--output",
        str(output),
    ]
    assert benchmark.main(argv) == 0
    result = json.loads(output.read_text())
    for row in result["rows"]:  # two rounds, the row's figures from their median
        assert len(row["round_seconds"]) == 2 and row["epoch_seconds"] == pytest.approx(np.median(row["round_seconds"]))
        assert row["images_per_second"] == pytest.approx(row["seeds"] * row["images"] / row["epoch_seconds"])
    assert result["backend"] == jax.default_backend() and result["matmul_gflops_per_second"] > 0
    assert result["matmul_gflops_per_second"] == max(result["matmul_gflops_per_second_before_and_after"])
    rows = [(r["model"], r["batch_size"], r["seeds"], r["images"]) for r in result["rows"]]
    assert rows == [("vae", 256, 1, 2048), ("vae", 256, 2, 2048), ("iwae k=5", 20, 1, 400)]
    single, together, iwae = result["rows"]
    assert together["flops_per_epoch"] == pytest.approx(2 * single["flops_per_epoch"], rel=0.01)
    # 784-200-200-50 encoder, 5 draws through the 50-200-200-784 decoder: forward and two backward products
    iwae_flops = 2 * 3 * (784 * 200 + 200 * 200 + 2 * 200 * 50 + 5 * (50 * 200 + 200 * 200 + 200 * 784)) * 400
    assert 0.9 * iwae_flops < iwae["flops_per_epoch"] < 1.25 * iwae_flops
    assert result["torch_rows"] == []
    for row in result["rows"]:
        assert row["fraction_of_matmul"] == pytest.approx(row["gflops_per_second"] / result["matmul_gflops_per_second"])
    assert [(r["images"], r["samples"], r["chunk"]) for r in result["nll_rows"]] == [(20, 500, 50), (20, 500, 100)]
    decoder_flops = 2 * (50 * 200 + 200 * 200 + 200 * 784) * 500 * 20
    for row in result["nll_rows"]:
        assert row["flops"] == decoder_flops and row["seconds"] > 0
        assert row["floor_seconds"] == pytest.approx(decoder_flops / result["matmul_gflops_per_second"] / 1e9)
    out = capsys.readouterr().out
    assert "2 VAEs vmapped" in out and "IW-NLL, k = 500, 20 images, 100 draws per step" in out
    assert "no PyTorch rows: --torch no" in out


def test_rounds_pair_each_jaxae_row_with_pytorchs_of_the_same_round(monkeypatch, capsys):
    """A later round times every row again; a row's epoch is the median of its rounds and
    the ratio is the median of the rounds' ratios, not a ratio of medians from different
    moments of a shared machine."""
    ours = [{"model": "conv_ae", "batch_size": 128, "images": 2048, "seeds": 1, "flops_per_epoch": 8e9}]
    ours[0] |= {"epoch_seconds": 1.0, "round_seconds": [1.0]}
    theirs = [{"model": "conv_ae", "batch_size": 128, "images": 2048, "torch": "2", "threads": 2}]
    theirs[0] |= {"epoch_seconds": 2.0, "round_seconds": [2.0]}
    ours_later, theirs_later = iter([4.0, 5.0]), iter([3.0, 10.0])
    monkeypatch.setattr(benchmark, "torch_rows", lambda *args: [{"epoch_seconds": next(theirs_later)}])
    args = argparse.Namespace(iwae_samples=[], epochs=1)
    for _ in range(2):
        benchmark.more_rounds(ours, [lambda: next(ours_later)], theirs, {}, None, args)
    assert ours[0]["round_seconds"] == [1.0, 4.0, 5.0] and ours[0]["epoch_seconds"] == 4.0
    assert ours[0]["gflops_per_second"] == 2.0 and ours[0]["images_per_second"] == 512
    assert theirs[0]["round_seconds"] == [2.0, 3.0, 10.0] and theirs[0]["epoch_seconds"] == 3.0
    benchmark.print_against_torch(ours, theirs)
    assert theirs[0]["jaxae_ratio_rounds"] == pytest.approx([0.5, 4 / 3, 0.5])
    assert theirs[0]["jaxae_ratio"] == 0.5  # where the medians' ratio would say 1.33
    assert capsys.readouterr().out.splitlines()[-1].endswith("0.50x (median of 3 rounds, 0.50x to 1.33x)")


def test_pytorch_rows_are_set_against_jaxae_rows_of_the_same_model_and_images(capsys):
    ours = [
        {"model": "conv_ae", "batch_size": 128, "images": 2048, "seeds": 1, "epoch_seconds": 1.0},
        {"model": "vae", "batch_size": 128, "images": 2048, "seeds": 1, "epoch_seconds": 0.3},
        {"model": "vae", "batch_size": 512, "images": 2048, "seeds": 1, "epoch_seconds": 0.1},
        {"model": "iwae k=5", "batch_size": 20, "images": 400, "seeds": 1, "epoch_seconds": 0.5},
    ]
    theirs = [
        {"model": "conv_ae", "batch_size": 128, "images": 2048, "epoch_seconds": 4.0, "torch": "2", "threads": 2},
        {"model": "vae", "batch_size": 128, "images": 2048, "epoch_seconds": 1.2, "torch": "2", "threads": 2},
        {"model": "iwae k=5", "batch_size": 20, "images": 60000, "epoch_seconds": 9.0, "torch": "2", "threads": 2},
        {"model": "iwae k=5", "batch_size": 20, "images": 400, "epoch_seconds": 2.0, "torch": "2", "threads": 2}
        | {"device": "NVIDIA H200"},
    ]
    benchmark.print_against_torch(ours, theirs)
    assert theirs[0]["jaxae_ratio"] == 0.25 and "jaxae_ratio" not in theirs[2]  # other images: no pair
    assert theirs[1]["jaxae_ratio"] == pytest.approx(0.25)  # the VAE of its own batch size, not batch 512's
    assert capsys.readouterr().out.splitlines() == [
        "conv_ae, batch 128, 2048 images: jaxae 1.00 s, PyTorch 2 (2 threads) 4.00 s per epoch: 0.25x",
        "vae, batch 128, 2048 images: jaxae 0.30 s, PyTorch 2 (2 threads) 1.20 s per epoch: 0.25x",
        "iwae k=5, batch 20, 400 images: jaxae 0.50 s, PyTorch 2 (NVIDIA H200) 2.00 s per epoch: 0.25x",
    ]


@pytest.mark.slow
def test_profile_names_the_matrix_products_among_the_longest_ops(tmp_path):
    output = tmp_path / "bench.json"
    command = [sys.executable, "-m", "experiments.benchmark", "--quick", "--models", "vae", "--vae-batch-sizes"]
    command += ["128", "--seeds", "1", "--epochs", "1", "--profile", "--nll-images", "0", "--iwae-samples"]
    command += ["--torch", "no", "--output", str(output)]
    default_xla = {**os.environ, "XLA_FLAGS": os.environ["XLA_FLAGS"].replace(FAST_COMPILE_FLAG, "")}
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300, env=default_xla)
    assert finished.returncode == 0, finished.stderr
    for row in json.loads(output.read_text())["rows"]:
        ops = row["top_ops"]
        shares = [op["share"] for op in ops]
        assert len(ops) >= 5 and shares == sorted(shares, reverse=True) and 0 < shares[-1] <= shares[0] <= 1
        # The VAE's two large layers: their forward and backward products lead the list and hold
        # most of its time (a quick epoch on a loaded machine sees a few small ops stretched among them).
        products = [op["share"] for op in ops if "Dense_" in op["computes"]]
        assert "Dense_" in ops[0]["computes"] and len(products) >= 4 and sum(products) > sum(shares) / 2, ops
    assert "longest ops of one profiled epoch" in finished.stdout


def test_vmapped_seeds_equal_separate_runs(tmp_path, slice_config):
    config = dataclasses.replace(slice_config, seed=5)
    summary = runner.train_and_evaluate(dataclasses.replace(config, seeds=2), tmp_path / "together")
    assert summary["seeds"] == [5, 6] and len(summary["per_seed"]) == 2
    for seed in (5, 6):
        alone_dir = tmp_path / f"alone_{seed}"
        runner.train_and_evaluate(dataclasses.replace(config, seed=seed), alone_dir)
        together, _ = restore_latest(tmp_path / "together" / f"seed_{seed}")
        alone, _ = restore_latest(alone_dir)
        for a, b in zip(jax.tree.leaves(together.params), jax.tree.leaves(alone.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        records = read_metrics(tmp_path / "together" / f"seed_{seed}")
        for got, want in zip(records, read_metrics(alone_dir), strict=True):
            assert got["test_loss"] == pytest.approx(want["test_loss"], rel=1e-4)
    # the seeds differ from one another
    a, _ = restore_latest(tmp_path / "together" / "seed_5")
    b, _ = restore_latest(tmp_path / "together" / "seed_6")
    assert not np.allclose(jax.tree.leaves(a.params)[0], jax.tree.leaves(b.params)[0])


def test_bfloat16_compute_keeps_float32_parameters_and_learns_as_well(mnist_small):
    finals = {}
    for dtype in ("float32", "bfloat16"):
        model = models.VAE(widths=(64,), latent_dim=8, dtype=DTYPES[dtype])
        state = train.create_state(model, optax.adam(3e-3), (28, 28, 1), key=jax.random.key(0))
        state, history = train.fit(
            state, model, losses.elbo_objective, *mnist_small, key=jax.random.key(1), epochs=3, batch_size=64
        )
        assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype("float32")}
        assert history[-1]["test_loss"] < history[0]["test_loss"]
        finals[dtype] = history[-1]["test_loss"]
    assert finals["bfloat16"] == pytest.approx(finals["float32"], rel=0.05)


def test_torch_reference_without_torch_says_how_to_get_it(monkeypatch, capsys):
    from experiments import torch_reference

    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # makes `import torch` fail
    assert torch_reference.main(["--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: PyTorch is not installed: pip install torch"


def test_torch_reference_asked_for_a_gpu_it_cannot_see_says_what_to_use(capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine's PyTorch sees a GPU")
    from experiments import torch_reference

    assert torch_reference.pick_device("auto") == "cpu"
    assert torch_reference.main(["--device", "cuda", "--epochs", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: --device cuda: PyTorch sees no CUDA GPU; use --device cpu, or a CUDA build of torch"
    )


@pytest.mark.parametrize(("model_name", "config"), [("conv_ae", "conv_ae"), ("iwae", "iwae")])
def test_torch_reference_models_have_jaxae_s_parameter_count(model_name, config, mnist_small):
    pytest.importorskip("torch")
    from experiments import torch_reference

    module = torch_reference.build(model_name, mnist_small[0], samples=5)[0]
    jaxae_config = (
        benchmark.iwae_config(5, "float32") if config == "iwae" else benchmark.model_config(config, 128, "float32")
    )
    model = build_model(jaxae_config, (28, 28, 1))
    params = train.init_params(model, (28, 28, 1), jax.random.key(0))
    assert sum(p.numel() for p in module.parameters()) == sum(leaf.size for leaf in jax.tree.leaves(params))


ONE_STEP = """
import json, sys
import jax, numpy as np
from experiments import benchmark
from jaxae import data, train
from jaxae.build import build_model, build_objective, build_optimizer

images = data.load("mnist", "train").images[:16]
for name in ("vae", "conv_ae", "iwae"):  # dense products, convolutions, k draws
    config = benchmark.iwae_config(5, "float32") if name == "iwae" else benchmark.model_config(name, 16, "float32")
    model = build_model(config, images.shape[1:])
    state = train.create_state(model, build_optimizer(config, 1), images.shape[1:], key=jax.random.key(0))
    state, means = train.make_train_epoch(model, build_objective(config), 16)(state, images, jax.random.key(1))
    leaves = [np.asarray(leaf, np.float64) for leaf in jax.tree.leaves(state.params)]
    print(json.dumps({"model": name, "loss": float(means["loss"]), "params": [float(leaf.sum()) for leaf in leaves]}))
    sys.stdout.flush()
"""


@pytest.mark.slow
def test_every_xla_cpu_configuration_trains_as_the_default_or_fails_loudly():
    """One training step of each model under each named XLA:CPU configuration: the loss and
    the updated parameters equal the default's to float tolerance. A configuration XLA
    cannot compile for a model on this CPU ends its process (it never returns other numbers)."""
    steps = {}
    for name in benchmark.XLA_CPU:
        done = subprocess.run(
            [sys.executable, "-c", ONE_STEP],
            capture_output=True,
            text=True,
            timeout=600,
            env=benchmark.xla_cpu_environment(name),
        )
        steps[name] = {step["model"]: step for step in map(json.loads, done.stdout.splitlines())}
        assert done.returncode == 0 or len(steps[name]) < 3, done.stderr[-2000:]
    assert len(steps["default"]) == 3
    for name, found in steps.items():
        for model, step in found.items():
            want = steps["default"][model]
            assert step["loss"] == pytest.approx(want["loss"], rel=1e-4), (name, model)
            np.testing.assert_allclose(step["params"], want["params"], rtol=1e-3, atol=1e-3, err_msg=f"{name} {model}")
