"""Training base shared by the estimators: a skorch ``NeuralNet`` subclass.

What it adds to skorch:

* batches are drawn by index (:class:`IndexBatches`): one ``randperm`` per
  epoch, no per-sample Python, no ``DataLoader`` workers. The training set
  is never converted as a whole: on CPU, and on CUDA when it does not fit
  beside the model (:func:`place_training_data`), each batch is gathered from
  the array as given (a ``np.memmap`` stays on disk) and streamed to the
  device; otherwise it is copied to the device once (uint8 stays uint8). Each
  batch is converted to float in [0, 1] as it is drawn;
* the loss is a weighted sum of named terms (:meth:`TorchNet.loss_terms`);
  each unweighted term is accumulated on the device and its epoch mean is
  written to ``history`` as ``train_<name>``; batch losses too are read from
  the device once per epoch, so a training step never waits for the device;
* an optional fast path (:class:`TorchNet` parameters): bf16 autocast,
  channels_last memory format and a ``torch.compile``-d training forward;
  the fitted pickle leaves the optimizer state out unless asked;
* seeded training (:func:`fit_net`): module initialisation, batch order and
  any sampling draw from generators seeded by ``random_state``, without
  touching torch's global random state (and safe in threads);
* data-parallel training (``world``): the module is wrapped in
  ``DistributedDataParallel`` for the training forward, each process draws its
  share of every epoch and the logged losses are averaged over the processes
  (see :mod:`sklearn_cim.distributed`).
"""

import copy
import json
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet
from skorch.callbacks import ProgressBar
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ._validation import check_number, unique_classes
from .distributed import (
    all_reduce_sum,
    broadcast_int,
    check_agreement,
    check_distributed,
    local_device,
    world,
)


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


def to_unit(xb, units):
    """Convert a raw batch (uint8 or float) to float32 in [0, 1]."""
    low, high = units
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


# On CUDA the training set is copied to the device when it takes at most this
# fraction of the free device memory; otherwise batches are streamed.
DEVICE_DATA_FRACTION = 0.25


