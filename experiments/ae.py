"""Vanilla fully connected autoencoder on MNIST: 784-400-20-400-784, MSE per pixel.

python -m experiments.ae                           # 30 epochs; figures at epochs 15, 20, 30
python -m experiments.ae --latent-dim 2 --workdir runs/ae2
"""

from experiments.harness import main
from jaxae.config import Config

DEFAULTS = Config(model="ae", epochs=30, plot_epochs=(15, 20))

if __name__ == "__main__":
    raise SystemExit(main(DEFAULTS, __doc__))
