"""The objectives' terms against torch's own distributions."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Independent, Normal, kl_divergence

from vae_runner.gaussian import kl_to_standard_normal, normal_log_prob, standard_normal_log_prob
from vae_runner.likelihoods import Bernoulli, Gaussian, make_likelihood
from vae_runner.model import VAEOutput
from vae_runner.objective import Objective, Weights, free_bits_kl, kl_weight, objective_terms


def _output(batch: int = 16, latent: int = 8, shape: tuple[int, ...] = (1, 6, 6), seed: int = 0) -> tuple[torch.Tensor, VAEOutput]:
    """Images and a Gaussian-posterior, normal-prior output with one sample per image."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *shape, generator=g)
    mu, logvar = torch.randn(batch, latent, generator=g) * 2, torch.randn(batch, latent, generator=g)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(batch, latent, generator=g)
    logits = torch.randn(batch, *shape, generator=g) * 3
    log_q = normal_log_prob(z, mu, logvar).sum(dim=1)
    return x, VAEOutput(logits, z[None], log_q[None], standard_normal_log_prob(z)[None], mu, logvar, kl_to_standard_normal(mu, logvar))


def test_kl_matches_torch_distributions() -> None:
    _, out = _output()
    q = Independent(Normal(out.mu, torch.exp(0.5 * out.logvar)), 1)
    p = Independent(Normal(torch.zeros_like(out.mu), torch.ones_like(out.mu)), 1)
    expected = kl_divergence(q, p)  # (B,)
    torch.testing.assert_close(kl_to_standard_normal(out.mu, out.logvar).sum(dim=1), expected, rtol=1e-5, atol=1e-5)
    assert expected.mean() > 1.0  # a non-trivial case


def test_kl_is_zero_at_the_prior() -> None:
    mu, logvar = torch.zeros(4, 10), torch.zeros(4, 10)
    assert kl_to_standard_normal(mu, logvar).abs().max().item() == 0.0


def test_bernoulli_term_equals_summed_bce_on_sigmoid() -> None:
    x, out = _output()
    expected = F.binary_cross_entropy(torch.sigmoid(out.x_params), x, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(-Bernoulli().log_prob(out.x_params, x), expected, rtol=1e-4, atol=1e-4)
    # and it is log p(x|z) for binary x under torch's Bernoulli
    xb = (x > 0.5).float()
    log_p = Independent(TorchBernoulli(logits=out.x_params), 3).log_prob(xb)
    torch.testing.assert_close(Bernoulli().log_prob(out.x_params, xb), log_p, rtol=1e-5, atol=1e-4)


def test_gaussian_term_matches_normal_log_prob() -> None:
    x, out = _output()
    log_scale = torch.full_like(out.x_params, -1.3)
    log_p = Independent(Normal(out.x_params, log_scale.exp()), 3).log_prob(x)
    torch.testing.assert_close(Gaussian().log_prob(torch.cat([out.x_params, log_scale], dim=1), x), log_p, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0, 4.0])
def test_beta_multiplies_the_kl_exactly(beta: float) -> None:
    x, out = _output()
    terms = objective_terms(x, out, Bernoulli(), Objective(), Weights(beta=beta))
    assert terms["loss"].item() == pytest.approx(terms["recon"].item() + beta * terms["kl"].item(), rel=1e-6)
    assert terms["elbo"].item() == pytest.approx(-(terms["recon"].item() + terms["kl"].item()), rel=1e-6)
    # nats per image: the batch mean of per-image sums, in closed form
    assert terms["kl"].item() == pytest.approx(kl_to_standard_normal(out.mu, out.logvar).sum(1).mean().item(), rel=1e-6)


def test_without_a_closed_form_the_kl_is_the_sampled_log_ratio() -> None:
    x, out = _output()
    sampled = replace(out, kl_dims=None)  # what a flow or a mixture prior gives
    terms = objective_terms(x, sampled, Bernoulli())
    assert terms["kl"].item() == pytest.approx((out.log_q - out.log_p).mean().item(), rel=1e-6)
    assert terms["kl"].item() != pytest.approx(objective_terms(x, out, Bernoulli())["kl"].item(), rel=1e-3)


def test_warmup_ramps_linearly_from_zero_to_beta() -> None:
    weights = [kl_weight(step, beta=4.0, warmup_steps=100) for step in (0, 25, 50, 100, 1000)]
    assert weights == [0.0, 1.0, 2.0, 4.0, 4.0]
    assert kl_weight(0, beta=2.0, warmup_steps=0) == 2.0


def test_objective_is_fp32_under_low_precision_inputs() -> None:
    x, out = _output()
    half = replace(out, x_params=out.x_params.bfloat16(), mu=out.mu.bfloat16(), logvar=out.logvar.bfloat16())
    for name in ("elbo", "iwae", "beta_tc", "capacity"):
        terms = objective_terms(x, half, Bernoulli(), Objective(name, dataset_size=100))
        assert all(t.dtype == torch.float32 for t in terms.values()), name


def test_likelihood_mean_is_an_image_in_unit_range() -> None:
    logits = torch.tensor([-100.0, 0.0, 100.0])
    assert make_likelihood("bernoulli").mean(logits).tolist() == [0.0, 0.5, 1.0]
    assert make_likelihood("continuous_bernoulli").mean(logits).tolist() == pytest.approx([0.01, 0.5, 0.99])  # 1/|eta| from the ends
    params = torch.tensor([[-0.5, 0.3, 1.7], [0.0, 0.0, 0.0]]).view(1, 2, 1, 3)  # (mean, log-scale) maps
    for name in ("gaussian", "discretized_logistic"):
        assert make_likelihood(name).mean(params).flatten().tolist() == pytest.approx([0.0, 0.3, 1.0])


def test_free_bits_on_shards_match_the_whole_batch_value_and_gradient() -> None:
    # Two ranks' shards of one batch; dimension 0's KL is above the floor on shard A alone and
    # below it over the whole batch, so a floor applied per shard would give another gradient.
    kl = torch.tensor([[2.0, 0.1, 1.0], [1.2, 0.3, 1.0], [0.1, 0.2, 1.0], [0.1, 0.4, 1.0]], requires_grad=True)  # (B, D)
    free_bits = 0.9
    whole = free_bits_kl(kl.mean(dim=0), free_bits)
    (grad_whole,) = torch.autograd.grad(whole, kl)
    assert whole.item() == pytest.approx(0.9 + 0.9 + 1.0)  # dim 0 averages 0.85 < 0.9

    global_mean = kl.detach().mean(dim=0)
    shards = (kl[:2], kl[2:])
    # DDP averages the ranks' gradients; each rank weights its loss by its share of the batch times the world size.
    total = sum(free_bits_kl(s.mean(dim=0), free_bits, batch_mean=lambda m: global_mean) * (2 * len(s) / 4) for s in shards) / 2
    (grad_shards,) = torch.autograd.grad(total, kl)
    torch.testing.assert_close(grad_shards, grad_whole)
    per_shard_floor = sum(free_bits_kl(s.mean(dim=0), free_bits) for s in shards) / 2
    assert not torch.equal(torch.autograd.grad(per_shard_floor, kl)[0], grad_whole)  # the bug this guards against
