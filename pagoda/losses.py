"""Loss terms as small classes: each returns a per-sample loss of shape (N,) unless stated otherwise."""

import torch

from .nn import append_dims, mean_flat


class EDMLoss:
    """EDM denoising loss (Karras et al. 2022, eq. 2 and table 1): ln sigma ~ N(P_mean, P_std^2),
    weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2.

    With `label_dropout` > 0 a fraction of labels is replaced by `null_class`, so the trained teacher
    can be used with classifier-free guidance.
    """

    def __init__(self, *, P_mean=-1.2, P_std=1.2, sigma_data=0.5, label_dropout=0.0, null_class=None):
        if label_dropout > 0 and null_class is None:
            raise ValueError("label_dropout > 0 needs a null_class (build the teacher with one extra class)")
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data
        self.label_dropout = label_dropout
        self.null_class = null_class

    def __call__(self, denoiser, x, y=None, generator=None):
        n = x.shape[0]
        rnd = torch.randn(n, device=x.device, generator=generator)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        eps = torch.randn(x.shape, device=x.device, generator=generator)
        x_sigma = x + append_dims(sigma, x.ndim) * eps
        if y is not None and self.label_dropout > 0:
            drop = torch.rand(n, device=x.device, generator=generator) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, self.null_class), y)
        denoised = denoiser(x_sigma, sigma, y)
        per_sample = mean_flat((denoised.float() - x.float()) ** 2)
        return {"loss": weight * per_sample, "mse": per_sample, "sigma": sigma.detach()}
