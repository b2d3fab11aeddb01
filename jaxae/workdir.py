"""A run's work directory: checked before a run starts, written as it trains, read back after.

Layout::

    workdir/config.json      the Config, as JSON
    workdir/metrics.jsonl    one record per epoch (epoch, train_loss, test_loss, ..., epoch_seconds,
                             elapsed_seconds: the run's wall time so far, over every call that trained it,
                             host: the machine that trained the epoch)
    workdir/checkpoints/     Orbax checkpoints: the last few and the best by test loss
    workdir/figures/         reconstructions_epoch_XX.png, loss.png, samples.png (VAE)
    workdir/summary.json     final figures: test loss, best epoch, seconds, device, host
    workdir/params.npz       optional: one epoch's parameters alone (:func:`jaxae.restore.save_params`), which
                             :func:`jaxae.restore.restore_run` reads when the run keeps no checkpoints

A run of several seeds writes ``config.json`` and ``summary.json`` at the top and one such
folder per seed, ``seed_<s>/``. This module checks a work directory before a run, guards
and locks it while it trains; :mod:`jaxae.seed_run` writes a seed's run into it, and
:func:`jaxae.restore.restore_run` reads any of them back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jaxae import parallel
from jaxae.checkpoint import LOG_FILE
from jaxae.config import RESUMABLE_FIELDS, Config, ConfigError
from jaxae.files import WriteError, atomic_write_text

PARAMS_FILE = "params.npz"
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", PARAMS_FILE)
RUN_FOLDERS = ("checkpoints", "figures", "tensorboard")
LOCK_FILE = ".lock"


def check_workdir(workdir: Path, config: Config, *, resume: bool, overwrite: bool) -> None:
    """Refuses to mix runs: a workdir holding another run needs ``resume`` or ``overwrite``;
    ``overwrite`` deletes only a run jaxae wrote (one with a ``config.json``); a run's
    files may not be links to elsewhere, nor a run live inside another's checkpoints."""
    _check_place(workdir)
    saved_path = workdir / "config.json"
    if resume and not overwrite and not saved_path.exists():
        raise ConfigError(
            f"nothing to resume: {workdir} holds no run (no config.json); check the path, or leave out `resume` "
            f"to start a run there",
            field="workdir",
        )
    if saved_path.exists() and not (resume or overwrite):
        raise ConfigError(f"{workdir} already holds a run: pass `resume` to continue it or `overwrite` to replace it")
    if overwrite and saved_path.is_file():
        try:
            read_config(workdir)
        except ConfigError as error:
            reason = re.search(r"\((.*)\): restore it", str(error))
            raise ConfigError(
                f"{saved_path} is not a jaxae run's config ({reason[1] if reason else error}), and `overwrite` "
                f"deletes only jaxae runs: move its files away or choose another `workdir`",
                field="workdir",
            ) from None
    if overwrite and not saved_path.is_file():
        found = [name for name in RUN_FILES[1:] + RUN_FOLDERS if (workdir / name).exists()]
        if found:
            raise ConfigError(
                f"{workdir} holds {', '.join(found)} but no config.json: it is not a jaxae run, and `overwrite` "
                f"deletes only those; move its files away or choose another `workdir`",
                field="workdir",
            )
    if saved_path.exists() and resume:
        differ = config_differences(read_config(workdir), config)
        if differ:
            raise ConfigError(
                f"cannot resume {workdir} with a different config: {', '.join(differ)}; "
                f"use the saved values or a new `workdir`"
            )
        trained = 0 if overwrite or (workdir / "checkpoints").exists() else trained_epochs(workdir)
        if trained:  # starting again from epoch 0 would rewrite the metrics of a run whose state is gone
            raise ConfigError(
                f"cannot resume {workdir}: its metrics.jsonl records {trained} trained epochs but it keeps no "
                f"checkpoints to continue from (a finished run may keep only its parameters); pass `overwrite` "
                f"to train it again from epoch 0, or choose another `workdir`",
                field="workdir",
            )


def trained_epochs(workdir: Path) -> int:
    """The epochs a run's ``metrics.jsonl`` records (0 when it has none)."""
    history = workdir / "metrics.jsonl"
    return len(history.read_text().splitlines()) if history.is_file() else 0


def config_differences(saved: Config, config: Config) -> list[str]:
    """The fields, other than the resumable ones, in which two configs differ, as
    ``name (saved -> new)``: what makes them two different runs."""
    return [
        f"{name} ({getattr(saved, name)!r} -> {getattr(config, name)!r})"
        for name in config.to_json()
        if name not in RESUMABLE_FIELDS and getattr(saved, name) != getattr(config, name)
    ]


def data_digest(*images: np.ndarray) -> str:
    """SHA-256 of the images a run trains and is tested on: a resume on other data is refused."""
    digest = hashlib.sha256()
    for array in images:
        digest.update(str(array.shape).encode())
        digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _check_place(workdir: Path) -> None:
    """Refuses a workdir inside another run's checkpoints, or whose run files are links."""
    for folder in (workdir.resolve(), *workdir.resolve().parents):
        if folder.name == "checkpoints" and (folder.parent / "config.json").is_file():
            raise ConfigError(
                f"{workdir} is inside the checkpoints of the run in {folder.parent}: choose another `workdir`",
                field="workdir",
            )
    links = [name for name in RUN_FILES + RUN_FOLDERS + (LOG_FILE,) if (workdir / name).is_symlink()]
    checkpoints = workdir / "checkpoints"
    if checkpoints.is_dir() and not checkpoints.is_symlink():
        links += [f"checkpoints/{path.name}" for path in sorted(checkpoints.iterdir()) if path.is_symlink()]
    if links:
        raise ConfigError(
            f"{', '.join(links)} in {workdir} is a link to elsewhere: a run keeps its own files; "
            f"remove the link or choose another `workdir`",
            field="workdir",
        )


