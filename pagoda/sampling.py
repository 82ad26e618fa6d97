"""Noise grids and probability-flow ODE solvers for the EDM / VE formulation, as pure functions.

`denoise(x, sigma, y)` is any callable returning the denoised estimate D(x, sigma) for a per-sample sigma of
shape (N,). The PF-ODE of the VE process is dx/dsigma = (x - D(x, sigma)) / sigma (Karras et al. 2022, eq. 4
with s(t) = 1, sigma(t) = t). Sampling integrates it from sigma_max down to 0; PaGoDA's data-to-noise encoder
(`heun_invert`) integrates it from sigma_min up to sigma_max, and `heun_decode` is its exact mirror.
Every solver keeps its state in at least float32 and never depends on the batch size.
"""

import torch
from tqdm.auto import tqdm

from .nn import append_dims


def karras_sigmas(num_steps, sigma_min=0.002, sigma_max=80.0, rho=7.0, device=None):
    """Karras et al. 2022 eq. 5: `num_steps` sigmas from sigma_max down to sigma_min, then a final 0."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
    # float64 on CPU so the grid is the same on every device, then float32 like the networks' inputs.
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    max_inv_rho = sigma_max ** (1 / rho)
    min_inv_rho = sigma_min ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    return sigmas.to(device=device, dtype=torch.float32)


def halved_grid(sigmas):
    """The grid of a student distilled from a teacher on `sigmas` (N steps, ending in 0): every second point,
    then 0, so N / 2 steps. Not karras_sigmas(N / 2): its last nonzero point is sigmas[N - 2], not sigma_min; on a
    Karras grid every second point is itself a rho-grid (sigma^(1/rho) is linear in the index)."""
    sigmas = torch.as_tensor(sigmas).flatten()
    num_steps = len(sigmas) - 1
    if num_steps < 2 or num_steps % 2 or sigmas[-1] != 0:
        raise ValueError(f"halving needs a grid of an even number of steps ending in 0; got {num_steps} steps "
                         f"ending in {sigmas[-1].item() if len(sigmas) else None}")
    return torch.cat([sigmas[0:num_steps:2], sigmas.new_zeros(1)])


def euler_step(x, denoised, sigma, sigma_next):
    """One Euler (DDIM) step of the PF-ODE from sigma to sigma_next, per-sample sigmas of shape (N,) or scalars:
    x_next = denoised + (sigma_next / sigma) (x - denoised)."""
    ratio = _per_sample(sigma_next, x) / _per_sample(sigma, x)
    return denoised + ratio * (x - denoised)


def euler_target(x, x_next, sigma, sigma_next):
    """The denoised estimate whose Euler step from x at sigma lands exactly on x_next at sigma_next (the inverse of
    euler_step in `denoised`): (x_next - r x) / (1 - r), r = sigma_next / sigma < 1. For sigma_next = 0, x_next."""
    ratio = _per_sample(sigma_next, x) / _per_sample(sigma, x)
    return (x_next - ratio * x) / (1 - ratio)


def _per_sample(sigma, x):
    """A scalar or per-sample (N,) sigma, shaped to broadcast against x, in x's dtype."""
    sigma = torch.as_tensor(sigma, device=x.device, dtype=x.dtype)
    return append_dims(sigma, x.ndim) if sigma.ndim else sigma


