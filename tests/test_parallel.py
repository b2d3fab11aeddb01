"""Data parallel training: 8 devices against 1, and two processes against one."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from jaxae import models, parallel, train
from jaxae.checkpoint import Checkpoints
from tests.helpers import read_metrics


def with_devices(count: int) -> dict:
    """The environment, with XLA's CPU split into ``count`` devices (the suite's other XLA flags kept)."""
    return {
        **os.environ,
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}",
    }


EIGHT_DEVICES = with_devices(8)


@pytest.mark.slow
def test_eight_devices_train_like_one(mnist_slice_dir):
    result = subprocess.run(
        [sys.executable, "-m", "tests.parallel_worker", str(mnist_slice_dir)],
        capture_output=True,
        text=True,
        env=EIGHT_DEVICES,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    for name in ("vae", "conv_ae"):
        assert report[name]["steps"] == [20, 20]
        assert report[name]["all_reduce"], "the 8-device program does not split the batch"
        assert report[name]["relative_difference"] < 1e-5, report[name]
        np.testing.assert_allclose(*report[name]["test_loss"], rtol=1e-5)
    assert report["indivisible"] == "batch size 36 does not split over 8 devices: use a multiple of 8, for example 40"


def test_indivisible_batch_is_refused_by_the_command(mnist_slice_dir, tmp_path):
    flags = ["--dataset", "mnist_slice", "--data-source", "idx", "--data-dir", str(mnist_slice_dir)]
    result = subprocess.run(
        [sys.executable, "-m", "experiments.vae", *flags, "--batch-size", "60", "--workdir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=EIGHT_DEVICES,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: --batch-size 60 does not split over 8 devices: use a multiple of 8, for example 64"
    ]
    assert not (tmp_path / "run").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def restore_params(workdir):
    template = train.create_state(
        models.VAE(widths=(32,), latent_dim=4), optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0)
    )
    with Checkpoints(workdir / "checkpoints") as checkpoints:
        state, meta = checkpoints.restore(template)
    return jax.device_get(state.params), int(state.step), meta


@pytest.mark.slow
def test_two_processes_train_like_one(mnist_slice_dir, tmp_path):
    flags = [
        *("--dataset", "mnist_slice", "--data-source", "idx", "--data-dir", str(mnist_slice_dir)),
        *("--epochs", "2", "--batch-size", "32", "--widths", "32", "--latent-dim", "4", "--plot-epochs", "1"),
    ]
    command = [sys.executable, "-m", "experiments.vae", *flags]
    address = f"127.0.0.1:{free_port()}"
    two_devices = with_devices(2)
    processes = [
        subprocess.Popen(
            [*command, "--workdir", str(tmp_path / "two"), "--coordinator-address", address]
            + ["--num-processes", "2", "--process-id", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=two_devices,
        )
        for i in range(2)
    ]
    try:
        outputs = [p.communicate(timeout=300) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, err) in zip(processes, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert "cpu: 4 device(s) in 2 process(es), 8 images per device per step" in outputs[0][0]
    assert "epoch" in outputs[0][0] and "epoch" not in outputs[1][0]  # only process 0 reports
    single = subprocess.run([*command, "--workdir", str(tmp_path / "one")], capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr

    (two, two_step, two_meta), (one, one_step, one_meta) = (restore_params(tmp_path / n) for n in ("two", "one"))
    assert two_step == one_step == 2 * 512 // 32
    for a, b in zip(jax.tree.leaves(two), jax.tree.leaves(one), strict=True):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5
    np.testing.assert_allclose(
        [r["test_loss"] for r in two_meta["history"]], [r["test_loss"] for r in one_meta["history"]], rtol=1e-5
    )
    assert [r["epoch"] for r in read_metrics(tmp_path / "two")] == [1, 2]  # written once, not once per process
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (summary["devices"], summary["processes"]) == (4, 2)
    assert (tmp_path / "two" / "figures" / "reconstructions_epoch_01.png").exists()


@pytest.mark.parametrize(
    "flags",
    [["--num-processes", "2"], ["--process-id", "0", "--coordinator-address", "127.0.0.1:1"]],
)
def test_incomplete_process_flags_are_refused(flags, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.vae", *flags, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: --num-processes and --process-id go together: give both (and --coordinator-address)"
    )


def test_the_host_names_the_cores_a_pinned_process_may_use(monkeypatch):
    total = os.cpu_count()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(total)), raising=False)
    assert parallel.host_description().endswith(f", {total} cores")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    expected = f", {total} cores" if total == 1 else f", 1 of {total} cores"
    assert parallel.host_description().endswith(expected)
