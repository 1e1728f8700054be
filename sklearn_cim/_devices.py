"""Devices: which one to use, in which precision, and data placed on it.

* :func:`resolve_device` maps ``device="auto"`` to CUDA when available and
  checks other names; :func:`resolve_precision` and :func:`autocast` pick and
  apply the arithmetic (bf16 autocast or float32);
* :func:`place_training_data` decides whether the training set is copied to
  the device once or streamed batch by batch;
* :func:`move_net` moves a fitted net (module, optimizer state) to a device.
"""

import warnings

import numpy as np
import torch


def resolve_device(device):
    """Map ``"auto"`` to CUDA when available, else CPU; check other names."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not a torch device; use 'auto', 'cpu', 'cuda' or "
            "'cuda:N'."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asks for CUDA, which is not available here; use "
            "device='auto' (CUDA when present, else CPU) or device='cpu'."
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'auto', 'cpu' or 'cuda'.")
    return str(dev)


PRECISIONS = ("auto", "float32", "bfloat16")


def resolve_precision(precision, device):
    """``"auto"``: bf16 autocast on a CUDA device with native bf16 (compute
    capability 8.0+, or ROCm), float32 elsewhere."""
    if precision == "auto":
        return "bfloat16" if torch.device(device).type == "cuda" and _native_bf16() else "float32"
    return precision


def _native_bf16():
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.5 has no including_emulation
        return torch.cuda.is_bf16_supported()


def autocast(device, precision):
    """Autocast context for ``precision`` ("float32" disables it)."""
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=precision == "bfloat16")


def as_device_tensor(X, device, *, pixels=True):
    """Put a validated 2-D array on ``device`` once, keeping uint8 as uint8.

    With ``pixels=True`` integer X holds 8-bit pixels (range already checked)
    and becomes uint8; otherwise, and for float64, it becomes float32. float32
    and uint8 arrays on CPU are shared, not copied.
    """
    if pixels and X.dtype.kind in "iub":
        X = X.astype(np.uint8, copy=False)
    elif X.dtype != np.float32:
        X = X.astype(np.float32)
    X = np.ascontiguousarray(X)
    with warnings.catch_warnings():
        # Read-only inputs (memmaps) are only ever read.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(X).to(device)


# On CUDA the training set is copied to the device when it takes at most this
# fraction of the free device memory; otherwise batches are streamed.
DEVICE_DATA_FRACTION = 0.25


def place_training_data(X, device, *, pixels=True):
    """The training set as :class:`~sklearn_cim._batching.IndexBatches` reads it.

    On CUDA, a device tensor (uint8 kept as uint8, else float32) when that
    takes at most :data:`DEVICE_DATA_FRACTION` of the free device memory.
    Otherwise (and always on CPU) X itself, unconverted and uncopied: each
    batch is gathered from it and converted on its own.
    """
    if torch.device(device).type == "cuda":
        dtype = torch.uint8 if pixels and X.dtype.kind in "iub" else torch.float32
        free = torch.cuda.mem_get_info(torch.device(device))[0]
        if X.size * dtype.itemsize <= DEVICE_DATA_FRACTION * free:
            return to_device_in_chunks(X, device, dtype)
    return X


def to_device_in_chunks(X, device, dtype, chunk_bytes=2 ** 26):
    """X as a ``dtype`` tensor on ``device``, converted and copied a chunk of
    rows at a time (no whole converted copy on the host)."""
    out = torch.empty(X.shape, dtype=dtype, device=device)
    rows = max(1, chunk_bytes // max(1, X.shape[1] * X.itemsize))
    with warnings.catch_warnings():
        # Read-only inputs (memmaps) are only ever read.
        warnings.filterwarnings("ignore", message=".*not writable.*")
        for start in range(0, len(X), rows):
            chunk = torch.from_numpy(native_rows(np.asarray(X[start:start + rows])))
            out[start:start + rows] = chunk.to(device).to(dtype)
    return out


def native_rows(rows):
    # torch reads native byte order only (a big-endian memmap is converted per batch)
    if rows.dtype.byteorder not in "=|":
        rows = rows.astype(rows.dtype.newbyteorder("="))
    return rows


def move_net(net, device):
    """Move a fitted net (module, optimizer state) to ``device``."""
    net.device = device
    net.module_.to(device)
    for state in net.optimizer_.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(device)
