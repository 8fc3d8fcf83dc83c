"""Evaluation metrics against closed forms: probabilistic PCA, rank statistics, and hand-computed values."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
from torch.distributions import MultivariateNormal, Normal

from vae_runner.data.batches import TensorBatches
from vae_runner.data.datasets import Split
from vae_runner.evaluate import FLOW_MEAN_DRAWS, collect_posteriors, nll_image_count, nll_subset, per_image_bounds
from vae_runner.metrics import active_units, auroc, bits_per_dim, importance_log_likelihood, kl_per_dim, psnr, summarise_bounds
from vae_runner.model import VAE
from vae_runner.gaussian import kl_to_standard_normal, normal_log_prob, standard_normal_log_prob

# --------------------------------------------------------------------------- probabilistic PCA


class PPCA:
    """p(z) = N(0, I_d), p(x|z) = N(Wz + b, sigma^2 I_D) with orthogonal columns of W (Tipping & Bishop 1999).

    Orthogonal columns make M = W^T W + sigma^2 I diagonal, so the exact posterior
    N(M^-1 W^T (x - b), sigma^2 M^-1) is a diagonal Gaussian: it fits the (mu, logvar) interface.
    """

    def __init__(self, data_dim: int = 8, scales: tuple[float, ...] = (2.0, 1.0, 0.5), sigma: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(data_dim, len(scales), generator=g, dtype=torch.float64))
        self.scales = torch.tensor(scales, dtype=torch.float64)
        self.w = q * self.scales  # (D, d), W^T W = diag(scales^2)
        self.b = torch.randn(data_dim, generator=g, dtype=torch.float64)
        self.sigma = sigma

    def sample(self, n: int, seed: int = 1) -> torch.Tensor:
        """x ~ p(x), (n, D) in float64."""
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.w.shape[1], generator=g, dtype=torch.float64)
        return z @ self.w.T + self.b + self.sigma * torch.randn(n, self.w.shape[0], generator=g, dtype=torch.float64)

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        """Closed form log N(x; b, W W^T + sigma^2 I), (B,)."""
        cov = self.w @ self.w.T + self.sigma**2 * torch.eye(self.w.shape[0], dtype=torch.float64)
        return MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the exact posterior p(z|x), each (B, d) in float32."""
        m = self.scales**2 + self.sigma**2  # diagonal of M
        mu = (x - self.b) @ self.w / m
        logvar = torch.log(self.sigma**2 / m).expand_as(mu)
        return mu.float(), logvar.float()

    def log_px_given_z(self, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        """log p(x|z) as a function of z (S, B, d) -> (S, B), in float32."""
        w, b, x32 = self.w.float(), self.b.float(), x.float()
        return lambda z: Normal(z @ w.T + b, self.sigma).log_prob(x32).sum(dim=-1)  # (S, B, D) -> (S, B)


def gaussian_log_weights(mu: torch.Tensor, logvar: torch.Tensor, log_px_given_z: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    """log p(x|z) + log N(z; 0, I) - log q(z|x) of z = mu + sigma * eps, as a function of eps (S, B, d) -> (S, B): a Gaussian q under the normal prior."""

    def log_w(eps: torch.Tensor) -> torch.Tensor:
        z = mu + torch.exp(0.5 * logvar) * eps
        return log_px_given_z(z) + standard_normal_log_prob(z) - normal_log_prob(z, mu, logvar).sum(dim=-1)

    return log_w


@pytest.mark.parametrize(("k", "chunk"), [(1, 64), (10, 3), (5000, 500)])
def test_exact_posterior_gives_exact_log_likelihood(k: int, chunk: int) -> None:
    ppca = PPCA()
    x = ppca.sample(32)
    mu, logvar = ppca.posterior(x)
    g = torch.Generator().manual_seed(0)
    estimate = importance_log_likelihood(gaussian_log_weights(mu, logvar, ppca.log_px_given_z(x)), mu.shape, k=k, chunk=chunk, generator=g)
    exact = ppca.exact_log_px(x)
    assert estimate.shape == (32,)
    # every weight p(x|z)p(z)/q(z|x) equals p(x), so any dropped or doubled chunk would shift this by log(k'/k)
    torch.testing.assert_close(estimate.double(), exact, rtol=0, atol=1e-4)
    assert exact.mean().item() < -5.0  # a non-trivial density value


def test_samples_reach_the_decoder_in_chunks() -> None:
    ppca = PPCA()
    x = ppca.sample(5)
    seen: list[tuple[int, ...]] = []
    inner = ppca.log_px_given_z(x)

    def recording(z: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(z.shape))
        return inner(z)

    mu, logvar = ppca.posterior(x)
    importance_log_likelihood(gaussian_log_weights(mu, logvar, recording), mu.shape, k=10, chunk=3)
    assert seen == [(3, 5, 3), (3, 5, 3), (3, 5, 3), (1, 5, 3)]


def test_perturbed_proposal_gap_is_the_kl_at_k1_and_shrinks_with_k() -> None:
    ppca = PPCA()
    x = ppca.sample(32)
    mu_post, logvar_post = ppca.posterior(x)
    # proposal: mean shifted by half a posterior std, variance doubled
    mu_q, logvar_q = mu_post + 0.5 * torch.exp(0.5 * logvar_post), logvar_post + math.log(2.0)
    # E[log w] = log p(x) - KL(q || posterior); per dim 0.5 * (2 + 0.25 - 1 - ln 2)
    kl_q_post = 3 * 0.5 * (2.0 + 0.25 - 1.0 - math.log(2.0))
    exact = ppca.exact_log_px(x)
    g = torch.Generator().manual_seed(0)

    def gaps(k: int, repeats: int) -> torch.Tensor:
        """exact - estimate, (repeats, B)."""
        xr = x.repeat(repeats, 1)
        log_w = gaussian_log_weights(mu_q.repeat(repeats, 1), logvar_q.repeat(repeats, 1), ppca.log_px_given_z(xr))
        est = importance_log_likelihood(log_w, (repeats * x.shape[0], 3), k, 64, g)
        return exact.repeat(repeats).view(repeats, -1) - est.double().view(repeats, -1)

    gap1, gap10, gap1000 = gaps(1, 400), gaps(10, 100), gaps(1000, 10)
    stderr1 = gap1.std().item() / math.sqrt(gap1.numel())
    assert gap1.mean().item() == pytest.approx(kl_q_post, abs=4 * stderr1)  # 0.835 nats
    assert gap1.mean() > gap10.mean() > gap1000.mean()
    assert gap10.mean().item() < 0.5 * kl_q_post
    assert abs(gap1000.mean().item()) < 0.01
    # a lower bound in expectation: per image, the mean over repeats is not above the exact value
    for gap in (gap1, gap10):
        stderr = gap.std(dim=0) / math.sqrt(gap.shape[0])
        assert (gap.mean(dim=0) > -4 * stderr).all()


def test_invalid_k_is_refused() -> None:
    with pytest.raises(ValueError, match="k and chunk"):
        importance_log_likelihood(lambda eps: eps.sum(-1), (2, 3), k=0)


# --------------------------------------------------------------------------- posterior statistics


def test_active_units_counts_dims_with_varying_means() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5000, 5, generator=g) * torch.tensor([1.0, 1.0, 1.0, 0.01, 0.01])
    count, activity = active_units(mu)
    assert count == 3
    torch.testing.assert_close(activity, torch.tensor([1.0, 1.0, 1.0, 1e-4, 1e-4]), rtol=0.1, atol=0)
    assert active_units(mu, threshold=2.0)[0] == 0
    count_one, activity_one = active_units(mu[:1])
    assert count_one == 0 and activity_one.abs().max().item() == 0.0  # one image: variance 0, not NaN


def test_kl_per_dim_is_zero_at_the_prior_and_sums_to_gaussian_kl() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.cat([torch.randn(100, 3, generator=g) * 2, torch.zeros(100, 2)], dim=1)
    logvar = torch.cat([torch.randn(100, 3, generator=g), torch.zeros(100, 2)], dim=1)
    kl = kl_per_dim(mu, logvar)
    assert kl.shape == (5,)
    assert kl[3:].abs().max().item() == 0.0
    assert kl[:3].min().item() > 0.5
    assert kl.sum().item() == pytest.approx(kl_to_standard_normal(mu, logvar).sum(1).mean().item(), rel=1e-5)
    assert kl_per_dim(torch.ones(4, 1), torch.zeros(4, 1)).item() == 0.5  # 0.5 * mu^2


# --------------------------------------------------------------------------- AUROC


def test_auroc_extremes_and_ties() -> None:
    low, high = torch.arange(10.0), torch.arange(10.0) + 100
    assert auroc(high, low) == 1.0
    assert auroc(low, high) == 0.0
    assert auroc(torch.full((7,), 3.0), torch.full((13,), 3.0)) == 0.5
    # by hand: pairs (1,2)=0 (1,0)=1 (2,2)=1/2 (2,0)=1 (3,2)=1 (3,0)=1 -> 4.5 / 6
    assert auroc(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 0.0])) == 0.75


