"""A work directory has one owner and holds one run: links, locks, foreign folders,
malformed files and hostile inputs are refused in one line, and nothing saved is lost."""

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from jaxae import checkpoint, restore, runner, workdir
from tests.helpers import cli_flags, idx_bytes, run_cli


def checkpoint_epochs(folder) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def test_overwrite_refuses_a_run_whose_checkpoints_link_elsewhere_and_keeps_them(tmp_path, slice_config):
    elsewhere, run = tmp_path / "S" / "x", tmp_path / "r"
    elsewhere.mkdir(parents=True)
    run.mkdir()
    (run / "checkpoints").symlink_to(elsewhere)
    config = dataclasses.replace(slice_config, epochs=1)
    assert run_cli(cli_flags(config, run))[0] == 2  # a fresh run there is refused too
    (run / "checkpoints").unlink()
    runner.train_and_evaluate(config, run)
    (run / "checkpoints").rename(elsewhere / "c")
    (run / "checkpoints").symlink_to(elsewhere / "c")
    for flag in ("--overwrite", "--resume"):
        code, stderr = run_cli([*cli_flags(dataclasses.replace(config, seed=1), run), flag])
        assert code == 2 and stderr.count("\n") == 1, stderr
        assert stderr.startswith(f"error: checkpoints in {run} is a link to elsewhere")
    assert checkpoint_epochs(elsewhere / "c") == [1]  # the linked run is untouched


def test_overwrite_deletes_only_a_run_jaxae_wrote(tmp_path, slice_config):
    folder = tmp_path / "mine"
    for name in ("checkpoints", "figures"):
        (folder / name).mkdir(parents=True)
        (folder / name / "precious.txt").write_text("keep me")
    (folder / "summary.json").write_text("{}")
    code, stderr = run_cli([*cli_flags(slice_config, folder), "--overwrite"])
    assert code == 2 and stderr.count("\n") == 1
    assert "holds summary.json, checkpoints, figures but no config.json: it is not a jaxae run" in stderr
    assert (folder / "checkpoints" / "precious.txt").read_text() == "keep me"
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "figures", "summary.json"]


def test_a_workdir_inside_another_runs_checkpoints_is_refused(tmp_path, slice_config):
    config = dataclasses.replace(slice_config, epochs=1)
    runner.train_and_evaluate(config, tmp_path / "run")
    code, stderr = run_cli(cli_flags(config, tmp_path / "run" / "checkpoints" / "nested"))
    assert code == 2 and "is inside the checkpoints of the run in" in stderr
    assert checkpoint_epochs(tmp_path / "run" / "checkpoints") == [1]


