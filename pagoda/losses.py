"""Loss terms as small classes: each returns a per-sample loss of shape (N,) unless stated otherwise."""

import math

import torch
import torch.nn.functional as F

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

    def draw(self, x, y, generator):
        """(sigma, lambda(sigma), eps, y with label dropout) for a batch, in one fixed order of draws."""
        n = x.shape[0]
        rnd = torch.randn(n, device=x.device, generator=generator)
        sigma = (rnd * self.P_std + self.P_mean).exp()
        weight = (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2
        eps = torch.randn(x.shape, device=x.device, generator=generator)
        if y is not None and self.label_dropout > 0:
            drop = torch.rand(n, device=x.device, generator=generator) < self.label_dropout
            y = torch.where(drop, torch.full_like(y, self.null_class), y)
        return sigma, weight, eps, y

    def __call__(self, denoiser, x, y=None, generator=None):
        sigma, weight, eps, y = self.draw(x, y, generator)
        x_sigma = x + append_dims(sigma, x.ndim) * eps
        denoised = denoiser(x_sigma, sigma, y)
        per_sample = mean_flat((denoised.float() - x.float()) ** 2)
        return {"loss": weight * per_sample, "mse": per_sample, "sigma": sigma.detach()}


class MultiScaleEDMLoss(EDMLoss):
    """DiMR's multi-scale loss in EDM form, for a backbone with `forward_branches` (pagoda.dimr.DiMR).

    Branch k predicts at 1/r of the input size. Its head is trained as the EDM denoiser of the r x r average-pooled
    image x_k = avgpool_r(x) at the same sigma, whose noise is r * avgpool_r(eps): the noise sum-pooled over r x r
    and divided by r (DiMR's scale correction), which keeps unit variance. Its denoised estimate is
    c_skip x_k,sigma + c_out F_k with x_k,sigma = x_k + sigma r avgpool_r(eps), so the finest branch (r = 1) is
    exactly the EDM loss of the Denoiser. loss = sum_k weights[k] lambda(sigma) |D_k - x_k|^2 (mean over C, H, W),
    weights coarsest first (pagoda.dimr.multiscale_weights).
    """

    def __init__(self, *, weights, **kwargs):
        super().__init__(**kwargs)
        self.weights = tuple(weights)

    def __call__(self, denoiser, x, y=None, generator=None):
        sigma, weight, eps, y = self.draw(x, y, generator)
        dtype = torch.promote_types(x.dtype, torch.float32)
        x, eps = x.to(dtype), eps.to(dtype)
        s = append_dims(sigma.to(dtype), x.ndim)
        c_skip, c_out, c_in = (append_dims(c, x.ndim) for c in denoiser.scalings(sigma.to(dtype)))
        outputs = denoiser.backbone.forward_branches(c_in * (x + s * eps), sigma.to(dtype), y)
        if len(outputs) != len(self.weights):
            raise ValueError(f"{len(self.weights)} multi-scale weights for a backbone with {len(outputs)} branches")
        terms = {"loss": 0.0}
        for k, (w, F_k) in enumerate(zip(self.weights, outputs)):
            r = x.shape[-1] // F_k.shape[-1]
            x_k = F.avg_pool2d(x, r) if r > 1 else x
            eps_k = r * F.avg_pool2d(eps, r) if r > 1 else eps
            x_k_sigma = x_k + s * eps_k
            mse = mean_flat((c_skip * x_k_sigma + c_out * F_k.to(dtype) - x_k) ** 2)
            terms["loss"] = terms["loss"] + w * weight * mse
            terms[f"mse_branch{k}"] = mse.detach()
        terms["mse"] = terms.pop(f"mse_branch{len(outputs) - 1}")
        terms["sigma"] = sigma.detach()
        return terms


class ReconstructionLoss:
    """PaGoDA's feature distance (LPIPS without learned weights): for each level of each feature network,
    phi_hat = phi / (||phi||_2 over channels + 1e-10); sum over channels of (phi_hat(A(x_hat)) - phi_hat(A(x)))^2,
    mean over H, W; summed over levels and networks. A is a DiffAugment whose parameters are shared by x_hat
    and x. The target x is data: its features are computed without a graph.
    """

    def __init__(self, *, feature_networks, augment=None):
        networks = feature_networks.values() if isinstance(feature_networks, dict) else feature_networks
        self.feature_networks = list(networks)
        if not self.feature_networks:
            raise ValueError("ReconstructionLoss needs at least one feature network")
        self.augment = augment
        self.eps = 1e-10

    def normalize(self, phi):
        phi = phi.float()
        return phi / (phi.square().sum(dim=1, keepdim=True).sqrt() + self.eps)

    def __call__(self, x_hat, x, generator=None):
        if x_hat.shape != x.shape:
            raise ValueError(f"x_hat and x must have the same shape, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
        if self.augment is not None:
            x_hat, x = self.augment(x_hat, x, generator=generator)
        loss = x_hat.new_zeros(x_hat.shape[0], dtype=torch.float32)
        for net in self.feature_networks:
            with torch.no_grad():
                targets = net(x)
            for phi_hat, phi in zip(net(x_hat), targets):
                distance = (self.normalize(phi_hat) - self.normalize(phi)).square().sum(dim=1)
                loss = loss + distance.mean(dim=(1, 2))
        return loss


class PixelLoss:
    """Mean squared error per sample."""

    def __call__(self, x_hat, x, generator=None):
        return mean_flat((x_hat.float() - x.float()) ** 2)


class PseudoHuberLoss:
    """Pseudo-Huber distance sqrt(||x_hat - x||^2 + c^2) - c per sample, c = 0.00054 sqrt(dims) (iCT, Song &
    Dhariwal 2023), dims = C * H * W."""

    def __init__(self, *, c_scale=0.00054):
        self.c_scale = c_scale

    def __call__(self, x_hat, x, generator=None):
        c = self.c_scale * math.sqrt(x[0].numel())
        squared = (x_hat.float() - x.float()).square().flatten(1).sum(dim=1)
        return (squared + c**2).sqrt() - c


def _per_sample(fn, logits):
    """fn(logits) averaged per sample over its patches, then over the heads -> (N,). `logits` is one tensor or
    a list of per-head tensors, each of shape (N, ...)."""
    heads = [logits] if torch.is_tensor(logits) else list(logits)
    return torch.stack([fn(l.float()).reshape(l.shape[0], -1).mean(dim=1) for l in heads]).mean(dim=0)


def _check_pair(logits_real, logits_fake):
    n_real = (logits_real if torch.is_tensor(logits_real) else logits_real[0]).shape[0]
    n_fake = (logits_fake if torch.is_tensor(logits_fake) else logits_fake[0]).shape[0]
    if n_real != n_fake:
        raise ValueError(f"per-sample D losses need equal real and fake batches, got {n_real} and {n_fake}")


def hinge_d_loss(logits_real, logits_fake):
    """Hinge discriminator loss per sample: relu(1 - D(real)) + relu(1 + D(fake)), patch- then head-averaged."""
    _check_pair(logits_real, logits_fake)
    return _per_sample(lambda l: F.relu(1 - l), logits_real) + _per_sample(lambda l: F.relu(1 + l), logits_fake)


def hinge_g_loss(logits_fake):
    """Hinge generator loss per sample: -D(fake), patch- then head-averaged."""
    return _per_sample(torch.neg, logits_fake)


def nonsaturating_d_loss(logits_real, logits_fake):
    """Non-saturating (logistic) discriminator loss per sample: softplus(-D(real)) + softplus(D(fake))."""
    _check_pair(logits_real, logits_fake)
    return _per_sample(lambda l: F.softplus(-l), logits_real) + _per_sample(F.softplus, logits_fake)


def nonsaturating_g_loss(logits_fake):
    """Non-saturating generator loss per sample: softplus(-D(fake))."""
    return _per_sample(lambda l: F.softplus(-l), logits_fake)


def r1_penalty(real_images, logits):
    """R1 (Mescheder et al. 2018): ||grad_x sum D(x)||^2 per sample, with a graph so it can be minimised.
    `real_images` must require grad and `logits` must be computed from them with features that have a graph
    (not ProjectedDiscriminator.extract). For lazy R1, the caller applies it every k steps scaled by k."""
    if not real_images.requires_grad:
        raise ValueError("r1_penalty needs real_images.requires_grad_(True) before D is evaluated on them")
    heads = [logits] if torch.is_tensor(logits) else list(logits)
    total = sum(l.float().sum() for l in heads)
    (grad,) = torch.autograd.grad(total, real_images, create_graph=True)
    return grad.float().square().flatten(1).sum(dim=1)


def weight_grad_norm(loss, weight):
    if not loss.requires_grad:
        return weight.new_zeros((), dtype=torch.float32)
    (grad,) = torch.autograd.grad(loss.mean(), weight, retain_graph=True, allow_unused=True)
    return weight.new_zeros((), dtype=torch.float32) if grad is None else grad.float().norm()


def adaptive_weight(rec_loss, gan_loss, last_layer_weight, *, rec_norm=None, max_ratio=1e4, clip=(0.01, 10.0),
                    eps=1e-4):
    """VQGAN-style balance (Esser et al. 2021, eq. 7): clip(clamp(||d rec/dW|| / (||d gan/dW|| + eps), 0,
    max_ratio), *clip), detached, with W the generator's last layer. Per-sample losses are averaged first (the
    objective minimises their mean). Returns 1.0 when rec_loss has no gradient on W (e.g. it is all zeros).
    Graphs are retained so both losses can still be backpropagated. `clip=None` skips the clip. `rec_norm`:
    ||d rec/dW|| measured before (an update of its own, weight_grad_norm), in place of rec_loss."""
    if rec_norm is None:
        rec_norm = weight_grad_norm(rec_loss, last_layer_weight)
    gan_norm = weight_grad_norm(gan_loss, last_layer_weight)
    weight = (rec_norm / (gan_norm + eps)).clamp(0.0, max_ratio)
    if clip is not None:
        weight = weight.clamp(*clip)
    # torch.where rather than an `if` on the norm: no device-to-host sync on the accelerator.
    return torch.where(rec_norm == 0, torch.ones_like(weight), weight).detach()
