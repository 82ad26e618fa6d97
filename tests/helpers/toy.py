"""A toy objective and data stream that exercise the training loop without the real networks."""

import torch
from torch import nn

from pagoda import dist_util
from pagoda.train_util import Objective

DIM = 6


def toy_batch(k, global_batch):
    """Global batch k is a pure function of k; each rank takes its contiguous slice."""
    g = torch.Generator().manual_seed(1000 + k)
    x = torch.randn(global_batch, DIM, generator=g)
    y = x @ torch.arange(1.0, DIM + 1) + 0.1 * torch.randn(global_batch, generator=g)
    world, rank = dist_util.get_world_size(), dist_util.get_rank()
    per = global_batch // world
    return {"x": x[rank * per:(rank + 1) * per], "y": y[rank * per:(rank + 1) * per]}


def toy_data(global_batch):
    def stream(start_batch):
        k = start_batch
        while True:
            yield toy_batch(k, global_batch)
            k += 1
    return stream


class ToyObjective(Objective):
    """Regression with two players; `noisy` adds loop-generator noise so resume must restore the RNG path;
    `global_noise` adds noise from the global generator, as dropout draws it."""

    def __init__(self, *, noisy=False, global_noise=False, seed=0):
        torch.manual_seed(seed)
        self.global_noise = global_noise
        self.players = {"model": nn.Sequential(nn.Linear(DIM, 16), nn.Tanh(), nn.Linear(16, 1)),
                        "critic": nn.Linear(DIM, 1)}
        self.noisy = noisy

    def phases(self, step):
        return ["model", "critic"] if step % 3 == 2 else ["model"]

    def losses(self, player, nets, batch, *, step, generator):
        x, y = batch["x"], batch["y"]
        if self.noisy:
            x = x + 0.01 * torch.randn(x.shape, generator=generator, device=x.device)
        if self.global_noise:
            x = x + 0.01 * torch.randn(x.shape, device=x.device)
        pred = nets[player](x).squeeze(-1)
        mse = (pred - y) ** 2
        return {"loss": mse, "mse": mse.detach()}

    def ema_rates(self, player):
        return (0.9, 0.5) if player == "model" else ()

    def export_sidecar(self, player):
        return {"kind": "toy"} if player == "model" else None
