"""The experiments' command line: flags from Config, one-line errors, the compilation
cache, joining several processes, progress lines.

Library errors name Config fields in backticks (`batch_size`); :func:`report` prints them
as the flags that set them (``--batch-size``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import re
import shlex
import signal
import statistics
import sys
import threading
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
from tqdm import tqdm

from jaxae import evaluate, parallel
from jaxae.checkpoint import CheckpointError
from jaxae.config import SAVED_WHEN_RESUMED, Config, ConfigError, field_help, field_type
from jaxae.data import DataError, cache_dir
from jaxae.files import WriteError
from jaxae.train import TrainingDiverged

BAD_INPUT = (ConfigError, DataError)  # exit code 2: nothing was written
FAULTS = (TrainingDiverged, CheckpointError, WriteError)  # exit code 1: the message says what was kept


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error of the experiments, whose
    usage names the command as it is typed (``python -m experiments.vae``), and which takes
    flags only as written in full (``--epoch`` is not ``--epochs``)."""

    def __init__(self, *args, prog: str | None = None, **kwargs):
        super().__init__(*args, prog=prog or _prog(), allow_abbrev=False, **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message}: see --help\n")


def report(error: Exception) -> int:
    """Prints ``error`` as one line on stderr, its fields named as flags; returns the exit
    code: 2 for bad input, 1 for a fault."""
    print(f"error: {as_flags(str(error))}", file=sys.stderr)
    return 2 if isinstance(error, BAD_INPUT) else 1


def as_flags(message: str) -> str:
    """A library message with the fields it names in backticks written as the flags that
    set them: `batch_size` -> --batch-size."""
    return re.sub(r"`(\w+)`", lambda match: "--" + match.group(1).replace("_", "-"), message)


def default_compilation_cache() -> str:
    """``$JAX_COMPILATION_CACHE_DIR``, or ``xla/`` in jaxae's cache folder (``$JAXAE_DATA_DIR``)."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(cache_dir() / "xla")


@contextlib.contextmanager
def compilation_cache(folder: str | Path | None):
    """Inside, XLA programs are read from and saved to ``folder`` (falsy: not cached).

    A later run that compiles the same program (same code, shapes, flags, JAX version and
    device) loads it instead. Every program is kept, however quick to compile: loading
    one is quicker still. The setting found on entry is restored on exit.
    """
    folder = _usable_folder(folder)
    config = jax.config
    found = (
        config.jax_enable_compilation_cache,
        config.jax_compilation_cache_dir,
        config.jax_persistent_cache_min_compile_time_secs,
    )
    _set_compilation_cache(folder is not None, folder or found[1], 0.0)
    try:
        yield
    finally:
        _set_compilation_cache(*found)


def _usable_folder(folder: str | Path | None) -> str | None:
    """``folder``, created if absent; None, with a warning, if it cannot be written."""
    if not folder:
        return None
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK):
            raise PermissionError("not writable")
    except OSError as error:
        reason = error.strerror or error
        print(
            f"warning: cannot keep compiled programs in {folder} ({reason}): compiling afresh; "
            f"pass --compilation-cache a writable folder, or '' for none",
            file=sys.stderr,
        )
        return None
    return str(folder)


def _set_compilation_cache(enabled: bool, folder: str | None, min_compile_seconds: float) -> None:
    jax.config.update("jax_enable_compilation_cache", enabled)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_seconds)
    jax_compilation_cache.reset_cache()  # JAX reads the settings once; make it read them again


def _flag_type(name: str) -> tuple[type, dict]:
    """argparse settings for Config field ``name``."""
    kind, is_tuple, _ = field_type(name)
    if is_tuple:
        return kind, {"nargs": "+"}
    if kind is bool:
        return bool, {"action": argparse.BooleanOptionalAction}
    return kind, {}


def build_parser(
    defaults: Config, description: str, name: str | None = None, fixed: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """Flags for every Config field but the ``fixed`` ones; ``--workdir`` defaults to ``runs/<name>``."""
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Config):
        if field.name in fixed:
            continue
        kind, extra = _flag_type(field.name)
        if kind is not bool:
            extra["type"] = kind
        default = getattr(defaults, field.name)
        shown = f"{default}; with --resume, the run's own" if field.name in SAVED_WHEN_RESUMED else default
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            default=None if field.name in SAVED_WHEN_RESUMED else default,
            help=f"{field_help(field)} (default: {shown})",
            **extra,
        )
    parser.add_argument(
        "--workdir", default=f"runs/{name or defaults.model}", help="where the run's files go (default: %(default)s)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="delete a previous run in --workdir first")
    parser.add_argument(
        "--fall-back",
        action="store_true",
        help="with --resume: set unreadable checkpoints aside and continue from the newest readable one",
    )
    parser.add_argument(
        "--hours",
        type=positive_hours,
        help="stop cleanly after the first epoch that ends once this many hours have passed, print the "
        "command that continues, and exit 0",
    )
    parser.add_argument(
        "--compilation-cache",
        default=default_compilation_cache(),
        help="keep compiled XLA programs here, so later runs skip compiling them; '' compiles afresh "
        "(default: %(default)s)",
    )
    launch = parser.add_argument_group(
        "several processes (hosts)",
        "start one process per host with the same flags and its own --process-id; "
        "JAX_COORDINATOR_ADDRESS or --distributed also join a run",
    )
    launch.add_argument("--coordinator-address", help="host:port of process 0, reachable by every process")
    launch.add_argument("--num-processes", type=int, help="how many processes train together")
    launch.add_argument("--process-id", type=int, help="this process's index, 0 .. num-processes - 1")
    launch.add_argument(
        "--distributed", action="store_true", help="join a run that JAX detects (Cloud TPU pod slice, Slurm, Open MPI)"
    )
    return parser


def positive_hours(text: str) -> float:
    """--hours: a positive, finite number of hours."""
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not (math.isfinite(hours) and hours > 0):
        raise argparse.ArgumentTypeError(f"--hours must be a positive number of hours, not {text!r}")
    return hours


LAUNCH_FLAGS = ("coordinator_address", "num_processes", "process_id", "distributed")


def _prog() -> str | None:
    """``python -m experiments.vae`` when an experiment runs as a module; else argparse's default."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "")
    return f"python -m {name}" if name.startswith("experiments.") else None


