"""Data-parallel training across processes (torch DistributedDataParallel).

Two ways to train one estimator on N processes (N GPUs, or N CPU processes
with the ``gloo`` backend):

* :func:`fit_distributed` spawns the processes itself and returns the fitted
  estimator in the calling process::

      cim = CIMTransformer(random_state=0)
      fit_distributed(cim, X, y, nprocs=4)     # 4 GPUs, or 4 CPU processes

* under a launcher (``torchrun --nproc_per_node=4 train.py``) every process
  initialises the process group and calls ``fit`` on the same data; with
  ``distributed="auto"`` (the default) the estimators notice the process
  group and train together::

      torch.distributed.init_process_group("nccl")   # "gloo" on CPU
      X = np.load("train_uint8.npy", mmap_mode="r")  # every rank: same file
      cim = CIMTransformer(random_state=0).fit(X, y)

In both, every process holds the whole (X, y) (a memmap costs no memory) and
each epoch is split as torch's ``DistributedSampler`` splits it: one
permutation, padded to a multiple of N by wrapping around, process ``r``
taking every N-th sample from ``r``. ``batch_size`` is per process (so the
global batch is ``N * batch_size``); triplets are mined inside each process's
batch; gradients are averaged over the processes, so the weights stay equal
on all of them. Logged epoch losses are averaged over all processes.
"""

import os
import pickle
import socket
import tempfile
from datetime import timedelta
from numbers import Integral

import numpy as np
import torch
import torch.distributed as dist

DISTRIBUTED = ("auto", True, False)


# -- the process group, as the estimators see it --------------------------------
def world(distributed="auto"):
    """``(rank, world_size)`` when estimators should train data-parallel, else None.

    ``"auto"``: when a process group of more than one process is initialised.
    ``True``: that group must exist. ``False``: never.
    """
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
    return device


def _collective_device(device):
    # nccl moves CUDA tensors only; gloo moves CPU tensors
    return device if dist.get_backend() == "nccl" else "cpu"


def broadcast_int(value, device):
    """Rank 0's ``value`` on every rank."""
    t = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device(device))
    dist.broadcast(t, src=0)
    return int(t.item())


def all_reduce_sum(tensor, device):
    """Sum of ``tensor`` over the ranks (float64 on the way, float32 back)."""
    t = tensor.detach().to(_collective_device(device), torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(tensor.device, torch.float32)


def check_same_data(n_samples, n_features, device):
    """Raise on every rank unless all ranks hold data of the same shape."""
    t = torch.tensor([n_samples, n_features, -n_samples, -n_features],
                     dtype=torch.int64, device=_collective_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    if t[0].item() != -t[2].item() or t[1].item() != -t[3].item():
        raise ValueError(
            f"The processes of the data-parallel fit hold different data (this one "
            f"{n_samples} x {n_features}). Pass every process the same X and y (e.g. "
            "the same memmap): each trains on its share of every epoch.")


# -- fit_distributed ------------------------------------------------------------
def _free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _shareable(a):
    """What a spawned process needs to see ``a`` without a pickled copy each:
    a memmap's file, or (for other numeric arrays) a tensor in shared memory."""
    if isinstance(a, np.memmap) and getattr(a, "filename", None) and a.flags.c_contiguous:
        return ("memmap", str(a.filename), a.dtype.str, a.shape, a.offset)
    arr = np.asarray(a) if not hasattr(a, "iloc") else a
    if isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf" and arr.dtype.isnative:
        return ("tensor", torch.from_numpy(np.ascontiguousarray(arr)).share_memory_())
    return ("object", a)


def _unshare(item):
    kind = item[0]
    if kind == "memmap":
        _, filename, dtype, shape, offset = item
        return np.memmap(filename, dtype=np.dtype(dtype), mode="r", shape=shape,
                         offset=offset)
    if kind == "tensor":
        return item[1].numpy()
    return item[1]


def _run_rank(rank, estimator, X, y, nprocs, backend, addr, port, out_dir, timeout):
    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs))
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
        else:
            # the processes share the CPU cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
        dist.init_process_group(backend, rank=rank, world_size=nprocs,
                                timeout=timedelta(seconds=timeout))
        try:
            estimator.fit(_unshare(X), _unshare(y))
        finally:
            dist.destroy_process_group()
        if rank == 0:
            with open(os.path.join(out_dir, "estimator.pkl"), "wb") as f:
                pickle.dump(estimator, f)
    except BaseException as exc:
        try:
            with open(os.path.join(out_dir, f"error-{rank}.pkl"), "wb") as f:
                pickle.dump(exc, f)
        except Exception:  # an exception that does not pickle: the traceback says it
            pass
        raise


