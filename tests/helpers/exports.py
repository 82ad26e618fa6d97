"""A tiny UNet exported as a teacher or a one-step generator (8 px, 4 classes): the model file most tests need."""

import torch

from pagoda import checkpoint
from pagoda.generator import generator_sidecar
from pagoda.precond import teacher_sidecar
from pagoda.unet import UNetModel

TINY = dict(image_size=8, model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(2,),
            num_head_channels=32, num_classes=4)


def tiny_export(path, kind="denoiser", seed=0):
    """Export a seeded tiny UNet to `path` as a 'denoiser' (teacher) or a 'generator'; returns the path."""
    torch.manual_seed(seed)
    net = UNetModel(**TINY)
    for p in net.parameters():  # zero-initialised output layers would make the network trivial
        if p.ndim > 1:
            p.data.normal_(0, 0.05)
    side = generator_sidecar(net) if kind == "generator" else teacher_sidecar(net)
    checkpoint.export_network(net.state_dict(), side, str(path))
    return str(path)
