"""Feature extraction: how linearly separable the digits are in each model's code.

python -m experiments.features                                  # 4 models x codes of 10 and 20, 5 epochs each
python -m experiments.features --models ae vae --latent-dims 2 5 10 20 --workdir runs/features_mlp

Trains each model at each code size (runs in <workdir>/<model>_<dim>), freezes it and
trains a linear probe (softmax regression with Adam) on its training-set codes. Reports
test accuracy for each, against the same probe on raw pixels and on PCA codes of the
same size; figures/probe_accuracy.png plots accuracy against code size.
"""

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from experiments.harness import Study, main_study
from experiments.latent import probe_accuracy
from jaxae import evaluate, models, plots, train
from jaxae.config import Config, ConfigError
from jaxae.restore import restore_run

DEFAULTS = Config(epochs=5, plot_epochs=())


DEFAULT_MODELS = ("ae", "vae", "conv_ae", "conv_vae")


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help=f"of {', '.join(models.MODELS)}")
    parser.add_argument("--latent-dims", type=int, nargs="+", default=[10, 20], help="code sizes")


def variants(config: Config, args: argparse.Namespace) -> dict[str, Config]:
    unknown = sorted(set(args.models) - set(models.MODELS))
    if unknown or min(args.latent_dims) <= 0:
        raise ConfigError(f"--models takes {', '.join(models.MODELS)} and --latent-dims positive sizes")
    return {
        f"{model}_{dim}": dataclasses.replace(config, model=model, widths=models.MODELS[model].widths, latent_dim=dim)
        for model in args.models
        for dim in sorted(set(args.latent_dims))
    }


def analyse(variants: dict[str, Config], workdir: Path, args: argparse.Namespace) -> dict:
    runs = {name: restore_run(workdir / name) for name in variants}
    first = next(iter(runs.values()))
    train_set, test_set, seed = first.train_set, first.test_set, first.config.seed
    labels = (train_set.labels, test_set.labels)
    pixels = tuple(np.asarray(train.to_float(s.images)) for s in (train_set, test_set))
    dims = sorted(set(args.latent_dims))
    results = {"probe_accuracy_pixels": probe_accuracy(pixels, labels, seed)}
    for dim in dims:
        pca = evaluate.PCA.fit(pixels[0], dim)
        results[f"probe_accuracy_pca_{dim}"] = probe_accuracy(tuple(map(pca.encode, pixels)), labels, seed)
    for name, run in runs.items():
        codes = tuple(evaluate.encode(run.model, run.params, x) for x in pixels)
        results[f"probe_accuracy_{name}"] = probe_accuracy(codes, labels, seed)
    series = {model: (dims, [results[f"probe_accuracy_{model}_{dim}"] for dim in dims]) for model in args.models}
    series["pca"] = (dims, [results[f"probe_accuracy_pca_{dim}"] for dim in dims])
    series["raw pixels (784)"] = (dims, [results["probe_accuracy_pixels"]] * len(dims))
    plots.curves(
        series,
        workdir / "figures" / "probe_accuracy.png",
        xlabel="code size",
        ylabel="linear probe test accuracy",
        title=f"frozen codes after {first.config.epochs} epochs",
    )
    return results


STUDY = Study("features", variants, analyse, add_flags, fixed=("model", "seeds", "widths", "latent_dim"))

if __name__ == "__main__":
    raise SystemExit(main_study(DEFAULTS, __doc__, STUDY))
