"""The four models on one budget, over several seeds: does the conv autoencoder learn faster?

python -m experiments.compare                        # ae, vae, conv_ae, conv_vae; 10 epochs; seeds 0-2
python -m experiments.compare --epochs 20 --seeds 5 --workdir runs/compare20

Each model trains its seeds at once (jax.vmap; runs in <workdir>/<model>/seed_<s>) with
the same epochs, batch and learning rate and a 20-d code. Compares the test
reconstruction MSE per pixel of sigmoid(logits) (what every model reports, whatever its
loss) per epoch, mean and standard deviation over seeds, on one plot
(figures/test_mse.png) and in summary.json, and states whether the write-up's claim
holds: the convolutional autoencoder's test MSE below the MLP autoencoder's, per epoch
and per second of training.
"""

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from experiments.cli import count
from experiments.harness import Study, main_study
from jaxae import models, plots
from jaxae.config import Config, ConfigError

DEFAULTS = Config(epochs=10, plot_epochs=())


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model, seed .. seed+N-1 (vmapped)")


COMPARED = ("ae", "vae", "conv_ae", "conv_vae")  # the write-up's models and the conv VAE


def variants(config: Config, args: argparse.Namespace) -> dict[str, Config]:
    if args.seeds < 2:
        raise ConfigError(f"--seeds must be at least 2 to give a spread, got {args.seeds}")
    return {
        name: dataclasses.replace(config, model=name, widths=models.MODELS[name].widths, seeds=args.seeds)  # defaults
        for name in COMPARED
    }


def seed_histories(workdir: Path, config: Config) -> list[list[dict]]:
    """Each seed's metrics records, in seed order."""
    folders = [workdir / f"seed_{s}" for s in range(config.seed, config.seed + config.seeds)]
    return [[json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()] for f in folders]


def first_epoch_from_which_lower(a: np.ndarray, b: np.ndarray) -> int | None:
    """The first epoch (1-based) from which ``a`` stays below ``b`` to the end, or None."""
    below = a < b
    if not below[-1]:
        return None
    start = len(below)
    while start > 0 and below[start - 1]:
        start -= 1
    return start + 1


def analyse(variants: dict[str, Config], workdir: Path, args: argparse.Namespace) -> dict:
    mse, seconds, results = {}, {}, {"seeds": args.seeds}
    for name, config in variants.items():
        histories = seed_histories(workdir / name, config)
        mse[name] = np.array([[r["test_mse"] for r in history] for history in histories])  # (seeds, epochs)
        # seeds train together, so every seed records the same seconds; the median skips the compile
        seconds[name] = float(np.median([r["epoch_seconds"] for r in histories[0]]))
        results |= {
            f"{name}_final_test_mse_mean": float(mse[name][:, -1].mean()),
            f"{name}_final_test_mse_sd": float(mse[name][:, -1].std(ddof=1)),
            f"{name}_seconds_per_epoch": seconds[name],
        }
    epochs = list(range(1, mse["ae"].shape[1] + 1))
    plots.curves(
        {name: (epochs, values.mean(0)) for name, values in mse.items()},
        workdir / "figures" / "test_mse.png",
        xlabel="epoch",
        ylabel="test MSE per pixel",
        title=f"mean ± sd over {args.seeds} seeds",
        yscale="log",
        spreads={name: values.std(0, ddof=1) for name, values in mse.items()},
        integer_x=True,
    )
    conv, mlp = mse["conv_ae"].mean(0), mse["ae"].mean(0)
    from_epoch = first_epoch_from_which_lower(conv, mlp)
    time_ratio = seconds["conv_ae"] / seconds["ae"]
    results |= {
        "conv_ae_below_ae_from_epoch": from_epoch,
        "conv_ae_below_ae_epochs": int(np.sum(conv < mlp)),
        "conv_ae_time_per_epoch_ratio": time_ratio,
        "claim": claim_verdict(from_epoch, len(epochs), time_ratio),
    }
    return results


def claim_verdict(from_epoch: int | None, epochs: int, time_ratio: float) -> str:
    """One sentence on 'the conv autoencoder learns faster than the MLP one'."""
    if from_epoch == 1:
        per_epoch = "holds per epoch: conv_ae's mean test MSE is below ae's at every epoch"
    elif from_epoch is None:
        per_epoch = f"does not hold per epoch: conv_ae's mean test MSE is not below ae's after {count(epochs, 'epoch')}"
    else:
        per_epoch = f"holds per epoch only from epoch {from_epoch} of {epochs}"
    return f"{per_epoch}; conv_ae takes {time_ratio:.1f}x ae's time per epoch on this machine"


STUDY = Study("compare", variants, analyse, add_flags, fixed=("model", "seeds", "widths"))

if __name__ == "__main__":
    raise SystemExit(main_study(DEFAULTS, __doc__, STUDY))
