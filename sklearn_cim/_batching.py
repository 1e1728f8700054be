"""Batches: images drawn by index, converted to unit range as they are drawn.

* :class:`TrainingSet` is the training set of a fit (rows, class codes,
  group codes) and :class:`IndexBatches`, skorch's ``iterator_train``,
  yields its batches: one ``randperm`` per epoch, no per-sample Python, no
  ``DataLoader`` workers; a host array (a ``np.memmap`` stays on disk) is
  gathered batch by batch and streamed to the device, a device tensor is
  indexed in place; each batch is ``(images, Targets(classes, groups))``;
* :func:`batched_apply` applies a function to a whole array in chunks (the
  estimators' ``transform`` / ``predict``).

Both read rows of raw values (uint8 pixels, or floats in ``input_range``) and
hand on ``(B, C, H, W)`` float images in [0, 1] (:func:`to_unit`,
:func:`as_images`).
"""

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional

import numpy as np
import torch

from ._devices import as_device_tensor, autocast, native_rows


def to_unit(xb, input_range):
    """Convert a raw batch (uint8 or float) in ``input_range`` to float32 in [0, 1]."""
    low, high = input_range
    xb = xb.float()
    if low != 0.0 or high != 1.0:
        xb = (xb - low) * (1.0 / (high - low))
    return xb


def as_images(xb, image_shape, channels_last=False):
    """View 2-D unit-range rows as ``(B, C, H, W)`` images."""
    xb = xb.view(-1, *image_shape)
    if channels_last:
        xb = xb.contiguous(memory_format=torch.channels_last)
    return xb


class Targets(NamedTuple):
    """What a training batch holds besides its images: each image's class
    code and, for the group-aware objective, its group code (else None)."""

    classes: torch.Tensor
    groups: Optional[torch.Tensor] = None


class TrainingSet(torch.utils.data.Dataset):
    """The training set as a fit reads it: 2-D rows of raw values ``X`` (a
    tensor on the device, or a host array, e.g. a ``np.memmap``, that stays
    as given), class codes ``y`` and group codes ``groups`` (or None) as
    tensors on the device, and how rows become ``(B, C, H, W)`` unit-range
    images (``image_shape``, ``input_range``, ``channels_last``); in a
    data-parallel fit, this process's ``rank`` of ``world_size``. With ``rows``
    (indices of X), the set is those rows of X only (``y`` and ``groups`` hold
    theirs): the others are never read (e.g. held back for a check).

    It is handed to skorch as the dataset; :class:`IndexBatches` draws its
    batches in the order its ``generator`` gives (on the device; the net
    seeds it), and :meth:`images` gathers any rows (e.g. drawn pairs).
    """

    def __init__(self, X, y, groups=None, *, image_shape, input_range,
                 channels_last=False, device=None, rank=0, world_size=1, rows=None):
        self.X, self.y, self.groups = X, y, groups
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        # rows of a device tensor are mapped on its device (no host round trip per batch)
        self.device_rows = (torch.as_tensor(self.rows, device=X.device)
                            if self.rows is not None and torch.is_tensor(X) else None)
        self.rank, self.world_size = rank, world_size
        self.image_shape = tuple(image_shape)
        self.input_range = input_range
        self.channels_last = channels_last
        self.host = not torch.is_tensor(X)
        self.device = torch.device(device if device is not None else
                                   (y.device if self.host else X.device))
        self.generator = torch.Generator(device=self.device)
        # each row's chance of being drawn, or None: every row once per pass
        self.sampling_weights = None

    def __len__(self):
        return len(self.X) if self.rows is None else len(self.rows)

    def __getitem__(self, i):
        raise TypeError("TrainingSet is read in batches (IndexBatches), not by item.")

    def gather(self, rows, *, pin=False):
        """Raw rows of X as a tensor; with ``pin``, host rows bound for CUDA are
        pinned (for a non-blocking copy, worth it only off the training thread)."""
        if not self.host:
            rows = rows.to(self.X.device) if torch.is_tensor(rows) else rows
            return self.X[rows if self.device_rows is None else self.device_rows[rows]]
        if torch.is_tensor(rows):
            rows = rows.cpu().numpy()
        if self.rows is not None:
            rows = self.rows[rows]
        out = torch.from_numpy(native_rows(np.asarray(self.X[rows])))
        return out.pin_memory() if pin and self.device.type == "cuda" else out

    def as_images(self, raw):
        """Raw rows on the device as unit-range ``(B, C, H, W)`` float images."""
        return as_images(to_unit(raw, self.input_range), self.image_shape, self.channels_last)

    def images(self, rows):
        """Rows of the training set as unit-range images on the device."""
        return self.as_images(self.gather(rows).to(self.device))

    def targets(self, idx):
        return Targets(self.y[idx], None if self.groups is None else self.groups[idx])


