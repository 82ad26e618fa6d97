"""Small tensor and module helpers shared by the networks, losses and samplers."""


def zero_module(module):
    """Zero every parameter of `module` and return it (ADM zero-initialised output layers)."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def mean_flat(tensor):
    """Mean over every dimension except the batch dimension."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def append_dims(x, target_ndim):
    """Append singleton dimensions so `x` (e.g. a per-sample sigma of shape (N,)) broadcasts to NCHW."""
    return x.reshape(x.shape + (1,) * (target_ndim - x.ndim))
