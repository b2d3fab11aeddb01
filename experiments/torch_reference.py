"""PyTorch references on the same MNIST arrays as jaxae, for side-by-side test losses and
epoch times. Needs PyTorch (``pip install torch``):

    python -m experiments.torch_reference --epochs 10 --seed 1            # the examples VAE
    python -m experiments.torch_reference --model conv_ae --epochs 3      # jaxae's conv_ae
    python -m experiments.torch_reference --model iwae --iw-samples 50    # Burda et al.'s step

- ``vae``: the PyTorch examples VAE (784-400-20, Adam 1e-3, batch 128, BCE summed + KL).
- ``conv_ae``: jaxae's ``conv_ae`` (stride-2 3x3 convolutions 16-32, a 20-d dense code,
  transposed convolutions back; MSE per pixel of the sigmoid), Adam 1e-3, batch 128.
- ``iwae``: Burda et al.'s 1-layer model as ``experiments.iwae`` trains it (784-200-200-50
  tanh, images binarized afresh each step, the k-sample IWAE bound, batch 20, Adam with
  epsilon 5e-6), its output bias at the mean training pixel's logit.

Each epoch visits the training images in a fresh random order (index tensors, no
DataLoader workers: the fastest way to feed arrays that sit in memory). ``--device cuda``
trains on an NVIDIA GPU, with the images on it (``auto``, the default, takes one when
PyTorch sees it).
:func:`epoch_seconds` is what ``experiments.benchmark`` calls for its same-run rows.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import numpy as np

from experiments.cli import Parser
from jaxae import data

MODELS = ("vae", "conv_ae", "iwae")
BATCH_SIZES = {"vae": 128, "conv_ae": 128, "iwae": 20}


def build(model_name: str, train_images: np.ndarray, samples: int = 1, device: str = "cpu"):
    """``(module, loss(x) -> the batch's summed loss, optimizer, to_input(uint8 batch), summed)``
    with the module on ``device``; ``summed``: the model trains on the batch's sum, as the
    examples VAE does, not its mean."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    flat = nn.Flatten()
    if model_name == "vae":

        class VAE(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
                self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

            def forward(self, x):
                h = F.relu(self.fc1(x))
                mu, logvar = self.fc21(h), self.fc22(h)
                z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
                return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar

        model = VAE().to(device)

        def loss(x):
            recon, mu, logvar = model(x)
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
            return F.binary_cross_entropy(recon, x, reduction="sum") + kl

        return model, loss, torch.optim.Adam(model.parameters(), lr=1e-3), lambda u8: flat(u8 / 255.0), True
    if model_name == "conv_ae":
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(7 * 7 * 32, 20),
            nn.Linear(20, 7 * 7 * 32),
            nn.ReLU(),
            nn.Unflatten(1, (32, 7, 7)),
            nn.ConvTranspose2d(32, 16, 3, 2, 1, output_padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 3, 2, 1, output_padding=1),
        ).to(device)

        def loss(x):
            return F.mse_loss(torch.sigmoid(model(x)), x) * len(x)

        return model, loss, torch.optim.Adam(model.parameters(), lr=1e-3), lambda u8: u8.unsqueeze(1) / 255.0, False
    return _iwae(train_images, samples, device)


def _iwae(train_images: np.ndarray, samples: int, device: str):
    import torch
    from torch import nn

    def mlp(*widths, last_tanh):
        layers = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.Tanh()]
        return nn.Sequential(*(layers if last_tanh else layers[:-1]))

    class IWAE(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = mlp(784, 200, 200, last_tanh=True)
            self.mean, self.logvar = nn.Linear(200, 50), nn.Linear(200, 50)
            self.decoder = mlp(50, 200, 200, 784, last_tanh=False)
            for layer in self.modules():
                if isinstance(layer, nn.Linear):
                    nn.init.xavier_uniform_(layer.weight)
                    nn.init.zeros_(layer.bias)
            mean_pixel = np.clip(train_images.reshape(len(train_images), -1).mean(0) / 255, 0.001, 0.999)
            with torch.no_grad():
                self.decoder[-1].bias.copy_(torch.tensor(np.log(mean_pixel / (1 - mean_pixel)), dtype=torch.float32))

        def forward(self, x):  # the IWAE bound of each image, averaged over the batch
            h = self.encoder(x)
            mean, logvar = self.mean(h), self.logvar(h)
            eps = torch.randn(samples, *mean.shape, device=mean.device)
            z = mean + torch.exp(0.5 * logvar) * eps
            logits = self.decoder(z)
            bce = nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
            log_px = -bce.sum(-1)
            log_pz = -0.5 * (z**2 + math.log(2 * math.pi)).sum(-1)
            log_qz = -0.5 * (eps**2 + logvar + math.log(2 * math.pi)).sum(-1)
            log_w = log_px + log_pz - log_qz
            return -(torch.logsumexp(log_w, 0) - math.log(samples)).mean()

    model = IWAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-4 / BATCH_SIZES["iwae"])

    def loss(x):
        return model(x) * len(x)

    return model, loss, optimizer, lambda u8: torch.bernoulli(u8.reshape(len(u8), -1) / 255.0), False


