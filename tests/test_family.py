"""The composable parts (flows, priors, likelihoods, objectives, importance sampling) against closed forms and independent references.

Every reference here is computed apart from the code under test: autograd
Jacobians, torch.distributions (MixtureSameFamily, MultivariateNormal,
ContinuousBernoulli ...), float64 CDFs and quadratures, and exact Gaussian
marginals of linear-Gaussian models. The library computes in fp32 (it calls
.float()), so tolerances are fp32's unless a test says otherwise.
"""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.functional import jacobian
from torch.distributions import (
    Bernoulli as TorchBernoulli,
    Categorical,
    ContinuousBernoulli as TorchContinuousBernoulli,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from vae_runner.likelihoods import (
    GAUSSIAN_LOG_SCALE_MIN,
    LOGISTIC_LOG_SCALE_MIN,
    LOG_SCALE_MAX,
    Bernoulli,
    ContinuousBernoulli,
    DiscretizedLogistic,
    Gaussian,
)
from vae_runner.metrics import importance_log_likelihood
from vae_runner.model import VAE
from vae_runner.objective import Objective, Weights, capacity_at, objective_terms, tc_decomposition
from vae_runner.posteriors import IAFStep, PlanarStep, Posterior, made_masks
from vae_runner.priors import DiagonalMixture, MixturePrior, VampPrior

F64 = torch.float64


# ---------------------------------------------------------------- helpers


def _randomise(module: torch.nn.Module, scale: float, generator: torch.Generator) -> None:
    """Overwrite every parameter with N(0, scale^2) draws (IAF's shift and gate start at zero: a trivially diagonal Jacobian)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * scale)


def _step_jacobian(step: torch.nn.Module, z: Tensor, h: Tensor) -> Tensor:
    """dz'/dz (D, D) of one image's flow step, z (D,), h (1, F)."""
    d = z.shape[-1]
    return jacobian(lambda v: step(v.view(1, 1, d), h)[0].view(d), z)


def _planar_with(u: Tensor, w: Tensor, b: float, dtype: torch.dtype = F64) -> PlanarStep:
    """A PlanarStep whose raw (u, w, b) are the given constants, whatever the features."""
    d = u.shape[0]
    step = PlanarStep(1, d).to(dtype)
    with torch.no_grad():
        step.params.weight.zero_()
        step.params.bias.copy_(torch.cat([u, w, torch.tensor([b], dtype=u.dtype)]).to(dtype))
    return step


def _mixture_reference(means: Tensor, logvars: Tensor, logits: Tensor) -> MixtureSameFamily:
    """sum_k softmax(logits)_k N(means_k, diag exp(logvars_k)) in float64, by torch.distributions."""
    means, logvars, logits = means.double(), logvars.double(), logits.double()
    return MixtureSameFamily(Categorical(logits=logits), Independent(Normal(means, torch.exp(logvars / 2)), 1))


# ---------------------------------------------------------------- 1. flow log-determinants


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("d", [3, 5])
def test_planar_log_det_matches_autograd_jacobian(seed: int, d: int) -> None:
    g = torch.Generator().manual_seed(seed)
    step = PlanarStep(4, d).double()
    _randomise(step, 1.0, g)
    for _ in range(4):
        h, z = torch.randn(1, 4, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64) * 2
        _, log_det = step(z.view(1, 1, d), h)
        sign, expected = torch.linalg.slogdet(_step_jacobian(step, z, h))
        assert sign.item() == 1.0  # invertible and orientation-preserving
        assert log_det.item() == pytest.approx(expected.item(), abs=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("d", "reverse"), [(3, False), (4, True), (5, False)])
def test_iaf_log_det_matches_autograd_jacobian(seed: int, d: int, reverse: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    order = torch.arange(d).flip(0) if reverse else torch.arange(d)
    step = IAFStep(4, d, hidden=12, order=order).double()
    _randomise(step, 0.7, g)
    for _ in range(4):
        h, z = torch.randn(1, 4, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
        _, log_det = step(z.view(1, 1, d), h)
        sign, expected = torch.linalg.slogdet(_step_jacobian(step, z, h))
        assert sign.item() == 1.0
        assert log_det.item() == pytest.approx(expected.item(), abs=1e-10)


@pytest.mark.parametrize("kind", ["gaussian", "planar", "iaf"])
def test_posterior_log_q_is_the_change_of_variables_of_the_whole_flow(kind: str) -> None:
    """log q(z_K) = log N(z_0; mu, sigma^2) - log|det dz_K/dz_0|; with z_0 = mu + sigma eps, dz_K/deps = dz_K/dz_0 diag(sigma),
    so log q(z_K) = log N(eps; 0, I) - log|det dz_K/deps| (the sum(logvar)/2 terms cancel). Checked for 3 steps, D = 4."""
    g = torch.Generator().manual_seed(3)
    features, d, batch, samples = 6, 4, 3, 2
    post = Posterior(features, d, kind=kind, steps=0 if kind == "gaussian" else 3, hidden=16)
    _randomise(post, 0.5, g)
    h = torch.randn(batch, features, generator=g)
    eps = torch.randn(samples, batch, d, generator=g)
    z, log_q, mu, logvar = post(h, eps)
    assert z.dtype == log_q.dtype == torch.float32 and log_q.shape == (samples, batch)
    for s in range(samples):
        for b in range(batch):
            jac = jacobian(lambda e: post(h[b : b + 1], e.view(1, 1, d))[0].view(d), eps[s, b])  # dz_K/deps (D, D)
            _, log_abs_det = torch.linalg.slogdet(jac.double())
            expected = Normal(0.0, 1.0).log_prob(eps[s, b].double()).sum() - log_abs_det
            assert log_q[s, b].item() == pytest.approx(expected.item(), abs=2e-4)
            # the same in z_0's terms: log N(z_0; mu, sigma^2) - log|det dz_K/dz_0|
            z0 = mu[b] + torch.exp(0.5 * logvar[b]) * eps[s, b]
            log_q0 = Normal(mu[b].double(), torch.exp(0.5 * logvar[b].double())).log_prob(z0.double()).sum()
            log_det_z0 = log_abs_det - 0.5 * logvar[b].double().sum()
            assert log_q[s, b].item() == pytest.approx((log_q0 - log_det_z0).item(), abs=2e-4)
    if kind != "gaussian":
        assert not torch.allclose(z, mu + torch.exp(0.5 * logvar) * eps, atol=1e-3)  # the flow did something


@pytest.mark.parametrize("wu", [-1.0, -5.0, -10.0])
def test_planar_step_stays_invertible_when_raw_w_dot_u_is_very_negative(wu: float) -> None:
    """u anti-parallel to w with w.u = wu: u_hat . w = margin - 1 > -1 with margin = max(softplus(wu), 1e-4), and det J = a^2 + (1 - a^2) margin > 0,
    with a = tanh(w.z + b), even on the hyperplane w.z + b = 0 where the step contracts most. fp32, as Posterior runs it:
    det within 1e-6 and log|det| within 0.02 nats of the exact values."""
    g = torch.Generator().manual_seed(0)
    d, b = 4, 0.3
    w = torch.randn(d, generator=g, dtype=F64)
    u = w * wu / w.dot(w)
    step = _planar_with(u, w, b, torch.float32)
    margin = max(F.softplus(torch.tensor(wu, dtype=F64)).item(), PlanarStep.MIN_MARGIN)  # 1 + u_hat . w, floored
    h = torch.zeros(1, 1)
    line = torch.linspace(-3, 3, 61, dtype=F64)  # w.z + b along a line crossing the hyperplane, 0 included
    z0 = torch.randn(d, generator=g, dtype=F64)
    z0 = z0 - (z0.dot(w) + b) * w / w.dot(w)  # on the hyperplane
    for t in line:
        z = (z0 + t * w / w.norm()).float()
        a = math.tanh(z.double().dot(w).item() + b)
        out, log_det = step(z.view(1, 1, d), h)
        if abs(a) > 0.1:  # u_hat . w recovered from the step's own move (z' - z) = u_hat a
            u_hat_w = ((out.view(d) - z).double().dot(w) / a).item()
            assert u_hat_w == pytest.approx(margin - 1, abs=1e-5)
        det = torch.linalg.det(_step_jacobian(step, z, h).double()).item()
        exact = a * a + (1 - a * a) * margin
        assert det > 0
        assert det == pytest.approx(exact, abs=1e-6)  # fp32 rounding of u_hat . w is ~|w.u| 2^-24
        assert log_det.item() == pytest.approx(math.log(exact), abs=0.02)  # observed 0.007 at w.u = -10, on the hyperplane


@pytest.mark.parametrize("wu", [-20.0, -50.0])
def test_planar_step_stays_invertible_when_raw_w_dot_u_is_extremely_negative(wu: float) -> None:
    """On w.z + b = 0 the Jacobian determinant is the margin 1 + w.u_hat = max(softplus(wu), MIN_MARGIN) > 0 (the step floors it
    so fp32 rounding cannot fold the map); the fp32 step's determinant and its log|det| agree with that margin."""
    g = torch.Generator().manual_seed(0)
    d, b = 4, 0.3
    w = torch.randn(d, generator=g, dtype=F64)
    step = _planar_with(w * wu / w.dot(w), w, b, torch.float32)
    h = torch.zeros(1, 1)
    z = torch.randn(d, generator=g, dtype=F64)
    z = (z - (z.dot(w) + b) * w / w.dot(w)).float()  # on the hyperplane: tanh' = 1
    det = torch.linalg.det(_step_jacobian(step, z, h).double()).item()
    _, log_det = step(z.view(1, 1, d), h)
    margin = max(F.softplus(torch.tensor(wu, dtype=F64)).item(), PlanarStep.MIN_MARGIN)
    assert det == pytest.approx(margin, rel=0.05) and det > 0
    assert log_det.item() == pytest.approx(math.log(margin), abs=0.05)


# ---------------------------------------------------------------- 2. IAF's autoregressive structure


@pytest.mark.parametrize("reverse", [False, True])
def test_iaf_jacobian_is_triangular_in_its_order_with_sigma_on_the_diagonal(reverse: bool) -> None:
    """dz'_i/dz_j = 0 when j comes at or after i in the order (j != i); dz'_i/dz_i = sigma_i; the entries before i are not all zero."""
    g = torch.Generator().manual_seed(5)
    d = 5
    order = torch.arange(d).flip(0) if reverse else torch.arange(d)
    step = IAFStep(3, d, hidden=16, order=order).double()
    _randomise(step, 0.8, g)
    h, z = torch.randn(1, 3, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    jac = _step_jacobian(step, z, h)
    later_or_same = order[None, :] >= order[:, None]  # (i, j): j at or after i in the order
    off_diagonal = later_or_same & ~torch.eye(d, dtype=torch.bool)
    assert jac[off_diagonal].abs().max().item() == 0.0
    earlier = jac[~later_or_same].abs()
    assert (earlier > 0).all() and earlier.max().item() > 1e-2  # MADE connects every earlier input
    # sigma from the step's own layers: sigmoid of the gate's output
    hidden = F.elu(step.hidden(F.elu(step.inputs(z.view(1, 1, d)) + step.context(h))))
    sigma = torch.sigmoid(step.gate(hidden)).view(d)
    torch.testing.assert_close(torch.diagonal(jac), sigma, rtol=0, atol=1e-12)
    _, log_det = step(z.view(1, 1, d), h)
    assert log_det.item() == pytest.approx(sigma.log().sum().item(), abs=1e-12)


def test_posterior_iaf_steps_alternate_identity_and_reversed_order() -> None:
    post = Posterior(3, 4, kind="iaf", steps=3, hidden=8)
    firsts = [int(torch.nonzero(step.shift.mask.sum(dim=1) == 0).item()) for step in post.flow]  # the output that sees no input
    assert firsts == [0, 3, 0]


@pytest.mark.parametrize("order", [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]])
def test_made_mask_product_connects_exactly_the_earlier_inputs(order: list[int]) -> None:
    """With D = 4, hidden = 8: (last @ second @ first)[i, j] > 0 iff order[j] < order[i]; zero on and above the diagonal in the order."""
    o = torch.tensor(order)
    first, second, last = made_masks(o, 8)
    assert first.shape == (8, 4) and second.shape == (8, 8) and last.shape == (4, 8)
    paths = last.double() @ second.double() @ first.double()  # (D, D): number of paths input j -> output i
    earlier = o[None, :] < o[:, None]
    assert paths[~earlier].abs().max().item() == 0.0
    assert paths[earlier].min().item() > 0


# ---------------------------------------------------------------- 3. mixture priors


def test_diagonal_mixture_log_prob_matches_mixture_same_family_even_far_from_every_component() -> None:
    g = torch.Generator().manual_seed(0)
    k, d = 5, 3
    means, logvars = torch.randn(k, d, generator=g, dtype=F64), torch.randn(k, d, generator=g, dtype=F64) * 0.5
    logits = torch.randn(k, generator=g, dtype=F64)
    reference = _mixture_reference(means, logvars, logits)
    near = reference.sample((4, 6))  # (S, B, D)
    far = 10 + torch.randn(4, 6, d, generator=g, dtype=F64)  # ~10 from every component, in every dimension
    for z in (near, far):
        got = DiagonalMixture(means, logvars, logits).log_prob(z)
        assert got.shape == (4, 6) and got.dtype == torch.float32
        torch.testing.assert_close(got.double(), reference.log_prob(z), rtol=1e-5, atol=1e-4)
    assert reference.log_prob(far).max().item() < -50  # really far: below e^-50


def test_diagonal_mixture_log_prob_is_accurate_for_narrow_components() -> None:
    """A VampPrior's components are encoder posteriors, whose logvar may go to LOGVAR_MIN = -30; at logvar = -10 (sigma 0.0067),
    means ~ N(0, 2^2), D = 2, z drawn from the mixture, log p(z) should be within 0.01 nats of the float64 reference."""
    g = torch.Generator().manual_seed(0)
    k, d = 50, 2
    means = torch.randn(k, d, generator=g, dtype=F64) * 2
    logvars = -10 + 0.3 * torch.randn(k, d, generator=g, dtype=F64)
    logits = torch.zeros(k, dtype=F64)
    reference = _mixture_reference(means, logvars, logits)
    z = reference.sample((400,))
    got = DiagonalMixture(means, logvars, logits).log_prob(z).double()
    assert (got - reference.log_prob(z)).abs().max().item() < 0.01


def test_mixture_prior_is_its_parameters_mixture() -> None:
    torch.manual_seed(0)
    prior = MixturePrior(latent_dim=3, components=4)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        prior.logvars.normal_(0, 0.5)
    dist = prior(encode=None)  # type: ignore[arg-type]  # the MoG prior does not encode
    z = torch.randn(7, 2, 3, dtype=F64) * 3
    reference = _mixture_reference(prior.means.detach(), prior.logvars.detach(), prior.logits.detach())
    torch.testing.assert_close(dist.log_prob(z).double(), reference.log_prob(z), rtol=1e-5, atol=1e-5)


def test_vamp_prior_is_the_uniform_mixture_of_the_encoders_gaussians_at_clipped_pseudo_inputs() -> None:
    """p(z) = (1/K) sum_k N(A u_k, diag exp(B u_k + c)) with u_k = hardtanh(pseudo_input_k, 0, 1), for a fixed linear `encode`."""
    g = torch.Generator().manual_seed(1)
    k, d, shape = 6, 3, (1, 2, 2)
    a, bmat, c = torch.randn(4, d, generator=g), torch.randn(4, d, generator=g), torch.randn(d, generator=g) * 0.3
    prior = VampPrior(shape, components=k)
    with torch.no_grad():
        prior.pseudo_inputs.copy_(torch.randn(k, *shape, generator=g) * 1.5)  # many outside [0, 1]
    seen: list[Tensor] = []

    def encode(x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
        assert y is None  # an unconditional VampPrior passes no labels
        seen.append(x.detach().clone())
        flat = x.flatten(1)  # (K, 4)
        return flat @ a, flat @ bmat * 0.5 + c

    dist = prior(encode)
    clipped = prior.pseudo_inputs.detach().clamp(0, 1)
    torch.testing.assert_close(seen[0], clipped, rtol=0, atol=0)
    assert ((prior.pseudo_inputs < 0) | (prior.pseudo_inputs > 1)).sum().item() > 5  # the clipping mattered
    flat = clipped.flatten(1).double()
    reference = _mixture_reference(flat @ a.double(), flat @ bmat.double() * 0.5 + c.double(), torch.zeros(k, dtype=F64))
    z = torch.randn(5, 4, d, generator=g, dtype=F64) * 2
    torch.testing.assert_close(dist.log_prob(z).double(), reference.log_prob(z), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_mixture_sample_moments_match_the_closed_form(temperature: float) -> None:
    """Over 200k draws: mean = sum w_k m_k and var = sum w_k (T^2 v_k + m_k^2) - mean^2 per dimension, within 5 standard errors."""
    means = torch.tensor([[-2.0, 0.0], [1.0, 3.0], [4.0, -1.0]])
    logvars = torch.tensor([[0.0, -1.0], [-2.0, 0.5], [0.3, 0.0]])
    logits = torch.tensor([0.0, 1.0, -0.5])
    n = 200_000
    draws = DiagonalMixture(means, logvars, logits).sample(n, generator=torch.Generator().manual_seed(0), temperature=temperature).double()
    w = torch.softmax(logits.double(), dim=0)[:, None]
    mean = (w * means.double()).sum(0)
    var = (w * (temperature**2 * logvars.double().exp() + means.double() ** 2)).sum(0) - mean**2
    fourth = (w * (means.double() - mean) ** 4).sum(0) * 8 + 3 * var**2  # a generous bound on E(z - mean)^4 for the variance's s.e.
    assert draws.shape == (n, 2)
    assert ((draws.mean(0) - mean).abs() / (var / n).sqrt()).max().item() < 5
    assert ((draws.var(0) - var).abs() / ((fourth - var**2) / n).sqrt()).max().item() < 5
    torch.testing.assert_close(draws.mean(0), mean, rtol=0, atol=0.03)
    torch.testing.assert_close(draws.var(0), var, rtol=0.01, atol=0)


# ---------------------------------------------------------------- 4. IWAE


def _tiny_vae(posterior: str = "gaussian", prior: str = "normal", seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(
        in_channels=1, image_size=4, latent_dim=2, hidden_dims=(8,), posterior=posterior, flow_steps=2, flow_hidden=8,
        prior=prior, prior_components=3,
    )


@pytest.mark.parametrize(("posterior", "prior"), [("gaussian", "normal"), ("planar", "mog"), ("iaf", "vamp")])
def test_iwae_with_one_sample_is_minus_the_single_sample_elbo(posterior: str, prior: str) -> None:
    """loss = -mean(log p(x|z) + log p(z) - log q(z|x)) of the one z, whether or not the model gives the KL in closed form."""
    model = _tiny_vae(posterior, prior)
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(5, 1, 4, 4, generator=g) > 0.5).float()
    out = model(x, eps=torch.randn(1, 5, 2, generator=g))
    terms = objective_terms(x, out, model.likelihood, Objective(name="iwae", samples=1))
    log_px = model.likelihood.log_prob(model.decode(out.z[0]), x)  # (B,), decoded afresh
    single = log_px + out.log_p[0] - out.log_q[0]
    assert terms["loss"].item() == pytest.approx(-single.mean().item(), abs=1e-5)
    assert terms["iwae_bound"].item() == pytest.approx(single.mean().item(), abs=1e-5)
    if out.kl_dims is None:  # no closed form: elbo is the same single-sample estimate
        assert terms["elbo"].item() == pytest.approx(single.mean().item(), abs=1e-5)


def test_iwae_bound_increases_with_k_and_stays_below_the_quadrature_log_px() -> None:
    """A tiny VAE (16 binary pixels, 2-D latent, posterior made too wide): the IWAE bound averaged over 3000 repeats per image
    increases strictly for k = 1, 2, 5, 20, 100 (each gap > 4 standard errors; observed gaps 0.14 to 12 nats) and stays
    below log p(x) from a 2-D quadrature; at k = 100 within 0.25 nats of it (observed 0.03 to 0.07)."""
    model = _tiny_vae()
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3)  # a decoder that cares about z
        model.posterior.head.bias[2:] = 1.0  # logvar ~ 1: a poor proposal, so the bound has room to tighten
    g = torch.Generator().manual_seed(2)
    b, repeats = 4, 3000
    x = (torch.rand(b, 1, 4, 4, generator=g) > 0.5).float()
    with torch.no_grad():
        prior = model.prior_distribution()
        h = model.features(x).repeat(repeats, 1)  # (R * B, F): every image R times, repeat-major

        def log_weights(eps: Tensor) -> Tensor:
            out = model.draw(h, None, eps, prior)
            log_px = model.likelihood.log_prob(out.x_params, x.repeat(eps.shape[0] * repeats, 1, 1, 1)).view(eps.shape[0], -1)
            return log_px + out.log_p - out.log_q

        means, ses = [], []
        for k in (1, 2, 5, 20, 100):
            est = importance_log_likelihood(log_weights, (repeats * b, 2), k, chunk=25, generator=g).view(repeats, b).double()
            means.append(est.mean(0))
            ses.append(est.std(0) / math.sqrt(repeats))
        # log p(x) = log int p(x|z) N(z; 0, I) dz on a 401 x 401 grid over [-7, 7]^2
        grid = torch.linspace(-7, 7, 401)
        zz = torch.cartesian_prod(grid, grid)  # (G, 2)
        log_pxz = model.likelihood.log_prob(
            model.decode(zz).repeat_interleave(b, 0), x.repeat(len(zz), 1, 1, 1)
        ).view(len(zz), b).double() + Normal(0.0, 1.0).log_prob(zz.double()).sum(-1, keepdim=True)
        log_px = torch.logsumexp(log_pxz, 0) + 2 * math.log(grid[1] - grid[0])
    for i in range(4):
        gap = means[i + 1] - means[i]
        assert (gap > 4 * (ses[i] ** 2 + ses[i + 1] ** 2).sqrt()).all(), (i, gap, ses[i], ses[i + 1])
    for mean, se in zip(means, ses):
        assert (mean <= log_px + 4 * se).all()
    assert ((log_px - means[-1]) < 0.25).all()  # k = 100 gets close


# ---------------------------------------------------------------- 5. beta-TC decomposition


def _tc_data(n: int = 6, d: int = 2, seed: int = 0) -> tuple[Tensor, Tensor]:
    """N images known only by their Gaussian posteriors: mu (N, D), logvar (N, D)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=F64) * 1.5, torch.randn(n, d, generator=g, dtype=F64) * 0.5 - 1


def _exact_tc_terms(z: Tensor, rows: Tensor, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Exact MI, TC and dimension-wise KL at z (..., D) drawn from q(z|x_rows), with q(z) = (1/N) sum_n q(z|x_n), in float64."""
    n, d = mu.shape
    std = torch.exp(0.5 * logvar)
    uniform = Categorical(logits=torch.zeros(n, dtype=F64))
    log_q_x = Independent(Normal(mu[rows], std[rows]), 1).log_prob(z)
    log_qz = MixtureSameFamily(uniform, Independent(Normal(mu, std), 1)).log_prob(z)
    log_qz_dims = sum(MixtureSameFamily(uniform, Normal(mu[:, i], std[:, i])).log_prob(z[..., i]) for i in range(d))
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
    return log_q_x - log_qz, log_qz - log_qz_dims, log_qz_dims - log_p


def _tc_estimates(z: Tensor, rows: Tensor, mu: Tensor, logvar: Tensor, n: int) -> tuple[Tensor, ...]:
    """The library's MI, TC, dim-KL for one batch z (M, D) ~ q(z|x_rows), and log q(z|x) - log p(z)."""
    std = torch.exp(0.5 * logvar[rows])
    log_q = Independent(Normal(mu[rows], std), 1).log_prob(z)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
    mi, tc, dim_kl = tc_decomposition(z, mu[rows], logvar[rows], log_q, log_p, n)
    return mi.double(), tc.double(), dim_kl.double(), log_q - log_p


def test_tc_terms_add_up_to_the_sampled_kl() -> None:
    mu, logvar = _tc_data()
    g = torch.Generator().manual_seed(1)
    for rows in (torch.arange(6), torch.tensor([4, 1, 2])):
        z = mu[rows] + torch.exp(0.5 * logvar[rows]) * torch.randn(len(rows), 2, generator=g, dtype=F64)
        mi, tc, dim_kl, kl = _tc_estimates(z, rows, mu, logvar, 6)
        torch.testing.assert_close(mi + tc + dim_kl, kl, rtol=0, atol=1e-5)


def test_tc_with_the_whole_data_set_as_batch_equals_the_exact_terms_sample_by_sample() -> None:
    """M = N = 6, D = 3: every z, every term equals the exact one (q(z) by MixtureSameFamily) to fp32 precision; over 500 draws per
    image the means agree, and MI + TC + dim-KL averages to the closed-form KL within 4 standard errors."""
    mu, logvar = _tc_data(6, 3)
    g = torch.Generator().manual_seed(2)
    rows = torch.arange(6)
    draws = 500
    z = mu + torch.exp(0.5 * logvar) * torch.randn(draws, 6, 3, generator=g, dtype=F64)  # (T, N, D)
    est = torch.stack([torch.stack(_tc_estimates(zt, rows, mu, logvar, 6)[:3]) for zt in z])  # (T, 3, N)
    exact = torch.stack(_exact_tc_terms(z, rows.expand(draws, 6), mu, logvar), dim=1)  # (T, 3, N)
    torch.testing.assert_close(est, exact, rtol=0, atol=5e-5)
    torch.testing.assert_close(est.mean(dim=(0, 2)), exact.mean(dim=(0, 2)), rtol=0, atol=1e-6)
    total = est.sum(1)  # (T, N)
    closed_kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)  # (N,)
    se = total.std(0) / math.sqrt(draws)
    assert ((total.mean(0) - closed_kl).abs() < 4 * se).all()


def test_tc_with_a_smaller_batch_is_biased_as_jensen_says_and_by_at_most_the_stated_amount() -> None:
    """N = 6, D = 2, batches of M = 3 drawn at random (2000 of them): the aggregate posterior's estimate is unbiased, so its log
    is biased low. Observed at M = 3: MI +0.09, TC +0.13, dim-KL -0.22 nats (exact 1.40, 0.32, 1.09); asserted: MI
    overestimated by 0 to 0.2, dim-KL underestimated by 0 to 0.35, |TC bias| < 0.2 (the sum stays exact, see above).
    M = 2 is biased more (observed +0.18, +0.32, -0.50)."""
    mu, logvar = _tc_data()
    g = torch.Generator().manual_seed(3)
    bias = {}
    for m in (3, 2):
        est_sum = torch.zeros(3, dtype=F64)
        zs, rowss = [], []
        trials = 2000
        for _ in range(trials):
            rows = torch.randperm(6, generator=g)[:m]
            z = mu[rows] + torch.exp(0.5 * logvar[rows]) * torch.randn(m, 2, generator=g, dtype=F64)
            mi, tc, dim_kl, kl = _tc_estimates(z, rows, mu, logvar, 6)
            est_sum += torch.stack([mi.mean(), tc.mean(), dim_kl.mean()])
            zs.append(z)
            rowss.append(rows)
        exact = torch.stack([t.mean() for t in _exact_tc_terms(torch.stack(zs), torch.stack(rowss), mu, logvar)])
        bias[m] = est_sum / trials - exact
    mi_bias, tc_bias, dim_kl_bias = bias[3].tolist()
    assert 0 < mi_bias < 0.2
    assert -0.35 < dim_kl_bias < 0
    assert abs(tc_bias) < 0.2
    assert bias[2].abs().sum() > bias[3].abs().sum()


# ---------------------------------------------------------------- 6. capacity


def test_capacity_rises_linearly_to_its_maximum_and_holds() -> None:
    assert capacity_at(0, 25.0, 1000) == 0.0
    assert capacity_at(500, 25.0, 1000) == 12.5
    assert capacity_at(250, 25.0, 1000) == 6.25
    assert capacity_at(1000, 25.0, 1000) == 25.0
    assert capacity_at(5000, 25.0, 1000) == 25.0
    assert capacity_at(3, 25.0, 0) == 25.0  # no ramp: the maximum from the start


@pytest.mark.parametrize("capacity", [0.0, 3.0, 50.0])
def test_capacity_loss_is_recon_plus_gamma_times_distance_of_kl_to_c(capacity: float) -> None:
    model = _tiny_vae()
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(6, 1, 4, 4, generator=g) > 0.5).float()
    out = model(x, eps=torch.randn(1, 6, 2, generator=g))
    weights = Weights(gamma=7.5, capacity=capacity)
    terms = objective_terms(x, out, model.likelihood, Objective(name="capacity"), weights)
    recon = -model.likelihood.log_prob(out.x_params, x).mean()
    kl = (0.5 * (out.mu**2 + out.logvar.exp() - 1 - out.logvar)).sum(-1).mean()  # closed form: a Gaussian posterior, normal prior
    assert terms["recon"].item() == pytest.approx(recon.item(), abs=1e-5)
    assert terms["kl"].item() == pytest.approx(kl.item(), abs=1e-5)
    assert terms["loss"].item() == pytest.approx((recon + 7.5 * (kl - capacity).abs()).item(), abs=1e-4)
    assert terms["capacity"].item() == capacity


