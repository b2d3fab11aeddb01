"""Faults and bad input lose nothing: kill -9, corrupted checkpoints, NaN, a full disk, bad flags."""

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments import cli, harness
from jaxae import checkpoint, losses, models, runner, train
from tests.helpers import assert_states_equal, cli_flags, read_metrics, restore_latest, run_cli


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(tmp_path, slice_config):
    config = dataclasses.replace(slice_config, epochs=12)
    workdir = tmp_path / "killed"
    command = [sys.executable, "-m", "experiments.vae", *cli_flags(config, workdir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not (workdir / "checkpoints" / "2").exists():  # a complete checkpoint: Orbax renames when done
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no second checkpoint in 300 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL
    assert not (workdir / "summary.json").exists()  # it was killed mid-run

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    epoch = int(resumed.stdout.split("from epoch ")[1].split()[0])
    assert 2 <= epoch < config.epochs

    runner.train_and_evaluate(config, tmp_path / "straight")
    state_killed, meta_killed = restore_latest(workdir)
    state_straight, meta_straight = restore_latest(tmp_path / "straight")
    assert meta_killed["epoch"] == meta_straight["epoch"] == config.epochs
    assert_states_equal(state_killed, state_straight)  # bitwise
    records = read_metrics(workdir)
    assert [r["epoch"] for r in records] == list(range(1, config.epochs + 1))
    assert [r["test_loss"] for r in records] == [r["test_loss"] for r in meta_straight["history"]]


def _largest_array_file(step_dir):
    return max((p for p in (step_dir / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _flip_bits_at(step_dir, places):
    """Flips the lowest bit of the bytes at ``places`` of the largest array file."""
    path = _largest_array_file(step_dir)
    data = bytearray(path.read_bytes())
    for at in places:
        data[at] ^= 1
    path.write_bytes(bytes(data))


def _flip_bits(step_dir, count=8):
    """Flips a bit at ``count`` evenly spaced bytes of the largest array file. Orbax stores arrays
    zstd-compressed, and a few bits of a compressed stream change nothing it decodes: one flip
    alone is sometimes harmless (see the test below), eight together never are."""
    size = _largest_array_file(step_dir).stat().st_size
    _flip_bits_at(step_dir, np.linspace(0, size - 1, count + 2).astype(int)[1:-1])


def _truncate(step_dir):
    path = _largest_array_file(step_dir)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble_meta(step_dir):
    (step_dir / "meta" / "metadata").write_text('{"epoch": 2, "hist')


def _delete_state(step_dir):
    for path in sorted((step_dir / "state").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()


# Orbax leaves a refused checkpoint's other reads unawaited, or their event loop closed, and
# Python reports them as it collects them: warnings about the refusal the tests ask for.
ORBAX_LEFTOVERS = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@ORBAX_LEFTOVERS
@pytest.mark.parametrize("corrupt", [_flip_bits, _truncate, _garble_meta, _delete_state])
def test_a_corrupted_checkpoint_is_refused_with_its_epoch_named(corrupt, tmp_path):
    model = models.VAE(widths=(32,), latent_dim=4)
    state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
    later = state.replace(step=state.step + 1, params=jax.tree.map(lambda p: p + 1, state.params))
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        ckpts.save(1, state, {"epoch": 1}, test_loss=1.0)
        ckpts.save(2, later, {"epoch": 2}, test_loss=1.0)
    corrupt(tmp_path / "2")
    with checkpoint.Checkpoints(tmp_path) as ckpts:
        with pytest.raises(checkpoint.CheckpointError, match="checkpoint of epoch 2 in .* is (unreadable|corrupted)"):
            ckpts.restore(state)
        restored, meta = ckpts.restore(state, epoch=1)
    assert meta["epoch"] == 1
    assert_states_equal(restored, state)


@ORBAX_LEFTOVERS
def test_a_single_flipped_bit_is_refused_or_changes_nothing_restored(tmp_path):
    model = models.VAE(widths=(64,), latent_dim=4)
    state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
    saved = state.replace(step=state.step + 7, params=jax.tree.map(lambda p: 1.5 * p + 0.1, state.params))
    with checkpoint.Checkpoints(tmp_path / "saved") as ckpts:
        ckpts.save(1, saved, {"epoch": 1}, test_loss=1.0)
    size = _largest_array_file(tmp_path / "saved" / "1").stat().st_size
    refusals = []
    for place in np.linspace(0, size - 1, 24).astype(int):
        copy = tmp_path / str(place)
        shutil.copytree(tmp_path / "saved", copy)
        _flip_bits_at(copy / "1", [place])
        with checkpoint.Checkpoints(copy) as ckpts:
            try:
                restored, _ = ckpts.restore(state)
            except checkpoint.CheckpointError as error:
                refusals.append(str(error))
            else:
                assert_states_equal(restored, saved)  # the bit was one the decoder never uses
    assert any("corrupted (its arrays do not match its digest)" in r for r in refusals)  # caught by the digest
    assert len(refusals) >= 12


@ORBAX_LEFTOVERS
def test_resume_falls_back_past_a_corrupted_checkpoint_only_when_asked(tmp_path, slice_config):
    config = dataclasses.replace(slice_config, epochs=3)
    runner.train_and_evaluate(config, tmp_path)
    original = read_metrics(tmp_path)
    _flip_bits(tmp_path / "checkpoints" / "3")
    longer = dataclasses.replace(config, epochs=4)
    with pytest.raises(
        checkpoint.CheckpointError, match="epoch 3 .* (unreadable|corrupted) .* pass `fall_back` with `resume`"
    ):
        runner.train_and_evaluate(longer, tmp_path, resume=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2", "3"]  # nothing moved
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 3

    messages = []
    runner.train_and_evaluate(longer, tmp_path, resume=True, fall_back=True, log=messages.append)
    assert any("epoch 3" in m and "moved it to" in m for m in messages)
    assert any(m.endswith("from epoch 2") for m in messages)
    assert (tmp_path / "unreadable_checkpoints" / "3" / "state").is_dir()  # set aside, not deleted
    records = read_metrics(tmp_path)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert records[2]["test_loss"] == original[2]["test_loss"]  # epoch 3 trained again, identically


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, slice_config, monkeypatch):
    runner.train_and_evaluate(slice_config, tmp_path)
    good_state, good_meta = restore_latest(tmp_path)

    def nan_elbo(*args):
        loss, metrics = losses.elbo_objective(*args)
        return loss * np.nan, metrics

    monkeypatch.setitem(losses.OBJECTIVES, "elbo", nan_elbo)
    with pytest.raises(train.TrainingDiverged, match="in epoch 3.*the checkpoint of epoch 2 is kept"):
        runner.train_and_evaluate(dataclasses.replace(slice_config, epochs=4), tmp_path, resume=True)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    state, meta = restore_latest(tmp_path)
    assert_states_equal(state, good_state)
    assert meta == good_meta
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


FULL_DISK = """
import resource, signal, sys
from experiments import cli
from jaxae import runner
from jaxae.config import Config

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG


def fill_the_disk(record):  # after epoch 1 is saved, no file may grow past 1 kB
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))


config = Config.from_json({config})
try:
    runner.train_and_evaluate(config, {workdir!r}, on_epoch=fill_the_disk)
except cli.FAULTS as error:
    sys.exit(cli.report(error))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="simulates a full disk with RLIMIT_FSIZE")
def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, slice_config):
    workdir = tmp_path / "run"
    config = dataclasses.replace(slice_config, epochs=3)
    script = FULL_DISK.format(config=config.to_json(), workdir=str(workdir))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr[-3000:]  # Orbax's writer threads go to the log
    assert (workdir / checkpoint.LOG_FILE).stat().st_size > 0
    assert (
        "error: could not save the checkpoint of epoch 2" in result.stderr
        and "the checkpoint of epoch 1 is intact: free disk space, then --resume" in result.stderr
    )
    assert [r["epoch"] for r in read_metrics(workdir)] == [1]
    messages = []
    summary = runner.train_and_evaluate(config, workdir, resume=True, log=messages.append)
    assert "resumed" in messages[-1] and messages[-1].endswith("from epoch 1")
    assert summary["epochs"] == 3
    runner.train_and_evaluate(config, tmp_path / "straight")
    assert_states_equal(restore_latest(workdir)[0], restore_latest(tmp_path / "straight")[0])


# --------------------------------------------------------------------- bad input

BAD_VALUES = {
    "epochs": st.one_of(st.integers(-5, 0).map(str), st.sampled_from(["abc", "1.5", ""])),
    "batch-size": st.one_of(st.integers(-5, 0), st.integers(513, 10**7)).map(str),
    "latent-dim": st.one_of(st.integers(-5, 0).map(str), st.just("two")),
    "learning-rate": st.sampled_from(["0", "-1e-3", "nan", "inf", "-inf", "fast"]),
    "model": st.text("abcxyz_", min_size=1, max_size=8).filter(lambda s: s not in models.MODELS),
    "dataset": st.one_of(
        st.text("abcxyz", min_size=1, max_size=8).map(lambda s: f"no_such_{s}"),
        st.sampled_from(["../../x", "a/../b", "/tmp/mnist", "mnist/", " ", "mnist\\x"]),
    ),
    "seed": st.sampled_from(["-1", str(2**32), str(2**63), "1.5"]),
    "widths": st.lists(st.integers(-5, 0), min_size=1, max_size=3).map(lambda ws: " ".join(map(str, ws))),
    "seeds": st.integers(-5, 0).map(str),
    "keep-checkpoints": st.integers(-5, 0).map(str),
    "plot-epochs": st.integers(-5, 0).map(str),
    "noise-level": st.sampled_from(["-0.1", "-1", "nan"]),
    "dtype": st.sampled_from(["float16", "int8", "fp32"]),
    "inputs": st.sampled_from(["noisy", "gauss", "none"]),
    "binarize": st.sampled_from(["static", "yes"]),
    "data-source": st.sampled_from(["internet", "s3"]),
    "fall-back": st.just(None),  # without --resume
    "workdir": st.just("UNDER_A_FILE"),
}


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.dictionaries(st.sampled_from(sorted(BAD_VALUES)), st.none(), min_size=1, max_size=3), data=st.data())
def test_any_bad_flags_give_one_line_exit_2_and_write_nothing(bad, data, mnist_slice_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("flags")
    (root / "a_file").write_text("")
    flags = {
        "dataset": "mnist_slice",
        "data-source": "idx",
        "data-dir": str(mnist_slice_dir),
        "batch-size": "64",
        "widths": "32",
        "latent-dim": "4",
        "epochs": "1",
        "workdir": str(root / "run"),
    }
    if "dataset" in bad:  # the idx source reads any name from --data-dir
        flags |= {"data-source": "auto", "data-dir": None}
    for name in bad:
        value = data.draw(BAD_VALUES[name], label=name)
        flags[name] = str(root / "a_file" / "run") if value == "UNDER_A_FILE" else value
    argv = []
    for name, value in flags.items():
        if name in bad or value is not None:
            argv += [f"--{name}"] if value is None else [f"--{name}", *(value.split() or [value])]
    code, stderr = run_cli(argv)
    assert code == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    names = [f"--{name}" for name in bad] + (["unknown dataset"] if "dataset" in bad else [])
    assert any(name in lines[0] for name in names), (bad, lines[0])
    assert sorted(p.name for p in root.iterdir()) == ["a_file"]  # nothing written


def test_an_unwritable_workdir_is_refused_before_training(tmp_path, slice_config):
    (tmp_path / "a_file").write_text("")
    code, stderr = run_cli(cli_flags(slice_config, tmp_path / "a_file" / "run"))
    assert code == 2
    assert stderr.startswith(f"error: cannot write to --workdir {tmp_path / 'a_file' / 'run'} (Not a directory)")
    assert stderr.rstrip().endswith("choose a writable folder")


def test_files_are_written_with_the_usual_permissions(tmp_path, slice_config):
    runner.train_and_evaluate(slice_config, tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("config.json", "metrics.jsonl", "summary.json", "figures/loss.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_an_unusable_compilation_cache_warns_once_and_the_run_goes_on(tmp_path, slice_config):
    (tmp_path / "a_file").write_text("")
    config = dataclasses.replace(slice_config, epochs=1)
    found = jax.config.jax_compilation_cache_dir
    cache = tmp_path / "a_file" / "xla"
    code, stderr = run_cli([*cli_flags(config, tmp_path / "run"), "--compilation-cache", str(cache)])
    assert code == 0 and [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1]
    assert stderr.splitlines() == [
        f"warning: cannot keep compiled programs in {cache} (Not a directory): compiling afresh; "
        "pass --compilation-cache a writable folder, or '' for none"
    ]
    assert jax.config.jax_compilation_cache_dir == found and jax.config.jax_enable_compilation_cache  # restored


def test_the_compilation_cache_defaults_to_jax_setting_then_jaxae_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("JAXAE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
    assert cli.default_compilation_cache() == str(tmp_path / "jax")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    assert cli.default_compilation_cache() == str(tmp_path / "data" / "xla")


# --------------------------------------------------------------------- signals


def test_sigterm_stops_after_the_epoch_is_saved_and_names_the_resume_command(tmp_path, slice_config):
    """(Ctrl-C takes the same path, with exit code 130: the next test.)"""
    signum, code = signal.SIGTERM, 143
    workdir = tmp_path / "run"
    config = dataclasses.replace(slice_config, epochs=400)
    command = [sys.executable, "-m", "experiments.vae", *cli_flags(config, workdir)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (workdir / "checkpoints" / "1").exists():
            assert process.poll() is None and time.monotonic() < deadline, process.stderr.read()
            time.sleep(0.005)
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == code
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    name = signal.Signals(signum).name
    assert lines[0].startswith(f"{name}: stopped after saving epoch ")
    epoch = int(lines[0].split("saving epoch ")[1].split(";")[0])
    assert f"{name}: stopping once the epoch in progress is saved" in out
    assert [r["epoch"] for r in read_metrics(workdir)] == list(range(1, epoch + 1))
    resume = shlex.split(lines[0].split("continue with: ")[1])
    assert resume[:3] == ["python", "-m", "experiments.vae"] and resume[-1] == "--resume"
    resume[resume.index("--epochs") + 1] = str(epoch + 1)
    resumed = subprocess.run([sys.executable, *resume[1:]], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0 and f"from epoch {epoch}" in resumed.stdout, resumed.stderr


def test_a_second_signal_stops_at_once_and_says_the_epoch_in_progress_is_lost(capsys):
    stopping = cli.Stopping(log=print)
    stopping.handle(signal.SIGINT, None)
    with pytest.raises(cli.Interrupted) as raised:
        stopping.handle(signal.SIGINT, None)
    assert raised.value.epoch is None
    assert cli.report_interrupted(raised.value, ["--workdir", "r", "--overwrite"]) == 130
    line = capsys.readouterr().err.strip()
    assert "stopped at once: the epoch in progress is lost, every saved checkpoint is kept" in line
    assert line.endswith("--workdir r --resume")  # --overwrite would delete what was kept


def test_resume_after_a_kill_between_checkpoint_and_figures_redraws_them_and_clears_temporaries(tmp_path, slice_config):
    workdir = tmp_path / "run"
    config = dataclasses.replace(slice_config, epochs=2, plot_epochs=(2,))
    runner.train_and_evaluate(config, workdir)
    figures = workdir / "figures"
    drawn = {path.name for path in figures.iterdir()}
    for name in ("reconstructions_epoch_02.png", "loss.png"):
        (figures / name).unlink()  # the state a kill -9 leaves after epoch 2's checkpoint
    (workdir / ".summary.json.k1ll3d.tmp").write_text('{"half": ')
    (figures / ".loss.png.k1ll3d.tmp").write_bytes(b"\x89PNG")
    runner.train_and_evaluate(config, workdir, resume=True)
    assert {path.name for path in figures.iterdir()} == drawn
    assert not list(workdir.glob(".*.tmp")) and not list(figures.glob(".*.tmp"))


def test_hours_stops_at_an_epoch_boundary_with_exit_0_and_the_command_that_continues(slice_config, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["--workdir", str(workdir), "--epochs", "3", "--hours", "1e-9"]
    assert harness.main(slice_config, "a run", argv) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("time budget spent"))
    assert line.startswith("time budget spent: stopped after saving epoch 1; continue with: ")
    assert [r["epoch"] for r in read_metrics(workdir)] == [1]
    resume = shlex.split(line.split("continue with: ")[1])
    resume = resume[resume.index("--workdir") :]
    assert resume[-1] == "--resume" and "--hours" in resume
    resume[resume.index("--hours") + 1] = "1"
    assert harness.main(slice_config, "a run", resume) == 0
    assert [r["epoch"] for r in read_metrics(workdir)] == [1, 2, 3]
    with pytest.raises(SystemExit) as refused:
        harness.main(slice_config, "a run", [*argv[:-1], "0"])
    assert refused.value.code == 2 and "--hours must be a positive number of hours, not '0'" in capsys.readouterr().err


def test_a_signal_while_a_study_measures_stops_before_the_next_measurement_with_the_resume_line(capsys):
    stopping = cli.Stopping(log=print)
    stopping.check_between("never raised before a signal")
    stopping.handle(signal.SIGTERM, None)
    with pytest.raises(cli.Interrupted) as raised:
        stopping.check_between("stopped before measuring iwae-2l-k5: every run and figure measured is kept")
    assert cli.report_interrupted(raised.value, ["--rows", "all"]) == 128 + signal.SIGTERM
    line = capsys.readouterr().err.strip()
    assert line.startswith("SIGTERM: stopped before measuring iwae-2l-k5: every run and figure measured is kept;")
    assert line.endswith("--rows all --resume")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--latent-dim", "100000000000000000000"], "--latent-dim must be at most 16,777,216"),
        (["--stages-count", "1000000", "--schedule", "stages"], "--stages-count must be at most 1,000"),
        (["--stages-growth", "1000000000000", "--schedule", "stages"], "--stages-growth must be at most 1,000,000"),
        (["--objective", "iwae", "--objective-samples", "1000000"], "GiB ("),
        (["--seeds", "100000"], "--seeds must be at most 256"),
        (["--seeds", "256", "--widths", "100000"], "GiB (256 seed(s)"),
    ],
)
def test_sizes_that_cannot_fit_are_refused_from_the_shapes_before_anything_is_allocated(
    flags, message, slice_config, tmp_path
):
    run = tmp_path / "run"
    code, stderr = run_cli([*cli_flags(slice_config, run), *flags])
    assert code == 2 and stderr.count("\n") == 1 and message in stderr.replace("`", ""), stderr
    assert not run.exists()


def test_a_huge_or_deeply_nested_saved_config_and_a_one_image_table_are_one_line(slice_config, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    for text in ("[" * 100_000 + "]" * 100_000, '{"epochs": 1' + "0" * 4000 + "}"):
        (run / "config.json").write_text(text)
        code, stderr = run_cli(["--workdir", str(run), "--resume"])  # no --epochs: the saved ones are read
        assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    from experiments import iwae

    assert iwae.main(["--rows", "iwae-1l-k99999999999999999999", "--workdir", str(tmp_path / "t")]) == 2
    assert "unknown row 'iwae-1l-k99999999999999999999'" in capsys.readouterr().err
    assert iwae.main(["--rows", "iwae-1l-k1", "--test-images", "1", "--workdir", str(tmp_path / "t")]) == 2
    assert "needs at least 2 test images" in capsys.readouterr().err and not (tmp_path / "t").exists()


@pytest.mark.parametrize("shape", [(2, 0, 28), (2, 32768, 32768)])
def test_idx_images_of_no_pixels_or_a_bomb_header_are_refused_before_decompressing(shape, tmp_path, slice_config):
    import gzip

    from jaxae import data

    folder = tmp_path / "idx"
    folder.mkdir()
    header = (0x0803).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in shape)
    images_stem, labels_stem = data.IDX_STEMS["train"]
    with gzip.open(folder / f"{images_stem}.gz", "wb") as file:
        file.write(header + bytes(2**20))  # a small file that would decompress to what the header says
    (folder / labels_stem).write_bytes((0x0801).to_bytes(4, "big") + (2).to_bytes(4, "big") + bytes(2))
    with pytest.raises(data.DataError, match="an IDX dataset holds items of 1 to 16,777,216 bytes"):
        data.read_idx(folder / f"{images_stem}.gz", 0x0803)
    code, stderr = run_cli(cli_flags(dataclasses.replace(slice_config, data_dir=str(folder)), tmp_path / "run"))
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr and not (tmp_path / "run").exists()
