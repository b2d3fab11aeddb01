"""Data compression: an autoencoder's codes, quantized, as a lossy image codec.

python -m experiments.compress                          # the MLP autoencoder, 20-d code, 20 epochs
python -m experiments.compress --model conv_ae --widths 16 32 --epochs 10 --workdir runs/compress_conv

Each code dimension is quantized uniformly to 8, 6 and 4 bits between its 0.1% and
99.9% quantiles over the training codes (a range the decoder knows, so it costs nothing
per image). Reports, on the test set, bytes per image against the raw pixels and
lossless PNG, and the PSNR at each rate; figures/rate_distortion.png plots them and
figures/compress.png shows the decodings.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image

from experiments.harness import Use, main
from jaxae import evaluate, plots, train
from jaxae.config import Config
from jaxae.restore import RestoredRun

DEFAULTS = Config(model="ae", epochs=20, plot_epochs=())
BITS = (8, 6, 4)


def code_range(train_codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension ``(low, high)``: the 0.1% and 99.9% quantiles of ``(N, D)`` codes."""
    low, high = np.quantile(train_codes, [0.001, 0.999], axis=0)
    return low, np.maximum(high, low + 1e-6)


def quantize(codes: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
    """``(N, D)`` floats -> integers in ``[0, 2**bits - 1]`` (clipped to the range)."""
    levels = 2**bits - 1
    return np.round(np.clip((codes - low) / (high - low), 0.0, 1.0) * levels).astype(np.int64)


def dequantize(indices: np.ndarray, low: np.ndarray, high: np.ndarray, bits: int) -> np.ndarray:
    return (low + indices / (2**bits - 1) * (high - low)).astype(np.float32)


def png_bytes(images: np.ndarray) -> np.ndarray:
    """Size in bytes of each uint8 ``(N, H, W, C)`` image as an optimised PNG."""
    sizes = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "PNG", optimize=True)
        sizes.append(buffer.tell())
    return np.asarray(sizes)


def analyse(run: RestoredRun, workdir: Path) -> dict:
    test = np.asarray(train.to_float(run.test_set.images))
    low, high = code_range(evaluate.encode(run.model, run.params, np.asarray(train.to_float(run.train_set.images))))
    codes = evaluate.encode(run.model, run.params, test)
    dim = codes.shape[1]
    decoded = {32: evaluate.decode(run.model, run.params, codes)}
    for bits in BITS:
        restored = dequantize(quantize(codes, low, high, bits), low, high, bits)
        decoded[bits] = evaluate.decode(run.model, run.params, restored)
    rates = {bits: dim * bits / 8 for bits in decoded}
    psnrs = {bits: float(evaluate.psnr(images, test).mean()) for bits, images in decoded.items()}
    png = float(png_bytes(run.test_set.images).mean())
    raw = int(np.prod(test.shape[1:]))
    plots.curves(
        {f"{run.config.model} codes ({dim}-d)": (list(rates.values()), list(psnrs.values()))},
        workdir / "figures" / "rate_distortion.png",
        xlabel=f"bytes per image (raw pixels {raw}, lossless PNG {png:.0f})",
        ylabel="test PSNR (dB)",
        title=f"codes in float32 and {', '.join(map(str, BITS))} bits per dimension",
        xscale="log",
    )
    rows = [("original", test[:16])] + [(f"{b} bits" if b < 32 else "float32", decoded[b][:16]) for b in decoded]
    plots.image_rows(rows, workdir / "figures" / "compress.png", title=f"{run.config.model} codes, epoch {run.epoch}")
    results = {"raw_bytes": raw, "png_bytes": png}
    for bits in decoded:
        name = "float32" if bits == 32 else f"{bits}bit"
        results |= {f"bytes_{name}": rates[bits], f"psnr_{name}": psnrs[bits]}
    return results


USE = Use("compress", analyse)

if __name__ == "__main__":
    raise SystemExit(main(DEFAULTS, __doc__, use=USE))
