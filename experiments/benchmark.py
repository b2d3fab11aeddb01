"""Training speed per model: compile time, steady epoch time, throughput and FLOP efficiency.

    python -m experiments.benchmark                       # every model; the VAE at batch 64, 128, 512
    python -m experiments.benchmark --dtype bfloat16      # on a GPU or TPU
    python -m experiments.benchmark --quick               # tiny sizes, seconds
    python -m experiments.benchmark --profile             # and where each row's time goes
    python -m experiments.benchmark --rounds 3            # each row 3 times, in turn with PyTorch's

Each epoch is compiled twice: afresh, and loaded from the compilation cache, as the
experiments' later runs load it (``--compilation-cache``). The table gives both, each
followed by the first epoch it runs, compile included ("1st epoch s").

FLOPs per epoch come from XLA's cost analysis of one compiled train step, times the steps
per epoch. The machine's float32 (or bfloat16) matmul throughput is measured in the same
run with a large jitted matrix product, before and after the models (the better of the two:
on a shared machine a neighbour can slow either), and each model's achieved GFLOP/s is set
against it. The last rows train 8 VAEs at once (``jax.vmap``) against 8 separate runs.

The IWAE rows time an epoch of ``experiments.iwae`` (Burda et al.'s 1-layer model, batch
20, k = 1, 5, 50) on ``--iwae-images`` training images: at batch 20 a step is short, so
they show per-step overhead where the others show arithmetic. With PyTorch installed, the
same run times ``experiments.torch_reference``'s VAE (batch 128), ``conv_ae`` and IWAE on the same images (on
the GPU when jaxae runs on one and PyTorch sees it) and sets jaxae's epochs against them;
the k = 5000 NLL row sets the evaluation against its floor, the decoder's FLOPs at the
matmul rate.

On a shared machine a neighbour's load comes and goes within minutes: ``--rounds N`` times
every row N times, jaxae's rows and then PyTorch's in each round, and reports each row's
median and each ratio to PyTorch as the median of the rounds' ratios, with their range.

``--profile`` runs one more epoch per row under the JAX profiler and lists the XLA ops that
took longest, each with the JAX operation it computes (from XLA's metadata).

``--xla-cpu default xnnpack onednn ...`` runs the jaxae rows once per named XLA:CPU
configuration (:data:`XLA_CPU`: the kernel libraries XLA can call instead of its own code),
each in a process of its own, as XLA reads its flags when the backend starts, and sets
every configuration's epochs beside the default's and PyTorch's, timed in the same run.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from experiments import iwae, torch_reference
from experiments.cli import Parser, compilation_cache
from jaxae import data, evaluate, models, parallel, seeds, train
from jaxae.build import build_model, build_objective, build_optimizer
from jaxae.config import DTYPES, Config
from jaxae.files import atomic_write_text

BENCHMARKED = ("ae", "vae", "conv_ae")
IWAE_SAMPLES = (1, 5, 50)  # the k of Burda et al.'s table


# XLA:CPU configurations by name: flags added to the user's XLA_FLAGS (the later flag wins).
XLA_CPU = {
    "default": "",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "onednn_custom_call": "--xla_cpu_experimental_onednn_custom_call=true",
    "ynnpack": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "eigen": "--xla_cpu_experimental_ynn_fusion_type=",  # XLA's own products only, no YNNPACK fusions
    "wide_vectors": "--xla_cpu_prefer_vector_width=512",  # XLA's own kernels in 512-bit vectors (AVX-512)
}


def xla_cpu_environment(name: str) -> dict[str, str]:
    """This process's environment with the XLA:CPU configuration ``name`` added to XLA_FLAGS."""
    flags = " ".join(filter(None, [os.environ.get("XLA_FLAGS"), XLA_CPU[name]]))
    return {**os.environ, "XLA_FLAGS": flags}


