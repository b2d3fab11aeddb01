"""The command line shared by the experiment scripts: flags from Config, progress, errors."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_compilation_cache
from tqdm import tqdm

from jaxae import parallel
from jaxae.checkpoint import CheckpointError
from jaxae.data import DataError, cache_dir
from jaxae.experiment import Config, ConfigError, RestoredRun, restore_run, train_and_evaluate
from jaxae.files import WriteError, atomic_write_text
from jaxae.train import TrainingDiverged

BAD_INPUT = (ConfigError, DataError)  # exit code 2: nothing was written
FAULTS = (TrainingDiverged, CheckpointError, WriteError)  # exit code 1: the message says what was kept


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, like every other error of the experiments, and
    whose usage names the command as it is typed: ``python -m experiments.vae``."""

    def __init__(self, *args, prog: str | None = None, **kwargs):
        super().__init__(*args, prog=prog or _prog(), **kwargs)

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message}: see --help\n")


def report(error: Exception) -> int:
    """Prints ``error`` as one line on stderr; returns the exit code: 2 for bad input, 1 for a fault."""
    print(f"error: {error}", file=sys.stderr)
    return 2 if isinstance(error, BAD_INPUT) else 1


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


def _flag_type(annotation) -> tuple[type, dict]:
    """argparse settings for a Config field's type annotation."""
    hint = eval(annotation, vars(typing)) if isinstance(annotation, str) else annotation  # noqa: S307
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], {"nargs": "+"}
    if isinstance(hint, types.UnionType):  # X | None
        return next(a for a in typing.get_args(hint) if a is not type(None)), {}
    if hint is bool:
        return bool, {"action": argparse.BooleanOptionalAction}
    return hint, {}


