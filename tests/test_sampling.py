"""ODE solvers against the closed-form PF-ODE of Gaussian data; inversion round trip, NFE counts, seeding, CFG."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from pagoda.precond import Denoiser
from pagoda.random_util import StackedRandomGenerator, sample_seeds
from pagoda.sampling import (
    classifier_free_guidance,
    count_nfe,
    euler_sample,
    heun_decode,
    heun_invert,
    heun_sample,
    karras_sigmas,
    stochastic_sample,
)

# Data x0 ~ N(MU, S^2 I): the exact denoiser and the exact PF-ODE flow are known in closed form.
MU, S = 0.3, 0.4


def gaussian_denoiser(x, sigma, y=None):
    sigma = sigma.to(x.dtype).view(-1, *([1] * (x.ndim - 1)))
    return (S**2 * x + sigma**2 * MU) / (S**2 + sigma**2)


def exact_flow(x, sigma_from, sigma_to):
    return MU + (x - MU) * math.sqrt(S**2 + sigma_to**2) / math.sqrt(S**2 + sigma_from**2)


def rel_err(a, b):
    """Relative error measured against the spread of the reference around the data mean."""
    return ((a - b).norm() / (b - MU).norm()).item()


class TinyBackbone(nn.Module):
    """A small deterministic conditional network: conv + log-sigma shift + label embedding."""

    def __init__(self, num_classes=10):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.emb = nn.Embedding(num_classes, 3)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=gen) * 0.3

    def forward(self, x, sigma, y=None):
        h = self.conv(x) + 0.1 * sigma.log().view(-1, 1, 1, 1)
        if y is not None:
            h = h + self.emb(y)[:, :, None, None]
        return torch.tanh(h)


@pytest.fixture
def noise64():
    gen = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, 4, 4, generator=gen, dtype=torch.float64) * 80.0


def test_karras_sigmas_golden_values():
    sigmas = karras_sigmas(40)
    assert sigmas.shape == (41,) and sigmas.dtype == torch.float32
    assert sigmas[0].item() == 80.0
    assert sigmas[-2].item() == pytest.approx(0.002, rel=1e-6)
    assert sigmas[-1].item() == 0.0
    assert sigmas[1].item() == pytest.approx(69.450946, rel=1e-6)
    assert sigmas[20].item() == pytest.approx(2.2404398, rel=1e-6)
    assert sigmas[38].item() == pytest.approx(0.0036765892, rel=1e-6)
    assert torch.all(sigmas[:-1] > sigmas[1:])
    i = np.arange(40)
    closed_form = (80 ** (1 / 7) + i / 39 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(sigmas[:-1].numpy(), closed_form, rtol=1e-6)


def test_karras_sigmas_rejects_bad_arguments():
    with pytest.raises(ValueError, match="num_steps must be at least 1"):
        karras_sigmas(0)
    with pytest.raises(ValueError, match="need 0 < sigma_min <= sigma_max"):
        karras_sigmas(10, sigma_min=0.0)


def test_heun_matches_exact_pf_ode_and_beats_euler(noise64):
    sigmas = karras_sigmas(80)
    reference = exact_flow(noise64, 80.0, 0.0)
    heun_err = rel_err(heun_sample(gaussian_denoiser, noise64, sigmas), reference)
    euler_err = rel_err(euler_sample(gaussian_denoiser, noise64, sigmas), reference)
    # Measured: Heun 2.5e-3, Euler 3.6e-2 at 80 steps (1.0e-2 and 7.2e-2 at 40).
    assert heun_err < 5e-3
    assert euler_err > 10 * heun_err


def test_heun_error_shrinks_second_order(noise64):
    reference = exact_flow(noise64, 80.0, 0.0)
    err40 = rel_err(heun_sample(gaussian_denoiser, noise64, karras_sigmas(40)), reference)
    err80 = rel_err(heun_sample(gaussian_denoiser, noise64, karras_sigmas(80)), reference)
    assert 3.0 < err40 / err80 < 5.0  # doubling the steps divides a 2nd-order error by about 4


def test_heun_invert_follows_exact_flow_and_decode_round_trips():
    gen = torch.Generator().manual_seed(1)
    x = MU + S * torch.randn(16, 3, 4, 4, generator=gen, dtype=torch.float64)
    sigmas = karras_sigmas(40)
    sigma_min = sigmas[-2].item()
    encoder, decoder = count_nfe(gaussian_denoiser), count_nfe(gaussian_denoiser)
    z = heun_invert(encoder, x, sigmas, clamp_denoised=False)
    assert rel_err(z, exact_flow(x, sigma_min, 80.0)) < 3e-2  # measured 9.3e-3
    x_back = heun_decode(decoder, z, sigmas, clamp_denoised=False)
    assert (x_back - x).abs().max().item() < 5e-3  # measured 1.6e-3
    # 39 Heun steps, two evaluations each, none wasted.
    assert encoder.nfe == decoder.nfe == 78


def test_heun_decode_is_heun_sample_stopped_at_sigma_min(noise64):
    sigmas = karras_sigmas(12)
    decoded = heun_decode(gaussian_denoiser, noise64, sigmas, clamp_denoised=False)
    truncated = heun_sample(gaussian_denoiser, noise64, sigmas[:-1])
    assert torch.equal(decoded, truncated)


def test_nfe_counts():
    x = torch.zeros(2, 3, 4, 4)
    for num_steps in (2, 5, 18):
        sigmas = karras_sigmas(num_steps)
        counters = {name: count_nfe(gaussian_denoiser) for name in ("heun", "euler", "invert", "decode")}
        heun_sample(counters["heun"], x, sigmas)
        euler_sample(counters["euler"], x, sigmas)
        heun_invert(counters["invert"], x, sigmas)
        heun_decode(counters["decode"], x, sigmas)
        assert counters["heun"].nfe == 2 * num_steps - 1  # the last step, to sigma = 0, is Euler
        assert counters["euler"].nfe == num_steps
        assert counters["invert"].nfe == counters["decode"].nfe == 2 * (num_steps - 1)


def test_clamp_denoised_applies_at_every_evaluation():
    seen = []

    def wild(x, sigma, y=None):
        out = 5.0 * torch.ones_like(x)
        seen.append(out)
        return out

    x = torch.zeros(1, 1, 2, 2, dtype=torch.float64)
    sigmas = karras_sigmas(3)
    sigma_min = sigmas[-2].item()
    # For a constant D = c the flow is linear in sigma, x = c + (x0 - c) sigma / sigma_0, and Heun is exact:
    # clamping turns c = 5 into c = 1 at every evaluation.
    clamped = heun_decode(wild, x + 80.0, sigmas, clamp_denoised=True)
    unclamped = heun_decode(wild, x + 80.0, sigmas, clamp_denoised=False)
    torch.testing.assert_close(clamped, torch.full_like(x, 1 + 79 * sigma_min / 80))
    torch.testing.assert_close(unclamped, torch.full_like(x, 5 + 75 * sigma_min / 80))
    assert len(seen) == 8


def test_inversion_rejects_grid_without_trailing_zero():
    with pytest.raises(ValueError, match="heun_invert needs a grid ending in 0"):
        heun_invert(gaussian_denoiser, torch.zeros(1, 1), karras_sigmas(5)[:-1])
    with pytest.raises(ValueError, match="strictly descending"):
        heun_sample(gaussian_denoiser, torch.zeros(1, 1), karras_sigmas(5).flip(0))


def test_stochastic_without_churn_is_heun_and_draws_no_noise(noise64):
    def no_noise(x):
        raise AssertionError("no noise should be drawn when s_churn = 0")

    sigmas = karras_sigmas(10)
    expected = heun_sample(gaussian_denoiser, noise64, sigmas)
    assert torch.equal(stochastic_sample(gaussian_denoiser, noise64, sigmas, randn_like=no_noise), expected)


def test_stochastic_churn_raises_sigma_and_adds_matching_noise():
    calls = []

    def recording(x, sigma, y=None):
        calls.append((x.clone(), sigma[0].item()))
        return torch.zeros_like(x)

    sigmas = karras_sigmas(4)  # 80, 9.72, 0.470, 0.002, 0
    x = torch.zeros(1, 1)
    stochastic_sample(recording, x, sigmas, randn_like=torch.ones_like, s_churn=0.4, s_tmin=0.05, s_tmax=20.0,
                      s_noise=1.5)
    gamma = 0.4 / 4
    step_sigmas = [calls[i][1] for i in (0, 2, 4, 6)]  # first evaluation of each Heun step
    assert step_sigmas[0] == pytest.approx(80.0)  # outside [s_tmin, s_tmax]: no churn
    for k in (1, 2):
        sigma = sigmas[k].item()
        assert step_sigmas[k] == pytest.approx(sigma * (1 + gamma), rel=1e-6)
    assert step_sigmas[3] == pytest.approx(0.002, rel=1e-5)
    # With D = 0 and x = 0 the deterministic part never moves x, so step 1 is evaluated exactly at the
    # injected noise sqrt(sigma_hat^2 - sigma^2) * s_noise * randn (randn = 1 here).
    sigma = sigmas[1].item()
    assert calls[1][0].item() == 0.0
    assert calls[2][0].item() == pytest.approx(math.sqrt((sigma * (1 + gamma)) ** 2 - sigma**2) * 1.5, rel=1e-5)


def test_stochastic_churn_is_capped_at_sqrt2_minus_1():
    seen = []

    def recording(x, sigma, y=None):
        seen.append(sigma[0].item())
        return torch.zeros_like(x)

    stochastic_sample(recording, torch.zeros(1, 1), karras_sigmas(4), randn_like=torch.zeros_like, s_churn=100.0)
    assert seen[0] == pytest.approx(80.0 * math.sqrt(2), rel=1e-6)


def test_stochastic_sampler_samples_the_data_distribution():
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(20000, 1, generator=gen) * 80.0
    x = stochastic_sample(gaussian_denoiser, z, karras_sigmas(40), s_churn=40.0,
                          randn_like=lambda a: torch.randn(a.shape, generator=gen))
    # Target N(0.3, 0.4^2). Measured mean 0.297, std 0.415 (the gap is discretisation error);
    # a wrong noise scale such as s_noise = 1.3 gives std 0.536.
    assert x.mean().item() == pytest.approx(MU, abs=0.02)
    assert x.std().item() == pytest.approx(S, rel=0.08)


def _generate(denoiser, seeds, batch_size, sampler):
    outputs = []
    for start in range(0, len(seeds), batch_size):
        rnd = StackedRandomGenerator("cpu", seeds[start:start + batch_size])
        z = rnd.randn([len(rnd.seeds), 3, 8, 8]) * 80.0
        y = rnd.randint(10, size=[len(rnd.seeds)])
        outputs.append((z, y, sampler(denoiser, z, y, rnd)))
    return [torch.cat(parts) for parts in zip(*outputs)]


@pytest.mark.parametrize("sampler", [
    lambda d, z, y, rnd: heun_sample(d, z, karras_sigmas(6), y),
    lambda d, z, y, rnd: stochastic_sample(d, z, karras_sigmas(6), y, randn_like=rnd.randn_like, s_churn=5.0),
], ids=["heun", "stochastic"])
def test_samples_do_not_depend_on_batch_size(sampler):
    denoiser = Denoiser(TinyBackbone())
    seeds = sample_seeds(8, base_seed=100)
    z1, y1, x1 = _generate(denoiser, seeds, 1, sampler)
    z8, y8, x8 = _generate(denoiser, seeds, 8, sampler)
    assert torch.equal(z1, z8) and torch.equal(y1, y8)
    assert len(set(y8.tolist())) > 1 and not torch.allclose(x8[0], x8[1])
    # The noise and labels are bit-identical; float32 convolutions may round differently per batch size
    # (measured max difference 4e-6 on outputs of std ~1), so the samples are compared to 1e-5.
    torch.testing.assert_close(x1, x8, rtol=0, atol=1e-5)


def test_classifier_free_guidance_end_points_and_single_call():
    torch.manual_seed(0)
    denoiser = count_nfe(Denoiser(TinyBackbone(num_classes=11)))
    x = torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([0.1, 1.0, 5.0, 50.0])
    y = torch.tensor([0, 3, 5, 9])
    null = torch.full_like(y, 10)
    cond, uncond = denoiser(x, sigma, y), denoiser(x, sigma, null)
    denoiser.nfe = 0
    assert torch.equal(classifier_free_guidance(denoiser, guidance_scale=1.0, null_class=10)(x, sigma, y), cond)
    assert torch.equal(classifier_free_guidance(denoiser, guidance_scale=0.0, null_class=10)(x, sigma, y), uncond)
    guided = classifier_free_guidance(denoiser, guidance_scale=2.5, null_class=10)(x, sigma, y)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond))
    assert denoiser.nfe == 3  # one batched call per guided evaluation
    with pytest.raises(ValueError, match="needs class labels y"):
        classifier_free_guidance(denoiser, guidance_scale=2.0, null_class=10)(x, sigma)


def test_sample_seeds_shards_are_disjoint_and_cover():
    shards = [sample_seeds(103, base_seed=7, shard=k, num_shards=4) for k in range(4)]
    assert sorted(sum(shards, [])) == list(range(7, 110))
    assert shards[1][:3] == [8, 12, 16]
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    with pytest.raises(ValueError, match="need 0 <= shard < num_shards"):
        sample_seeds(10, shard=4, num_shards=4)


def test_stacked_generator_rows_come_from_their_own_seed():
    rnd = StackedRandomGenerator("cpu", [5, 9])
    draws = rnd.randn([2, 3])
    assert torch.equal(draws[1], torch.randn(3, generator=torch.Generator().manual_seed(9)))
    with pytest.raises(ValueError, match=r"size\[0\] must equal the number of seeds \(2\)"):
        rnd.randn([3, 3])
