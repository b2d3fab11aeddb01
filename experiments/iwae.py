"""Burda, Grosse and Salakhutdinov's (2015) Table 1: test NLL of VAEs and IWAEs on
dynamically binarized MNIST, k = 5000 importance samples, one command.

python -m experiments.iwae --rows all --stages 3 --seeds 2        # every row, 13 epochs, 2 seeds
python -m experiments.iwae --rows iwae-1l-k1 --hours 2            # the full 3280 epochs, 2 hours a call
python -m experiments.iwae --rows iwae-1l-k1 --hours 2 --resume   # ... continued in the next call
python -m experiments.iwae --rows iwae-1l-k1 --measure-only       # measure the kept parameters again
python -m experiments.iwae --rows iwae-1l-k1 --seed 1 --workdir runs/iwae_seed1 --hours 2  # a second seed, apart
python -m experiments.iwae --rows iwae-1l-k1 --resume --seeds-from runs/iwae_seed1  # ... averaged into the row

A row is ``<vae|iwae>-<1|2>l-k<1|5|50>``, optionally ending ``-stl``, ``-dreg`` or
``-plain`` to pick its gradient estimator (otherwise --estimator's); ``all`` is the paper's
12 rows. VAE and IWAE are one objective at k = 1, so those two rows share one run. Each
run is a full run directory ``<workdir>/<row>`` (with --seeds, one ``seed_<s>/`` each:
checkpoints, metrics, figures, summary), resumable as any other; its k-sample NLL and
active units are kept in ``table.json`` there and its parameters in ``params.npz``, so a
later call measures only what changed and --measure-only needs no checkpoint.

The setup is the authors' code's (yburda/iwae), which made the paper's numbers:
784-200-200-50 (tanh, every Gaussian's sigma = exp(linear)) for one stochastic layer; for
two, z1 of 100 units and 100-100 to z2 of 50 on top; Glorot-uniform weights, the output
bias at the logit of the mean training pixel; batch 20; the code's Adam (``adam_iwae``:
beta1 0.99, second moment from 1, epsilon 1e-4 on the batch's summed loss); stage i
(0..7) runs 3^i epochs at learning rate 1e-3 * 10^(-i/7). ``--setup text`` takes the
paper text's Adam (beta1 0.9) and a log-variance output instead. Training uses all 60,000
training images (the code held 400 out; --train-images 59600 trains on its images).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from experiments.cli import BAD_INPUT, FAULTS, Parser, check_iw_samples, count, report
from experiments.harness import Study, main_study, parse_study
from jaxae import evaluate, losses, parallel, seeds, train
from jaxae.build import build_model, build_objective, build_optimizer, load_split
from jaxae.checkpoint import meta_digest, state_digest
from jaxae.config import LIMITS, Config, ConfigError
from jaxae.files import atomic_write_text
from jaxae.optim import stage_epochs
from jaxae.restore import RestoredRun, restore_run, save_params
from jaxae.workdir import PARAMS_FILE, config_differences, locked, read_config, seed_workdirs, trained_epochs

BATCH_SIZE = 20
# The setup of the authors' code, which produced the paper's Table 1: its Adam, sigma = exp(out).
DEFAULTS = Config(
    model="hvae",
    widths=(200, 200),
    latent_dim=50,
    batch_size=BATCH_SIZE,
    binarize="dynamic",
    init_output_bias=True,
    optimizer="adam_iwae",
    scale_output="log_sigma",
    learning_rate=1e-3,
    schedule="stages",
    stages_growth=3,
    stages_decay=10 ** (-1 / 7),
    plot_epochs=(),
    keep_checkpoints=1,
    eval_batch_size=200,  # 200 images x 50 draws: the logits of one batch stay in cache
)
# The paper's text: Adam with beta1 0.9 and epsilon 1e-4 on the batch's sum (5e-6 on its mean).
TEXT_DEFAULTS = dataclasses.replace(
    DEFAULTS, optimizer="adam", adam_b1=0.9, adam_b2=0.999, adam_eps=1e-4 / BATCH_SIZE, scale_output="logvar"
)
SETUPS = {"code": DEFAULTS, "text": TEXT_DEFAULTS}
# z_1 of 50 units for one layer; for two, z_1 of 100 and z_2 of 50 on top (the code's latent_units).
UPPER = {1: {}, 2: {"latent_dim": 100, "upper_widths": (100, 100), "upper_latent_dim": 50}}

# Table 1 of Burda et al. (2015): test NLL in nats, k = 5000.
PAPER = {
    "vae-1l-k1": 86.76, "vae-1l-k5": 86.47, "vae-1l-k50": 86.35,
    "iwae-1l-k1": 86.76, "iwae-1l-k5": 85.54, "iwae-1l-k50": 84.78,
    "vae-2l-k1": 85.33, "vae-2l-k5": 85.01, "vae-2l-k50": 84.78,
    "iwae-2l-k1": 85.33, "iwae-2l-k5": 83.89, "iwae-2l-k50": 82.90,
}  # fmt: skip
ROW = re.compile(r"(vae|iwae)-([12])l-k(\d+)(?:-(" + "|".join(losses.ESTIMATORS) + r"))?")
PAPER_STAGES = 8
PAPER_SAMPLES = (1, 5, 50)


@dataclasses.dataclass(frozen=True)
class Row:
    """One line of the table: objective, stochastic layers, samples k, gradient estimator."""

    objective: str
    layers: int
    samples: int
    estimator: str

    @property
    def name(self) -> str:
        suffix = "" if self.estimator == "plain" else f"-{self.estimator}"
        return f"{self.objective}-{self.layers}l-k{self.samples}{suffix}"

    @property
    def paper_name(self) -> str | None:
        """The paper's row this one reproduces (its plain gradient), or None."""
        name = f"{self.objective}-{self.layers}l-k{self.samples}"
        return name if self.estimator == "plain" and name in PAPER else None

    @property
    def run_name(self) -> str:
        """The run that trains it: at k = 1 the VAE and IWAE rows share ``iwae-<L>l-k1``."""
        return self.name if self.samples > 1 else dataclasses.replace(self, objective="iwae").name