# ---------------------------------------------------------------- 7. likelihoods


def _pixel_params(pairs: list[tuple[float, float]], width: int) -> Tensor:
    """Params (N, 2, 1, width) with mean and log-scale maps constant per row."""
    values = torch.tensor(pairs, dtype=torch.float32)  # (N, 2)
    return values[:, :, None, None].expand(-1, -1, 1, width).contiguous()


LOGISTIC_CASES = [(0.5, -3.0), (0.1, -7.0), (0.5, -10.0), (-0.3, -2.0), (1.4, 0.5), (0.7, 5.0), (0.02, -4.5), (2.0, -7.0), (0.9, 9.0)]


def _logistic_bin_probabilities(mean: float, log_scale: float) -> Tensor:
    """The 256 bin probabilities in float64 from the logistic CDF, the ends taking the tails; the log-scale clamped as the library does."""
    s = math.exp(min(max(log_scale, LOGISTIC_LOG_SCALE_MIN), LOG_SCALE_MAX))
    x = torch.arange(256, dtype=F64) / 255
    upper = torch.sigmoid((x + 0.5 / 255 - mean) / s)
    lower = torch.sigmoid((x - 0.5 / 255 - mean) / s)
    upper[-1], lower[0] = 1.0, 0.0
    return upper - lower