def write_workdir(workdir: Path, config: Config, *, overwrite: bool) -> None:
    """Clears a previous run when ``overwrite``, then writes ``config.json``."""
    try:
        if overwrite:
            for name in RUN_FOLDERS:
                if (workdir / name).exists():
                    shutil.rmtree(workdir / name)
            for name in RUN_FILES:
                (workdir / name).unlink(missing_ok=True)
        workdir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(workdir / "config.json", json.dumps(config.to_json(), indent=2))
    except OSError as error:
        raise _unwritable(workdir, error) from None


def _unwritable(workdir: Path, error: OSError) -> ConfigError:
    """The one-line error for a workdir that cannot be written, naming the OS's reason."""
    cause = error.__cause__ if isinstance(error, WriteError) else error
    reason = cause.strerror if isinstance(cause, OSError) else cause
    return ConfigError(f"cannot write to `workdir` {workdir} ({reason}): choose a writable folder", field="workdir")


@contextlib.contextmanager
def owned(config: Config, workdir: Path) -> Iterator[None]:
    """:func:`locked` on ``workdir`` and, for several seeds, on each ``seed_<s>/`` too, so
    that no other run writes into a seed's folder while the seeds train. A seed's folder
    that is a link to elsewhere is refused before anything is locked or written."""
    seeds = [folder for _, folder in seed_workdirs(config, workdir)] if config.seeds > 1 else []
    links = [folder.name for folder in seeds if folder.is_symlink()]
    if links:
        raise ConfigError(
            f"{', '.join(links)} in {workdir} is a link to elsewhere: each seed keeps its own folder; "
            f"remove the link or choose another `workdir`",
            field="workdir",
        )
    with contextlib.ExitStack() as stack:
        for folder in (workdir, *seeds):
            stack.enter_context(locked(folder))
        yield


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Holds an OS lock on ``workdir/.lock`` while a run owns ``workdir``: a second process
    is refused with the owner's pid. The OS releases the lock when its process ends, even
    by ``kill -9``, so no lock outlives its run; the file goes when the run ends. A workdir
    this call created and nothing else used is removed again. Process 0 locks for every
    process of a multi-host run."""
    if not parallel.is_primary():
        yield
        return
    created = not workdir.exists()
    path = workdir / LOCK_FILE
    if path.is_symlink():
        raise ConfigError(
            f"{LOCK_FILE} in {workdir} is a link to elsewhere: a run keeps its own files; remove the link",
            field="workdir",
        )
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        descriptor = _lock(path)
    except OSError as error:
        raise _unwritable(workdir, error) from None
    if descriptor is None:
        owner = _read_owner(path)
        raise ConfigError(
            f"{workdir} is in use by process {owner}: wait for it to end (or stop it), or choose another `workdir`",
            field="workdir",
        )
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before unlocking: a newcomer then locks a new file
        os.close(descriptor)
        if created and not any(workdir.iterdir()):
            workdir.rmdir()


def _lock(path: Path) -> int | None:
    """An open descriptor holding ``flock`` on ``path``, with this pid written in; None
    when another process holds it. Retries when the file was replaced meanwhile."""
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)  # a link: ELOOP, refused
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            return None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(descriptor).st_ino:  # the owner before us did not unlink it meanwhile
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, str(os.getpid()).encode(), 0)
            return descriptor
        os.close(descriptor)


def _read_owner(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()[:32] or "unknown"
    except OSError:
        return "unknown"


def prepare_workdir(workdir: Path, config: Config, *, resume: bool, overwrite: bool) -> None:
    """Every process checks the workdir; process 0 writes it; all wait until it is written."""
    check_workdir(workdir, config, resume=resume, overwrite=overwrite)
    parallel.sync(f"checked {workdir}")  # before any process writes
    if parallel.is_primary():
        write_workdir(workdir, config, overwrite=overwrite)
    parallel.sync(f"written {workdir}")


def write_history(path: Path, history: list[dict]) -> None:
    """``metrics.jsonl``: one JSON record per epoch."""
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in history))


def seed_workdirs(config: Config, workdir: Path) -> list[tuple[Config, Path]]:
    """Each seed's config and folder: ``workdir`` itself for one seed, else ``workdir/seed_<s>``."""
    if config.seeds == 1:
        return [(config, workdir)]
    seeds = range(config.seed, config.seed + config.seeds)
    return [(dataclasses.replace(config, seed=s, seeds=1), workdir / f"seed_{s}") for s in seeds]


def read_config(workdir: Path) -> Config:
    """The Config in ``workdir/config.json``.

    Raises:
        ConfigError: ``workdir`` holds no run; when it holds runs in its folders (a
            study), the message names them.
    """
    path = workdir / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        runs = sorted(p.parent.name for p in workdir.glob("*/config.json"))
        if runs:
            raise ConfigError(
                f"{workdir} holds the runs {', '.join(runs)}, each in its folder: restore one of them, "
                f"for example {workdir / runs[0]}"
            ) from None
        raise ConfigError(f"{workdir} holds no run (no config.json): train one there first") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path} ({getattr(error, 'strerror', None) or error})") from None
    try:
        return Config.from_json(json.loads(text))
    except (ValueError, TypeError, RecursionError) as error:  # ConfigError is a ValueError
        reason = "nested too deeply" if isinstance(error, RecursionError) else f"{error}"
        raise ConfigError(
            f"{path} is not a readable jaxae config ({reason:.120}): restore it, or `overwrite` the run"
        ) from None