def parse_rows(names: list[str], estimator: str) -> list[Row]:
    """Rows named on the command line, ``all`` for the paper's; errors name a valid form."""
    rows = []
    for name in names:
        if name == "all":
            rows += parse_rows(list(PAPER), estimator)
            continue
        match = ROW.fullmatch(name)
        if match is None or len(match[3]) > 7 or not 0 < int(match[3]) <= LIMITS["objective_samples"]:
            raise ConfigError(
                f"unknown row {name!r}: use all, or <vae|iwae>-<1|2>l-k<samples>[-<estimator>], "
                f"for example iwae-2l-k50 or iwae-1l-k50-dreg (estimators: {', '.join(losses.ESTIMATORS)})"
            )
        rows.append(Row(match[1], int(match[2]), int(match[3]), match[4] or estimator))
    return list(dict.fromkeys(rows))


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--setup",
        choices=SETUPS,
        default="code",
        help="code: the authors' code's Adam and sigma = exp(out), which made the paper's numbers; text: the "
        "paper text's Adam (beta1 0.9) and a log-variance output (default: %(default)s)",
    )
    parser.add_argument(
        "--rows", nargs="+", required=True, help="rows to run by name (k of 1, 5 or 50), or all for the paper's 12"
    )
    parser.add_argument("--any-k", action="store_true", help="allow rows with a k the paper did not run")
    parser.add_argument(
        "--stages", type=int, default=PAPER_STAGES, help=f"stages of the schedule to run, 1..{PAPER_STAGES} "
        f"(default: {PAPER_STAGES}, the paper's {stage_epochs(PAPER_STAGES)} epochs)"
    )  # fmt: skip
    parser.add_argument(
        "--estimator", default="plain", help=f"estimator of rows that name none: {', '.join(losses.ESTIMATORS)}"
    )
    parser.add_argument(
        "--iw-samples", type=int, default=5000, help="importance samples per test image (default: %(default)s)"
    )
    parser.add_argument(
        "--seeds-from",
        nargs="+",
        default=[],
        metavar="WORKDIR",
        help="workdirs holding the same rows trained with other seeds (--seed there): their finished runs are "
        "measured and averaged with --workdir's; nothing there is trained",
    )
    parser.add_argument(
        "--measure-only",
        action="store_true",
        help="train nothing: measure each row's kept parameters (checkpoints or params.npz) again and set the "
        "measurements beside those in its table.json",
    )