HOLD_LOCK = """
import sys, time
from pathlib import Path
from jaxae import workdir
with workdir.locked(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_one_process_owns_a_workdir_and_a_killed_owner_leaves_no_lock(tmp_path, slice_config):
    run = tmp_path / "run"
    config = dataclasses.replace(slice_config, epochs=1)
    runner.train_and_evaluate(config, run)
    owner = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "locked"
        for flag in ("--overwrite", "--resume"):
            code, stderr = run_cli([*cli_flags(config, run), flag])
            assert code == 2 and stderr.count("\n") == 1
            assert stderr.startswith(f"error: {run} is in use by process {owner.pid}: wait for it to end")
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=30)
    finally:
        owner.kill()
    assert checkpoint_epochs(run / "checkpoints") == [1]  # the refused processes touched nothing
    code, stderr = run_cli([*cli_flags(config, run), "--overwrite"])  # the dead owner's lock is gone
    assert code == 0, stderr


def test_a_lock_taken_on_a_new_workdir_leaves_nothing_when_the_run_is_refused(tmp_path, slice_config):
    code, _ = run_cli(cli_flags(dataclasses.replace(slice_config, batch_size=10**6), tmp_path / "new"))
    assert code == 2 and not (tmp_path / "new").exists()


MALFORMED_CONFIGS = {
    "truncated": '{"model": "vae", "epo',
    "null": "null",
    "a list": "[1, 2]",
    "a wrong type": json.dumps({"epochs": "three"}),
    "a wrong tuple": json.dumps({"widths": [64, "x"]}),
    "deeply nested": "[" * 100_000 + "]" * 100_000,
    "a huge number": '{"epochs": ' + "9" * 5000 + "}",
    "not UTF-8": b"\xff\xfe{}",
    "a folder": None,
}


@pytest.mark.parametrize("kind", sorted(MALFORMED_CONFIGS))
def test_a_malformed_config_json_on_resume_is_one_line_naming_the_file(kind, tmp_path, slice_config):
    run = tmp_path / "run"
    run.mkdir()
    content = MALFORMED_CONFIGS[kind]
    path = run / "config.json"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    code, stderr = run_cli([*cli_flags(slice_config, run), "--resume"])
    assert code == 2 and stderr.count("\n") == 1 and "Traceback" not in stderr, stderr
    assert str(path) in stderr
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]  # nothing written


def test_tampered_checkpoint_history_is_refused(tmp_path, slice_config):
    run = tmp_path / "run"
    runner.train_and_evaluate(dataclasses.replace(slice_config, epochs=1), run)
    meta_file = run / "checkpoints" / "1" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["history"][0]["test_loss"] -= 10  # a better-looking run
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="its metadata does not match its digest"):
        checkpoint.Checkpoints(run / "checkpoints").metadata(1)


def write_idx(folder, train_images, test_images):
    from jaxae import data

    folder.mkdir(exist_ok=True)
    for split, images in (("train", train_images), ("test", test_images)):
        images_stem, labels_stem = data.IDX_STEMS[split]
        (folder / images_stem).write_bytes(idx_bytes(images))
        (folder / labels_stem).write_bytes(idx_bytes(np.zeros(len(images), np.uint8)))


@pytest.mark.parametrize(
    ("test_images", "message"),
    [
        (np.zeros((0, 28, 28), np.uint8), "has no test images"),
        (np.zeros((16, 20, 20), np.uint8), "training images of shape (28, 28, 1) but test images of (20, 20, 1)"),
    ],
)
def test_empty_or_mismatched_splits_are_refused_before_anything_is_written(
    test_images, message, tmp_path, slice_config
):
    write_idx(tmp_path / "idx", np.zeros((64, 28, 28), np.uint8), test_images)
    config = dataclasses.replace(slice_config, dataset="synth", data_dir=str(tmp_path / "idx"))
    code, stderr = run_cli(cli_flags(config, tmp_path / "run"))
    assert code == 2 and message in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_overwrite_on_a_read_only_filesystem_is_one_line(tmp_path, slice_config, monkeypatch):
    run = tmp_path / "run"
    runner.train_and_evaluate(dataclasses.replace(slice_config, epochs=1), run)

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(workdir.shutil, "rmtree", read_only)
    code, stderr = run_cli([*cli_flags(slice_config, run), "--overwrite"])
    assert code == 2 and stderr.count("\n") == 1
    assert stderr.startswith(f"error: cannot write to --workdir {run} (Read-only file system)")
    assert checkpoint_epochs(run / "checkpoints") == [1]


def test_resume_without_a_run_to_continue_is_refused_and_writes_nothing(
    tmp_path, slice_config, mnist_slice_dir, capsys
):
    typo = tmp_path / "runs" / "vea"
    code, stderr = run_cli([*cli_flags(slice_config, typo), "--resume"])
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"error: nothing to resume: {typo} holds no run (no config.json); check the path")
    assert "leave out --resume to start a run there" in stderr and not typo.exists()

    from experiments import iwae

    flags = ["--workdir", str(tmp_path / "table"), "--dataset", "mnist_slice", "--data-source", "idx"]
    flags += ["--data-dir", str(mnist_slice_dir), "--rows", "iwae-1l-k1", "--stages", "1", "--resume"]
    capsys.readouterr()
    assert iwae.main(flags) == 2 and not (tmp_path / "table").exists()
    err = capsys.readouterr().err
    assert err.startswith(f"error: nothing to resume: {tmp_path / 'table'} holds none of the runs iwae-1l-k1")


def test_resume_of_a_run_that_kept_no_checkpoints_is_refused_and_its_metrics_stay(tmp_path, slice_config):
    """A finished run may keep its parameters in place of checkpoints: resuming it would
    start from epoch 0 and rewrite the metrics of the epochs it trained."""
    run = tmp_path / "r"
    config = dataclasses.replace(slice_config, epochs=2, plot_epochs=())
    runner.train_and_evaluate(config, run, quiet=True)
    restore.save_params(restore.restore_run(run))
    shutil.rmtree(run / "checkpoints")  # as a finished Burda et al. row keeps itself
    kept = (run / "metrics.jsonl").read_text()
    code, stderr = run_cli([*cli_flags(dataclasses.replace(config, epochs=3), run), "--resume"])
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"error: cannot resume {run}: its metrics.jsonl records 2 trained epochs but it keeps no")
    assert "pass --overwrite to train it again from epoch 0" in stderr
    assert (run / "metrics.jsonl").read_text() == kept and restore.restore_run(run).epoch == 2


def test_no_run_writes_through_a_link_to_its_lock_its_orbax_log_or_a_seeds_folder(tmp_path, slice_config):
    config = dataclasses.replace(slice_config, epochs=1, plot_epochs=())
    other = tmp_path / "a"
    runner.train_and_evaluate(config, other, quiet=True)
    kept = (other / "config.json").read_text()
    for name, recipe in ((".lock", "config.json"), ("orbax.log", "config.json")):
        run = tmp_path / f"b{name}"
        run.mkdir()
        (run / name).symlink_to(other / recipe)
        code, stderr = run_cli(cli_flags(config, run))
        assert code == 2 and stderr.count("\n") == 1 and f"{name} in {run} is a link to elsewhere" in stderr, stderr
        assert (other / "config.json").read_text() == kept
    seeds = tmp_path / "seeds"
    seeds.mkdir()
    (seeds / "seed_0").symlink_to(other)
    code, stderr = run_cli([*cli_flags(dataclasses.replace(config, seeds=2), seeds), "--overwrite"])
    assert code == 2 and "seed_0 in" in stderr and "is a link to elsewhere: each seed keeps its own folder" in stderr
    assert checkpoint_epochs(other / "checkpoints") == [1] and (other / "config.json").read_text() == kept


HOLD_OWNED = """
import dataclasses, json, sys, time
from pathlib import Path
from jaxae import workdir
from jaxae.config import Config
config = Config(seeds=int(sys.argv[2]))
with workdir.owned(config, Path(sys.argv[1])):
    print("owned", flush=True)
    time.sleep(600)