def test_auroc_matches_pairwise_count_with_ties() -> None:
    g = torch.Generator().manual_seed(0)
    a, n = torch.randint(0, 6, (50,), generator=g).float(), torch.randint(0, 5, (70,), generator=g).float()
    pairwise = ((a[:, None] > n[None]).double() + 0.5 * (a[:, None] == n[None]).double()).mean().item()
    assert auroc(a, n) == pytest.approx(pairwise, abs=1e-12)


def test_auroc_of_two_gaussians_is_phi_of_delta_over_root_two() -> None:
    g = torch.Generator().manual_seed(0)
    delta = 1.0
    normal, anomalous = torch.randn(20_000, generator=g), torch.randn(20_000, generator=g) + delta
    expected = Normal(0.0, 1.0).cdf(torch.tensor(delta / math.sqrt(2))).item()  # 0.760
    assert auroc(anomalous, normal) == pytest.approx(expected, abs=0.01)


# --------------------------------------------------------------------------- bits/dim and PSNR


def test_bits_per_dim_known_cases() -> None:
    d = 784
    # uniform density 1 on [0, 1]^D: continuous NLL 0, i.e. 1/256 per 8-bit bin -> 8 bits/dim
    assert bits_per_dim(0.0, d, continuous=True) == pytest.approx(8.0, abs=1e-12)
    # Bernoulli NLL of D ln 2: one fair coin per pixel -> 1 bit/dim
    assert bits_per_dim(d * math.log(2), d, continuous=False) == pytest.approx(1.0, abs=1e-12)
    as_tensor = bits_per_dim(torch.tensor([0.0, d * math.log(2)], dtype=torch.float64), d, continuous=True)
    torch.testing.assert_close(as_tensor, torch.tensor([8.0, 9.0], dtype=torch.float64))