def variants(config: Config, args: argparse.Namespace) -> dict[str, Config]:
    if args.estimator not in losses.ESTIMATORS:
        raise ConfigError(f"unknown --estimator {args.estimator!r}: use one of {', '.join(losses.ESTIMATORS)}")
    if not 1 <= args.stages <= PAPER_STAGES:
        raise ConfigError(f"--stages must be 1..{PAPER_STAGES}, got {args.stages}")
    check_iw_samples(args.iw_samples)
    if config.test_images is not None and config.test_images < 2:
        raise ConfigError("the table needs at least 2 test images for its standard errors: --test-images 2 or more")
    runs = {}
    for row in parse_rows(args.rows, args.estimator):
        if row.samples not in PAPER_SAMPLES and not args.any_k:
            raise ConfigError(
                f"row {row.name} has k = {row.samples}, which the paper did not run (k of 1, 5 or 50): "
                f"pass --any-k to run it"
            )
        runs[row.run_name] = dataclasses.replace(
            config,
            objective="iwae" if row.samples == 1 else {"vae": "vae_k", "iwae": "iwae"}[row.objective],
            objective_samples=row.samples,
            objective_estimator=row.estimator,
            stages_count=args.stages,
            epochs=stage_epochs(args.stages),
            **UPPER[row.layers],
        )
    return runs


def step_seconds(variant: Config, images: np.ndarray, steps: int = 10) -> float:
    """Seconds of one training step of ``variant``, all its seeds at once, on this machine:
    ``steps`` steps timed after a compiled warm-up."""
    model = build_model(variant, images.shape[1:])
    tx = build_optimizer(variant, steps_per_epoch=steps)
    objective = build_objective(variant)
    state, key, vectorize = seeds.start(model, tx, images.shape[1:], range(variant.seed, variant.seed + variant.seeds))
    epoch = train.make_train_epoch(model, objective, variant.batch_size, vectorize=vectorize)
    batch = jax.device_put(images[: steps * variant.batch_size])
    state = parallel.replicate(state, parallel.data_mesh())  # placed as training places it: one compile
    state, _ = epoch(state, batch, key)  # compiles
    jax.block_until_ready(state)
    started = time.perf_counter()
    state, _ = epoch(state, batch, key)
    jax.block_until_ready(state)
    return (time.perf_counter() - started) / steps