def _state(x):
    """The ODE state is integrated in at least float32, whatever precision the caller's tensor has."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _denoised(denoise, x, sigma, y, clamp_denoised):
    sigma_vec = torch.full((x.shape[0],), sigma, device=x.device, dtype=x.dtype)
    denoised = denoise(x, sigma_vec, y).to(x.dtype)
    # PaGoDA's encoder clamps the teacher's estimate to the data range at every evaluation (clip_denoised).
    return denoised.clamp(-1, 1) if clamp_denoised else denoised


def heun_step(denoise, x, sigma, sigma_next, y, clamp_denoised):
    """One step of EDM Algorithm 2 (s_churn = 0): Euler, then the trapezoidal correction unless sigma_next is 0."""
    d = (x - _denoised(denoise, x, sigma, y, clamp_denoised)) / sigma
    x_next = x + (sigma_next - sigma) * d
    if sigma_next == 0:
        return x_next
    d_next = (x_next - _denoised(denoise, x_next, sigma_next, y, clamp_denoised)) / sigma_next
    return x + (sigma_next - sigma) * (d + d_next) / 2


def _heun_path(denoise, x, path, y, clamp_denoised, progress):
    """Heun steps along consecutive entries of `path` (a python list of sigmas, in either direction)."""
    x = _state(x)
    for sigma, sigma_next in tqdm(list(zip(path[:-1], path[1:])), disable=not progress):
        x = heun_step(denoise, x, sigma, sigma_next, y, clamp_denoised)
    return x


def _check_grid(sigmas, *, min_len, caller):
    sigmas = torch.as_tensor(sigmas).flatten().tolist()
    if len(sigmas) < min_len:
        raise ValueError(f"{caller} needs at least {min_len} sigmas, got {len(sigmas)}")
    if any(a <= b for a, b in zip(sigmas[:-1], sigmas[1:])) or sigmas[-1] < 0:
        raise ValueError(f"{caller} needs a strictly descending, non-negative sigma grid such as karras_sigmas()")
    return sigmas


def _check_inversion_grid(sigmas, caller):
    # The last entry must be 0 so that sigmas[-2] is the smallest noise level, as in karras_sigmas().
    sigmas = _check_grid(sigmas, min_len=3, caller=caller)
    if sigmas[-1] != 0:
        raise ValueError(f"{caller} needs a grid ending in 0 (as karras_sigmas() returns); got last sigma {sigmas[-1]}")
    return sigmas[:-1]


@torch.no_grad()
def heun_sample(denoise, x, sigmas, y=None, *, clamp_denoised=False, progress=False):
    """Deterministic EDM sampler (Karras et al. 2022, Algorithm 2, s_churn = 0); x is noise at sigmas[0].

    On a grid ending in 0 this takes 2 * (len(sigmas) - 1) - 1 evaluations: the step to 0 is plain Euler.
    """
    return _heun_path(denoise, x, _check_grid(sigmas, min_len=2, caller="heun_sample"), y, clamp_denoised, progress)


@torch.no_grad()
def euler_sample(denoise, x, sigmas, y=None, *, clamp_denoised=False, progress=False):
    """First-order (Euler) solver of the PF-ODE on the grid `sigmas`; one evaluation per step."""
    path = _check_grid(sigmas, min_len=2, caller="euler_sample")
    x = _state(x)
    for sigma, sigma_next in tqdm(list(zip(path[:-1], path[1:])), disable=not progress):
        d = (x - _denoised(denoise, x, sigma, y, clamp_denoised)) / sigma
        x = x + (sigma_next - sigma) * d
    return x


@torch.no_grad()
def stochastic_sample(
    denoise, x, sigmas, y=None, *, randn_like, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0,
    progress=False,
):
    """EDM stochastic sampler (Karras et al. 2022, Algorithm 2): add noise up to sigma_hat, then one Heun step.

    `randn_like(x)` supplies the fresh noise, e.g. `StackedRandomGenerator.randn_like`, so each sample's path
    depends only on its own seed. No noise is drawn at steps where gamma = 0, so s_churn = 0 is heun_sample.
    """
    path = _check_grid(sigmas, min_len=2, caller="stochastic_sample")
    num_steps = len(path) - 1
    x = _state(x)
    for sigma, sigma_next in tqdm(list(zip(path[:-1], path[1:])), disable=not progress):
        gamma = min(s_churn / num_steps, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:
            x = x + (sigma_hat**2 - sigma**2) ** 0.5 * s_noise * randn_like(x)
        x = heun_step(denoise, x, sigma_hat, sigma_next, y, clamp_denoised=False)
    return x


@torch.no_grad()
def heun_invert(denoise, x, sigmas, y=None, *, clamp_denoised=True, progress=False):
    """PaGoDA's data-to-noise encoder: Heun on the PF-ODE from sigmas[-2] (sigma_min) up to sigmas[0].

    `x` is clean data, taken as the state at sigma_min (the official code adds no noise there). With
    karras_sigmas(n) this is n - 1 Heun steps and exactly 2 * (n - 1) evaluations (the official code spends one
    more that it discards).
    """
    path = _check_inversion_grid(sigmas, "heun_invert")
    return _heun_path(denoise, x, path[::-1], y, clamp_denoised, progress)


@torch.no_grad()
def heun_decode(denoise, z, sigmas, y=None, *, clamp_denoised=True, progress=False):
    """Mirror of heun_invert: Heun from sigmas[0] down to sigmas[-2], so heun_decode(heun_invert(x)) ~= x."""
    path = _check_inversion_grid(sigmas, "heun_decode")
    return _heun_path(denoise, z, path, y, clamp_denoised, progress)


class NFECounter:
    """Wraps a denoiser and counts its calls (network function evaluations) in `.nfe`."""

    def __init__(self, denoise):
        self.denoise = denoise
        self.nfe = 0

    def __call__(self, x, sigma, y=None):
        self.nfe += 1
        return self.denoise(x, sigma, y)


def count_nfe(denoise):
    """Return `denoise` wrapped in an NFECounter; read `.nfe` after sampling."""
    return NFECounter(denoise)


def classifier_free_guidance(denoise, *, guidance_scale, null_class):
    """Classifier-free guidance (Ho & Salimans 2022): D_u + w (D_c - D_u), D_u being D at the null label.

    The conditional and unconditional halves go through `denoise` in one batched call (1 NFE per step).
    Labels are integer class indices; w = 1 gives the conditional and w = 0 the unconditional denoiser.
    """

    def guided(x, sigma, y=None):
        if y is None:
            raise ValueError("classifier_free_guidance needs class labels y; got y=None")
        y_null = torch.full_like(y, null_class)
        both = denoise(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([y, y_null]))
        cond, uncond = both.chunk(2)
        # lerp is exact at the end points, so w = 1 and w = 0 return the plain denoisers bit for bit.
        return torch.lerp(uncond, cond, guidance_scale)

    return guided
