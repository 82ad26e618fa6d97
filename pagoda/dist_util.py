"""Distributed runtime: one `setup_dist()` for mpiexec, torchrun and plain single-process launches.

mpi4py is imported here only, and only when the process was started by mpiexec, so CPU tools and tests run
without MPI. Other modules ask this one for rank / world size and never query MPI or env vars themselves.
"""

import atexit
import os
import socket
import sys

import torch
import torch.distributed as dist

_MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MPI_LOCALRANKID")
_STATE = {"device": None, "local_rank": 0, "launcher": None}


def launcher():
    """Which launcher started this process: 'torchrun', 'mpiexec' or 'single'."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ:
        return "torchrun"
    if any(v in os.environ for v in _MPI_RANK_VARS):
        return "mpiexec"
    return "single"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup_mpi_env():
    """Fill torch's env:// variables from MPI; rank 0 picks the rendezvous address and broadcasts it."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    local_rank = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
    if comm.Get_rank() == 0:
        host = "127.0.0.1" if comm.Get_size() == 1 else socket.gethostbyname(socket.getfqdn())
        addr = (os.environ.get("MASTER_ADDR", host), int(os.environ.get("MASTER_PORT", 0)) or _free_port())
    else:
        addr = None
    addr = comm.bcast(addr, root=0)
    os.environ.update(MASTER_ADDR=addr[0], MASTER_PORT=str(addr[1]), RANK=str(comm.Get_rank()),
                      WORLD_SIZE=str(comm.Get_size()), LOCAL_RANK=str(local_rank))
    return local_rank


def _install_mpi_abort():
    """A rank that dies with an exception aborts the whole MPI job instead of leaving the others in a
    collective forever (MPI_Abort makes mpiexec kill every rank and exit non-zero)."""
    from mpi4py import MPI

    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        sys.stderr.flush()
        MPI.COMM_WORLD.Abort(1)

    sys.excepthook = hook


def setup_dist(*, backend=None, timeout_minutes=30):
    """Initialise the process group (idempotent) and pick this process's device.

    Returns the torch.device. Single-process runs create no process group: the collective helpers below
    fall back to the identity, so library code is the same for 1 or N processes.
    """
    if _STATE["device"] is not None:
        return _STATE["device"]
    kind = launcher()
    local_rank = 0
    if kind == "mpiexec":
        local_rank = _setup_mpi_env()
    elif kind == "torchrun":
        local_rank = int(os.environ["LOCAL_RANK"])
    world = int(os.environ.get("WORLD_SIZE", 1))
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        import datetime

        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"), init_method="env://",
                                timeout=datetime.timedelta(minutes=timeout_minutes))
        # Without an explicit destroy, gloo's worker threads are torn down by static destructors at exit and
        # a few percent of clean runs end in std::terminate (SIGABRT) after the script finished.
        atexit.register(cleanup)
    if kind == "mpiexec" and world > 1:
        # After init_process_group: torch installs its own rank-prefixing hook there, which captures stderr
        # while it calls the previous hook; an abort from inside that capture would swallow the traceback.
        _install_mpi_abort()
    _STATE.update(device=device, local_rank=local_rank, launcher=kind)
    return device


def dev():
    """The device chosen by setup_dist (CPU if it was never called)."""
    return _STATE["device"] or torch.device("cpu")


def get_rank():
    return dist.get_rank() if dist.is_initialized() else 0


def get_world_size():
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main():
    return get_rank() == 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def broadcast(tensor, src=0):
    """In-place broadcast of a tensor from `src` to every rank; returns the tensor."""
    if dist.is_initialized():
        dist.broadcast(tensor, src)
    return tensor


def broadcast_object(obj, src=0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def sync_params(params):
    """Make every rank hold rank 0's values (after building or loading a model)."""
    for p in params:
        broadcast(p.data)


def comm_device():
    """The device whose tensors the process group's backend takes: this process's CUDA device for NCCL (which
    refuses CPU tensors), the CPU for gloo and MPI."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor):
    """In-place sum over ranks of a tensor on any device: it travels through comm_device() when the backend
    needs another one (e.g. the logger's CPU statistics under NCCL). Returns the tensor."""
    if not dist.is_initialized():
        return tensor
    staged = tensor.to(comm_device())
    dist.all_reduce(staged, op=dist.ReduceOp.SUM)
    if staged is not tensor:
        tensor.copy_(staged)
    return tensor


def all_gather_objects(obj):
    """A list with every rank's (picklable) object, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup():
    """Tear the process group down on every rank together: a rank that destroys it while a peer is still busy
    (rank 0 writing its last files) can abort at exit in gloo's teardown ("terminate called without an active
    exception", exit -6 / mpiexec status 6), after all its work is done."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def check_same_across_ranks(module, *, what):
    """Raise unless every rank holds the same parameters and buffers in `module` (e.g. frozen random projections,
    which the official code drew differently on every GPU). Compares a cheap per-tensor checksum."""
    if not dist.is_initialized():
        return
    sums = torch.stack([t.detach().double().sum() for t in module.state_dict().values()
                        if torch.is_floating_point(t)]) if module.state_dict() else torch.zeros(1, dtype=torch.float64)
    gathered = all_gather_objects(sums.cpu().tolist())
    bad = [r for r, s in enumerate(gathered) if s != gathered[0]]
    if bad:
        raise RuntimeError(f"{what} differ between rank 0 and ranks {bad}: build them from a fixed seed "
                           f"(or broadcast them) so every rank computes the same loss")
