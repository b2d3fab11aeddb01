import dataclasses
import gc
import json
import subprocess
import sys
import textwrap
import warnings

import jax
import numpy as np
import optax
import pytest

from jaxae import checkpoint, log_routing, losses, models, runner, train
from jaxae.config import ConfigError
from tests.helpers import assert_states_equal, leaves, read_metrics, restore_latest


def test_restore_in_a_new_process_gives_identical_parameters(tmp_path, mnist_small):
    model = models.VAE(widths=(32,), latent_dim=4)
    state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
    state, _ = train.fit(
        state, model, losses.elbo_objective, *mnist_small, key=jax.random.key(1), epochs=1, batch_size=64
    )
    with checkpoint.Checkpoints(tmp_path / "ckpt") as ckpts:
        ckpts.save(1, state, {"note": "hello"}, test_loss=1.0)
    script = textwrap.dedent(f"""
        import jax, numpy as np, optax
        from jaxae import checkpoint, models, train
        model = models.VAE(widths=(32,), latent_dim=4)
        template = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(5))
        with checkpoint.Checkpoints({str(tmp_path / "ckpt")!r}) as ckpts:
            state, meta = ckpts.restore(template)
        assert meta == {{"note": "hello"}}, meta
        leaves = jax.tree.leaves((state.params, state.opt_state, state.step))
        np.savez({str(tmp_path / "restored.npz")!r}, *[np.asarray(x) for x in leaves])
    """)
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    with np.load(tmp_path / "restored.npz") as restored:
        got = [restored[f"arr_{i}"] for i in range(len(restored.files))]
    for x, y in zip(leaves(state), got, strict=True):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path, slice_config):
    config = dataclasses.replace(slice_config, epochs=3)
    runner.train_and_evaluate(config, tmp_path / "straight")
    runner.train_and_evaluate(dataclasses.replace(config, epochs=2), tmp_path / "resumed")
    messages = []
    runner.train_and_evaluate(config, tmp_path / "resumed", resume=True, log=messages.append)
    assert any("resumed" in m and "from epoch 2" in m for m in messages)
    straight, meta_a = restore_latest(tmp_path / "straight")
    resumed, meta_b = restore_latest(tmp_path / "resumed")
    assert meta_a["epoch"] == meta_b["epoch"] == 3
    assert_states_equal(straight, resumed)
    lines = read_metrics(tmp_path / "resumed")
    expected = read_metrics(tmp_path / "straight")
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert [r["test_loss"] for r in lines] == [r["test_loss"] for r in expected]
    # Its wall time counts both calls: the second's seconds add to those the first saved.
    finished = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert lines[2]["elapsed_seconds"] > lines[1]["elapsed_seconds"] + lines[2]["epoch_seconds"]
    assert finished["total_seconds"] >= lines[2]["elapsed_seconds"]
    assert finished["train_seconds"] == pytest.approx(sum(r["epoch_seconds"] for r in lines))
    assert finished["total_seconds"] > finished["train_seconds"]
    # Resumed once finished, a run trains nothing and keeps its summary: the machine and
    # seconds stay those of its training, not of the call that found nothing to do.
    summary = (tmp_path / "resumed" / "summary.json").read_text()
    again = runner.train_and_evaluate(config, tmp_path / "resumed", resume=True)
    assert (tmp_path / "resumed" / "summary.json").read_text() == summary and again == json.loads(summary)


def test_keeps_the_latest_and_the_best(tmp_path, mnist_small):
    model = models.MLPAutoencoder(widths=(16,), latent_dim=2)
    state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
    test_losses = {1: 0.5, 2: 0.1, 3: 0.4, 4: 0.3, 5: 0.35}
    with checkpoint.Checkpoints(tmp_path, keep=2) as ckpts:
        for epoch, loss in test_losses.items():
            ckpts.save(epoch, state, {"epoch": epoch}, test_loss=loss)
        assert ckpts.epochs() == [2, 4, 5]
        assert ckpts.best_epoch() == 2 and ckpts.latest_epoch() == 5
        _, meta = ckpts.restore(state, epoch=2)
        assert meta == {"epoch": 2}


