"""Convolutional variational autoencoder on MNIST: the conv_ae encoder and decoder around a
Gaussian code, Bernoulli likelihood, -ELBO in nats per image.

python -m experiments.conv_vae                     # 10 epochs; figures at epochs 5 and 10
python -m experiments.conv_vae --widths 32 64 --workdir runs/conv_vae_wide
"""

from experiments.harness import main
from jaxae.config import Config

DEFAULTS = Config(model="conv_vae", epochs=10, plot_epochs=(5, 10), widths=(16, 32))

if __name__ == "__main__":
    raise SystemExit(main(DEFAULTS, __doc__))
