"""Data-parallel training across processes (torch DistributedDataParallel).

Two ways to train one estimator on N processes (N GPUs, or N CPU processes
with the ``gloo`` backend):

* :func:`fit_distributed` spawns the processes itself and returns the fitted
  estimator in the calling process::

      cim = CIMTransformer(random_state=0)
      fit_distributed(cim, X, y, nprocs=4)     # 4 GPUs, or 4 CPU processes

* under a launcher (``torchrun --nproc_per_node=4 train.py``) every process
  initialises the process group and calls ``fit`` on the same data, with
  ``distributed=True`` (or ``"auto"``: when a group of more than one process
  exists)::

      torch.distributed.init_process_group("nccl")   # "gloo" on CPU
      X = np.load("train_uint8.npy", mmap_mode="r")  # every rank: same file
      cim = CIMTransformer(distributed=True, random_state=0).fit(X, y)

  Every process of the group must make the same fits, in the same order: a
  fit made by some processes only waits for the others (until the group's
  timeout).

In both, every process holds the whole (X, y) (a memmap costs no memory) and
each epoch is split as torch's ``DistributedSampler`` splits it: one
permutation, padded to a multiple of N by wrapping around, process ``r``
taking every N-th sample from ``r``. ``batch_size`` is per process (so the
global batch is ``N * batch_size``); triplets are mined inside each process's
batch; gradients are averaged over the processes, so the weights stay equal
on all of them. Logged epoch losses are averaged over all processes; only
rank 0 prints (``verbose``), while callbacks run in every process.
"""

import inspect
import mmap
import os
import pickle
import tempfile
from datetime import timedelta
from numbers import Integral

import numpy as np
import torch
import torch.distributed as dist

# ``world`` tells whether an estimator would train data-parallel; the other
# collectives are private (_collectives).
from ._collectives import world

__all__ = ["fit_distributed", "world"]

# -- fit_distributed ------------------------------------------------------------
def _file_offset(a):
    """Byte offset in its file of a C-contiguous memmap's first element (also
    for a slice, whose ``offset`` attribute is its parent's), or None."""
    mm = getattr(a, "_mmap", None)
    if mm is None or not a.flags.c_contiguous or getattr(a, "mode", "r") == "c":
        return None  # copy-on-write: the processes would not see changes
    start = a.offset - a.offset % mmap.ALLOCATIONGRANULARITY  # where the mapping begins
    return start + a.ctypes.data - np.frombuffer(mm, dtype=np.uint8).ctypes.data


