"""The PyTorch examples VAE (784-400-20, Adam 1e-3, batch 128, BCE summed + KL), on the same
MNIST arrays as jaxae, for side-by-side test losses and epoch times. Needs PyTorch:

    pip install torch
    python -m experiments.torch_reference --epochs 10 --seed 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from experiments.cli import Parser
from jaxae import data


def main(argv: list[str] | None = None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args(argv)
    try:
        import torch
        import torch.nn.functional as F
        from torch import nn
    except ImportError:
        print("error: PyTorch is not installed: pip install torch", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    train_x = torch.tensor(data.load("mnist", "train").images.reshape(-1, 784) / 255.0, dtype=torch.float32)
    test_x = torch.tensor(data.load("mnist", "test").images.reshape(-1, 784) / 255.0, dtype=torch.float32)

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

    def loss_fn(recon, x, mu, logvar):
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return F.binary_cross_entropy(recon, x, reduction="sum") + kl

    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        model.train()
        for batch in torch.randperm(len(train_x)).split(args.batch_size):
            x = train_x[batch]
            optimizer.zero_grad()
            loss = loss_fn(*_with_input(model, x))
            loss.backward()
            optimizer.step()
        seconds = time.perf_counter() - start
        times.append(seconds)
        model.eval()
        with torch.no_grad():
            test_loss = sum(loss_fn(*_with_input(model, x)).item() for x in test_x.split(args.batch_size))
        print(f"epoch {epoch:3d}  test loss {test_loss / len(test_x):.4f}  train {seconds:.2f} s", flush=True)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads: median epoch {statistics.median(times):.2f} s "
        f"over {args.epochs}; test -ELBO {test_loss / len(test_x):.2f} nats"
    )
    return 0


def _with_input(model, x):
    recon, mu, logvar = model(x)
    return recon, x, mu, logvar


if __name__ == "__main__":
    raise SystemExit(main())