def test_discretized_logistic_probabilities_of_the_256_values_sum_to_one() -> None:
    lik = DiscretizedLogistic()
    x = (torch.arange(256, dtype=torch.float32) / 255).view(1, 1, 1, 256).expand(len(LOGISTIC_CASES), 1, 1, 256)
    probs = lik.log_prob_pixels(_pixel_params(LOGISTIC_CASES, 256), x).double().exp()  # (N, 1, 1, 256)
    totals = probs.sum(-1).flatten()
    torch.testing.assert_close(totals, torch.ones_like(totals), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("mean", "log_scale"), LOGISTIC_CASES)
def test_discretized_logistic_bin_probability_is_the_logistic_mass_of_the_bin(mean: float, log_scale: float) -> None:
    """Every bin's probability equals the float64 CDF difference (abs 2e-6, rel 5e-5: x = k/255 and the bin edges are fp32);
    where it is above 1e-6, its log within 1e-4 nats (1e-2 at the largest scales, see below); and an interior bin's mass
    equals a 2001-point Simpson quadrature of the logistic density over [k - 1/2, k + 1/2] / 255."""
    lik = DiscretizedLogistic()
    x = (torch.arange(256, dtype=torch.float32) / 255).view(1, 1, 1, 256)
    log_probs = lik.log_prob_pixels(_pixel_params([(mean, log_scale)], 256), x).double().flatten()
    reference = _logistic_bin_probabilities(mean, log_scale)
    torch.testing.assert_close(log_probs.exp(), reference, rtol=5e-5, atol=2e-6)
    big = reference > 1e-6
    # With scale >> bin, log sigmoid(lower) - log sigmoid(upper) ~ bin/(2 scale) is a difference of two fp32 numbers near
    # -0.69: relative error ~2^-24 * scale/bin, observed 6e-3 nats at log-scale 5 (the clamp's maximum), 5e-5 at log-scale 0.
    tolerance = 1e-4 if log_scale <= 0 else 1e-2
    torch.testing.assert_close(log_probs[big], reference[big].log(), rtol=0, atol=tolerance)
    # quadrature of the density for interior bins, independent of any CDF
    s = math.exp(min(max(log_scale, LOGISTIC_LOG_SCALE_MIN), LOG_SCALE_MAX))
    k = torch.arange(1, 255, dtype=F64)[:, None]
    t = torch.linspace(-0.5, 0.5, 2001, dtype=F64)[None, :]
    u = ((k + t) / 255 - mean) / s
    density = torch.exp(-u.abs()) / (s * (1 + torch.exp(-u.abs())) ** 2)
    weights = torch.ones(2001, dtype=F64)
    weights[1:-1:2], weights[2:-1:2] = 4, 2
    mass = (density * weights).sum(-1) * (1 / 255 / 2000) / 3
    torch.testing.assert_close(log_probs.exp()[1:255], mass, rtol=5e-5, atol=2e-6)