def test_psnr_known_cases() -> None:
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.8
    assert torch.isinf(psnr(x, x)).all()
    out = psnr(x + 0.1, x)
    assert out.shape == (3,)
    torch.testing.assert_close(out, torch.full((3,), 20.0), rtol=0, atol=1e-4)
    torch.testing.assert_close(psnr(x * 255 + 25.5, x * 255, max_value=255.0), torch.full((3,), 20.0), rtol=0, atol=1e-4)


# --------------------------------------------------------------------------- a real VAE


def _binary_images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=g) > 0.7).float()


def test_importance_sampling_tightens_with_k_on_a_real_vae() -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, latent_dim=4)
    batches = TensorBatches(Split((_binary_images(64) * 255).to(torch.uint8), None), 64, torch.device("cpu"), shuffle=False)
    ll1 = per_image_bounds(model, batches, k=1, seed=1)["log_px"]
    ll64 = per_image_bounds(model, batches, k=64, chunk=16, seed=2)["log_px"]
    assert ll1.shape == ll64.shape == (64,)
    assert torch.isfinite(ll1).all() and torch.isfinite(ll64).all()
    assert ll64.mean().item() >= ll1.mean().item()
    assert model.training  # the training flag is restored
    assert not ll64.requires_grad
    # an untrained decoder sits near 784 ln 2 = 543 nats, the fair-coin value
    assert 300.0 < -ll64.mean().item() < 1000.0