def join_processes(launch: dict) -> None:
    """Starts JAX's multi-process runtime when the flags or the environment ask for it."""
    explicit = [launch[name] for name in LAUNCH_FLAGS[:3]]
    if any(value is not None for value in explicit) and None in explicit[1:]:
        raise ConfigError("--num-processes and --process-id go together: give both (and --coordinator-address)")
    try:
        parallel.initialize(*explicit, auto=launch["distributed"])
    except (ValueError, RuntimeError) as error:
        raise ConfigError(f"cannot join the processes ({error}): check the address and --process-id") from None


def parse_run(
    defaults: Config, description: str, argv: list[str] | None, name: str | None = None
) -> tuple[dict, Config]:
    """The parsed flags of a single run, and its Config."""
    args = vars(build_parser(defaults, description, name).parse_args(argv))
    return args, config_from_flags(defaults, args)


def config_from_flags(defaults: Config, values: dict) -> Config:
    """``defaults`` with the parsed values of the Config fields among ``values``."""
    fields = {f.name for f in dataclasses.fields(Config)}
    given = {k: v for k, v in values.items() if k in fields and not (k in SAVED_WHEN_RESUMED and v is None)}
    return dataclasses.replace(defaults, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def with_saved_epochs(config: Config, workdir: Path, flags: dict, log: Callable[[str], None]) -> Config:
    """With --resume and no --epochs, the run continues to its own ``epochs``, not the script's default."""
    if not flags["resume"] or flags.get("epochs") is not None:
        return config
    try:
        epochs = json.loads((workdir / "config.json").read_text())["epochs"]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):  # no run, or a broken one: the check says
        return config
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return config
    log(f"resuming to the run's own {count(epochs, 'epoch')} (pass --epochs to train longer)")
    return dataclasses.replace(config, epochs=epochs)


def check_iw_samples(samples: int) -> None:
    """Refuses an --iw-samples the importance-weighted NLL cannot draw in its chunks."""
    try:
        evaluate.check_samples(samples, name="--iw-samples")
    except ValueError as error:
        raise ConfigError(str(error)) from None