GRID = torch.linspace(0, 1, 20001, dtype=F64)


@pytest.mark.parametrize("eta", [0.0, 1e-4, -1e-4, 2e-3, 0.7, -1.0, 5.0, 20.0, -20.0])
def test_continuous_bernoulli_is_a_density_on_the_unit_interval_with_the_stated_mean(eta: float) -> None:
    """Trapezoid on 20001 float64 points: the density integrates to 1 (1e-5) and its first moment is `mean` (1e-4);
    log_prob equals torch.distributions.ContinuousBernoulli's (1e-4) at every grid point."""
    lik = ContinuousBernoulli()
    x = GRID.float().view(1, 1, 1, -1)
    logits = torch.full_like(x, eta)
    log_p = lik.log_prob_pixels(logits, x).double().flatten()
    density = log_p.exp()
    assert torch.trapezoid(density, GRID).item() == pytest.approx(1.0, abs=1e-5)
    first_moment = torch.trapezoid(GRID * density, GRID).item()
    assert lik.mean(torch.tensor([eta])).item() == pytest.approx(first_moment, abs=1e-4)
    reference = TorchContinuousBernoulli(logits=torch.full_like(GRID, eta)).log_prob(GRID)
    torch.testing.assert_close(log_p, reference, rtol=0, atol=1e-4)
    torch_mean = TorchContinuousBernoulli(logits=torch.tensor(eta, dtype=F64)).mean.item()
    assert lik.mean(torch.tensor([eta])).item() == pytest.approx(torch_mean, abs=1e-4)