def _batches(n: int = 100, seed: int = 0) -> TensorBatches:
    g = torch.Generator().manual_seed(seed)
    images = (torch.rand(n, 1, 28, 28, generator=g) > 0.7).to(torch.uint8) * 255
    labels = torch.randint(0, 10, (n,), generator=g)
    return TensorBatches(Split(images, labels), batch_size=32, device=torch.device("cpu"), shuffle=False)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_summarise_bounds_averages_per_image_bounds(likelihood: str) -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, latent_dim=4, num_classes=10, likelihood=likelihood)
    batches = _batches()
    per_image = per_image_bounds(model, batches, k=8, seed=0)
    assert {name: tuple(v.shape) for name, v in per_image.items()} == {name: (100,) for name in ("log_px", "elbo", "recon", "kl", "labels", "nll_rows")}
    torch.testing.assert_close(per_image["elbo"], -(per_image["recon"] + per_image["kl"]))

    metrics = summarise_bounds(per_image, num_dims=784, continuous=likelihood == "gaussian")
    assert set(metrics) == {"nll", "nll_se", "nll_images", "elbo", "recon", "kl", "bits_per_dim"}
    assert metrics["nll"] == pytest.approx(-per_image["log_px"].double().mean().item(), rel=1e-6)
    assert metrics["nll_se"] == pytest.approx(per_image["log_px"].double().std().item() / 10, rel=1e-6)  # sd / sqrt(100)
    assert metrics["nll_images"] == 100
    assert metrics["elbo"] == pytest.approx(per_image["elbo"].double().mean().item(), rel=1e-6)
    offset = 784 * math.log(256) if likelihood == "gaussian" else 0.0
    assert metrics["bits_per_dim"] == pytest.approx((metrics["nll"] + offset) / (784 * math.log(2)), rel=1e-9)
    assert metrics["nll"] <= -metrics["elbo"] + 1.0  # IWAE with K=8 is at least as tight as the ELBO, up to noise
    mask = torch.arange(100) < 30
    assert summarise_bounds(per_image, 784, False, mask)["elbo"] == pytest.approx(per_image["elbo"][:30].double().mean().item(), rel=1e-9)


def test_the_nll_of_a_subset_is_the_same_images_scored_alone() -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, latent_dim=4, num_classes=10)
    batches = _batches()
    rows = nll_subset(batches, 30, seed=5)
    assert int(rows.sum()) == 30
    assert torch.bincount(batches.labels[rows], minlength=10).max() - torch.bincount(batches.labels[rows], minlength=10).min() <= 2  # across classes
    assert torch.equal(rows, nll_subset(batches, 30, seed=5)) and not torch.equal(rows, nll_subset(batches, 30, seed=6))
    part = per_image_bounds(model, batches, k=8, seed=0, nll_rows=rows)
    whole = per_image_bounds(model, batches, k=8, seed=0)
    assert torch.isnan(part["log_px"][~rows]).all() and torch.isfinite(part["log_px"][rows]).all()
    assert torch.equal(part["elbo"], whole["elbo"])  # every image still gets its ELBO, from the same stream
    metrics = summarise_bounds(part, num_dims=784, continuous=False)
    chosen = part["log_px"][rows].double()
    assert metrics["nll_images"] == 30
    assert metrics["nll"] == pytest.approx(-chosen.mean().item(), rel=1e-9)
    assert metrics["nll_se"] == pytest.approx(chosen.std().item() / math.sqrt(30), rel=1e-9)
    assert metrics["elbo"] == pytest.approx(part["elbo"].double().mean().item(), rel=1e-9)  # over all 100
    assert nll_subset(batches, None, seed=5).all() and nll_subset(batches, 1000, seed=5).all()
    held_out = torch.isin(batches.labels, torch.tensor([0, 1, 2]))
    kept = nll_subset(batches, 30, seed=5, skip=[0, 1, 2])
    assert int(kept.sum()) == 30 and not (kept & held_out).any()  # held-out classes are never scored
    assert torch.equal(nll_subset(batches, 1000, seed=5, skip=[0, 1, 2]), ~held_out)