def pick_device(device: str = "auto") -> str:
    """``device``, or for ``auto`` ``cuda`` when PyTorch sees a GPU and ``cpu`` otherwise."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: PyTorch sees no CUDA GPU; use --device cpu, or a CUDA build of torch")
    return device


def epoch_seconds(
    model_name: str,
    images: np.ndarray,
    *,
    epochs: int,
    batch_size: int | None = None,
    samples: int = 1,
    seed: int = 1,
    device: str = "cpu",
) -> list[float]:
    """Seconds of each of ``epochs`` training epochs over uint8 ``images (N, 28, 28, 1)`` on ``device``."""
    return _train(
        model_name, images, None, epochs=epochs, batch_size=batch_size, samples=samples, seed=seed, device=device
    )[0]


def _train(model_name, images, test_images, *, epochs, batch_size, samples, seed, device, report=None):
    import torch

    torch.manual_seed(seed)
    batch_size = batch_size or BATCH_SIZES[model_name]
    model, loss_fn, optimizer, to_input, summed = build(model_name, images, samples, device)
    train_u8 = torch.tensor(images[..., 0], device=device)
    test_u8 = None if test_images is None else torch.tensor(test_images[..., 0], device=device)
    times, test_loss = [], None
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        for batch in torch.randperm(len(train_u8), device=device).split(batch_size):
            optimizer.zero_grad()
            loss = loss_fn(to_input(train_u8[batch]))
            (loss if summed else loss / len(batch)).backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()  # the GPU runs behind the Python loop
        times.append(time.perf_counter() - start)
        if test_u8 is not None:
            model.eval()
            with torch.no_grad():
                total = sum(loss_fn(to_input(x)).item() for x in test_u8.split(1000))
            test_loss = total / len(test_u8)
            report(f"epoch {epoch:3d}  test loss {test_loss:.4f}  train {times[-1]:.2f} s")
    return times, test_loss


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vae", choices=MODELS)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, help="default: the model's (vae, conv_ae 128; iwae 20)")
    parser.add_argument("--iw-samples", type=int, default=1, help="iwae: samples k per image")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: cuda when seen")
    args = parser.parse_args(argv)
    if min(args.epochs, args.batch_size or 1, args.iw_samples) <= 0:
        parser.error("--epochs, --batch-size and --iw-samples must be positive")
    try:
        import torch
    except ImportError:
        print("error: PyTorch is not installed: pip install torch", file=sys.stderr)
        return 2

    try:
        device = pick_device(args.device)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    train_images, test_images = (data.load("mnist", split).images for split in ("train", "test"))
    times, test_loss = _train(
        args.model,
        train_images,
        test_images,
        epochs=args.epochs,
        batch_size=args.batch_size,
        samples=args.iw_samples,
        seed=args.seed,
        device=device,
        report=lambda line: print(line, flush=True),
    )
    where = torch.cuda.get_device_name() if device == "cuda" else f"{torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {where}, {args.model}: median epoch "
        f"{statistics.median(times):.2f} s over {args.epochs}; test loss {test_loss:.4f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
