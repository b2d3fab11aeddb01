"""Matplotlib figures from arrays: image grids and loss curves, written as PNG.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global backend), and
their pixel size is fixed by their layout: ``CELL_INCHES * DPI`` pixels per image cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from jaxae.files import atomic_write

DPI = 100
CELL_INCHES = 0.6
LABEL_INCHES = 1.6  # left margin for row labels
TITLE_INCHES = 0.4


def tile(images: np.ndarray, columns: int) -> np.ndarray:
    """Tiles ``(K, H, W, C)`` images in [0, 1] into one ``(rows * H, columns * W, C)`` mosaic."""
    k, h, w, c = images.shape
    rows = -(-k // columns)
    padded = np.zeros((rows * columns, h, w, c), np.float32)
    padded[:k] = images
    return padded.reshape(rows, columns, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, columns * w, c)


def grid_size(num_rows: int, columns: int, labelled: bool = True, titled: bool = True) -> tuple[int, int]:
    """Pixel size (width, height) of an image grid figure: a band for the title only when it has one."""
    width = columns * CELL_INCHES + (LABEL_INCHES if labelled else 0.0)
    height = num_rows * CELL_INCHES + (TITLE_INCHES if titled else 0.0)
    return round(width * DPI), round(height * DPI)


def image_rows(
    groups: Sequence[tuple[str, np.ndarray]], path: str | Path, *, columns: int = 8, title: str = ""
) -> Path:
    """Stacks labelled groups of images, each filling whole rows of ``columns``.

    Args:
        groups: ``(label, images (K, H, W, C) in [0, 1])`` pairs, drawn top to bottom;
            ``K`` a multiple of ``columns``.
        path: where the PNG goes.
    """
    mosaics = [tile(np.asarray(images, np.float32), columns) for _, images in groups]
    num_rows = sum(len(images) // columns for _, images in groups)
    width, height = grid_size(num_rows, columns, titled=bool(title))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    left = LABEL_INCHES * DPI / width
    top = 1 - (TITLE_INCHES * DPI / height if title else 0.0)
    y = top
    for (label, images), mosaic in zip(groups, mosaics, strict=True):
        share = (len(images) // columns) * CELL_INCHES * DPI / height
        ax = fig.add_axes((left, y - share, 1 - left, share))
        _show(ax, mosaic)
        ax.text(-0.02, 0.5, label, transform=ax.transAxes, ha="right", va="center", fontsize=9)
        y -= share
    if title:
        fig.suptitle(title, y=1 - 0.1 * TITLE_INCHES * DPI / height, va="top", fontsize=10)
    return _save(fig, path)


def image_grid(images: np.ndarray, path: str | Path, *, columns: int = 8, title: str = "") -> Path:
    """One unlabelled grid of ``(K, H, W, C)`` images in [0, 1]."""
    rows = -(-len(images) // columns)
    width, height = grid_size(rows, columns, labelled=False, titled=bool(title))
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, 1 - (TITLE_INCHES * DPI / height if title else 0.0)))
    _show(ax, tile(np.asarray(images, np.float32), columns))
    if title:
        fig.suptitle(title, y=1 - 0.1 * TITLE_INCHES * DPI / height, va="top", fontsize=10)
    return _save(fig, path)


def loss_curves(history: Sequence[dict], path: str | Path, *, ylabel: str, title: str = "") -> Path:
    """Train and test loss per epoch from ``fit`` records (keys ``epoch``, ``train_loss``, ``test_loss``)."""
    epochs = [r["epoch"] for r in history]
    series = {split: (epochs, [r[f"{split}_loss"] for r in history]) for split in ("train", "test")}
    return curves(series, path, xlabel="epoch", ylabel=ylabel, title=title, integer_x=True)


def curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | Path,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    xscale: str = "linear",
    yscale: str = "linear",
    spreads: dict[str, Sequence[float]] | None = None,
    integer_x: bool = False,
) -> Path:
    """One line with markers per ``label: (x, y)``, 600x400 pixels; ``spreads[label]``
    shades ``y ± spread`` (for example a standard deviation over seeds); ``integer_x``
    puts ticks on whole numbers only (epochs)."""
    fig = Figure(figsize=(6, 4), dpi=DPI)
    ax = fig.add_subplot()
    for label, (x, y) in series.items():
        (line,) = ax.plot(x, y, marker="o", markersize=3, label=label)
        if spreads and label in spreads:
            middle, spread = np.asarray(y), np.asarray(spreads[label])
            ax.fill_between(x, middle - spread, middle + spread, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xscale(xscale)
    ax.set_yscale(yscale)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _show(ax, mosaic: np.ndarray) -> None:
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(mosaic, 0.0, 1.0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a file object has no suffix to infer from: name the format, as savefig(path) would
    atomic_write(path, lambda f: fig.savefig(f, dpi=DPI, format=path.suffix.lstrip(".") or None))
    return path


def code_scatter(panels: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, *, title: str = "") -> Path:
    """Side-by-side scatter plots of 2-D codes ``(N, 2)`` coloured by integer label ``(N,)``."""
    fig = Figure(figsize=(4 * len(panels), 4.4), dpi=DPI)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, (codes, labels)) in zip(axes, panels.items(), strict=True):
        points = ax.scatter(codes[:, 0], codes[:, 1], c=labels, cmap="tab10", s=2, vmin=-0.5, vmax=9.5)
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(points, ax=list(axes), ticks=range(10), fraction=0.02)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