def fit_distributed(estimator, X, y, *, nprocs, backend="auto", master_addr="127.0.0.1",
                    timeout=1800):
    """Fit ``estimator`` data-parallel on ``nprocs`` spawned processes.

    Each process runs ``estimator.fit(X, y)`` in a torch.distributed process
    group (see the module docstring for how the work is split); the fitted
    estimator of rank 0 (the weights are equal on all ranks) is copied into
    ``estimator``, as if ``estimator.fit(X, y)`` had been called.

    Parameters
    ----------
    estimator : CIMTransformer or VIBClassifier
        Unfitted, or fitted with ``warm_start=True`` to continue training.
        Its ``distributed`` parameter must not be False.
    X, y : arrays as for ``estimator.fit``
        Numeric arrays reach the processes through shared memory (one copy);
        a ``np.memmap`` through its file (no copy).
    nprocs : int
        Number of processes: one per GPU with ``backend="nccl"``.
    backend : {"auto", "nccl", "gloo"}, default="auto"
        ``"auto"``: ``"nccl"`` when CUDA is available and the estimator's
        ``device`` is not ``"cpu"``, else ``"gloo"`` (CPU processes, each given
        ``cpu_count // nprocs`` torch threads).
    master_addr : str, default="127.0.0.1"
        Address the processes meet at (a free port is chosen).
    timeout : float, default=1800
        Seconds a process waits for the others in a collective before failing.

    Returns
    -------
    estimator : the fitted estimator (the same object)
    """
    if not isinstance(nprocs, Integral) or isinstance(nprocs, bool) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive integer, got {nprocs!r}.")
    if estimator.get_params().get("distributed", False) is False:
        raise ValueError(
            "fit_distributed needs an estimator with distributed='auto' or True; "
            f"{type(estimator).__name__} has distributed=False.")
    if backend == "auto":
        on_cuda = torch.cuda.is_available() and estimator.device != "cpu"
        backend = "nccl" if on_cuda else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r}.")
    if backend == "nccl" and nprocs > torch.cuda.device_count():
        raise ValueError(
            f"nprocs={nprocs} processes need {nprocs} GPUs with backend='nccl', but "
            f"{torch.cuda.device_count()} are visible. Lower nprocs, or use "
            "backend='gloo' with device='cpu'.")
    port = _free_port(master_addr)
    with tempfile.TemporaryDirectory(prefix="sklearn-cim-ddp-") as out_dir:
        args = (estimator, _shareable(X), _shareable(y), nprocs, backend, master_addr,
                port, out_dir, timeout)
        try:
            torch.multiprocessing.start_processes(
                _run_rank, args=args, nprocs=nprocs, join=True, start_method="spawn")
        except Exception as exc:
            for rank in range(nprocs):
                path = os.path.join(out_dir, f"error-{rank}.pkl")
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        raise pickle.load(f) from exc
            raise
        with open(os.path.join(out_dir, "estimator.pkl"), "rb") as f:
            fitted = pickle.load(f)
    vars(estimator).clear()
    vars(estimator).update(vars(fitted))
    return estimator
