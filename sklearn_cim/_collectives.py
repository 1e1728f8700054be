"""The process group as the estimators see it, and the collectives they make.

Private helpers of data-parallel training (see :mod:`sklearn_cim.distributed`
for how to run it): whether a fit is data-parallel (:func:`world`), each
process's device, and the few collectives a fit makes (a shared seed, summed
losses, a check that all processes fit the same data).
"""

import os

import numpy as np
import torch
import torch.distributed as dist


# -- the process group, as the estimators see it --------------------------------
def world(distributed):
    """``(rank, world_size)`` when estimators should train data-parallel, else None.

    ``"auto"``: when a process group of more than one process is initialised.
    ``True``: that group must exist. ``False``: never.

    Examples
    --------
    >>> from sklearn_cim.distributed import world
    >>> world(False) is None, world("auto") is None  # no process group here
    (True, True)
    """
    check_distributed(distributed)
    mode = "auto" if isinstance(distributed, str) else bool(distributed)
    if mode is False:
        return None
    if not (dist.is_available() and dist.is_initialized()):
        if mode is True:
            raise RuntimeError(
                "distributed=True needs a torch.distributed process group: call "
                "torch.distributed.init_process_group(...) in every process (torchrun "
                "sets its environment), or use sklearn_cim.distributed.fit_distributed, "
                "or set distributed='auto' to train in one process when there is none.")
        return None
    size = dist.get_world_size()
    if size == 1 and mode == "auto":
        return None
    return dist.get_rank(), size


def check_distributed(value):
    """Check the ``distributed`` parameter."""
    if not (value == "auto" if isinstance(value, str) else isinstance(value, (bool, np.bool_))):
        raise ValueError(f"distributed must be 'auto', True or False, got {value!r}.")


def local_device(device):
    """The device of this process: ``"cuda"`` / ``"auto"`` pick ``cuda:LOCAL_RANK``."""
    if device in ("auto", "cuda") and torch.cuda.is_available():
        if "LOCAL_RANK" in os.environ:
            index = int(os.environ["LOCAL_RANK"])
        else:
            index = dist.get_rank() % torch.cuda.device_count()
        return f"cuda:{index}"
    if isinstance(device, str) and device.startswith("cuda:"):
        raise ValueError(
            f"device={device!r} would put every process of the data-parallel fit on one "
            "GPU; use device='auto' or 'cuda' (each process takes cuda:LOCAL_RANK).")
    return device


def _collective_device(device):
    # nccl moves CUDA tensors only; gloo moves CPU tensors
    return device if dist.get_backend() == "nccl" else "cpu"


def broadcast_int(value, device):
    """Rank 0's ``value`` on every rank."""
    t = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device(device))
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_object(obj, device):
    """Rank 0's picklable ``obj`` on every rank."""
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=torch.device(_collective_device(device)))
    return box[0]


def all_reduce_sum(tensor, device):
    """Sum of ``tensor`` over the ranks (float64 on the way, float32 back)."""
    t = tensor.detach().to(_collective_device(device), torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(tensor.device, torch.float32)


def check_agreement(warm, n_samples, n_features, device):
    """Raise on every rank unless all ranks continue (or all start) a fit on
    data of the same shape; the first collective of every data-parallel fit."""
    mine = [int(warm), n_samples, n_features]
    t = torch.tensor(mine + [-v for v in mine], dtype=torch.int64,
                     device=_collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    agree = [t[i].item() == -t[i + 3].item() for i in range(3)]
    if not agree[0]:
        raise ValueError(
            "Some processes of the data-parallel fit continue a fitted model (warm_start "
            "or partial_fit) and others start a new one; give every process the same "
            "estimator state.")
    if not all(agree[1:]):
        raise ValueError(
            f"The processes of the data-parallel fit hold different data (this one "
            f"{n_samples} x {n_features}). Pass every process the same X and y (e.g. "
            "the same memmap): each trains on its share of every epoch.")
