"""Batches: images drawn by index, converted to unit range as they are drawn.

* :class:`IndexBatches` yields the training batches of an epoch: one
  ``randperm`` per epoch, no per-sample Python, no ``DataLoader`` workers; a
  host array (a ``np.memmap`` stays on disk) is gathered batch by batch and
  streamed to the device, a device tensor is indexed in place;
* :func:`batched_apply` applies a function to a whole array in chunks (the
  estimators' ``transform`` / ``predict``).

Both read rows of raw values (uint8 pixels, or floats in ``input_range``) and
hand on ``(B, C, H, W)`` float images in [0, 1] (:func:`to_unit`,
:func:`as_images`).
"""

from concurrent.futures import ThreadPoolExecutor

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


class IndexBatches:
    """Mini-batches ``(X[idx], y[idx])``, ``y`` a tensor on the device.

    ``X`` is 2-D: a tensor on the device, or a host array (any numeric dtype,
    e.g. a ``np.memmap``) whose batches are gathered, copied to ``device``
    (through pinned memory, the next batch gathered in a background thread,
    when ``prefetch``) and only then converted from ``input_range`` to [0, 1].
    Batches are viewed as ``(B, C, H, W)`` float images. Each pass draws one
    permutation from ``generator``. With ``world_size > 1`` the pass is split
    as torch's ``DistributedSampler`` splits it: the permutation is padded to a
    multiple of ``world_size`` by wrapping around and process ``rank`` takes
    every ``world_size``-th index from ``rank``, so all processes make the same
    number of steps.
    """

    def __init__(self, X, y, *, batch_size, image_shape, input_range, generator,
                 channels_last=False, rank=0, world_size=1, device=None, prefetch=None):
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.image_shape = tuple(image_shape)
        self.input_range = input_range
        self.generator = generator
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.host = not torch.is_tensor(X)
        self.device = torch.device(device if device is not None else
                                   (y.device if self.host else X.device))
        self.prefetch = (self.host and self.device.type == "cuda"
                         if prefetch is None else prefetch)

    def _shard_size(self):
        return -(-len(self.X) // self.world_size)

    def __len__(self):
        return -(-self._shard_size() // self.batch_size)

    def _order(self):
        n = len(self.X)
        order = torch.randperm(n, generator=self.generator, device=self.generator.device)
        if self.world_size > 1 and n:
            total = self._shard_size() * self.world_size
            order = order.repeat(-(-total // n))[:total][self.rank::self.world_size]
        return order.to(self.device)

    def _gather(self, rows):
        """Host rows of X, pinned when they go to CUDA."""
        rows = torch.from_numpy(native_rows(np.asarray(self.X[rows])))
        return rows.pin_memory() if self.device.type == "cuda" else rows

    def __iter__(self):
        order = self._order()
        starts = range(0, len(order), self.batch_size)
        if not self.host:
            for start in starts:
                idx = order[start:start + self.batch_size]
                yield self._batch(self.X[idx], idx)
            return
        host_order = order.cpu().numpy()

        def rows_of(start):
            return self._gather(host_order[start:start + self.batch_size])

        pool = ThreadPoolExecutor(max_workers=1) if self.prefetch else None
        try:
            pending = None
            for i, start in enumerate(starts):
                rows = pending.result() if pending is not None else rows_of(start)
                if pool is not None and i + 1 < len(starts):
                    pending = pool.submit(rows_of, starts[i + 1])
                xb = rows.to(self.device, non_blocking=True)
                yield self._batch(xb, order[start:start + self.batch_size])
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _batch(self, xb, idx):
        xb = as_images(to_unit(xb, self.input_range), self.image_shape, self.channels_last)
        return xb, (None if self.y is None else self.y[idx])


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
