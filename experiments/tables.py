"""The results table (docs/results.md) and the IWAE table (docs/iwae.md), rebuilt from
the runs committed in experiments/results/.

python -m experiments.tables           # rewrite both tables
python -m experiments.tables --check   # exit 1 when a page does not match the committed runs

Each row of the results table names the command that made it. The config column is what that command's flags
give (the same parser the command uses), the numbers come from the run's summary.json,
and the budget from its config and its measured seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from experiments import compare, iwae
from experiments.cli import Parser, parse_run
from experiments.harness import parse_study
from jaxae import models
from jaxae.config import Config
from jaxae.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
DOCS = ROOT / "docs"
BEGIN = "<!-- results table: python -m experiments.tables -->"
END = "<!-- end of results table -->"
IWAE_BEGIN = "<!-- IWAE table: python -m experiments.tables -->"
IWAE_END = "<!-- end of IWAE table -->"


@dataclasses.dataclass(frozen=True)
class Row:
    """One result: ``result(summary)`` reads the figure from ``experiments/results/<folder>/summary.json``."""

    name: str
    folder: str
    command: str
    result: Callable[[dict], str]
    variant: str | None = None  # the study variant the row is about


def _single(summary: dict) -> str:
    mse = f"test MSE per pixel {summary['test_mse']:.5f}"
    return f"test -ELBO {summary['test_loss']:.2f} nats, {mse}" if models.MODELS[summary["model"]].variational else mse


def _seeds(summary: dict) -> str:
    return (
        f"test -ELBO {summary['test_loss_mean']:.2f} ± {summary['test_loss_std']:.2f} nats "
        f"(mean ± sd, seeds {summary['seeds'][0]}-{summary['seeds'][-1]})"
    )


def _compared(model: str) -> Callable[[dict], str]:
    def result(summary: dict) -> str:
        measured = summary["compare"]
        return (
            f"test MSE per pixel {measured[f'{model}_final_test_mse_mean']:.5f} ± "
            f"{measured[f'{model}_final_test_mse_sd']:.5f} (mean ± sd, {measured['seeds']} seeds)"
        )

    return result


def _verdict(summary: dict) -> str:
    return f"the write-up's claim (conv_ae learns faster than ae): {summary['compare']['claim']}"


def _nll(variant: str) -> Callable[[dict], str]:
    def result(summary: dict) -> str:
        measured = summary["nll"]
        nll, stderr = measured[f"{variant}_test_iw_nll"], measured[f"{variant}_test_iw_nll_stderr"]
        return (
            f"test IW-NLL **{nll:.2f} ± {stderr:.2f}** nats (k = {measured['iw_samples']}, ± standard error), "
            f"-ELBO {measured[f'{variant}_test_negative_elbo']:.2f}"
        )

    return result


def _iwae_row(variant: str) -> Callable[[dict], str]:
    """The row's NLL beside the paper's."""

    def result(summary: dict) -> str:
        row = next(r for r in summary["iwae"]["rows"] if r["row"] == variant)
        seeds = row.get("seeds", 1)
        spread = f", sd {row['nll_seed_sd']:.2f} over {seeds} seeds" if seeds > 1 else ", one seed"
        return (
            f"test NLL **{row['nll']:.2f} ± {row['nll_stderr']:.2f}** nats (k = {summary['iwae']['iw_samples']}"
            f"{spread}; the paper's {row['paper_nll']:.2f} after 3,280 epochs)"
        )

    return result


def _iwae(variant: str) -> Callable[[dict], str]:
    """The row's NLL, and the verdicts on the paper's claims over every committed row."""
    nll = _iwae_row(variant)

    def result(summary: dict) -> str:
        verdicts = [v["holds"] for v in summary["iwae"]["claims"].values() if v["margin"] is not None]
        return (
            f"{nll(summary)}; the paper's claims: {verdicts.count(True)} of {len(verdicts)} hold, "
            f"{verdicts.count(None)} within noise, {verdicts.count(False)} fail"
        )

    return result


IWAE_1L_ROWS = "--rows iwae-1l-k1 vae-1l-k5 iwae-1l-k5 vae-1l-k50 iwae-1l-k50"
IWAE_COMMAND = "python -m experiments.iwae --rows all iwae-1l-k50-stl iwae-1l-k50-dreg --stages 3 --seeds 2"
# The earlier runs: the paper text's optimizer, and 2-layer rows of another model (z1 = 50, z2 = 100).
IWAE_TEXT_COMMAND = "python -m experiments.iwae --setup text --rows all iwae-1l-k50-stl iwae-1l-k50-dreg --stages 3"
IWAE_LONG_COMMAND = "python -m experiments.iwae --setup text --rows iwae-1l-k1 --stages 7"
IWAE_1L_COMMAND = f"python -m experiments.iwae --setup text {IWAE_1L_ROWS} --stages 4"
# all 8 stages, trained in --hours calls
IWAE_FULL_COMMAND = "python -m experiments.iwae --rows iwae-1l-k1 vae-1l-k5 iwae-1l-k5 iwae-2l-k1 iwae-2l-k5"
ROWS = (
    Row("VAE", "vae", "python -m experiments.vae", _single),
    Row("MLP autoencoder", "ae", "python -m experiments.ae", _single),
    Row("conv autoencoder", "conv_ae", "python -m experiments.conv_ae", _single),
    Row("conv VAE", "conv_vae", "python -m experiments.conv_vae", _single),
    Row("VAE, 8 seeds", "vae_seeds8", "python -m experiments.vae --epochs 10 --seeds 8", _seeds),
    *(Row(f"compare: {m}", "compare", "python -m experiments.compare", _compared(m), m) for m in compare.COMPARED),
    Row("compare: verdict", "compare", "python -m experiments.compare", _verdict, "conv_ae"),
    *(Row(f"NLL: {v}", "nll", "python -m experiments.nll", _nll(v), v) for v in ("vae_400_20", "vae_200x2_50")),
    *(
        Row(f"NLL, short: {v}", "nll_quick", "python -m experiments.nll --epochs 10 --iw-samples 1000", _nll(v), v)
        for v in ("vae_400_20", "vae_200x2_50")
    ),
    *(
        Row(f"IWAE, all 8 stages: {v}", "iwae_full", IWAE_FULL_COMMAND, _iwae_row(v), v)
        for v in ("iwae-1l-k1", "vae-1l-k5", "iwae-1l-k5", "iwae-2l-k1", "iwae-2l-k5")
    ),
    *(
        Row(f"IWAE, 3 of 8 stages: {v}", "iwae", IWAE_COMMAND, _iwae(v), v)
        for v in ("iwae-1l-k1", "iwae-1l-k50", "iwae-2l-k1", "iwae-2l-k50")
    ),
    Row(
        "IWAE, paper text's setup, 7 of 8 stages: iwae-1l-k1",
        "iwae_7stages",
        IWAE_LONG_COMMAND,
        _iwae_row("iwae-1l-k1"),
        "iwae-1l-k1",
    ),
    Row(
        "IWAE, paper text's setup, 3 of 8 stages, GPU: iwae-1l-k50",
        "iwae_gpu",
        IWAE_TEXT_COMMAND,
        _iwae_row("iwae-1l-k50"),
        "iwae-1l-k50",
    ),
    Row(
        "IWAE, paper text's setup, 4 of 8 stages, GPU: iwae-1l-k50",
        "iwae_gpu_4stages",
        IWAE_1L_COMMAND,
        _iwae_row("iwae-1l-k50"),
        "iwae-1l-k50",
    ),
)


def command_config(command: str, variant: str | None = None) -> Config:
    """The Config that ``python -m experiments.<name> <flags>`` trains (a study: its ``variant``)."""
    _, _, module_name, *argv = shlex.split(command)
    module = importlib.import_module(module_name)
    if not hasattr(module, "STUDY"):
        return parse_run(module.DEFAULTS, module.__doc__, argv)[1]
    defaults = module.defaults(argv) if hasattr(module, "defaults") else module.DEFAULTS  # iwae's --setup
    args, config = parse_study(defaults, module.__doc__, module.STUDY, argv)
    return module.STUDY.variants(config, args)[variant]


def describe(config: Config) -> str:
    """``vae 784-400-20, batch 128, Adam 0.001, seed 0``, with what differs from a plain run."""
    if config.model.startswith("conv"):
        shape = f"channels {'-'.join(map(str, config.widths))}, {config.latent_dim}-d code"
    else:
        upper = (*config.upper_widths, config.upper_latent_dim) if config.upper_latent_dim else ()
        shape = "-".join(map(str, (784, *config.widths, config.latent_dim, *upper)))
    if config.objective_samples > 1 and config.objective in ("iwae", "vae_k"):
        shape += f", {config.objective} k = {config.objective_samples}"
    optimizer = {"adam": "Adam", "adam_iwae": "the code's Adam", "sgd": "SGD"}.get(config.optimizer, config.optimizer)
    text = f"`{config.model}` {shape}, batch {config.batch_size}, {optimizer} {config.learning_rate:g}"
    if config.binarize != "none":
        text += f", {config.binarize}ally binarized {config.dataset}"
    elif config.dataset != "mnist":
        text += f", {config.dataset}"
    return text


def budget(config: Config, row: Row, summary: dict) -> str:
    """Epochs and seeds, and the measured seconds per epoch when the run recorded them.

    ``summary`` is the row's ``summary.json``; a study's variant, when committed, has its own.
    """
    text = f"{config.epochs} epochs" + (f" × {config.seeds} seeds (vmapped)" if config.seeds > 1 else "")
    folder = RESULTS / row.folder
    if row.variant and (folder / row.variant / "summary.json").exists():  # a study's run, committed
        summary = json.loads((folder / row.variant / "summary.json").read_text())
    run = summary.get("per_seed", [summary])[0]  # vmapped seeds share their time
    study = next(iter(summary.values())) if len(summary) == 1 else {}
    if "train_seconds" in run:
        text += f", {run['train_seconds'] / run['epochs']:.1f} s/epoch on {trained_on(run)}"
    elif f"{row.variant}_seconds_per_epoch" in study:
        text += f", {study[f'{row.variant}_seconds_per_epoch']:.1f} s/epoch"
    return text


def trained_on(run: dict) -> str:
    """The machine a run's ``summary.json`` names (a GPU's or TPU's run: its device), or each
    machine with its epochs when the run was resumed on another."""
    if run.get("backend", "cpu") != "cpu":
        return f"one {run['device']}"
    hosts = run.get("epochs_by_host", {})
    if len(hosts) > 1:
        return ", then ".join(f"{host} ({epochs} epoch{'s' * (epochs != 1)})" for host, epochs in hosts.items())
    return run.get("host", run["device"])


def table() -> str:
    """The results table, in Markdown."""
    lines = ["| result | measured | config | budget | command |", "| --- | --- | --- | --- | --- |"]
    for row in ROWS:
        summary = json.loads((RESULTS / row.folder / "summary.json").read_text())
        config = command_config(row.command, row.variant)
        link = f"[`{row.folder}/`](../experiments/results/{row.folder}/)"  # from docs/
        lines.append(
            f"| {row.name} | {row.result(summary)} | {describe(config)} | {budget(config, row, summary)} "
            f"| `{row.command}` ({link}) |"
        )
    return "\n".join(lines)


def iwae_table() -> str:
    """Burda et al.'s table as ``experiments.iwae`` printed it for the committed runs."""
    return iwae.markdown(json.loads((RESULTS / "iwae" / "summary.json").read_text())["iwae"])