class IndexBatches:
    """The training batches of a :class:`TrainingSet`: skorch's
    ``iterator_train``, called as ``IndexBatches(dataset, batch_size=...)``;
    yields ``(images, Targets)``.

    Each pass draws one permutation from the dataset's ``generator``, or, when
    the dataset has ``sampling_weights`` (one per row), as many rows drawn
    with replacement with those weights (e.g. every (class, group) cell as
    often). A host
    array is gathered batch by batch and copied to the device (through pinned
    memory, the next batch gathered in a background thread, when
    ``prefetch``), and only then converted to [0, 1];
    a device tensor is indexed in place. With ``world_size > 1`` the pass is
    split as torch's ``DistributedSampler`` splits it: the permutation is
    padded to a multiple of the dataset's ``world_size`` by wrapping around
    and process ``rank`` takes every ``world_size``-th index from ``rank``, so
    all processes make the same number of steps.
    """

    def __init__(self, dataset, *, batch_size, prefetch=None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.generator = dataset.generator
        self.rank, self.world_size = dataset.rank, dataset.world_size
        self.prefetch = (dataset.host and dataset.device.type == "cuda"
                         if prefetch is None else prefetch)

    def _shard_size(self):
        return -(-len(self.dataset) // self.world_size)

    def __len__(self):
        return -(-self._shard_size() // self.batch_size)

    def _order(self):
        n = len(self.dataset)
        weights = self.dataset.sampling_weights
        if weights is not None and n:
            order = torch.multinomial(weights.to(self.generator.device, torch.float64), n,
                                      replacement=True, generator=self.generator)
        else:
            order = torch.randperm(n, generator=self.generator, device=self.generator.device)
        if self.world_size > 1 and n:
            total = self._shard_size() * self.world_size
            order = order.repeat(-(-total // n))[:total][self.rank::self.world_size]
        return order.to(self.dataset.device)

    def __iter__(self):
        data = self.dataset
        order = self._order()
        starts = range(0, len(order), self.batch_size)
        if not data.host:
            for start in starts:
                idx = order[start:start + self.batch_size]
                yield data.as_images(data.gather(idx)), data.targets(idx)
            return
        host_order = order.cpu().numpy()

        def rows_of(start):
            return data.gather(host_order[start:start + self.batch_size], pin=True)

        pool = ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            pending = None
            for i, start in enumerate(starts):
                rows = pending.result() if pending is not None else rows_of(start)
                if pool is not None and i + 1 < len(starts):
                    pending = pool.submit(rows_of, starts[i + 1])
                xb = rows.to(data.device, non_blocking=True)
                yield data.as_images(xb), data.targets(order[start:start + self.batch_size])
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)


@torch.no_grad()
def batched_apply(fn, X, *, input_range, image_shape, device, chunk, pixels=True,
                  channels_last=False, precision="float32"):
    """Apply ``fn`` (unit-range images -> tensor) to a 2-D array in chunks.

    Returns one float32 array (rows of X first), filled chunk by chunk: the
    input is converted a chunk at a time and nothing is concatenated. Nothing
    is tracked by autograd; ``fn`` runs under ``precision``'s autocast. On an
    out-of-memory error the chunk is halved and the chunk retried (down to one
    row).
    """
    out = None
    start = 0
    while start < len(X):
        try:
            xb = as_device_tensor(X[start:start + chunk], device, pixels=pixels)
            xb = as_images(to_unit(xb, input_range), image_shape, channels_last)
            with autocast(device, precision):
                res = fn(xb)
            res = res.float().cpu().numpy()
        except torch.OutOfMemoryError:
            if chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        if out is None:
            out = np.empty((len(X),) + res.shape[1:], np.float32)
        out[start:start + len(res)] = res
        start += len(res)
    return out
