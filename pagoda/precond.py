"""EDM preconditioning: wraps any backbone F(x_in, sigma, y) into a denoiser D(x, sigma, y).

Karras et al. 2022, table 1 (VE form, as in PaGoDA's `KarrasDenoiser.get_ode_scalings`):
    D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, sigma, y)
The backbone maps sigma to its own noise embedding (c_noise = 250 ln sigma for the ADM UNet), so it receives
the raw sigma. The scalings and the skip connection are always computed in float32 (or float64 when the input
is float64); only the backbone itself may run under autocast.
"""

import torch
from torch import nn

from .nn import append_dims


class Denoiser(nn.Module):
    """EDM preconditioner (Karras et al. 2022, eq. 7 and table 1) around a backbone F(x_in, sigma, y)."""

    def __init__(self, backbone, *, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0):
        super().__init__()
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be positive, got {sigma_data}")
        self.backbone = backbone
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def scalings(self, sigma):
        """Return (c_skip, c_out, c_in) for `sigma` (any shape), in float32 or wider."""
        sigma = torch.as_tensor(sigma)
        sigma = sigma.to(torch.promote_types(sigma.dtype, torch.float32))
        total = sigma**2 + self.sigma_data**2
        c_skip = self.sigma_data**2 / total
        c_out = sigma * self.sigma_data / total.sqrt()
        c_in = total.rsqrt()
        return c_skip, c_out, c_in

    def forward(self, x, sigma, y=None):
        """Denoised estimate D(x, sigma, y); `sigma` is (N,), a 0-d tensor or a python float."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        sigma = self._per_sample_sigma(sigma, x)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in self.scalings(sigma))
        # Elementwise products are not on autocast's cast lists, so these stay in `dtype` even when the
        # caller wraps this module in torch.autocast; only the backbone's matmuls/convs drop precision.
        F_x = self.backbone(c_in * x, sigma, y)
        return c_skip * x + c_out * F_x.to(dtype)

    @staticmethod
    def _per_sample_sigma(sigma, x):
        n = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device).to(x.dtype)
        if sigma.ndim == 0:
            return sigma.expand(n).clone()
        if sigma.shape != (n,):
            raise ValueError(
                f"sigma must be a scalar or have shape ({n},) to match the batch; got {tuple(sigma.shape)}"
            )
        return sigma


def teacher_sidecar(backbone, *, sigma_data=0.5, sigma_min=0.002, sigma_max=80.0, null_class=None):
    """The export sidecar of a Denoiser around `backbone` (kind 'denoiser')."""
    cfg = backbone.config
    return {"kind": "denoiser", backbone.SIDECAR_KEY: cfg, "sigma_data": sigma_data, "sigma_min": sigma_min,
            "sigma_max": sigma_max, "null_class": null_class, "image_size": cfg["image_size"],
            "num_classes": cfg["num_classes"]}