@pytest.mark.parametrize(
    "overrides, train_images, expected",
    [
        ([], 54_000, 1_080),  # the default run: 10 epochs, K=100: a fifth of 540,000 decodes
        (["dataset=cifar10", "model=cvae", "train.epochs=1"], 45_000, 100),  # 90, raised to the floor of 100
        (["eval.nll_samples=5000"], 54_000, 100),
        (["train.max_steps=1000"], 54_000, 256),  # 128,000 images trained
        (["train.max_steps=100000"], 54_000, 1_080),  # the 10 epochs end training first
        (["eval.nll_images=all"], 54_000, 10_000),
        (["eval.nll_images=500"], 54_000, 500),
        (["eval.nll_images=50000"], 54_000, 10_000),
    ],
)
def test_auto_scores_the_nll_on_images_in_proportion_to_training(overrides: list[str], train_images: int, expected: int) -> None:
    from tests.conftest import compose_config

    assert nll_image_count(compose_config(overrides), test_images=10_000, train_images=train_images) == expected


def test_one_scored_image_has_no_standard_error() -> None:
    per_image = {"log_px": torch.tensor([-80.0, math.nan]), "elbo": torch.tensor([-90.0, -95.0]), "recon": torch.tensor([70.0, 75.0]),
                 "kl": torch.tensor([20.0, 20.0]), "nll_rows": torch.tensor([True, False])}
    metrics = summarise_bounds(per_image, num_dims=784, continuous=False)
    assert metrics["nll"] == 80.0 and metrics["nll_images"] == 1 and "nll_se" not in metrics
    assert metrics["elbo"] == -92.5


def test_collect_posteriors_matches_encoding_the_whole_split() -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, latent_dim=4, num_classes=10)
    batches = _batches()
    post = collect_posteriors(model, batches)
    assert post.mu.shape == post.logvar.shape == (100, 4)
    assert torch.equal(post.labels, batches.labels)
    assert torch.equal(post.mean, post.mu)  # without a flow, E_q[z|x] is mu
    with torch.no_grad():
        mu_all, logvar_all = model.encode(batches.images.float() / 255, batches.labels)
    torch.testing.assert_close(post.mu, mu_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(post.logvar, logvar_all, rtol=1e-5, atol=1e-5)


def test_a_flow_posteriors_mean_is_the_average_of_its_draws() -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, latent_dim=4, posterior="planar", flow_steps=4)
    with torch.no_grad():
        for step in model.posterior.flow:
            step.params.bias.normal_(0, 2.0)  # a flow far from the identity
    batches = _batches(20)
    post = collect_posteriors(model, batches, seed=1)
    x = batches.images.float() / 255
    with torch.no_grad():
        z, *_ = model.posterior(model.features(x), torch.randn(4000, 20, 4, generator=torch.Generator().manual_seed(2)))
    standard_error = z.std(dim=0) / math.sqrt(FLOW_MEAN_DRAWS)  # of a mean of 32 draws
    assert ((post.mean - z.mean(dim=0)).abs() < 4 * standard_error).all()
    assert ((post.mean - post.mu).abs() > 4 * standard_error).any()  # the flow moved the mean away from the Gaussian stage's


def test_the_elbo_does_not_move_when_only_k_changes() -> None:
    torch.manual_seed(0)
    model = VAE(in_channels=1, image_size=28, latent_dim=4)
    batches = _batches(40)
    k2, k50 = (per_image_bounds(model, batches, k=k, seed=3) for k in (2, 50))
    assert torch.equal(k2["elbo"], k50["elbo"])  # its own stream: the IWAE draws do not shift it
    assert not torch.equal(k2["log_px"], k50["log_px"])
