"""The conventional recipe that benchmarks/throughput.py times: PyTorch's example VAE on MNIST, on the CPU.

The recipe of https://github.com/pytorch/examples/blob/main/vae/main.py (torchvision's
MNIST, ToTensor, a shuffling DataLoader of 128, Adam at 1e-3, the summed BCE + KL
loss), sized like `vae-run`'s default model (784-512-20 rather than the example's
784-400-20). It drops the example's per-epoch sample and reconstruction images:
after training it makes one pass over the test set and prints the test loss.

    .venv/bin/python benchmarks/recipe_vae.py --root ../shared/data --epochs 1 --threads 1
"""

from __future__ import annotations

import argparse
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision import datasets, transforms


class VAE(nn.Module):
    """The example's VAE with `vae-run`'s default widths: 784-512-20, mirrored in the decoder."""

    def __init__(self, hidden: int = 512, latent: int = 20):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, 784)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The posterior's mean and log-variance."""
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """One sample of z, differentiable in mu and logvar."""
        std = torch.exp(0.5 * logvar)
        return mu + torch.randn_like(std) * std

    def decode(self, z: Tensor) -> Tensor:
        """Bernoulli means of the 784 pixels."""
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(reconstruction, mu, logvar) for a batch of images."""
        mu, logvar = self.encode(x.view(-1, 784))
        return self.decode(self.reparameterize(mu, logvar)), mu, logvar


def loss_function(recon_x: Tensor, x: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """The negative ELBO summed over the batch: BCE plus the closed-form KL (Appendix B of Kingma & Welling 2013)."""
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def train(model: VAE, optimizer: torch.optim.Optimizer, loader: DataLoader, epoch: int) -> None:
    """One epoch over the training set, printing its mean loss as the example does."""
    model.train()
    train_loss = 0.0
    for data, _ in loader:
        optimizer.zero_grad()
        recon_batch, mu, logvar = model(data)
        loss = loss_function(recon_batch, data, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    print(f"====> Epoch: {epoch} Average loss: {train_loss / len(loader.dataset):.4f}")


def test(model: VAE, loader: DataLoader) -> float:
    """The mean negative ELBO per test image, nats."""
    model.eval()
    test_loss = 0.0
    with torch.no_grad():
        for data, _ in loader:
            recon_batch, mu, logvar = model(data)
            test_loss += loss_function(recon_batch, data, mu, logvar).item()
    return test_loss / len(loader.dataset)


def main(argv: Optional[list[str]] = None) -> None:
    """Train for --epochs, then print the test loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="data", help="folder holding MNIST/raw/ (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch's CPU threads (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="the example's seed (default: %(default)s)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    to_tensor = transforms.ToTensor()
    train_loader = DataLoader(datasets.MNIST(args.root, train=True, transform=to_tensor), batch_size=128, shuffle=True)
    test_loader = DataLoader(datasets.MNIST(args.root, train=False, transform=to_tensor), batch_size=128, shuffle=False)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for epoch in range(1, args.epochs + 1):
        train(model, optimizer, train_loader, epoch)
    print(f"====> Test set loss: {test(model, test_loader):.4f}")


if __name__ == "__main__":
    main()
