"""Helpers the test modules share: reading runs back, comparing states, driving the CLI."""

import contextlib
import io
import json

import jax
import numpy as np
import optax

from experiments import harness, vae
from jaxae import checkpoint, train
from jaxae.build import build_model
from jaxae.config import Config


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` as an IDX file's bytes (uint8)."""
    header = (0x0800 | array.ndim).to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state, state.step))]


def assert_states_equal(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def read_metrics(workdir) -> list[dict]:
    """A run's metrics.jsonl: one record per epoch."""
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def restore_latest(workdir):
    """The final state of a run, restored from its checkpoints."""
    config = Config.from_json(json.loads((workdir / "config.json").read_text()))
    model = build_model(config, (28, 28, 1))
    template = train.create_state(model, optax.adam(config.learning_rate), (28, 28, 1), key=jax.random.key(99))
    with checkpoint.Checkpoints(workdir / "checkpoints") as ckpts:
        return ckpts.restore(template)


def cli_flags(config: Config, workdir) -> list[str]:
    """The command-line flags that give ``config``."""
    flags = []
    for name, value in config.to_json().items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
        elif value not in (None, [], ()):
            flags += [flag, *map(str, value if isinstance(value, list | tuple) else [value])]
    return [*flags, "--workdir", str(workdir)]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """``python -m experiments.vae`` in this process: exit code and stderr."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = harness.main(vae.DEFAULTS, vae.__doc__, argv)
        except SystemExit as exit_:
            code = exit_.code
    return code, stderr.getvalue()