def matmul_gflops(dtype: str, size: int, repeats: int = 5) -> float:
    """Throughput of a jitted ``(size, size) @ (size, size)`` product, median of ``repeats``."""
    a = jax.random.normal(jax.random.key(0), (size, size), DTYPES[dtype])
    b = jax.random.normal(jax.random.key(1), (size, size), DTYPES[dtype])
    product = jax.jit(lambda a, b: a @ b)
    product(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def step_flops(model, objective, state, batch: np.ndarray, key: jax.Array, vectorize: train.Vectorize) -> float:
    """XLA's FLOP count for one train step on ``batch`` (of every seed of ``state`` when several)."""
    step = vectorize(train.make_train_step(model, objective), (0, None, None, 0))
    cost = jax.jit(step).lower(state, jnp.asarray(batch), jnp.ones(len(batch)), key).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"])


@contextlib.contextmanager
def counting_cache_hits():
    """Yields a list that gains an item each time a compile inside loads its program from the cache."""
    hits = []

    def listen(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    jax.monitoring.register_event_listener(listen)
    try:
        yield hits
    finally:
        jax.monitoring.unregister_event_listener(listen)


def top_ops(run: Callable[[], object], hlo_text: str, top: int = 10) -> tuple[float, list[dict]]:
    """Profiles one call of ``run`` (which must block until done).

    Returns the call's seconds under the profiler and its ``top`` longest XLA ops, longest
    first: ``name``, ``computes`` (the JAX operation in ``hlo_text``'s metadata), total
    ``seconds`` over the call and ``share`` of the call's time. On a CPU the ops are only
    traced with ``--xla_cpu_enable_xprof_traceme=true`` in ``XLA_FLAGS`` (``main`` sets it).
    """
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
        profile = jax.profiler.ProfileData.from_file(str(next(Path(folder).rglob("*.xplane.pb"))))
    totals = collections.Counter()
    for plane in profile.planes:
        for line in plane.lines:
            for event in line.events:
                if any(name == "hlo_op" for name, _ in event.stats):
                    totals[event.name] += event.duration_ns / 1e9
    computes = dict(re.findall(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*?op_name=\"([^\"]+)\"", hlo_text, re.MULTILINE))
    return seconds, [
        {"name": name, "computes": _short(computes.get(name, "")), "seconds": op_seconds, "share": op_seconds / seconds}
        for name, op_seconds in totals.most_common(top)
    ]


def _short(op_name: str) -> str:
    # "jit(train_epoch)/while/body/closed_call/transpose(jvp(VAE))/VAE.decode/..." -> from "transpose(...)"
    return op_name.split("/closed_call/")[-1]


def model_config(model_name: str, batch_size: int, dtype: str, seeds: int = 1) -> Config:
    """A model at its default size, trained as its experiment trains it."""
    widths = models.MODELS[model_name].widths
    return Config(model=model_name, batch_size=batch_size, dtype=dtype, widths=widths, seeds=seeds)


def iwae_config(samples: int, dtype: str) -> Config:
    """Burda et al.'s 1-layer IWAE with ``samples`` draws, as ``experiments.iwae`` trains it."""
    return dataclasses.replace(iwae.DEFAULTS, objective="iwae", objective_samples=samples, dtype=dtype)


def row_name(config: Config) -> str:
    return f"iwae k={config.objective_samples}" if config.objective == "iwae" else config.model


def benchmark(config: Config, images: np.ndarray, epochs: int, *, profile: bool = False) -> dict:
    """One row of figures of :func:`timed_row`."""
    return timed_row(config, images, epochs, profile=profile)[0]


def timed_row(
    config: Config, images: np.ndarray, epochs: int, *, profile: bool = False
) -> tuple[dict, Callable[[], float]]:
    """Compiles one epoch of training under ``config`` (model, batch size, dtype, objective,
    seeds) and times ``2 + epochs``; returns one row of figures, and a function that times
    ``epochs`` more of the compiled epoch and returns their median (for later rounds).

    The epoch is compiled twice: afresh (``compile_seconds``), and again loaded from the
    compilation cache folder that compile wrote (``cached_compile_seconds``), as a later
    run of an experiment would. Each program's first epoch is timed with its compile
    (``first_epoch_seconds``, ``first_epoch_cached_seconds``); ``epoch_seconds`` is the
    median of the ``epochs`` after them.

    With ``profile``, one more epoch runs under the profiler: ``profiled_epoch_seconds``
    and ``top_ops`` (see :func:`top_ops`).
    """
    batch_size, seed_count = config.batch_size, config.seeds
    model = build_model(config, images.shape[1:])
    objective = build_objective(config)
    tx = build_optimizer(config, steps_per_epoch=math.ceil(len(images) / batch_size))
    state, keys, vectorize = seeds.start(model, tx, images.shape[1:], range(seed_count))
    epoch_keys = functools.partial(train.epoch_key, keys, vectorize=vectorize)
    flops = step_flops(model, objective, state, images[:batch_size], keys, vectorize) * math.ceil(
        len(images) / batch_size
    )
    device_images = jax.device_put(images)

    def compile_epoch() -> tuple[float, Callable]:
        start = time.perf_counter()
        program = (
            train.make_train_epoch(model, objective, batch_size, vectorize=vectorize)
            .lower(state, device_images, epoch_keys(0))
            .compile()
        )
        return time.perf_counter() - start, program

    def run_epoch(program: Callable, epoch: int) -> float:
        nonlocal state
        key = jax.block_until_ready(epoch_keys(epoch))
        start = time.perf_counter()
        state, means = program(state, device_images, key)
        jax.block_until_ready(means)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as folder, compilation_cache(folder):
        compile_seconds, train_epoch = compile_epoch()  # compiled, and saved in the empty folder
        first_epoch_seconds = compile_seconds + run_epoch(train_epoch, 0)
        jax.clear_caches()  # forget it in memory: the next compile loads it from the folder
        with counting_cache_hits() as hits:
            cached_compile_seconds, train_epoch = compile_epoch()
    first_epoch_cached_seconds = cached_compile_seconds + run_epoch(train_epoch, 1)
    times = [run_epoch(train_epoch, epoch) for epoch in range(2, 2 + epochs)]
    steady = statistics.median(times)
    profiled = {}
    if profile:
        seconds, ops = top_ops(lambda: run_epoch(train_epoch, 2 + epochs), train_epoch.as_text())
        profiled = {"profiled_epoch_seconds": seconds, "top_ops": ops}

    def again() -> float:
        return statistics.median(run_epoch(train_epoch, 3 + epochs + i) for i in range(epochs))

    row = {
        "model": row_name(config),
        "batch_size": batch_size,
        "dtype": config.dtype,
        "seeds": seed_count,
        "images": len(images),
        "compile_seconds": compile_seconds,
        "first_epoch_seconds": first_epoch_seconds,
        "cached_compile_seconds": cached_compile_seconds,
        "cache_hit": bool(hits),
        "first_epoch_cached_seconds": first_epoch_cached_seconds,
        "flops_per_epoch": flops,
        "round_seconds": [steady],
        **profiled,
    }
    return with_epoch_seconds(row, steady), again


def with_epoch_seconds(row: dict, seconds: float) -> dict:
    """``row`` with its steady epoch set to ``seconds`` and the throughputs that follow from it."""
    row["epoch_seconds"] = seconds
    row["images_per_second"] = row["seeds"] * row["images"] / seconds
    row["gflops_per_second"] = row["flops_per_epoch"] / seconds / 1e9
    return row


def nll_benchmark(images: np.ndarray, samples: int, chunk: int) -> dict:
    """Times the importance-weighted NLL (:func:`jaxae.evaluate.dataset_nll`) of Burda et
    al.'s 1-layer model over ``images`` with ``samples`` draws each, ``chunk`` draws per
    step, against its floor: the decoder's matmul FLOPs (784-200-200-50 reversed) at the
    machine's matmul rate, measured by the caller."""
    model = models.HierarchicalVAE()
    params = train.init_params(model, images.shape[1:], jax.random.key(0))
    x = np.asarray(images, np.float32) / 255

    def run() -> float:
        start = time.perf_counter()
        jax.block_until_ready(evaluate.dataset_nll(model, params, x, jax.random.key(1), samples=samples, chunk=chunk))
        return time.perf_counter() - start

    run()  # compile
    widths = (model.latent_dim, *reversed(model.widths), math.prod(images.shape[1:]))
    decoder_flops = 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True)) * samples * len(images)
    return {"images": len(images), "samples": samples, "chunk": chunk, "seconds": run(), "flops": decoder_flops}