"""


@pytest.mark.parametrize("holder", ["seeds run", "single run in seed_0"])
def test_a_seeds_run_and_a_run_in_one_of_its_seed_folders_exclude_each_other(tmp_path, slice_config, holder):
    config = dataclasses.replace(slice_config, epochs=1, plot_epochs=())
    top = tmp_path / "W"
    runner.train_and_evaluate(dataclasses.replace(config, seeds=2), top, quiet=True)
    held, seeds = (top, "2") if holder == "seeds run" else (top / "seed_0", "1")
    owner = subprocess.Popen([sys.executable, "-c", HOLD_OWNED, str(held), seeds], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "owned"
        attacks = [cli_flags(config, top / "seed_0")] if holder == "seeds run" else []
        attacks.append(cli_flags(dataclasses.replace(config, seeds=2), top))
        for argv in attacks:
            code, stderr = run_cli([*argv, "--overwrite"])
            assert code == 2 and stderr.count("\n") == 1 and "is in use by process" in stderr, stderr
    finally:
        owner.kill()
    assert checkpoint_epochs(top / "seed_0" / "checkpoints") == [1]
    assert json.loads((top / "seed_0" / "config.json").read_text())["seed"] == 0


def test_overwrite_refuses_a_folder_whose_config_json_jaxae_did_not_write(tmp_path, slice_config):
    foreign = tmp_path / "bert"
    (foreign / "checkpoints" / "step_1000").mkdir(parents=True)
    (foreign / "checkpoints" / "step_1000" / "pytorch_model.bin").write_bytes(b"weights")
    (foreign / "config.json").write_text('{"model_type": "bert"}')
    code, stderr = run_cli([*cli_flags(slice_config, foreign), "--overwrite"])
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert f"{foreign / 'config.json'} is not a jaxae run's config" in stderr and "deletes only jaxae runs" in stderr
    assert (foreign / "checkpoints" / "step_1000" / "pytorch_model.bin").read_bytes() == b"weights"


def test_resume_refuses_another_runs_checkpoint_and_other_data(tmp_path, slice_config, mnist_slice_dir):
    import shutil

    config = dataclasses.replace(slice_config, epochs=1, plot_epochs=())
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    runner.train_and_evaluate(config, mine, quiet=True)
    runner.train_and_evaluate(dataclasses.replace(config, seed=1, epochs=2), theirs, quiet=True)
    longer = dataclasses.replace(config, epochs=3)
    (mine / "checkpoints" / "2").symlink_to(theirs / "checkpoints" / "2")  # the recipe: a link
    code, stderr = run_cli([*cli_flags(longer, mine), "--resume"])
    assert code == 2 and "checkpoints/2 in" in stderr and "is a link to elsewhere" in stderr, stderr
    (mine / "checkpoints" / "2").unlink()
    shutil.copytree(theirs / "checkpoints" / "2", mine / "checkpoints" / "2")  # a copy: its stored config tells
    code, stderr = run_cli([*cli_flags(longer, mine), "--resume"])
    assert code == 1 and stderr.count("\n") == 1, stderr
    assert "the checkpoint of epoch 2 in" in stderr and "holds another run's state (seed (1 -> 0))" in stderr
    shutil.rmtree(mine / "checkpoints" / "2")

    other_data = tmp_path / "other"
    shutil.copytree(mnist_slice_dir, other_data)
    images = other_data / "train-images-idx3-ubyte"
    raw = bytearray(images.read_bytes())
    raw[16 + 300] ^= 0xFF  # one pixel of the first image
    images.write_bytes(bytes(raw))
    before = (mine / "metrics.jsonl").read_text()
    code, stderr = run_cli([*cli_flags(dataclasses.replace(longer, data_dir=str(other_data)), mine), "--resume"])
    assert code == 2 and stderr.count("\n") == 1 and "trained on other data" in stderr, stderr
    assert (mine / "metrics.jsonl").read_text() == before


def test_a_damaged_metrics_file_is_one_line_and_fall_back_sets_that_checkpoint_aside(tmp_path, slice_config):
    run = tmp_path / "run"
    config = dataclasses.replace(slice_config, epochs=2, plot_epochs=(), keep_checkpoints=2)
    runner.train_and_evaluate(config, run, quiet=True)
    metrics = run / "checkpoints" / "2" / "metrics" / "metrics"
    metrics.write_text(metrics.read_text()[:5])  # truncated
    with pytest.raises(checkpoint.CheckpointError, match="the checkpoint of epoch 2 in .* is unreadable"):
        restore.restore_run(run)
    longer = dataclasses.replace(config, epochs=3)
    code, stderr = run_cli([*cli_flags(longer, run), "--resume"])
    assert code == 1 and stderr.count("\n") == 1 and "pass --fall-back with --resume" in stderr, stderr
    code, stderr = run_cli([*cli_flags(longer, run), "--resume", "--fall-back"])
    assert code == 0, stderr
    assert (run / "unreadable_checkpoints" / "2").is_dir() and checkpoint_epochs(run / "checkpoints")[-1] == 3
    assert [r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3]