def _shareable(a):
    """What a spawned process needs to see ``a`` without a pickled copy each:
    a memmap's file, or (for other numeric arrays) a tensor in shared memory."""
    offset = _file_offset(a) if isinstance(a, np.memmap) and a.filename else None
    if offset is not None:
        return ("memmap", str(a.filename), a.dtype.str, a.shape, offset)
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


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run_rank(rank, estimator, X, y, groups, nprocs, backend, out_dir, timeout):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nprocs))
    if backend == "nccl":
        torch.cuda.set_device(rank)
    else:
        torch.set_num_threads(max(1, _cpu_count() // nprocs))  # the processes share the cores
    dist.init_process_group(backend, init_method=f"file://{out_dir}/store", rank=rank,
                            world_size=nprocs, timeout=timedelta(seconds=timeout))
    try:
        if groups is None:  # VIBClassifier.fit takes no groups
            estimator.fit(_unshare(X), _unshare(y))
        else:
            estimator.fit(_unshare(X), _unshare(y), groups=_unshare(groups))
        if rank == 0:  # the weights are equal everywhere; with Adam's state, to continue
            with open(os.path.join(out_dir, "estimator.pkl"), "wb") as f:
                pickle.dump(estimator, f)
        # leave the group together: no process tears down its connections while
        # another still holds its own (a rank that failed is killed by the spawner)
        dist.barrier()
    except BaseException as exc:
        try:  # before leaving the group, which may wait for the others
            with open(os.path.join(out_dir, f"error-{rank}.pkl"), "wb") as f:
                pickle.dump(exc, f)
        except Exception:  # an exception that does not pickle: the traceback says it
            pass
        raise
    finally:
        dist.destroy_process_group()


def fit_distributed(estimator, X, y, *, groups=None, nprocs, backend="auto", timeout=1800):
    """Fit ``estimator`` data-parallel on ``nprocs`` spawned processes.

    Each process runs ``estimator.fit(X, y)`` (``fit(X, y, groups=groups)`` with
    groups) with ``distributed=True`` in a
    torch.distributed process group on this machine (see the module docstring
    for how the work is split); the fitted estimator of rank 0 (the weights are
    equal on all ranks), Adam's state included, is copied into ``estimator``,
    as if ``estimator.fit(X, y)`` had been called. In a script, call it under
    ``if __name__ == "__main__":``: the processes are spawned.

    Parameters
    ----------
    estimator : CIMTransformer or VIBClassifier
        Unfitted, or fitted with ``warm_start=True`` to continue training.
    X, y : arrays as for ``estimator.fit``
        A ``np.memmap`` (or a contiguous slice of one) reaches the processes
        through its file (no copy); other numeric arrays through shared memory
        (one copy, in ``/dev/shm`` on Linux).
    groups : array-like of shape (n_samples,) or None, default=None
        :class:`~sklearn_cim.CIMTransformer` only: the nuisance attribute of each
        training image, as for its ``fit``: every process trains the group-aware
        objective on them. None: ``fit(X, y)``.
    nprocs : int
        Number of processes: one per GPU with ``backend="nccl"``.
    backend : {"auto", "nccl", "gloo"}, default="auto"
        ``"auto"``: ``"nccl"`` when CUDA is available and the estimator's
        ``device`` is not ``"cpu"``, else ``"gloo"`` (CPU processes, each given
        ``cpu_count // nprocs`` torch threads).
    timeout : float, default=1800
        Seconds a process waits for the others in a collective before failing.

    Returns
    -------
    estimator : the fitted estimator (the same object)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cim import VIBClassifier
    >>> from sklearn_cim.distributed import fit_distributed
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(40, 4).astype(np.float32), np.repeat([0, 1], 20)
    >>> clf = VIBClassifier(hidden_layer_sizes=(8,), latent_dim=2, max_epochs=1,
    ...                     batch_size=10, device="cpu", random_state=0)
    >>> fit_distributed(clf, X, y, nprocs=1, backend="gloo").predict(X[:3]).shape
    (3,)
    """
    if not isinstance(nprocs, Integral) or isinstance(nprocs, bool) or nprocs < 1:
        raise ValueError(f"nprocs must be a positive integer, got {nprocs!r}.")
    if "distributed" not in estimator.get_params():
        raise TypeError(
            f"fit_distributed fits sklearn_cim's estimators (CIMTransformer, "
            f"VIBClassifier), not {type(estimator).__name__}.")
    if groups is not None and "groups" not in inspect.signature(estimator.fit).parameters:
        raise TypeError(
            f"{type(estimator).__name__}.fit takes no groups; pass groups= only with a "
            "CIMTransformer.")
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
    params = {"distributed": estimator.distributed}
    with tempfile.TemporaryDirectory(prefix="sklearn-cim-ddp-") as out_dir:
        # to the processes and back (pickles keep Adam's state: it continues exactly)
        estimator.set_params(distributed=True)
        try:
            shared_groups = None if groups is None else _shareable(np.asarray(groups))
            args = (estimator, _shareable(X), _shareable(y), shared_groups, nprocs, backend,
                    out_dir, timeout)
            torch.multiprocessing.start_processes(
                _run_rank, args=args, nprocs=nprocs, join=True, start_method="spawn")
        except torch.multiprocessing.ProcessRaisedException as exc:
            first = getattr(exc, "error_index", 0)  # the process that failed first
            for rank in [first] + [r for r in range(nprocs) if r != first]:
                path = os.path.join(out_dir, f"error-{rank}.pkl")
                if os.path.exists(path):
                    with open(path, "rb") as f:
                        raise pickle.load(f) from exc
            raise
        finally:
            estimator.set_params(**params)
        with open(os.path.join(out_dir, "estimator.pkl"), "rb") as f:
            fitted = pickle.load(f)
    vars(estimator).clear()
    vars(estimator).update(vars(fitted))
    estimator.set_params(**params)
    return estimator