def torch_rows(
    model_images: dict[str, np.ndarray], iwae_images: np.ndarray, samples: list[int], epochs: int
) -> list[dict]:
    """``experiments.torch_reference``'s epochs (median of ``epochs``) of each model of
    ``model_images`` (``vae``, ``conv_ae``) on its images, at its batch size, and of the
    IWAE at each of ``samples`` on ``iwae_images``."""
    import torch

    # On the device jaxae runs on: a GPU when both see one, else the CPU.
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    plan = [(name, name, 1, images) for name, images in model_images.items()]
    plan += [("iwae", f"iwae k={k}", k, iwae_images) for k in samples]
    rows = []
    for model_name, name, k, images in plan:
        times = torch_reference.epoch_seconds(model_name, images, epochs=epochs, samples=k, device=device)
        rows.append(
            {
                "model": name,
                "batch_size": torch_reference.BATCH_SIZES[model_name],
                "images": len(images),
                "epoch_seconds": statistics.median(times),
                "round_seconds": [statistics.median(times)],
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
            }
        )
        print(f"  PyTorch {name}: {rows[-1]['epoch_seconds']:.3f} s per epoch", flush=True)
    return rows


def torch_images(models: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """The models of ``models`` that ``experiments.torch_reference`` has too, each with ``images``."""
    return {name: images for name in models if name in torch_reference.BATCH_SIZES}


def print_top_ops(rows: list[dict]) -> None:
    for row in rows:
        print(
            f"{row['model']}, batch {row['batch_size']}, {row['seeds']} seed(s): longest ops of one profiled epoch "
            f"({row['profiled_epoch_seconds']:.2f} s; the profiler slows it)"
        )
        for op in row["top_ops"]:
            print(f"  {op['share']:4.0%}  {op['name']:24} {op['computes']}")
        if not row["top_ops"]:
            print("  no XLA ops in the trace (on a CPU, set XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true)")


def more_rounds(
    rows: list[dict],
    timers: list[Callable[[], float]],
    reference: list[dict],
    model_images: dict[str, np.ndarray],
    iwae_images: np.ndarray,
    args: argparse.Namespace,
) -> None:
    """One more round of every row, jaxae's then PyTorch's, so that a neighbour's load on a
    shared machine falls on both alike: each row's ``epoch_seconds`` becomes the median of
    its rounds' (``round_seconds``), and its throughputs follow."""
    for row, again in zip(rows, timers, strict=True):
        row["round_seconds"].append(again())
        print(f"  {row['model']}, batch {row['batch_size']}: {row['round_seconds'][-1]:.3f} s per epoch", flush=True)
    if reference:
        for theirs, now in zip(
            reference, torch_rows(model_images, iwae_images, args.iwae_samples, args.epochs), strict=True
        ):
            theirs["round_seconds"].append(now["epoch_seconds"])
    for row in rows:
        with_epoch_seconds(row, statistics.median(row["round_seconds"]))
    for theirs in reference:
        theirs["epoch_seconds"] = statistics.median(theirs["round_seconds"])


def print_rows(rows: list[dict]) -> None:
    print(
        f"{'model':10} {'batch':>5} {'seeds':>5} {'images':>6} {'compile s':>9} {'1st epoch s':>11} "
        f"{'cache: compile s':>16} {'1st epoch s':>11} {'epoch s':>8} "
        f"{'images/s':>9} {'GFLOP/epoch':>11} {'GFLOP/s':>8} {'of matmul':>9}"
    )
    for row in rows:
        print(
            f"{row['model']:10} {row['batch_size']:5d} {row['seeds']:5d} {row['images']:6d} "
            f"{row['compile_seconds']:9.2f} {row['first_epoch_seconds']:11.2f} {row['cached_compile_seconds']:16.2f} "
            f"{row['first_epoch_cached_seconds']:11.2f} {row['epoch_seconds']:8.3f} {row['images_per_second']:9.0f} "
            f"{row['flops_per_epoch'] / 1e9:11.1f} {row['gflops_per_second']:8.1f} {row['fraction_of_matmul']:9.0%}",
            flush=True,
        )


def print_against_torch(rows: list[dict], torch_rows_: list[dict]) -> None:
    """Each PyTorch row beside jaxae's row of the same model on the same images."""
    jaxae_rows = {(row["model"], row["batch_size"], row["images"]): row for row in rows if row["seeds"] == 1}
    for theirs in torch_rows_:
        ours = jaxae_rows.get((theirs["model"], theirs["batch_size"], theirs["images"]))
        if ours is not None:
            pairs = zip(ours.get("round_seconds", []), theirs.get("round_seconds", []), strict=False)
            ratios = [a / b for a, b in pairs] or [ours["epoch_seconds"] / theirs["epoch_seconds"]]
            theirs["jaxae_ratio"], theirs["jaxae_ratio_rounds"] = statistics.median(ratios), ratios
            device = theirs.get("device", "cpu")
            where = f"{theirs['threads']} threads" if device == "cpu" else device
            spread = (
                f" (median of {len(ratios)} rounds, {min(ratios):.2f}x to {max(ratios):.2f}x)"
                if len(ratios) > 1
                else ""
            )
            print(
                f"{theirs['model']}, batch {theirs['batch_size']}, {theirs['images']} images: jaxae "
                f"{ours['epoch_seconds']:.2f} s, PyTorch {theirs['torch']} ({where}) "
                f"{theirs['epoch_seconds']:.2f} s per epoch: {theirs['jaxae_ratio']:.2f}x{spread}"
            )


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without ``option`` and the values that follow it."""
    kept, skipping = [], False
    for token in argv:
        if token == option or token.startswith(f"{option}="):
            skipping = token == option
            continue
        if skipping and token.startswith("-"):
            skipping = False
        if not skipping:
            kept.append(token)
    return kept


def row_key(row: dict) -> tuple:
    return row["model"], row["batch_size"], row.get("seeds", 1), row["images"]


def print_xla_cpu(results: dict[str, dict], torch_rows_: list[dict]) -> None:
    """Each row's epoch under every configuration (and its ratio to the first's), then
    against PyTorch's epoch on the same images."""
    names = list(results)
    epochs = {name: {row_key(row): row["epoch_seconds"] for row in results[name]["rows"]} for name in names}
    keys = list(dict.fromkeys(key for name in names for key in epochs[name]))
    theirs = {(row["model"], row["batch_size"], row["images"]): row for row in torch_rows_}
    print(f"{'model':10} {'batch':>5} {'seeds':>5}" + "".join(f" {name:>20}" for name in names) + f" {'PyTorch':>8}")
    for key in keys:
        base = epochs[names[0]].get(key)
        cells = []
        for name in names:
            seconds = epochs[name].get(key)
            shown = "failed" if seconds is None else f"{seconds:.3f} s"
            if seconds is not None and base is not None:
                shown += f" ({seconds / base:.2f}x)"
            cells.append(f" {shown:>20}")
        reference = theirs.get((key[0], key[1], key[3])) if key[2] == 1 else None
        torch_cell = f" {reference['epoch_seconds']:8.3f}" if reference else f" {'':>8}"
        print(f"{key[0]:10} {key[1]:5d} {key[2]:5d}" + "".join(cells) + torch_cell)
        if reference:
            ratios = ", ".join(
                f"{name} {epochs[name][key] / reference['epoch_seconds']:.2f}x" for name in names if key in epochs[name]
            )
            print(f"{'':22}against PyTorch {reference['torch']} ({reference['threads']} threads): {ratios}")
    for name in names:
        for nll in results[name]["nll_rows"]:
            print(
                f"IW-NLL k = {nll['samples']}, {nll['images']} images, {nll['chunk']} draws a step, {name}: "
                f"{nll['seconds']:.2f} s"
            )
        for failure in results[name]["failed"]:
            print(f"{name}: {failure}")