def plan(variants: dict[str, Config], workdir: Path, args: argparse.Namespace) -> None:
    """Prints what will train and how long it should take, from this machine's own steps."""
    images = load_split(next(iter(variants.values())), "train").images
    print("iwae: the plan, projected from this machine's own training steps:", flush=True)
    total = 0.0
    for name, variant in variants.items():
        others = [  # checked before any training
            f"  {name}: seed {run.seed} from {folder}, {run.epochs} epochs"
            + ("" if run.epochs == variant.epochs else ": left out until it finishes")
            for folder, run in other_seeds(variant, name, args).items()
        ]
        done = trained_epochs(seed_folders(variant, workdir / name)[0]) if args.resume else 0
        steps = max(variant.epochs - done, 0) * -(-len(images) // variant.batch_size)
        if steps:
            step = step_seconds(variant, images)
            total += steps * step
            print(
                f"  {name}: epochs {done + 1}..{variant.epochs} of {variant.epochs}, {count(variant.seeds, 'seed')}, "
                f"{steps:,} steps of {step * 1000:.1f} ms: {steps * step / 3600:.2f} h",
                flush=True,
            )
        else:
            print(f"  {name}: trained ({done} epochs)", flush=True)
        for line in others:
            print(line, flush=True)
    print(
        f"iwae: {total / 3600:.2f} h of training in all, and a k = {args.iw_samples} evaluation of each run; "
        "--hours H stops cleanly after H hours, --resume continues",
        flush=True,
    )


def seed_folders(variant: Config, folder: Path) -> list[Path]:
    """The folders of a row's seeds: the row's own for one seed, else its ``seed_<s>/``."""
    return [path for _, path in seed_workdirs(variant, folder)]


class OtherSeed(NamedTuple):
    """A run of a row's seed trained in a --seeds-from workdir."""

    seed: int
    epochs: int  # trained so far


def other_seeds(variant: Config, name: str, args: argparse.Namespace) -> dict[Path, OtherSeed]:
    """The runs of row ``name`` in the --seeds-from workdirs (a run, or its ``seed_<s>/``
    folders), with their seeds and the epochs each trained: the same run as ``variant`` but for its seed,
    trained elsewhere (in another process, on another machine) and averaged into the row
    once it has trained all of ``variant``'s epochs.

    Raises:
        ConfigError: a workdir that is not a folder, a run that differs from ``variant`` in
            more than its seed, a seed that comes twice, or a run trained past
            ``variant``'s epochs; the message names the run and the fix.
    """
    held = {seed: "--workdir" for seed in range(variant.seed, variant.seed + variant.seeds)}
    runs = {}
    for workdir in map(Path, args.seeds_from):
        if not workdir.is_dir():
            raise ConfigError(f"--seeds-from {workdir} is not a folder: pass the --workdir of runs of other seeds")
        row = workdir / name
        for folder in [row] if (row / "config.json").exists() else sorted(row.glob("seed_*")):
            saved = read_config(folder)
            differences = config_differences(saved, dataclasses.replace(variant, seed=saved.seed, seeds=saved.seeds))
            if differences:
                raise ConfigError(f"{folder} is not {name} with another seed, it differs in {', '.join(differences)}")
            if saved.seed in held:
                raise ConfigError(
                    f"{folder} holds seed {saved.seed} of {name}, as {held[saved.seed]} does: pass each seed once"
                )
            held[saved.seed] = str(folder)
            runs[folder] = OtherSeed(saved.seed, trained_epochs(folder))
            if runs[folder].epochs > variant.epochs:
                raise ConfigError(
                    f"{folder} trained {runs[folder].epochs} epochs, {name} here {variant.epochs}: "
                    "pass that run's --stages"
                )
    return runs


def row_folders(variant: Config, name: str, workdir: Path, args: argparse.Namespace) -> list[Path]:
    """The folders whose runs make row ``name``: its seeds in ``workdir``, then those of
    --seeds-from that trained all its epochs."""
    others = [folder for folder, run in other_seeds(variant, name, args).items() if run.epochs == variant.epochs]
    return seed_folders(variant, workdir / name) + others


def kept_measurements(folder: Path) -> bool:
    """Whether a finished run that keeps no checkpoint kept what the table needs of it:
    its parameters, or measurements of them (``table.json``) at its last epoch."""
    if (folder / "checkpoints").exists() or not (folder / "metrics.jsonl").exists():
        return False
    return (folder / PARAMS_FILE).exists() or read_cache(folder / "table.json").get("epochs") == trained_epochs(folder)


def finished(variant: Config, folder: Path) -> bool:
    """Every seed of the row trained all its epochs and kept its parameters or measurements in
    place of checkpoints: --resume has nothing to train (and no optimizer state to train on)."""
    return all(
        trained_epochs(seed) == variant.epochs and kept_measurements(seed) for seed in seed_folders(variant, folder)
    )


def measure_run(run: RestoredRun, samples: int) -> dict:
    """One seed's k-sample test NLL (mean and standard error over the test images) and
    active units, drawn with a key fixed by its seed, so that measuring again gives the same."""
    test = np.asarray(run.test_set.images, np.float32) / 255  # binarized once: 0 or 1
    key = jax.random.key(run.config.seed + 3)
    started = time.perf_counter()
    nll = evaluate.dataset_nll(run.model, run.params, test, key, samples=samples)
    return {
        "epochs": run.epoch,
        "iw_samples": samples,
        "test_nll": float(nll.mean()),
        "test_nll_stderr": float(nll.std(ddof=1) / np.sqrt(len(nll))),
        "nll_seconds": time.perf_counter() - started,
        "active_units": evaluate.active_units(run.model, run.params, test, key),
    }


def _measurements_digest(measurements: dict) -> str:
    return meta_digest({k: v for k, v in measurements.items() if k != "digest"})


def read_cache(cache: Path) -> dict:
    """The measurements in a ``table.json``, or {} when there are none to trust (missing, not a
    JSON object, or edited since they were measured: their digest no longer matches).

    Raises:
        ConfigError: ``table.json`` is a folder or a link, which a measurement would not replace.
    """
    if cache.is_symlink() or cache.is_dir():
        raise ConfigError(
            f"{cache} is a {'link' if cache.is_symlink() else 'folder'}, not a file jaxae wrote: remove it"
        )
    try:
        kept = json.loads(cache.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return kept if isinstance(kept, dict) and kept.get("digest") == _measurements_digest(kept) else {}


def measure(folder: Path, samples: int) -> dict:
    """One seed's measurements (:func:`measure_run`) with its training seconds, kept in
    ``table.json`` beside it (with its parameters in ``params.npz``) and measured again
    unless that file holds measurements of these very parameters (their digest) at ``samples``."""
    cache = folder / "table.json"
    with locked(folder):  # a run being measured is not overwritten meanwhile
        kept = read_cache(cache)
        if kept_measurements(folder) and not (folder / PARAMS_FILE).exists() and kept.get("iw_samples") == samples:
            return kept  # measurements whose parameters were not kept: they cannot be measured again
        run = restore_run(folder)
        params = state_digest(run.params)
        if kept.get("params_digest") == params and kept.get("iw_samples") == samples:
            return kept
        if cache.exists():
            print(
                f"iwae: {cache} does not hold measurements of these parameters at k = {samples}: measuring again",
                flush=True,
            )
        measurements = measure_run(run, samples) | {"params_digest": params}
        measurements["train_seconds"] = json.loads((folder / "summary.json").read_text())["train_seconds"]
        measurements["digest"] = _measurements_digest(measurements)
        save_params(run)
        atomic_write_text(cache, json.dumps(measurements, indent=2))
    return measurements


def analyse(variants: dict[str, Config], workdir: Path, args: argparse.Namespace) -> dict:
    rows = parse_rows(args.rows, args.estimator)
    measured = {}
    for name, variant in variants.items():
        args.stopping.check_between(f"stopped before measuring {name}: every run and figure measured is kept")
        print(f"iwae: measuring {name} (k = {args.iw_samples})", flush=True)
        measured[name] = [measure(folder, args.iw_samples) for folder in row_folders(variant, name, workdir, args)]
    table = [table_row(row, measured[row.run_name]) for row in rows]
    epochs = sorted({measurements["epochs"] for per_seed in measured.values() for measurements in per_seed})
    stages = [count for count in range(1, PAPER_STAGES + 1) if [stage_epochs(count)] == epochs]
    # the heading says what the rows ran, whatever --stages asked for
    results = {"stages": stages[0] if stages else None, "epochs": epochs[0] if len(epochs) == 1 else epochs}
    results["iw_samples"] = args.iw_samples
    results |= {"rows": table, "claims": claims({row["row"]: row for row in table})}
    atomic_write_text(workdir / "table.md", markdown(results))
    return results


def remeasure(config: Config, args: argparse.Namespace) -> int:
    """--measure-only: each row's seeds measured again from their kept parameters, printed
    beside the measurements their ``table.json`` holds; returns the exit code."""
    workdir = Path(args.workdir)
    for name, variant in variants(config, args).items():
        for folder in [*seed_folders(variant, workdir / name), *other_seeds(variant, name, args)]:
            run = restore_run(folder)
            source = "checkpoint" if (folder / "checkpoints").exists() else "params.npz"
            fresh = measure_run(run, args.iw_samples)
            kept = read_cache(folder / "table.json")
            said = (
                f"table.json: {kept['test_nll']:.2f}, units {kept['active_units']}, k = {kept['iw_samples']}"
                if "test_nll" in kept
                else "no table.json"
            )
            print(
                f"iwae: {folder}: epoch {run.epoch} from its {source}: test NLL {fresh['test_nll']:.2f} "
                f"± {fresh['test_nll_stderr']:.2f}, active units {fresh['active_units']} "
                f"(k = {args.iw_samples}, {fresh['nll_seconds']:.0f} s); {said}",
                flush=True,
            )
    return 0


def table_row(row: Row, per_seed: list[dict]) -> dict:
    """A row of the table from its seeds' measurements: the mean NLL over seeds, the test images'
    standard error, and with several seeds the spread (sample sd) of NLL and active units."""
    paper = PAPER.get(row.paper_name)
    nll = float(np.mean([measurements["test_nll"] for measurements in per_seed]))
    units = np.array([measurements["active_units"] for measurements in per_seed], float)  # (seeds, layers)
    several = len(per_seed) > 1
    return {
        "row": row.name,
        "paper_nll": paper,
        "nll": round(nll, 2),
        "nll_stderr": round(max(measurements["test_nll_stderr"] for measurements in per_seed), 2),
        "seeds": len(per_seed),
        "nll_seed_sd": round(float(np.std([f["test_nll"] for f in per_seed], ddof=1)), 2) if several else None,
        "difference": None if paper is None else round(nll - paper, 2),
        "active_units": [round(float(u), 1) if several else int(u) for u in units.mean(axis=0)],
        "active_units_seed_sd": [round(float(sd), 1) for sd in units.std(axis=0, ddof=1)] if several else None,
        "budget": count(per_seed[0]["epochs"], "epoch"),
        "train_seconds": round(float(np.mean([measurements["train_seconds"] for measurements in per_seed]))),
        "nll_seconds": round(float(np.mean([measurements["nll_seconds"] for measurements in per_seed]))),
    }


def claims(rows: dict[str, dict]) -> dict[str, dict]:
    """The paper's qualitative claims, each judged on the rows measured.

    Each verdict has ``margin``, how far the numbers go the claimed way (nats, or units),
    and ``holds``: True beyond ``noise``, False beyond it the other way, None when the
    margin is within it or a row is missing. For NLLs ``noise`` is the largest, over the
    rows compared, of their test images' standard error and their spread over seeds (sd):
    conservative, as the rows share their test images. Active units are counts: their
    noise is their spread over seeds, 0 for rows of one seed.
    """
    nll = {name: row["nll"] for name, row in rows.items()}
    stderr = {name: max(row.get("nll_stderr", 0.0), row.get("nll_seed_sd") or 0.0) for name, row in rows.items()}
    units = {name: row["active_units"][0] for name, row in rows.items()}
    units_sd = {name: (row.get("active_units_seed_sd") or [0.0])[0] for name, row in rows.items()}
    verdicts = {}

    def judge(claim: str, needed: list[str], margin, *, counts: bool = False) -> None:
        present = all(name in nll for name in needed)
        spread = units_sd if counts else stderr
        noise = max(spread[name] for name in needed) if present else 0.0
        value = margin() if present else None
        holds = None if value is None or abs(value) <= noise else value > 0
        verdicts[claim] = {"holds": holds, "margin": value, "noise": noise}
        verdicts[claim]["nll" if not counts else "active_units"] = {
            name: (units if counts else nll)[name] for name in needed if name in nll
        }

    for layers in (1, 2):
        k1, vae50, iwae50 = f"iwae-{layers}l-k1", f"vae-{layers}l-k50", f"iwae-{layers}l-k50"
        pairs = [(f"vae-{layers}l-k{k}", f"iwae-{layers}l-k{k}") for k in (5, 50)]
        compared = [pair for pair in pairs if all(name in nll for name in pair)] or [(vae50, iwae50)]
        judge(  # IWAE's gain from k = 1 beyond the VAE's, at the k > 1 measured where it is least
            f"{layers}l: IWAE's NLL falls with k more than the VAE's",
            [k1, *(name for pair in compared for name in pair)],
            lambda c=compared: min(nll[vae] - nll[iwae] for vae, iwae in c),
        )
        judge(
            f"{layers}l: IWAE k=50 keeps more active units than VAE k=50",
            [vae50, iwae50],
            lambda v=vae50, i=iwae50: units[i] - units[v],
            counts=True,
        )
    pairs = [(f"{o}-1l-k{k}", f"{o}-2l-k{k}") for o in ("vae", "iwae") for k in (1, 5, 50)]
    present = [name for pair in pairs if all(n in nll for n in pair) for name in pair]
    judge(  # the smallest gain over the pairs measured
        "2 stochastic layers beat 1, every pair",
        present or ["iwae-1l-k1", "iwae-2l-k1"],
        lambda: min(nll[one] - nll[two] for one, two in pairs if one in present),
    )
    for estimator in ("stl", "dreg"):
        judge(
            f"{estimator} beats the plain gradient at k=50 (1l)",
            ["iwae-1l-k50", f"iwae-1l-k50-{estimator}"],
            lambda e=estimator: nll["iwae-1l-k50"] - nll[f"iwae-1l-k50-{e}"],
        )
    return verdicts


def markdown(results: dict) -> str:
    """The table (and the claims' verdicts) as Markdown, as the README shows them."""
    if results["stages"] is not None:
        budget = f"{results['stages']} of {PAPER_STAGES} stages ({count(results['epochs'], 'epoch')} of"
    elif isinstance(results["epochs"], int):
        budget = f"{count(results['epochs'], 'epoch')} (of"
    else:
        budget = f"rows at different budgets ({', '.join(map(str, results['epochs']))} epochs, of"
    lines = [
        f"Test NLL (nats, k = {results['iw_samples']}), {budget} {stage_epochs(PAPER_STAGES)}); the paper's column is "
        f"k = 5000 after all {stage_epochs(PAPER_STAGES)} epochs. jaxae's NLL is the mean over the seeds run; "
        "± is the test images' standard error, sd the spread over seeds; active units (variance of the "
        "posterior mean above 0.01) per stochastic layer, mean over seeds:",
        "",
        "| row | paper | jaxae | ± | seeds | sd | difference | active units | train s | NLL s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in results["rows"]:
        paper = "" if row["paper_nll"] is None else f"{row['paper_nll']:.2f}"
        difference = "" if row["difference"] is None else f"{row['difference']:+.2f}"
        seeds = row.get("seeds", 1)
        spread = "" if row.get("nll_seed_sd") is None else f"{row['nll_seed_sd']:.2f}"
        lines.append(
            f"| {row['row']} | {paper} | {row['nll']:.2f} | {row['nll_stderr']:.2f} | {seeds} | {spread} | "
            f"{difference} | {'+'.join(map(str, row['active_units']))} | {row['train_seconds']} | "
            f"{row['nll_seconds']} |"
        )
    judged = {claim: verdict for claim, verdict in results["claims"].items() if verdict["margin"] is not None}
    if not judged:
        return "\n".join(lines) + "\n"
    lines += ["", "The paper's claims on these rows (a claim whose rows were not run is left out):", ""]
    lines += ["| claim | holds | margin | on |", "| --- | --- | --- | --- |"]
    for claim, verdict in judged.items():
        margin = verdict["margin"]
        holds = {True: "yes", False: "no", None: "within noise"}[verdict["holds"]]
        shown = f"{margin:+.2f}" + (f" (noise {verdict['noise']:.2f})" if verdict["noise"] else "")
        if "nll" in verdict:
            numbers = ", ".join(f"{name} {value:.2f}" for name, value in verdict["nll"].items())
        else:
            numbers = "active units " + ", ".join(f"{n} {u}" for n, u in verdict["active_units"].items())
        lines.append(f"| {claim} | {holds} | {shown} | {numbers} |")
    return "\n".join(lines) + "\n"


FIXED = ("model", "widths", "latent_dim", "upper_widths", "upper_latent_dim", "binarize", "epochs")
FIXED += ("objective", "objective_samples", "objective_estimator", "stages_count", "batch_size", "init_output_bias")
STUDY = Study("iwae", variants, analyse, add_flags, fixed=FIXED, plan=plan, report=markdown, finished=finished)


def defaults(argv: list[str]) -> Config:
    """The Config that the command's flags start from: its --setup's."""
    setup = Parser(add_help=False)
    setup.add_argument("--setup", choices=SETUPS, default="code")
    return SETUPS[setup.parse_known_args(argv)[0].setup]


def main(argv: list[str] | None = None) -> int:
    """The table, trained and measured; or with --measure-only, measured again."""
    argv = sys.argv[1:] if argv is None else argv
    defaults_ = defaults(argv)
    args, config = parse_study(defaults_, __doc__, STUDY, argv)
    if not args.measure_only:
        return main_study(defaults_, __doc__, STUDY, argv)
    try:
        return remeasure(config, args)
    except BAD_INPUT + FAULTS as error:
        return report(error)


if __name__ == "__main__":
    raise SystemExit(main())
