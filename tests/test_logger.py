"""The logger's rank reduction goes through the device the process group's backend takes (NCCL: CUDA only).

CUDA is hidden from the tests, so a stand-in backend plays NCCL: it refuses CPU tensors as NCCL does, and the
meta device stands in for this process's CUDA device."""

import pytest
import torch
import torch.distributed as dist

from pagoda import dist_util, logger


@pytest.fixture
def two_ranks(monkeypatch):
    """A process group of two ranks in which every rank logged the same keys."""
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 0)
    monkeypatch.setattr(dist, "all_gather_object", lambda out, obj, group=None: out.__setitem__(slice(None),
                                                                                             [obj] * len(out)))


def test_comm_device_is_the_current_cuda_device_under_nccl(two_ranks, monkeypatch):
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert dist_util.comm_device() == torch.device("cuda", 3)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    assert dist_util.comm_device() == torch.device("cpu")


class _Reached(Exception):
    """The stand-in NCCL got its tensor; the meta device holds no values to go on with."""


def test_logger_reduction_reaches_an_nccl_like_backend_on_its_device(two_ranks, monkeypatch):
    seen = []

    def all_reduce(tensor, op=None, group=None, async_op=False):
        if tensor.device.type == "cpu":
            raise RuntimeError("stand-in NCCL: CPU tensors are not supported")
        seen.append((tensor.device, tensor.dtype, tuple(tensor.shape), op))
        raise _Reached

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    monkeypatch.setattr(dist_util, "comm_device", lambda: torch.device("meta"))
    log = logger.Logger()
    log.logkv_mean("loss", 1.5)
    log.logkv_mean("mse", 2.0, count=3)
    with pytest.raises(_Reached):
        log.dumpkvs()
    assert seen == [(torch.device("meta"), torch.float64, (2, 2), dist.ReduceOp.SUM)]


def test_reduction_on_a_cpu_backend_gives_count_weighted_means(two_ranks, monkeypatch):
    """gloo takes the CPU tensor as it is; the other rank's (sum, count) rows are added in place."""
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    other_rank = torch.tensor([[3.0, 1.0], [0.0, 0.0]], dtype=torch.float64)  # loss 3.0 once; no mse there

    def all_reduce(tensor, op=None, group=None, async_op=False):
        assert tensor.device.type == "cpu"
        tensor += other_rank

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    log = logger.Logger()
    log.logkv_mean("loss", 1.5)
    log.logkv_mean("mse", 2.0, count=3)
    log.logkv("step", 7)
    assert log.dumpkvs() == {"loss": 2.25, "mse": 2.0, "step": 7}