# Each page with a generated table: its markers and what builds the table between them.
PAGES = {"results.md": (BEGIN, END, table), "iwae.md": (IWAE_BEGIN, IWAE_END, iwae_table)}


def with_table(text: str, table_text: str, begin: str, end: str) -> str:
    """``text`` with the part between the ``begin`` and ``end`` markers replaced by ``table_text``."""
    if begin not in text or end not in text:
        raise ValueError(f"the page lacks the markers {begin!r} and {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table_text}\n{end}{tail}"


def updated_page(name: str) -> str:
    """``docs/<name>`` as it should read: its table rebuilt from the committed runs."""
    begin, end, build = PAGES[name]
    return with_table((DOCS / name).read_text(), build(), begin, end)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check that the pages are up to date")
    args = parser.parse_args(argv)
    if not (all((DOCS / name).is_file() for name in PAGES) and RESULTS.is_dir()):
        print(
            f"error: experiments.tables rebuilds docs/{' and docs/'.join(PAGES)} from the committed runs of a "
            f"jaxae checkout, and {ROOT} is an installed copy: run it in a clone of jaxae",
            file=sys.stderr,
        )
        return 2
    stale = {name: text for name in PAGES if (text := updated_page(name)) != (DOCS / name).read_text()}
    if args.check:
        if stale:
            names = ", ".join(f"docs/{name}" for name in stale)
            print(f"error: the tables of {names} are out of date: run python -m experiments.tables", file=sys.stderr)
            return 1
        print("the docs' tables match experiments/results/")
        return 0
    for name, text in stale.items():
        atomic_write_text(DOCS / name, text)
    print(f"the results table ({len(ROWS)} rows) and the IWAE table are up to date in {DOCS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