def count(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fmt(value: float | list[float]) -> str:
    """A loss, or the mean and spread of several seeds' losses."""
    if isinstance(value, list):
        return f"{statistics.mean(value):#.5g}±{statistics.stdev(value):.2g}"
    return f"{value:#.5g}"


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    return str(value)


class Progress:
    """A bar over epochs on a terminal; a plain line per epoch otherwise."""

    def __init__(self, epochs: int):
        self.epochs = epochs
        self.bar = None

    def __call__(self, record: dict) -> None:
        line = f"train {_fmt(record['train_loss'])}  test {_fmt(record['test_loss'])}  {record['epoch_seconds']:.1f} s"
        if not sys.stderr.isatty():
            print(f"epoch {record['epoch']:3d}/{self.epochs}  {line}", flush=True)
            return
        if self.bar is None:
            self.bar = tqdm(total=self.epochs, initial=record["epoch"] - 1, unit="epoch", dynamic_ncols=True)
        self.bar.set_postfix_str(line)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Interrupted(Exception):
    """The run was stopped by SIGINT (Ctrl-C) or SIGTERM (Colab, Slurm, preemption), or
    once its --hours were spent.

    Attributes:
        signum: the signal, and the process exits with ``128 + signum``; None when the
            time budget ran out, and the process exits with 0.
        epoch: the last epoch saved when the run stopped after finishing it, or None when
            a second signal abandoned the epoch in progress.
    """

    def __init__(self, signum: int | None, epoch: int | None = None, kept: str | None = None):
        super().__init__("time budget spent" if signum is None else signal.Signals(signum).name)
        self.signum, self.epoch, self.kept = signum, epoch, kept


class Stopping:
    """The signals a run has received: the first asks it to stop after the epoch in
    progress is saved; a second stops it at once. ``check(record)`` raises Interrupted at
    an epoch's end once a stop was asked for, or once ``hours`` have passed since it began."""

    def __init__(self, log: Callable[[str], None], hours: float | None = None):
        self.log, self.signum = log, None
        self.deadline = None if hours is None else time.monotonic() + hours * 3600

    def handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise Interrupted(signum)
        self.signum = signum
        self.log(
            f"{signal.Signals(signum).name}: stopping once the epoch in progress is saved "
            f"(Ctrl-C again stops at once, losing that epoch)"
        )

    def check(self, record: dict) -> None:
        if self.signum is not None:
            raise Interrupted(self.signum, record["epoch"])
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise Interrupted(None, record["epoch"])

    def check_between(self, kept: str) -> None:
        """Raises Interrupted, saying ``kept``, once a stop was asked for: between two pieces
        of work that are each kept when done (the measurements of a study's runs)."""
        if self.signum is not None:
            raise Interrupted(self.signum, kept=kept)


@contextlib.contextmanager
def stop_on_signals(log: Callable[[str], None], hours: float | None = None) -> Iterator[Stopping]:
    """Handles SIGINT and SIGTERM as :class:`Stopping` says while the block runs (in the
    main thread; elsewhere signals keep their handlers); stops after ``hours`` too."""
    stopping = Stopping(log, hours)
    if threading.current_thread() is not threading.main_thread():
        yield stopping
        return
    previous = {signum: signal.signal(signum, stopping.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stopping
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def report_interrupted(interrupted: Interrupted, argv: list[str]) -> int:
    """One line: what was kept and the command that continues; returns ``128 + signum``,
    or 0 when the run stopped because its --hours were spent (on stdout, as no fault)."""
    kept = (
        interrupted.kept
        or (f"stopped after saving epoch {interrupted.epoch}" if interrupted.epoch is not None else None)
        or "stopped at once: the epoch in progress is lost, every saved checkpoint is kept"
    )
    command = [arg for arg in argv if arg != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    prog = _prog() or f"python {Path(sys.argv[0]).name}"
    stream = sys.stdout if interrupted.signum is None else sys.stderr
    print(f"{interrupted}: {kept}; continue with: {prog} {shlex.join(command)}", file=stream, flush=True)
    return 0 if interrupted.signum is None else 128 + interrupted.signum


def show_library_warnings() -> None:
    """jaxae's own warnings (an unusable data cache, say) as ``warning: ...`` lines on
    stderr, like the command line's."""
    logger = logging.getLogger("jaxae")
    if not any(getattr(handler, "jaxae_cli", False) for handler in logger.handlers):
        handler = logging.StreamHandler()  # stderr as it is at each message
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        handler.setLevel(logging.WARNING)
        handler.jaxae_cli = True
        logger.addHandler(handler)
        logger.propagate = False
