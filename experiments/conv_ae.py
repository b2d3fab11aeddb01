"""Convolutional autoencoder on MNIST: strided convolutions down, transposed convolutions up, MSE per pixel.

python -m experiments.conv_ae                      # 10 epochs; figures at epochs 5 and 10
python -m experiments.conv_ae --widths 32 64 --latent-dim 32 --workdir runs/conv_wide
"""

from experiments.harness import main
from jaxae.config import Config

DEFAULTS = Config(model="conv_ae", epochs=10, plot_epochs=(5, 10), widths=(16, 32), train_rows=True)

if __name__ == "__main__":
    raise SystemExit(main(DEFAULTS, __doc__))
