"""Datasets derived from another: Colored MNIST, grey digits tinted by label."""

from __future__ import annotations

import numpy as np

from jaxae.data.common import SPLITS


def colored_mnist(images: np.ndarray, labels: np.ndarray, split: str) -> np.ndarray:
    """Tints each grey digit ``(N, H, W, 1)`` with a colour set by its label, jittered per image.

    Label ``k`` has hue ``k / 10`` of the colour wheel, moved by ``N(0, 0.02)``, with
    saturation in [0.75, 1] and value in [0.8, 1] drawn per image. The draws come from a
    fixed generator per split, so the dataset is the same on every machine. Returns
    uint8 ``(N, H, W, 3)``: the stroke intensity times the colour, black background.
    """
    rng = np.random.default_rng(SPLITS.index(split) + 2024)
    n = len(labels)
    hue = (labels / 10 + rng.normal(0, 0.02, n)) % 1.0
    rgb = hsv_to_rgb(hue, rng.uniform(0.75, 1.0, n), rng.uniform(0.8, 1.0, n))
    colour = np.round(rgb * 255).astype(np.uint16)[:, None, None, :]
    return ((images.astype(np.uint16) * colour + 127) // 255).astype(np.uint8)  # rounded intensity x colour


def hsv_to_rgb(hue: np.ndarray, saturation: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Vectorised ``colorsys.hsv_to_rgb``: ``(N,)`` each in [0, 1] -> ``(N, 3)``."""
    sector = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = value * (1 - saturation), value * (1 - saturation * f), value * (1 - saturation * (1 - f))
    table = np.stack(
        [
            np.stack([value, t, p], 1),
            np.stack([q, value, p], 1),
            np.stack([p, value, t], 1),
            np.stack([p, q, value], 1),
            np.stack([t, p, value], 1),
            np.stack([value, p, q], 1),
        ]
    )
    return table[sector, np.arange(len(hue))]