def test_gaussian_likelihood_is_the_normal_log_density_above_the_floor() -> None:
    g = torch.Generator().manual_seed(5)
    mean = torch.rand(3, 1, 4, 4, generator=g)
    log_scale = torch.rand(3, 1, 4, 4, generator=g) * (LOG_SCALE_MAX - GAUSSIAN_LOG_SCALE_MIN - 0.2) + GAUSSIAN_LOG_SCALE_MIN + 0.1
    x = torch.rand(3, 1, 4, 4, generator=g)
    got = Gaussian().log_prob_pixels(torch.cat([mean, log_scale], 1), x).double()
    reference = Normal(mean.double(), log_scale.double().exp()).log_prob(x.double())
    torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-4)
    per_image = Gaussian().log_prob(torch.cat([mean, log_scale], 1), x).double()
    torch.testing.assert_close(per_image, reference.flatten(1).sum(1), rtol=1e-5, atol=1e-3)


def test_gaussian_log_scale_floor_makes_the_peak_density_exactly_256() -> None:
    """At or below the floor, p(x = mean) = 1 / (sigma sqrt(2 pi)) = 256: an 8-bit bin (width 1/256) then has probability <= 1."""
    assert math.exp(-GAUSSIAN_LOG_SCALE_MIN) / math.sqrt(2 * math.pi) == pytest.approx(256.0, rel=1e-12)
    x = torch.full((1, 1, 1, 3), 0.25)
    params = torch.cat([x, torch.tensor([GAUSSIAN_LOG_SCALE_MIN, -10.0, -100.0]).view(1, 1, 1, 3)], 1)
    peak = Gaussian().log_prob_pixels(params, x).double().exp().flatten()
    torch.testing.assert_close(peak, torch.full((3,), 256.0, dtype=F64), rtol=1e-6, atol=0)