def test_a_workdir_holding_a_run_is_not_overwritten_by_accident(tmp_path, slice_config):
    config = dataclasses.replace(slice_config, epochs=1)
    runner.train_and_evaluate(config, tmp_path)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="pass `resume` to continue it or `overwrite`"):
        runner.train_and_evaluate(config, tmp_path)
    with pytest.raises(ConfigError, match=r"latent_dim \(4 -> 6\)"):
        runner.train_and_evaluate(dataclasses.replace(config, latent_dim=6), tmp_path, resume=True)
    assert (tmp_path / "metrics.jsonl").read_text() == before
    summary = runner.train_and_evaluate(dataclasses.replace(config, latent_dim=6), tmp_path, overwrite=True)
    assert summary["epochs"] == 1
    assert json.loads((tmp_path / "config.json").read_text())["latent_dim"] == 6


def test_a_failed_save_asks_for_disk_space_only_when_the_disk_is_full():
    import errno

    from jaxae.checkpoint import _fix

    full = RuntimeError("write failed")
    full.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert _fix(full, 3) == "free disk space"
    assert _fix(ValueError("StepAlreadyExistsError: Step 3 already exists"), 3).startswith("move away what stands")
    assert _fix(PermissionError(errno.EACCES, "denied"), 3) == "make the checkpoints folder writable"
    assert "disk space" not in _fix(RuntimeError("symlink loop"), 3)


def test_checkpoints_give_back_orbax_logs_and_the_thread_hooks_however_they_close(tmp_path, monkeypatch):
    import logging
    import threading

    def seen():
        loggers = [logging.getLogger(name) for name in checkpoint.ORBAX_LOGGERS]
        return [(logger.propagate, list(logger.handlers)) for logger in loggers], threading.excepthook

    before = seen()
    first, second = (checkpoint.Checkpoints(tmp_path / name) for name in ("a", "b"))
    assert all(not propagate for propagate, _ in seen()[0])
    first.close()  # closed in the order they opened: the second still routes
    assert all(not propagate and handlers for propagate, handlers in seen()[0])
    second.close()
    assert seen() == before

    log = tmp_path / "threads.log"
    handler = logging.FileHandler(log)
    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda *args, **kwargs: shown.append(args))
    hooks = sys.unraisablehook, warnings.showwarning
    with log_routing.routed_thread_errors(handler), log_routing.routed_thread_errors(logging.NullHandler()):
        thread = threading.Thread(target=lambda: 1 / 0)
        thread.start()
        thread.join()
        _FailsWhenCollected()  # collected at once: an unraisable error
        _never_awaited()  # collected at once, never run: Python warns
        gc.collect()
        warnings.showwarning(UserWarning("still shown"), UserWarning, "x.py", 1)
        assert [str(args[0]) for args in shown] == ["still shown"]  # other warnings are shown as before
    handler.close()
    routed = log.read_text()
    assert "ZeroDivisionError" in routed and "Event loop is closed" in routed
    assert "coroutine '_never_awaited' was never awaited" in routed
    assert threading.excepthook is before[1] and (sys.unraisablehook, warnings.showwarning) == hooks


def test_what_the_writers_report_before_a_failed_save_raises_goes_to_the_log(tmp_path, monkeypatch):
    import errno

    model = models.MLPAutoencoder(widths=(16,), latent_dim=2)
    state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
    ckpts = checkpoint.Checkpoints(tmp_path / "checkpoints")

    def failing_save(*args, **kwargs):  # a TensorStore thread reports, then Orbax raises
        _FailsWhenCollected()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpts._manager, "save", failing_save)
    with pytest.raises(checkpoint.CheckpointError, match="free disk space"):
        ckpts.save(1, state, {}, test_loss=1.0)
    ckpts.close()
    assert "Event loop is closed" in (tmp_path / checkpoint.LOG_FILE).read_text()


class _FailsWhenCollected:
    def __del__(self):
        raise RuntimeError("Event loop is closed")


async def _never_awaited() -> None:
    pass