def place_training_data(X, device, *, pixels=True):
    """The training set as :class:`IndexBatches` reads it.

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


class IndexBatches:
    """Mini-batches ``(X[idx], y[idx])``, ``y`` a tensor on the device.

    ``X`` is 2-D: a tensor on the device, or a host array (any numeric dtype,
    e.g. a ``np.memmap``) whose batches are gathered, copied to ``device``
    (through pinned memory, the next batch gathered in a background thread,
    when ``prefetch``) and only then converted. Batches are viewed as
    ``(B, C, H, W)`` float in [0, 1]. With ``shuffle``, each pass draws one
    permutation from ``generator``. With ``world_size > 1`` the pass is split
    as torch's ``DistributedSampler`` splits it: the permutation is padded to a
    multiple of ``world_size`` by wrapping around and process ``rank`` takes
    every ``world_size``-th index from ``rank``, so all processes make the same
    number of steps.
    """

    def __init__(self, X, y, *, batch_size, image_shape, units, shuffle, generator,
                 channels_last=False, rank=0, world_size=1, device=None, prefetch=None):
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.image_shape = tuple(image_shape)
        self.units = units
        self.shuffle = shuffle
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
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator,
                                   device=self.generator.device)
        else:
            order = torch.arange(n, device=self.device)
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
        xb = as_images(to_unit(xb, self.units), self.image_shape, self.channels_last)
        return xb, (None if self.y is None else self.y[idx])


class TorchNet(NeuralNet):
    """skorch ``NeuralNet`` with device-resident batching and named loss terms.

    Subclasses implement :meth:`loss_terms`, returning ``{name: (weight,
    term)}``; the loss is ``sum(weight * term)``.

    Extra parameters: ``image_shape`` and ``units`` (the raw value range,
    mapped to [0, 1] per batch) describe the stored data, ``seed`` seeds the
    batch order and any draws a subclass makes with :attr:`generator`.
    The fast path: ``precision`` ("float32" or "bfloat16" autocast of forward
    and loss), ``channels_last`` (module, batches and subclass metrics in
    channels_last memory format), ``compile_options`` (None, or keyword
    arguments of ``torch.compile`` for the training forward; the compiled
    wrapper is transient, ``module_`` stays the plain module) and
    ``keep_optimizer_state`` (pickle the optimizer's state; otherwise a fresh
    optimizer is made on unpickling). ``world``: None, or ``(rank,
    world_size)`` of an initialised torch.distributed process group to train
    data-parallel in.
    """

    def __init__(self, *args, image_shape=None, units=(0.0, 1.0), seed=0,
                 precision="float32", channels_last=False, compile_options=None,
                 keep_optimizer_state=False, world=None, **kwargs):
        kwargs.setdefault("train_split", None)
        kwargs.setdefault("predict_nonlinearity", None)
        super().__init__(*args, **kwargs)
        self.image_shape = image_shape
        self.units = units
        self.seed = seed
        self.precision = precision
        self.channels_last = channels_last
        self.compile_options = compile_options
        self.keep_optimizer_state = keep_optimizer_state
        self.world = world

    # -- data -----------------------------------------------------------------
    def make_generator(self, offset, *, per_process=False):
        """A generator seeded by ``seed``, ``offset`` (< 16) and the epochs done,
        so that continuing a model (in memory or unpickled) draws the same;
        ``per_process``: also by the rank of a data-parallel fit."""
        seed = self.seed + offset + 16 * len(self.history)
        if per_process and self.world is not None:
            seed += self.world[0] << 32
        return torch.Generator(device=self.device).manual_seed(seed)

    def get_iterator(self, dataset, training=False):
        if not training:
            raise NotImplementedError("TorchNet batches training data only.")
        if not hasattr(self, "batch_generator"):
            self.batch_generator = self.make_generator(0)
        rank, size = self.world or (0, 1)
        return IndexBatches(
            dataset.X, dataset.y, batch_size=self.batch_size,
            image_shape=self.image_shape, units=self.units, shuffle=True,
            generator=self.batch_generator, channels_last=self.channels_last,
            rank=rank, world_size=size, device=self.device,
        )

    # -- the training step ----------------------------------------------------
    def initialize_module(self):
        super().initialize_module()
        self.__dict__.pop("step_module", None)
        if self.channels_last:
            self.module_.to(memory_format=torch.channels_last)
        return self

    def infer(self, x, **fit_params):
        """Forward pass; in training through the DDP wrapper of a data-parallel
        fit and the compiled module, if asked."""
        module = self.module_
        if module.training and (self.world is not None or self.compile_options is not None):
            if self.__dict__.get("step_module") is None:
                # set past skorch's attribute hooks: not a registered module
                self.__dict__["step_module"] = self.training_module()
            module = self.__dict__["step_module"]
        return module(x, **fit_params)

    def training_module(self):
        """``module_`` wrapped for training: DDP, then ``torch.compile``."""
        module = self.module_
        if self.world is not None:
            # DDP waits for a gradient of every trainable parameter in every
            # step: those the loss does not use are frozen for this fit
            frozen = [p for p in self.untrained_parameters() if p.requires_grad]
            for param in frozen:
                param.requires_grad_(False)
            self.__dict__["ddp_frozen"] = frozen
            device = torch.device(self.device)
            module = DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None)
        if self.compile_options is not None:
            module = torch.compile(module, **self.compile_options)
        return module

    def untrained_parameters(self):
        """Parameters of ``module_`` the loss does not use (no gradient)."""
        return []

    def prepare_training(self):
        """Build what training needs beyond skorch's modules; runs with torch's
        global RNG seeded (see :func:`fit_net`)."""

    def set_training_data(self, X, y):
        """Called with the placed training set before each fit; a subclass
        keeps what its loss reads beyond the batch."""

    def release_training_data(self):
        """Drop what :meth:`set_training_data` kept (called when a fit ends,
        so that the fitted net does not hold the training set)."""

    def train_step_single(self, batch, **fit_params):
        # skorch's step, with forward and loss under autocast (backward outside).
        self._set_training(True)
        Xi, yi = batch
        with autocast(self.device, self.precision):
            y_pred = self.infer(Xi, **fit_params)
            loss = self.get_loss(y_pred, yi, X=Xi, training=True)
        loss.backward()
        return {"loss": loss, "y_pred": y_pred}

    def run_single_epoch(self, iterator, training, prefix, step_fn, **fit_params):
        # skorch's loop, except that batch losses stay on the device until the
        # epoch ends and are then written to the history in one read.
        if iterator is None:
            return
        losses = []
        for batch in iterator:
            self.notify("on_batch_begin", batch=batch, training=training)
            step = step_fn(batch, **fit_params)
            losses.append(step["loss"].detach())
            self.history.record_batch(prefix + "_batch_size", len(batch[0]))
            self.notify("on_batch_end", batch=batch, training=training, **step)
        if losses:
            values = torch.stack(losses).float()
            if self.world is not None:  # a step's loss: the mean over the processes
                values = all_reduce_sum(values, self.device) / self.world[1]
            records = self.history[-1]["batches"][-len(losses):]
            for record, value in zip(records, values.tolist()):
                record[prefix + "_loss"] = value
        self.history.record(prefix + "_batch_count", len(losses))

    @property
    def generator(self):
        """Generator for draws made inside the loss (e.g. triplet mining)."""
        if not hasattr(self, "loss_generator"):
            self.loss_generator = self.make_generator(1, per_process=True)
        return self.loss_generator

    # -- loss -----------------------------------------------------------------
    def loss_terms(self, y_pred, y_true, X):
        raise NotImplementedError

    def get_loss(self, y_pred, y_true, X=None, training=False):
        terms = self.loss_terms(y_pred, y_true, X)
        loss = sum(weight * term for weight, term in terms.values())
        n = len(y_true)
        sums = self.__dict__.setdefault("epoch_term_sums", {})
        for name, (_, term) in terms.items():
            value = term.detach().float() * n  # bf16 sums stop growing
            sums[name] = sums[name] + value if name in sums else value
        self.epoch_term_count = getattr(self, "epoch_term_count", 0) + n
        return loss

    def on_train_end(self, net, **kwargs):
        super().on_train_end(net, **kwargs)
        # the compiled / DDP wrapper (and any CUDA-graph memory) lives for one fit
        self.__dict__.pop("step_module", None)
        self.thaw_parameters()

    def thaw_parameters(self):
        """Unfreeze what :meth:`training_module` froze (nothing else)."""
        for param in self.__dict__.pop("ddp_frozen", []):
            param.requires_grad_(True)

    def on_epoch_begin(self, net, **kwargs):
        super().on_epoch_begin(net, **kwargs)
        self.__dict__.pop("epoch_term_sums", None)  # left by an interrupted epoch
        self.__dict__.pop("epoch_term_count", None)

    def on_epoch_end(self, net, **kwargs):
        super().on_epoch_end(net, **kwargs)
        sums = self.__dict__.pop("epoch_term_sums", {})
        count = self.__dict__.pop("epoch_term_count", 0)
        if sums:
            names = list(sums)
            totals = torch.stack([sums[k].float() for k in names]
                                 + [torch.tensor(float(count), device=sums[names[0]].device)])
            if self.world is not None:  # the same means, over all processes, everywhere
                totals = all_reduce_sum(totals, self.device)
            means = (totals[:-1] / totals[-1].clamp(min=1)).tolist()
            for name, value in zip(names, means):
                self.history.record("train_" + name, value)
            bad = [f"{n}={v}" for n, v in zip(names, means) if not np.isfinite(v)]
            if bad:
                raise FloatingPointError(
                    f"The training loss became non-finite in epoch {len(self.history)} "
                    f"({', '.join(bad)}). Lower lr, check the inputs for extreme values, "
                    "or lower the loss weights."
                )

    # -- persistence ----------------------------------------------------------
    transient_attributes = (
        "batch_generator", "loss_generator", "epoch_term_sums", "epoch_term_count",
        "step_module", "ddp_frozen",
    )

    def __getstate__(self):
        # Leave the optimizer out of skorch's pickled blob unless asked.
        optimizer = None
        if not getattr(self, "keep_optimizer_state", True):
            optimizer = self.__dict__.pop("optimizer_", None)
        try:
            state = super().__getstate__()
        finally:
            if optimizer is not None:
                self.optimizer_ = optimizer
        for name in self.transient_attributes:
            state.pop(name, None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        if getattr(self, "initialized_", False) and "optimizer_" not in self.__dict__:
            self.initialize_optimizer()


def move_net(net, device):
    """Move a fitted net (module, optimizer state) to ``device``."""
    net.device = device
    net.module_.to(device)
    for state in net.optimizer_.state.values():
        for key, value in state.items():
            if torch.is_tensor(value):
                state[key] = value.to(device)
    for name in ("batch_generator", "loss_generator"):
        net.__dict__.pop(name, None)


def default_callbacks(verbose, callbacks):
    """User callbacks plus a progress bar when ``verbose >= 2``."""
    out = list(callbacks or [])
    if verbose >= 2:
        out.append(ProgressBar())
    return out


# Out-of-memory retries halve the batch size down to this floor.
MIN_RETRY_BATCH_SIZE = 8


def _rng_devices(device):
    device = torch.device(device)
    return [device.index or 0] if device.type == "cuda" else []


# torch's global RNG is process-wide: one fit at a time seeds and uses it
_GLOBAL_RNG_LOCK = threading.RLock()


@contextmanager
def seeded_global_rng(seed, device):
    """Run a block with torch's global RNG seeded by ``seed`` (None: as it is),
    then restore it; blocks of other threads wait."""
    devices = _rng_devices(device)
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=devices):
        if seed is not None:
            # Only the generators fork_rng restores: the CPU's and the device's
            # (torch.manual_seed would also seed, and leave changed, other GPUs).
            torch.default_generator.manual_seed(seed)
            for index in devices:
                with torch.cuda.device(index):
                    torch.cuda.manual_seed(seed)
        yield


def fit_net(net, X, y, seed, *, epochs=None, initialize=True):
    """Train ``net``, initialised (and prepared) with torch's global RNG seeded
    by ``seed``; the global RNG is restored and training itself draws only
    from the net's own generators, so fits in concurrent threads do not mix.

    ``initialize=False`` continues training an initialised net. On an
    out-of-memory error the batch size is halved (with a warning) and training
    starts again, down to :data:`MIN_RETRY_BATCH_SIZE`; below that (and in a
    data-parallel fit, whose processes must agree) the error is raised with
    advice. A ``KeyboardInterrupt`` stops training early (skorch keeps the
    weights reached) with a warning; the net stays usable.
    """
    epochs = net.max_epochs if epochs is None else epochs
    start = 0 if initialize else len(net.history)
    while True:
        with seeded_global_rng(seed, net.device):
            if initialize:
                net.initialize()
            net.prepare_training()
        # left by a fit that raised: a wrapper (DDP of an old group) and frozen parameters
        net.__dict__.pop("step_module", None)
        net.thaw_parameters()
        for name in ("batch_generator", "loss_generator"):
            # a retry, or a continuation, starts the streams its seed gives
            net.__dict__.pop(name, None)
        try:
            net.partial_fit(X, y, epochs=epochs - (len(net.history) - start))
            break
        except torch.OutOfMemoryError as exc:
            smaller = net.batch_size // 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if net.world is not None:
                raise torch.OutOfMemoryError(
                    f"Out of memory in a data-parallel fit with batch_size={net.batch_size} "
                    "per process (its processes cannot retry one by one). Lower "
                    "batch_size, or use smaller images or networks."
                ) from exc
            if smaller < MIN_RETRY_BATCH_SIZE:
                raise torch.OutOfMemoryError(
                    f"Out of memory even with batch_size={net.batch_size}. Use smaller "
                    "images or networks (tn_width, tn_depth, head_width, hidden sizes), "
                    "free the GPU, or fit on CPU with device='cpu'."
                ) from exc
            warnings.warn(
                f"Out of memory with batch_size={net.batch_size}; retrying with "
                f"batch_size={smaller}.", RuntimeWarning, stacklevel=5)
            net.batch_size = smaller
    done = len(net.history) - start
    if done < epochs:
        warnings.warn(
            f"Training was interrupted after {done} of {epochs} epochs; the estimator "
            "keeps the weights reached and is usable (fit again, or use warm_start=True "
            "to continue).", RuntimeWarning, stacklevel=5)
    return net


@contextmanager
def restored_on_error(net):
    """Put an initialised ``net`` back as it was (attributes, weights, optimizer
    state, history, device) if the block raises: training changes them in place."""
    attrs = dict(vars(net))
    history = copy.deepcopy(net.history_)
    weights = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
    optimizer = copy.deepcopy(net.optimizer_.state_dict())
    try:
        yield
    except BaseException:
        vars(net).clear()
        vars(net).update(attrs)
        net.history_ = history
        net.module_.to(net.device)
        net.module_.load_state_dict(weights)
        net.optimizer_.load_state_dict(optimizer)
        raise


def _same_callbacks(old, new):
    """Whether two :func:`default_callbacks` lists hold the same user callbacks
    (the same objects) and both a progress bar or neither."""
    old, new = list(old or []), list(new or [])
    return len(old) == len(new) and all(
        a is b or (isinstance(a, ProgressBar) and isinstance(b, ProgressBar))
        for a, b in zip(old, new))


class TorchEstimatorMixin:
    """What the estimators share about the skorch net they fit (``net_``).

    Expects the parameters ``lr``, ``max_epochs``, ``batch_size``, ``device``,
    ``random_state``, ``verbose``, ``callbacks``, ``warm_start``,
    ``keep_optimizer_state`` and ``distributed``, and the
    methods ``_net_spec()`` (the net class and its parameters, from fitted
    attributes) and the class attribute ``_saved_shapes``.
    """

    _pixels = True  # integer X holds 8-bit pixels
    _saved_shapes = ()  # fitted tuple (or None) attributes saved with the weights

    def __sklearn_is_fitted__(self):
        return hasattr(self, "net_")

    @contextmanager
    def _all_or_nothing(self):
        """Restore the estimator's attributes if the block raises, so that a
        failed fit or load leaves the previous state (or an unfitted one)."""
        saved = dict(vars(self))
        try:
            yield
        except BaseException:
            vars(self).clear()
            vars(self).update(saved)
            raise

    @property
    def history_(self):
        return self.net_.history_

    @property
    def device_(self):
        return str(self.net_.device)

    def _check_training_params(self, *, min_batch_size=1):
        """Check the training parameters both estimators share."""
        check_number("max_epochs", self.max_epochs, low=1, integer=True)
        check_number("batch_size", self.batch_size, low=min_batch_size, integer=True)
        check_number("lr", self.lr, low=0, low_open=True)
        check_number("verbose", self.verbose, low=0, integer=True)
        for name in ("warm_start", "keep_optimizer_state"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        resolve_device(self.device)
        check_distributed(self.distributed)

    def _continues(self):
        return bool(self.warm_start) and hasattr(self, "net_")

    def _known_classes(self, warm, classes):
        """Classes y must keep to: the fitted ones when continuing, else the
        ``classes`` of a first ``partial_fit`` (None: taken from y)."""
        if classes is not None:
            classes = unique_classes(classes)
        if warm:
            if classes is not None and not np.array_equal(classes, self.classes_):
                raise ValueError(
                    f"classes={classes.tolist()!r} differs from the classes_ "
                    f"{self.classes_.tolist()!r} of the first call; pass the same "
                    "classes, or none after the first call.")
            return self.classes_
        return classes

    def _new_net(self, seed, device, world=None):
        net_class, params = self._net_spec()
        verbose = self.verbose if world is None or world[0] == 0 else 0  # rank 0 prints
        return net_class(
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            device=device,
            verbose=verbose,
            callbacks=default_callbacks(verbose, self.callbacks),
            seed=seed,
            optimizer__fused=True,
            keep_optimizer_state=bool(self.keep_optimizer_state),
            world=world,
            **self._fast_path(device),
            **params,
        )

    def _fast_path(self, device):
        """TorchNet fast-path settings (precision, channels_last,
        compile_options) for ``device``; none by default."""
        return {}

    def _refresh_net(self, net, device, world=None):
        """Bring a fitted net up to the current parameters before continuing.

        Training settings, loss parameters, ``callbacks``, ``verbose`` and the
        device (``device``, resolved) follow ``set_params``; the networks'
        architecture cannot change without a fresh fit.
        """
        spec = self._net_spec()[1]
        changed = sorted(k[len("module__"):] for k, v in spec.items()
                         if k.startswith("module__") and getattr(net, k) != v)
        if changed:
            raise ValueError(
                f"warm_start / partial_fit cannot change the networks ({', '.join(changed)} "
                "differ from the fitted model); set them back, or fit from scratch with "
                "warm_start=False.")
        if torch.device(net.device) != torch.device(device):
            move_net(net, device)  # e.g. unpickled on a CPU-only host, continued on a GPU
        for key, value in spec.items():
            if key != "module" and not key.startswith("module__"):
                setattr(net, key, value)
        for key, value in self._fast_path(net.device).items():
            if key == "compile_options" and value != net.compile_options:
                net.__dict__.pop("step_module", None)
            setattr(net, key, value)
        net.keep_optimizer_state = bool(self.keep_optimizer_state)
        net.batch_size, net.max_epochs = self.batch_size, self.max_epochs
        net.set_params(lr=self.lr)
        net.verbose = self.verbose if world is None or world[0] == 0 else 0  # rank 0 prints
        callbacks = default_callbacks(net.verbose, self.callbacks)
        if not _same_callbacks(net.callbacks, callbacks):  # unchanged ones keep their state
            net.callbacks = callbacks
            net.initialize_callbacks()

    def _shared_seed(self):
        """A seed drawn from ``random_state``; in a data-parallel fit, rank 0's
        for every process (one batch order, one set of initial weights)."""
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        group = world(self.distributed)
        if group is not None:
            seed = broadcast_int(seed, resolve_device(local_device(self.device)))
        return seed

    def _train(self, X, y, *, warm=False, epochs=None):
        """Train a new net on (X, y), or continue ``net_`` when ``warm``; in a
        data-parallel fit, with the other processes of the group."""
        group = world(self.distributed)
        device = resolve_device(local_device(self.device) if group else self.device)
        if group is not None:  # the first collective: do all processes agree?
            check_agreement(warm, len(X), X.shape[1], device)
        # a warm fit that raises leaves net_ as it was (_all_or_nothing restores
        # the estimator's attributes, not the net they share)
        with restored_on_error(self.net_) if warm else nullcontext():
            if warm:
                net = self.net_
                self._refresh_net(net, device, group)  # e.g. rank 0's model, unpickled in all
                net.world = group
                seed = net.seed + len(net.history)
            else:
                seed = self._shared_seed()  # batch order, initial weights
                net = self._new_net(seed, device, group)
            X_t = place_training_data(X, net.device, pixels=self._pixels)
            y_t = torch.as_tensor(y, device=net.device)
            net.set_training_data(X_t, y_t)
            try:
                self.net_ = fit_net(net, X_t, y_t, seed, epochs=epochs, initialize=not warm)
            finally:
                net.release_training_data()
        return self.net_

    # -- weights-only persistence ----------------------------------------------
    def _fitted_metadata(self):
        meta = {"classes_": self.classes_.tolist(), "n_features_in_": int(self.n_features_in_)}
        for name in self._saved_shapes:
            value = getattr(self, name)
            meta[name] = None if value is None else list(value)
        if hasattr(self, "feature_names_in_"):
            meta["feature_names_in_"] = self.feature_names_in_.tolist()
        return meta

    def _restore_metadata(self, meta):
        self.classes_ = np.asarray(meta["classes_"])
        self.n_features_in_ = meta["n_features_in_"]
        for name in self._saved_shapes:
            setattr(self, name, None if meta[name] is None else tuple(meta[name]))
        if "feature_names_in_" in meta:
            self.feature_names_in_ = np.asarray(meta["feature_names_in_"], dtype=object)

    def __getstate__(self):
        # keep_optimizer_state applies to the pickle even when set after fit
        if "net_" in vars(self):
            self.net_.keep_optimizer_state = bool(self.keep_optimizer_state)
        return super().__getstate__()

    def save_params(self, path):
        """Save the fitted weights and what is needed to rebuild them.

        A ``.safetensors`` path uses safetensors (needs the ``safetensors``
        package); any other path a torch file that loads with
        ``weights_only=True``. Neither runs code when loaded, unlike a pickle.
        The optimizer state and the LPIPS trunk are not saved.
        """
        check_is_fitted(self)
        state = {k: v.detach().cpu().contiguous()
                 for k, v in self.net_.module_.state_dict().items()}
        meta = {"estimator": type(self).__name__, "seed": str(self.net_.seed),
                "fitted": json.dumps(self._fitted_metadata())}
        if str(path).endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(state, str(path), metadata=meta)
        else:
            torch.save({"state_dict": state, "metadata": meta}, path)
        return self

    def load_params(self, path):
        """Rebuild a fitted estimator from :meth:`save_params` output.

        Call it on an estimator constructed with the same parameters as the
        saved one; returns ``self``, ready to transform / predict.
        """
        if str(path).endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                state = {k: f.get_tensor(k) for k in f.keys()}
        else:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            state, meta = saved["state_dict"], saved["metadata"]
        if meta.get("estimator") != type(self).__name__:
            raise ValueError(
                f"{path} holds a {meta.get('estimator')}, not a {type(self).__name__}; "
                "load it with that class.")
        with self._all_or_nothing():
            self.__dict__.pop("feature_names_in_", None)
            self._restore_metadata(json.loads(meta["fitted"]))
            net = self._new_net(int(meta["seed"]), resolve_device(self.device))
            with seeded_global_rng(None, net.device):
                net.initialize()
            try:
                net.module_.load_state_dict(state)
            except RuntimeError as exc:
                raise ValueError(
                    f"The weights in {path} do not fit this estimator's networks ({exc}). "
                    "Construct the estimator with the parameters it was saved with."
                ) from None
            self.net_ = net
        return self


@torch.no_grad()
def batched_apply(fn, X, *, units, image_shape, device, chunk, pixels=True,
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
            xb = as_images(to_unit(xb, units), image_shape, channels_last)
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