def build_parser(
    defaults: Config, description: str, name: str | None = None, fixed: tuple[str, ...] = ()
) -> argparse.ArgumentParser:
    """Flags for every Config field but the ``fixed`` ones; ``--workdir`` defaults to ``runs/<name>``."""
    parser = Parser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for field in dataclasses.fields(Config):
        if field.name in fixed:
            continue
        kind, extra = _flag_type(field.type)
        if kind is not bool:
            extra["type"] = kind
        default = getattr(defaults, field.name)
        shown = f"{default}; with --resume, the run's own" if field.name in SAVED_WHEN_RESUMED else default
        parser.add_argument(
            f"--{field.name.replace('_', '-')}",
            default=None if field.name in SAVED_WHEN_RESUMED else default,
            help=f"{field.metadata['help']} (default: {shown})",
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


LAUNCH_FLAGS = ("coordinator_address", "num_processes", "process_id", "distributed")
# Flags that, when not given, take the resumed run's saved value instead of the script's default.
SAVED_WHEN_RESUMED = ("epochs",)


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


def _fmt(value: float | list[float]) -> str:
    """A loss, or the mean and spread of several seeds' losses."""
    if isinstance(value, list):
        return f"{statistics.mean(value):#.5g}±{statistics.stdev(value):.2g}"
    return f"{value:#.5g}"


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


@dataclasses.dataclass(frozen=True)
class Use:
    """A use of autoencoders, measured on the model once it is trained.

    ``analyse(run, workdir)`` writes its figures into ``workdir/figures`` and returns its
    figures as a dict, which goes into ``summary.json`` under ``name``; ``check(config)``
    refuses configs the analysis cannot use, before anything is trained.
    """

    name: str
    analyse: Callable[[RestoredRun, Path], dict]
    check: Callable[[Config], None] = lambda config: None


def main(defaults: Config, description: str, argv: list[str] | None = None, use: Use | None = None) -> int:
    """Parses flags over ``defaults``, runs the experiment, prints its summary; returns the exit code."""
    args, config = parse_run(defaults, description, argv, use and use.name)
    workdir = args["workdir"]
    with compilation_cache(args["compilation_cache"]):
        return _run(config, workdir, args, use)


def _run(config: Config, workdir: str, args: dict, use: Use | None) -> int:
    """Trains (and measures ``use``); prints the summary; returns the exit code."""
    try:
        if use is not None:
            if config.seeds > 1:
                raise ConfigError(f"{use.name} measures one model: drop --seeds")
            use.check(config)
        join_processes({name: args[name] for name in LAUNCH_FLAGS})
        speaks = parallel.is_primary()  # one process reports; every process reports errors
        summary = _train(config, workdir, args, speaks=speaks)
        if use is not None and speaks:
            summary = _measure_use(use, Path(workdir), summary)
    except BAD_INPUT + FAULTS as error:
        return report(error)
    if not speaks:
        return 0
    final = summary if config.seeds == 1 else summary["per_seed"][0]
    if config.seeds > 1:
        print(
            f"{config.model}: test loss {summary['test_loss_mean']:.5g} ± {summary['test_loss_std']:.2g} "
            f"(mean ± sd over seeds {summary['seeds'][0]}..{summary['seeds'][-1]}) "
            f"after {count(final['epochs'], 'epoch')}, "
            f"{summary['total_seconds']:.0f} s on {final['device']}; results in {workdir}/seed_<s>"
        )
        return 0
    print(
        f"{config.model}: test loss {final['test_loss']:.5g} after {count(final['epochs'], 'epoch')} "
        f"(best {final['best_test_loss']:.5g} at epoch {final['best_epoch']}), "
        f"test MSE per pixel {final['test_mse']:.5f}, {final['total_seconds']:.0f} s on {final['device']}; "
        f"results in {workdir}"
    )
    if use is not None:
        print(f"{use.name}: " + ", ".join(f"{name} {_fmt_value(value)}" for name, value in summary[use.name].items()))
    return 0


def parse_run(
    defaults: Config, description: str, argv: list[str] | None, name: str | None = None
) -> tuple[dict, Config]:
    """The parsed flags of a single run, and its Config."""
    args = vars(build_parser(defaults, description, name).parse_args(argv))
    return args, _config_from_flags(defaults, args)


def _config_from_flags(defaults: Config, values: dict) -> Config:
    """``defaults`` with the parsed values of the Config fields among ``values``."""
    fields = {f.name for f in dataclasses.fields(Config)}
    given = {k: v for k, v in values.items() if k in fields and not (k in SAVED_WHEN_RESUMED and v is None)}
    return dataclasses.replace(defaults, **{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})


def _with_saved_epochs(config: Config, workdir: Path, flags: dict, log: Callable[[str], None]) -> Config:
    """With --resume and no --epochs, the run continues to its own ``epochs``, not the script's default."""
    if not flags["resume"] or flags.get("epochs") is not None:
        return config
    try:
        epochs = json.loads((workdir / "config.json").read_text())["epochs"]
    except (OSError, ValueError, TypeError, KeyError):  # no run, or a broken one: the workdir check says which
        return config
    if not isinstance(epochs, int) or isinstance(epochs, bool):
        return config
    log(f"resuming to the run's own {count(epochs, 'epoch')} (pass --epochs to train longer)")
    return dataclasses.replace(config, epochs=epochs)


def _train(config: Config, workdir: str | Path, flags: dict, *, speaks: bool) -> dict:
    """``train_and_evaluate`` with progress and log lines, printed by the process that speaks;
    ``flags`` holds the parsed --resume, --overwrite, --fall-back and --epochs."""
    log = (lambda m: print(m, flush=True)) if speaks else (lambda m: None)
    config = _with_saved_epochs(config, Path(workdir), flags, log)
    progress = Progress(config.epochs)
    try:
        return train_and_evaluate(
            config,
            workdir,
            resume=flags["resume"],
            overwrite=flags["overwrite"],
            fall_back=flags["fall_back"],
            log=log,
            on_epoch=progress if speaks else lambda record: None,
        )
    finally:
        progress.close()


def _measure_use(use: Use, workdir: Path, summary: dict) -> dict:
    """Runs the analysis on the trained model and adds its figures to ``summary.json``."""
    summary = {**summary, use.name: use.analyse(restore_run(workdir), workdir)}
    atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary


def count(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fmt_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    return str(value)


@dataclasses.dataclass(frozen=True)
class Study:
    """A use measured on several models trained side by side, each a run in ``workdir/<variant>``.

    ``variants(config, args)`` names the configs to train (from the flags' config and the
    study's own flags, added by ``flags(parser)``); ``analyse(variants, workdir, args)``
    measures the trained runs (:func:`jaxae.experiment.restore_run` reads one back),
    writes ``workdir/figures`` and returns the figures for ``summary.json``.
    """

    name: str
    variants: Callable[[Config, argparse.Namespace], dict[str, Config]]
    analyse: Callable[[dict[str, Config], Path, argparse.Namespace], dict]
    flags: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    fixed: tuple[str, ...] = ("model", "seeds")  # Config fields the study sets itself


def parse_study(
    defaults: Config, description: str, study: Study, argv: list[str] | None
) -> tuple[argparse.Namespace, Config]:
    """The parsed flags of a study (its own included), and the Config its variants start from."""
    parser = build_parser(defaults, description, study.name, study.fixed)
    study.flags(parser)
    args = parser.parse_args(argv)
    return args, _config_from_flags(defaults, {k: v for k, v in vars(args).items() if k not in study.fixed})


def main_study(defaults: Config, description: str, study: Study, argv: list[str] | None = None) -> int:
    """Trains every variant (resumable, like one run each), then measures them together."""
    args, config = parse_study(defaults, description, study, argv)
    with compilation_cache(args.compilation_cache):
        return _run_study(config, args, study)


def _run_study(config: Config, args: argparse.Namespace, study: Study) -> int:
    """Trains the variants, measures them, writes and prints the summary; returns the exit code."""
    values = vars(args)
    workdir = Path(args.workdir)
    try:
        variants = study.variants(config, args)
        join_processes({name: values[name] for name in LAUNCH_FLAGS})
        speaks = parallel.is_primary()
        for name, variant in variants.items():
            if speaks:
                print(f"{study.name}: training {name} ({variant.model}, {variant.latent_dim}-d code)", flush=True)
            _train(variant, workdir / name, values, speaks=speaks)
        if not speaks:
            return 0
        results = study.analyse(variants, workdir, args)
    except BAD_INPUT + FAULTS as error:
        return report(error)
    atomic_write_text(workdir / "summary.json", json.dumps({study.name: results}, indent=2))
    print(f"{study.name}: " + ", ".join(f"{name} {_fmt_value(value)}" for name, value in results.items()))
    return 0
