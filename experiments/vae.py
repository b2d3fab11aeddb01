"""Variational autoencoder on MNIST: 784-400-20 MLPs, Bernoulli likelihood, -ELBO in nats per image.

python -m experiments.vae                          # 20 epochs; figures at epochs 10, 19, 20
python -m experiments.vae --epochs 10 --workdir runs/vae10 --overwrite
python -m experiments.vae --resume                 # continue runs/vae after an interruption
"""

from experiments.harness import main
from jaxae.config import Config

DEFAULTS = Config(model="vae", epochs=20, plot_epochs=(10, 19))

if __name__ == "__main__":
    raise SystemExit(main(DEFAULTS, __doc__))
