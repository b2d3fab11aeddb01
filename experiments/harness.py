"""The experiments' harness: a single run, a use measured on its trained model, and a
study of several runs side by side, each from flags to a work directory and a summary."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

from experiments.cli import (
    BAD_INPUT,
    FAULTS,
    LAUNCH_FLAGS,
    Interrupted,
    Progress,
    build_parser,
    compilation_cache,
    config_from_flags,
    count,
    format_value,
    join_processes,
    parse_run,
    report,
    report_interrupted,
    show_library_warnings,
    stop_on_signals,
    with_saved_epochs,
)
from jaxae import parallel
from jaxae.config import Config, ConfigError
from jaxae.files import atomic_write_text
from jaxae.restore import RestoredRun, restore_run
from jaxae.runner import train_and_evaluate


@dataclasses.dataclass(frozen=True)
class Use:
    """A use of autoencoders, measured on the model once it is trained.

    ``analyse(run, workdir)`` writes its figures into ``workdir/figures`` and returns its
    measurements as a dict, which goes into ``summary.json`` under ``name``; ``check(config)``
    refuses configs the analysis cannot use, before anything is trained.
    """

    name: str
    analyse: Callable[[RestoredRun, Path], dict]
    check: Callable[[Config], None] = lambda config: None


def main(defaults: Config, description: str, argv: list[str] | None = None, use: Use | None = None) -> int:
    """Parses flags over ``defaults``, runs the experiment, prints its summary; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    show_library_warnings()
    args, config = parse_run(defaults, description, argv, use and use.name)
    workdir = args["workdir"]
    with compilation_cache(args["compilation_cache"]), stop_on_signals(_say, args["hours"]) as stopping:
        try:
            return _run(config, workdir, {**args, "stopping": stopping}, use)
        except Interrupted as interrupted:
            return report_interrupted(interrupted, argv)


def _say(message: str) -> None:
    print(message, flush=True)


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
        + ("" if final.get("test_mse") is None else f"test MSE per pixel {final['test_mse']:.5f}, ")
        + f"{final['total_seconds']:.0f} s on {final['device']}; results in {workdir}"
    )
    if use is not None:
        print(f"{use.name}: " + ", ".join(f"{name} {format_value(value)}" for name, value in summary[use.name].items()))
    return 0


def _train(config: Config, workdir: str | Path, flags: dict, *, speaks: bool) -> dict:
    """``train_and_evaluate`` with progress and log lines, printed by the process that speaks;
    ``flags`` holds the parsed --resume, --overwrite, --fall-back and --epochs, and the
    :class:`Stopping` that ends the run after an epoch when a signal asks."""
    log = _say if speaks else (lambda m: None)
    config = with_saved_epochs(config, Path(workdir), flags, log)
    progress = Progress(config.epochs) if speaks else (lambda record: None)

    def on_epoch(record: dict) -> None:
        progress(record)
        flags["stopping"].check(record)

    try:
        return train_and_evaluate(
            config,
            workdir,
            resume=flags["resume"],
            overwrite=flags["overwrite"],
            fall_back=flags["fall_back"],
            log=log,
            on_epoch=on_epoch,
        )
    finally:
        if speaks:
            progress.close()


def _measure_use(use: Use, workdir: Path, summary: dict) -> dict:
    """Runs the analysis on the trained model and adds its measurements to ``summary.json``."""
    summary = {**summary, use.name: use.analyse(restore_run(workdir), workdir)}
    atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary


@dataclasses.dataclass(frozen=True)
class Study:
    """A use measured on several models trained side by side, each a run in ``workdir/<variant>``.

    ``variants(config, args)`` names the configs to train (from the flags' config and the
    study's own flags, added by ``flags(parser)``); ``plan(variants, workdir, args)``, when
    given, says what will run before anything is trained; ``analyse(variants, workdir,
    args)`` measures the trained runs (:func:`jaxae.restore.restore_run` reads one back),
    writes ``workdir/figures`` and returns the measurements for ``summary.json``.
    """

    name: str
    variants: Callable[[Config, argparse.Namespace], dict[str, Config]]
    analyse: Callable[[dict[str, Config], Path, argparse.Namespace], dict]
    flags: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    fixed: tuple[str, ...] = ("model", "seeds")  # Config fields the study sets itself
    plan: Callable[[dict[str, Config], Path, argparse.Namespace], None] | None = None
    report: Callable[[dict], str] | None = None  # the last thing printed; default: the measurements on one line
    # with --resume, whether a variant's run (config, its folder) finished and kept what
    # ``analyse`` needs without checkpoints, so that there is nothing to train
    finished: Callable[[Config, Path], bool] = lambda config, folder: False


def parse_study(
    defaults: Config, description: str, study: Study, argv: list[str] | None
) -> tuple[argparse.Namespace, Config]:
    """The parsed flags of a study (its own included), and the Config its variants start from."""
    parser = build_parser(defaults, description, study.name, study.fixed)
    study.flags(parser)
    args = parser.parse_args(argv)
    return args, config_from_flags(defaults, {k: v for k, v in vars(args).items() if k not in study.fixed})


def main_study(defaults: Config, description: str, study: Study, argv: list[str] | None = None) -> int:
    """Trains every variant (resumable, like one run each), then measures them together."""
    argv = sys.argv[1:] if argv is None else argv
    show_library_warnings()
    args, config = parse_study(defaults, description, study, argv)
    with compilation_cache(args.compilation_cache), stop_on_signals(_say, args.hours) as stopping:
        args.stopping = stopping
        try:
            return _run_study(config, args, study)
        except Interrupted as interrupted:
            return report_interrupted(interrupted, argv)


def _run_study(config: Config, args: argparse.Namespace, study: Study) -> int:
    """Trains the variants, measures them, writes and prints the summary; returns the exit code."""
    values = vars(args)
    workdir = Path(args.workdir)
    try:
        variants = study.variants(config, args)
        started = [name for name in variants if (workdir / name / "config.json").exists()]
        if args.resume and not started:
            raise ConfigError(
                f"nothing to resume: {workdir} holds none of the runs {', '.join(variants)}; check --workdir, "
                f"or leave out --resume to start them"
            )
        join_processes({name: values[name] for name in LAUNCH_FLAGS})
        speaks = parallel.is_primary()
        if study.plan is not None and speaks:
            study.plan(variants, workdir, args)
        for name, variant in variants.items():
            if args.resume and study.finished(variant, workdir / name):
                continue
            if speaks:
                print(f"{study.name}: training {name} ({variant.model}, {variant.latent_dim}-d code)", flush=True)
            flags = {**values, "resume": args.resume and name in started}  # the study's other runs start
            flags = flags if "epochs" not in study.fixed else {**flags, "epochs": variant.epochs}
            _train(variant, workdir / name, flags, speaks=speaks)
        if not speaks:
            return 0
        results = study.analyse(variants, workdir, args)
    except BAD_INPUT + FAULTS as error:
        return report(error)
    atomic_write_text(workdir / "summary.json", json.dumps({study.name: results}, indent=2))
    if study.report is not None:
        print(study.report(results), end="", flush=True)
    else:
        print(f"{study.name}: " + ", ".join(f"{name} {format_value(value)}" for name, value in results.items()))
    return 0