def test_bernoulli_likelihood_matches_torch_bernoulli_on_binary_pixels() -> None:
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(4, 1, 5, 5, generator=g) * 6
    x = (torch.rand(4, 1, 5, 5, generator=g) > 0.5).float()
    reference = Independent(TorchBernoulli(logits=logits.double()), 3).log_prob(x.double())
    torch.testing.assert_close(Bernoulli().log_prob(logits, x).double(), reference, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(Bernoulli().mean(logits), torch.sigmoid(logits))


# ---------------------------------------------------------------- 8. linear-Gaussian models: exact log p(x)


class _LinearGaussian:
    """x = W z + b + N(0, sigma^2 I), z ~ N(0, I): p(x) = N(b, W W^T + sigma^2 I), the posterior N(m, S) in closed form (float64)."""

    def __init__(self, seed: int = 0, dz: int = 2, dx: int = 3, sigma: float = 0.5):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(dx, dz, generator=g, dtype=F64)
        self.b = torch.randn(dx, generator=g, dtype=F64)
        self.sigma = sigma
        self.x = self.sample(4, g)  # (B, Dx)

    def sample(self, n: int, g: torch.Generator) -> Tensor:
        z = torch.randn(n, self.w.shape[1], generator=g, dtype=F64)
        return z @ self.w.T + self.b + self.sigma * torch.randn(n, self.w.shape[0], generator=g, dtype=F64)

    def log_joint(self, z: Tensor, log_prior: Callable[[Tensor], Tensor]) -> Tensor:
        """log p(x|z) + log p(z) for z (S, B, Dz): (S, B)."""
        return Normal(z @ self.w.T + self.b, self.sigma).log_prob(self.x).sum(-1) + log_prior(z)

    def gaussian_posterior(self, prior_mean: Tensor, prior_cov: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (B, Dz) and covariance (Dz, Dz) of p(z|x) under the prior N(prior_mean, prior_cov)."""
        precision = torch.linalg.inv(prior_cov) + self.w.T @ self.w / self.sigma**2
        cov = torch.linalg.inv(precision)
        mean = (torch.linalg.solve(prior_cov, prior_mean) + (self.x - self.b) @ self.w / self.sigma**2) @ cov.T
        return mean, cov


def _gaussian_proposal_log_weights(
    model: _LinearGaussian, mean: Tensor, cov: Tensor, log_prior: Callable[[Tensor], Tensor]
) -> Callable[[Tensor], Tensor]:
    """eps (S, B, Dz) -> log p(x, z) - log q(z|x) with z = mean + L eps, q = N(mean, cov)."""
    tril = torch.linalg.cholesky(cov)
    q = MultivariateNormal(mean, scale_tril=tril)

    def log_weights(eps: Tensor) -> Tensor:
        z = mean + eps.double() @ tril.T
        return model.log_joint(z, log_prior) - q.log_prob(z)

    return log_weights


def _standard_normal(z: Tensor) -> Tensor:
    return Normal(0.0, 1.0).log_prob(z).sum(-1)


@pytest.mark.parametrize("k", [1, 7, 100])
def test_exact_posterior_gives_exact_log_px_for_every_k(k: int) -> None:
    model = _LinearGaussian()
    mean, cov = model.gaussian_posterior(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    exact = MultivariateNormal(model.b, model.w @ model.w.T + model.sigma**2 * torch.eye(3, dtype=F64)).log_prob(model.x)
    log_weights = _gaussian_proposal_log_weights(model, mean, cov, _standard_normal)
    got = importance_log_likelihood(log_weights, (4, 2), k, chunk=3, generator=torch.Generator().manual_seed(k))
    torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("raw", ["zero", "u_parallel_to_w"])
def test_exact_posterior_through_an_identity_planar_step_still_gives_exact_log_px(raw: str) -> None:
    """u_hat = 0 makes the planar step the identity with log|det| = 0: raw u = w = 0, or u = c w with w.u = log(e - 1)
    (then m(w.u) = softplus(w.u) - 1 = 0). log q(z') = log q(z) - log|det| then leaves every weight at p(x)."""
    model = _LinearGaussian()
    w = torch.tensor([0.0, 0.0]) if raw == "zero" else torch.tensor([0.8, -1.3])
    u = w * math.log(math.e - 1) / w.dot(w) if raw == "u_parallel_to_w" else torch.zeros(2)
    step = _planar_with(u.double(), w.double(), 0.4)
    mean, cov = model.gaussian_posterior(torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    tril = torch.linalg.cholesky(cov)
    q = MultivariateNormal(mean, scale_tril=tril)
    h = torch.zeros(4, 1, dtype=F64)

    def log_weights(eps: Tensor) -> Tensor:
        z0 = mean + eps.double() @ tril.T
        z, log_det = step(z0, h)
        # u_hat is 0 up to float64 rounding of log(e - 1) through softplus
        assert log_det.abs().max().item() < 1e-8 and (z - z0).abs().max().item() < 1e-8
        return model.log_joint(z, _standard_normal) - (q.log_prob(z0) - log_det)

    exact = MultivariateNormal(model.b, model.w @ model.w.T + model.sigma**2 * torch.eye(3, dtype=F64)).log_prob(model.x)
    for k in (1, 50):
        got = importance_log_likelihood(log_weights, (4, 2), k, chunk=16, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(got.double(), exact, rtol=1e-6, atol=1e-5)


def test_planar_step_with_raw_u_zero_is_not_the_identity() -> None:
    """Rezende & Mohamed's u_hat = u + (m(w.u) - w.u) w / |w|^2 with m(a) = softplus(a) - 1: raw u = 0 gives
    u_hat = (log 2 - 1) w / |w|^2, so z' - z = (log 2 - 1) tanh(w.z + b) w / |w|^2, not 0."""
    w, b = torch.tensor([0.8, -1.3], dtype=F64), 0.4
    step = _planar_with(torch.zeros(2, dtype=F64), w, b)
    z = torch.tensor([[[0.3, 0.2]]], dtype=F64)
    out, _ = step(z, torch.zeros(1, 1, dtype=F64))
    expected = (math.log(2) - 1) * math.tanh(z[0, 0].dot(w).item() + b) * w / w.dot(w)
    torch.testing.assert_close(out[0, 0] - z[0, 0], expected, rtol=1e-12, atol=1e-12)


def test_iwae_under_a_mixture_prior_converges_to_the_closed_form_log_px() -> None:
    """Prior 0.3 N((-2, 0), diag(0.5, 0.8)) + 0.7 N((1.5, 1), diag(0.3, 0.4)): p(x) = sum_k pi_k N(W m_k + b, W S_k W^T + sigma^2 I).
    Proposal: the Gaussian posterior under the moment-matched Gaussian prior, covariance inflated 1.5^2. With K = 20000 the
    estimate is within 0.05 nats of log p(x) (observed 0.004 to 0.017); the K = 1 bound (mean of 4000 draws) is below it by
    more than 0.5 nats (observed 1.1 to 1.8)."""
    model = _LinearGaussian(seed=1)
    weights = torch.tensor([0.3, 0.7], dtype=F64)
    means = torch.tensor([[-2.0, 0.0], [1.5, 1.0]], dtype=F64)
    variances = torch.tensor([[0.5, 0.8], [0.3, 0.4]], dtype=F64)
    prior = MixtureSameFamily(Categorical(probs=weights), Independent(Normal(means, variances.sqrt()), 1))
    eye = torch.eye(3, dtype=F64)
    components = MultivariateNormal(means @ model.w.T + model.b, model.w @ torch.diag_embed(variances) @ model.w.T + model.sigma**2 * eye)
    exact = torch.logsumexp(components.log_prob(model.x[:, None, :]) + weights.log(), dim=1)  # (B,)
    prior_mean = (weights[:, None] * means).sum(0)
    prior_cov = torch.diag((weights[:, None] * (variances + means**2)).sum(0)) - torch.outer(prior_mean, prior_mean)
    mean, cov = model.gaussian_posterior(prior_mean, prior_cov)
    log_weights = _gaussian_proposal_log_weights(model, mean, 1.5**2 * cov, prior.log_prob)
    big = importance_log_likelihood(log_weights, (4, 2), 20_000, chunk=5000, generator=torch.Generator().manual_seed(0)).double()
    torch.testing.assert_close(big, exact, rtol=0, atol=0.05)
    repeats = 4000
    mean_rep = mean.repeat(repeats, 1)
    model_rep = _LinearGaussian(seed=1)
    model_rep.x = model.x.repeat(repeats, 1)
    single = importance_log_likelihood(
        _gaussian_proposal_log_weights(model_rep, mean_rep, 1.5**2 * cov, prior.log_prob), (4 * repeats, 2), 1,
        generator=torch.Generator().manual_seed(1),
    ).double().view(repeats, 4)
    assert (single.mean(0) < exact - 0.5).all()
    assert (single.mean(0) < big - 0.5).all()


# ---------------------------------------------------------------- edges an adversarial pass found


def test_tc_with_a_batch_of_one_takes_its_own_posterior_for_q_z() -> None:
    """One image has no other to estimate q(z) from: MI is 0 and the terms still add up to the sampled KL (not MI = log N)."""
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(1, 3, generator=g), torch.randn(1, 3, generator=g) * 0.3
    z = mu + torch.exp(0.5 * logvar) * torch.randn(1, 3, generator=g)
    log_q = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
    mi, tc, dim_kl = tc_decomposition(z, mu, logvar, log_q, log_p, dataset_size=60000)
    assert mi.item() == pytest.approx(0.0, abs=1e-6) and tc.item() == pytest.approx(0.0, abs=1e-5)
    assert (mi + tc + dim_kl).item() == pytest.approx((log_q - log_p).item(), abs=1e-5)


def test_continuous_bernoulli_density_never_exceeds_256() -> None:
    """At x = 0 or 1 the density grows like |logit|; the clamp at 256 keeps every 8-bit bin's probability <= 1 (bits/dim >= 0)."""
    cb = ContinuousBernoulli()
    logits = torch.tensor([-1e4, -300.0, -256.0, 300.0, 1e4])
    x = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0])
    density = cb.log_prob_pixels(logits, x).exp()
    assert density.max().item() <= 256.0 + 1e-3 and density.min().item() > 255.0


def test_a_deep_iaf_starts_close_to_the_identity() -> None:
    """With K steps each gate starts at sigmoid(2 + log K): the product of the K sigmas stays near sigmoid(2) = 0.88, not 0.88^K."""
    for steps in (1, 2, 50):
        posterior = Posterior(features=4, latent_dim=3, kind="iaf", steps=steps, hidden=8)
        product = math.prod(torch.sigmoid(step.gate.bias[0]).item() for step in posterior.flow)
        assert product == pytest.approx(0.88, abs=0.01), steps
