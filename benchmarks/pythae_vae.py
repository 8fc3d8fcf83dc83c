"""pythae's VAE on MNIST, on the CPU: the third side that benchmarks/throughput.py times with --pythae-path.

pythae (https://github.com/clementchadebec/benchmark_VAE, 0.1.2) trains `vae-run`'s
default model, an MLP 784-512-20 with a Bernoulli likelihood, through its own
`TrainingPipeline` and `BaseTrainer`: Adam at 1e-3, batches of 128, the training split
as `train_data` and the test split as `eval_data`. The trainer does what it always does:
an eval pass over `eval_data` after every epoch, a deep copy of the model whenever that
eval loss improves, tqdm bars and log lines on stderr, and the final model saved (weights,
configs, pickled encoder and decoder) under `output_dir`, here a throwaway folder. After
training, one pass of the model's forward over the test set gives the test loss.

pythae is not in the venv; put the folder it is installed in on PYTHONPATH:

    PYTHONPATH=/tmp/pyth/site .venv/bin/python benchmarks/pythae_vae.py --root ../shared/data --epochs 1 --threads 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import positive  # noqa: E402  (the benchmarks folder, for its sibling)

try:
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.pipelines import TrainingPipeline
    from pythae.trainers import BaseTrainerConfig
except ImportError as err:  # pythae lives outside the venv, so this is the likely first mistake
    sys.exit(f"error: cannot import pythae ({err}); put the folder pythae is installed in on PYTHONPATH.")

IMAGE_SHAPE = (1, 28, 28)
BATCH_SIZE = 128


class Encoder(BaseEncoder):
    """784-512 with ReLU, then the posterior's mean and log-variance (20 each)."""

    def __init__(self, hidden: int = 512, latent: int = 20):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc_mu = nn.Linear(hidden, latent)
        self.fc_logvar = nn.Linear(hidden, latent)

    def forward(self, x: Tensor) -> ModelOutput:
        """pythae's encoder output: `embedding` is the mean, `log_covariance` the log-variance."""
        h = F.relu(self.fc1(x.reshape(x.shape[0], 784)))  # (B, 1, 28, 28) -> (B, 784)
        return ModelOutput(embedding=self.fc_mu(h), log_covariance=self.fc_logvar(h))


class Decoder(BaseDecoder):
    """20-512 with ReLU, then Bernoulli means of the 784 pixels."""

    def __init__(self, hidden: int = 512, latent: int = 20):
        super().__init__()
        self.fc1 = nn.Linear(latent, hidden)
        self.fc2 = nn.Linear(hidden, 784)

    def forward(self, z: Tensor) -> ModelOutput:
        """pythae's decoder output: `reconstruction` shaped like the images."""
        probs = torch.sigmoid(self.fc2(F.relu(self.fc1(z))))
        return ModelOutput(reconstruction=probs.reshape(-1, *IMAGE_SHAPE))  # (B, 784) -> (B, 1, 28, 28)


def read_images(path: Path, limit: Optional[int] = None) -> np.ndarray:
    """An idx3 image file as float32 in [0, 1], shaped (N, 1, 28, 28); the first `limit` images when given."""
    data = path.read_bytes()
    count = int.from_bytes(data[4:8], "big")
    # 16-byte header: magic 2051, image count, rows, cols (http://yann.lecun.com/exdb/mnist/)
    if data[:4] != (2051).to_bytes(4, "big") or len(data) != 16 + count * 784:
        raise ValueError(f"{path} is not an MNIST idx3 image file; download MNIST again into that folder.")
    images = np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, *IMAGE_SHAPE)[:limit]
    return images.astype(np.float32) / 255.0


def mean_test_loss(model: VAE, images: np.ndarray) -> float:
    """The mean negative ELBO per test image, nats; pythae's `loss` is already a per-image mean over the batch."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(images), BATCH_SIZE):
            batch = torch.from_numpy(images[start : start + BATCH_SIZE])
            total += model({"data": batch}).loss.item() * len(batch)
    return total / len(images)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The script's flags."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--epochs", type=positive, default=10, help="training epochs (default: %(default)s)")
    parser.add_argument("--threads", type=positive, default=1, help="torch's CPU threads (default: %(default)s)")
    parser.add_argument("--train-samples", type=positive, default=None, help="train on the first N training images (default: all)")
    parser.add_argument("--seed", type=int, default=1, help="seed for the weights and pythae's trainer (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """Train pythae's VAE for --epochs with its TrainingPipeline, then print the test loss."""
    args = parse_args(argv)
    raw = Path(args.root) / "MNIST" / "raw"
    train_file, test_file = raw / "train-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte"
    if not (train_file.is_file() and test_file.is_file()):
        print(f"error: {raw} lacks train-images-idx3-ubyte or t10k-images-idx3-ubyte; point --root at the folder that holds MNIST/raw/.", file=sys.stderr)
        return 2

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    try:
        train_images, test_images = read_images(train_file, args.train_samples), read_images(test_file)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    config = VAEConfig(input_dim=IMAGE_SHAPE, latent_dim=20, reconstruction_loss="bce")
    model = VAE(model_config=config, encoder=Encoder(), decoder=Decoder())
    with tempfile.TemporaryDirectory(prefix="pythae-bench-") as output_dir:
        training_config = BaseTrainerConfig(
            output_dir=output_dir, num_epochs=args.epochs, learning_rate=1e-3,
            per_device_train_batch_size=BATCH_SIZE, per_device_eval_batch_size=BATCH_SIZE,
            no_cuda=True, steps_saving=None, seed=args.seed,
        )
        TrainingPipeline(model=model, training_config=training_config)(train_data=train_images, eval_data=test_images)
    # `model` was trained in place and is the last epoch's weights, as on the other sides; pythae's
    # saved final_model is instead its best-eval-loss copy, which here would be chosen on the test set.
    print(f"====> Test set loss: {mean_test_loss(model, test_images):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