def compare_xla_cpu(args: argparse.Namespace, argv: list[str]) -> int:
    """The benchmark once per XLA:CPU configuration of ``args.xla_cpu`` and per model (the
    IWAE and NLL rows together), each in its own process without PyTorch, so that a
    configuration XLA fails to compile loses only its own rows; then PyTorch's rows here.
    Prints them side by side, writes ``args.output``, returns the exit code."""
    child = without_option(without_option(argv, "--xla-cpu"), "--models")
    parts = [["--models", model, "--iwae-samples", "--nll-images", "0"] for model in args.models]
    parts += (
        [["--models", "--iwae-samples", *map(str, args.iwae_samples)]] if args.iwae_samples or args.nll_images else []
    )
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.xla_cpu:
            print(f"XLA:CPU configuration {name}: {XLA_CPU[name] or 'no flags'}", flush=True)
            results[name] = {"rows": [], "nll_rows": [], "failed": []}
            for part in parts:
                output = Path(folder) / f"{name}.json"
                command = [sys.executable, "-m", "experiments.benchmark", *child, *part, "--torch", "no"]
                done = subprocess.run([*command, "--output", str(output)], env=xla_cpu_environment(name))
                if done.returncode:
                    results[name]["failed"].append(f"{' '.join(part)}: exit {done.returncode}")
                    continue
                found = json.loads(output.read_text())
                results[name]["rows"] += found["rows"]
                results[name]["nll_rows"] += found["nll_rows"]
                results[name].setdefault("host", found["host"])
                results[name].setdefault("matmul_gflops_per_second", found["matmul_gflops_per_second"])
    with_torch = args.torch == "auto" and importlib.util.find_spec("torch") is not None
    reference = []
    if with_torch:
        images = data.load("mnist", "train").images
        iwae_images = images[: min(args.iwae_images, 400 if args.quick else len(images))]
        images = images[:2048] if args.quick else images
        reference = torch_rows(torch_images(args.models, images), iwae_images, args.iwae_samples, args.epochs)
    print_xla_cpu(results, reference)
    combined = {"xla_cpu": {name: XLA_CPU[name] for name in results}, "results": results, "torch_rows": reference}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(combined, indent=2))
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(BENCHMARKED), choices=BENCHMARKED)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--vae-batch-sizes", type=int, nargs="+", default=[64, 128, 512])
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--epochs", type=int, default=3, help="steady epochs timed after the first (median)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="time every row this many times, jaxae's and PyTorch's in turn, and report the medians",
    )
    parser.add_argument("--seeds", type=int, default=8, help="vmapped VAEs set against as many separate runs")
    parser.add_argument("--matmul-size", type=int, default=4096)
    parser.add_argument("--quick", action="store_true", help="2048 images, small matmul: a smoke run")
    parser.add_argument("--profile", action="store_true", help="list each row's longest XLA ops (one more epoch)")
    parser.add_argument(
        "--iwae-samples", type=int, nargs="*", default=list(IWAE_SAMPLES), help="k of the IWAE rows (none: no rows)"
    )
    parser.add_argument("--iwae-images", type=int, default=60000, help="training images of an IWAE row's epoch")
    parser.add_argument(
        "--torch", choices=("auto", "no"), default="auto", help="auto: the PyTorch rows when torch is installed"
    )
    parser.add_argument(
        "--nll-images", type=int, default=1000, help="test images of the k = 5000 NLL row (0: no such row)"
    )
    parser.add_argument(
        "--nll-chunks", type=int, nargs="+", default=[evaluate.NLL_CHUNK], help="draws per step to time the NLL with"
    )
    parser.add_argument("--output", default="runs/benchmark.json")
    parser.add_argument(
        "--xla-cpu", nargs="+", choices=list(XLA_CPU), help="run the jaxae rows under each XLA:CPU configuration"
    )
    args = parser.parse_args(argv)
    if args.xla_cpu:
        return compare_xla_cpu(args, argv)
    if args.profile:  # XLA:CPU traces its ops only when asked, before the backend starts
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_enable_xprof_traceme=true"
    sizes = (args.batch_size, args.epochs, args.rounds, args.seeds, args.matmul_size, args.iwae_images)
    if min(*sizes, *args.vae_batch_sizes) <= 0 or min(args.iwae_samples, default=1) <= 0:
        parser.error(
            "--batch-size, --vae-batch-sizes, --epochs, --rounds, --seeds, --matmul-size, --iwae-samples and "
            "--iwae-images must be positive"
        )

    images = data.load("mnist", "train").images
    iwae_images = images[: min(args.iwae_images, 400 if args.quick else len(images))]
    if args.quick:
        images, args.matmul_size = images[:2048], 1024
    device = jax.devices()[0]
    matmul_before = matmul_gflops(args.dtype, args.matmul_size)
    print(
        f"{jax.default_backend()} ({device.device_kind}) on {parallel.host_description()}, {args.dtype}: "
        f"{args.matmul_size}x{args.matmul_size} matmul {matmul_before:.1f} GFLOP/s; {len(images)} images per epoch"
    )
    plan = [(model_config(m, args.batch_size, args.dtype), images) for m in args.models if m != "vae"]
    if "vae" in args.models:
        plan += [(model_config("vae", b, args.dtype), images) for b in sorted({*args.vae_batch_sizes, args.batch_size})]
        plan += [(model_config("vae", args.batch_size, args.dtype, args.seeds), images)] if args.seeds > 1 else []
    plan += [(iwae_config(k, args.dtype), iwae_images) for k in args.iwae_samples]
    rows, timers = [], []
    for config, row_images in plan:
        row, again = timed_row(config, row_images, args.epochs, profile=args.profile)
        rows.append(row)
        timers.append(again)
        print(
            f"  {row['model']}, batch {config.batch_size}, {config.seeds} seed(s): "
            f"{row['epoch_seconds']:.3f} s per epoch",
            flush=True,
        )
    with_torch = args.torch == "auto" and importlib.util.find_spec("torch") is not None
    model_images = torch_images(args.models, images)
    reference = torch_rows(model_images, iwae_images, args.iwae_samples, args.epochs) if with_torch else []
    for round_ in range(2, args.rounds + 1):
        print(f"round {round_} of {args.rounds}", flush=True)
        more_rounds(rows, timers, reference, model_images, iwae_images, args)
    samples = 500 if args.quick else 5000
    test_images = data.load("mnist", "test").images[: args.nll_images]
    nll_rows = [nll_benchmark(test_images, samples, chunk) for chunk in args.nll_chunks] if args.nll_images else []
    matmul_after = matmul_gflops(args.dtype, args.matmul_size)
    matmul = max(matmul_before, matmul_after)
    print(f"matmul again {matmul_after:.1f} GFLOP/s; the rows use the better, {matmul:.1f}")
    for row in rows:
        row["fraction_of_matmul"] = row["gflops_per_second"] / matmul
    print_rows(rows)
    if "vae" in args.models and args.seeds > 1:
        single = next(r for r in rows if r["model"] == "vae" and r["batch_size"] == args.batch_size and r["seeds"] == 1)
        together = next(r for r in rows if r["model"] == "vae" and r["seeds"] > 1)
        print(
            f"{args.seeds} VAEs vmapped: {together['epoch_seconds']:.2f} s per epoch; "
            f"{args.seeds} separate runs: {args.seeds * single['epoch_seconds']:.2f} s "
            f"({args.seeds * single['epoch_seconds'] / together['epoch_seconds']:.2f}x)"
        )
    print_against_torch(rows, reference)
    if not with_torch:
        print("no PyTorch rows: " + ("--torch no" if args.torch == "no" else "pip install torch to add them"))
    for row in nll_rows:
        row["floor_seconds"] = row["flops"] / matmul / 1e9
        print(
            f"IW-NLL, k = {row['samples']}, {row['images']} images, {row['chunk']} draws per step: "
            f"{row['seconds']:.2f} s, {row['seconds'] / row['floor_seconds']:.2f}x its floor "
            f"({row['floor_seconds']:.2f} s: the decoder's {row['flops'] / 1e9:.0f} GFLOP at the matmul rate)",
            flush=True,
        )
    if args.profile:
        print_top_ops(rows)
    result = {
        "backend": jax.default_backend(),
        "device": device.device_kind,
        "host": parallel.host_description(),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "matmul_size": args.matmul_size,
        "matmul_gflops_per_second": matmul,
        "matmul_gflops_per_second_before_and_after": [matmul_before, matmul_after],
        "images_per_epoch": len(images),
        "rows": rows,
        "torch_rows": reference,
        "nll_rows": nll_rows,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(result, indent=2))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
