"""Run by tests/test_parallel.py in a subprocess that sees 8 CPU devices.

Trains 20 steps of each model on 1 device and on 8 devices (same global batch, same
seeds) and prints, as JSON, the largest relative difference of any parameter tensor and
whether the 8-device program sums gradients across devices.
"""

import json
import sys

import jax
import numpy as np
import optax
from jax.sharding import Mesh

from jaxae import data, losses, models, train

BATCH, STEPS = 24, 20


def relative_difference(a, b) -> float:
    return max(
        float(np.linalg.norm(x - y) / np.linalg.norm(y))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def main(data_dir: str) -> None:
    assert jax.device_count() == 8, jax.devices()
    images = data.load("mnist_slice", "train", "idx", data_dir).images[: BATCH * STEPS]
    test_images = data.load("mnist_slice", "test", "idx", data_dir).images
    report = {}
    for name, widths in (("vae", (64,)), ("conv_ae", (8, 16))):
        model = models.MODELS[name](widths=widths, latent_dim=8)
        objective = losses.OBJECTIVES[losses.default_objective(model)]
        runs = {}
        for devices in (1, 8):
            mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
            state = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
            state, history = train.fit(
                state,
                model,
                objective,
                images,
                test_images,
                key=jax.random.key(1),
                epochs=1,
                batch_size=BATCH,
                mesh=mesh,
            )
            runs[devices] = (jax.device_get(state.params), history[0]["test_loss"], int(state.step))
        mesh = Mesh(np.array(jax.devices()), ("data",))
        fresh = train.create_state(model, optax.adam(1e-3), (28, 28, 1), key=jax.random.key(0))
        program = (
            train.make_train_epoch(model, objective, BATCH, mesh=mesh).lower(fresh, images, jax.random.key(1)).compile()
        )
        report[name] = {
            "relative_difference": relative_difference(runs[8][0], runs[1][0]),
            "test_loss": [runs[1][1], runs[8][1]],
            "steps": [runs[1][2], runs[8][2]],
            "all_reduce": "all-reduce" in program.as_text(),
        }
    try:
        train.make_train_epoch(model, objective, 36)
    except ValueError as error:
        report["indivisible"] = str(error)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
