"""Training base shared by the estimators: a skorch ``NeuralNet`` subclass.

What it adds to skorch:

* data that already lives on the device is batched by index
  (:class:`IndexBatches`): one ``randperm`` per epoch, no per-sample Python,
  no ``DataLoader`` workers; uint8 stays uint8 on the device and each batch is
  converted to float in [0, 1] as it is drawn;
* the loss is a weighted sum of named terms (:meth:`TorchNet.loss_terms`);
  each unweighted term is accumulated on the device and its epoch mean is
  written to ``history`` as ``train_<name>`` (one host sync per epoch);
* seeded training (:func:`fit_net`): module initialisation, batch order and
  any sampling draw from generators seeded by ``random_state``, without
  touching torch's global random state.
"""

import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state
from skorch import NeuralNet
from skorch.callbacks import ProgressBar
from torch import nn


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


class IndexBatches:
    """Mini-batches ``(X[idx], y[idx])`` of tensors already on the device.

    ``X`` is stored 2-D; batches are viewed as ``(B, C, H, W)`` float in
    [0, 1]. With ``shuffle``, each pass draws one permutation from
    ``generator``.
    """

    def __init__(self, X, y, *, batch_size, image_shape, units, shuffle, generator):
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.image_shape = tuple(image_shape)
        self.units = units
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self):
        return -(-len(self.X) // self.batch_size)

    def __iter__(self):
        n = len(self.X)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator, device=self.X.device)
        else:
            order = torch.arange(n, device=self.X.device)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            xb = to_unit(self.X[idx], self.units).view(-1, *self.image_shape)
            yield xb, (None if self.y is None else self.y[idx])


class TorchNet(NeuralNet):
    """skorch ``NeuralNet`` with device-resident batching and named loss terms.

    Subclasses implement :meth:`loss_terms`, returning ``{name: (weight,
    term)}``; the loss is ``sum(weight * term)``.

    Extra parameters: ``image_shape`` and ``units`` (the raw value range,
    mapped to [0, 1] per batch) describe the stored data, ``seed`` seeds the
    batch order and any draws a subclass makes with :attr:`generator`.
    """

    def __init__(self, *args, image_shape=None, units=(0.0, 1.0), seed=0, **kwargs):
        kwargs.setdefault("train_split", None)
        kwargs.setdefault("predict_nonlinearity", None)
        super().__init__(*args, **kwargs)
        self.image_shape = image_shape
        self.units = units
        self.seed = seed

    # -- data -----------------------------------------------------------------
    def make_generator(self, offset):
        return torch.Generator(device=self.device).manual_seed(self.seed + offset)

    def get_iterator(self, dataset, training=False):
        if not training:
            raise NotImplementedError("TorchNet batches training data only.")
        if not hasattr(self, "batch_generator"):
            self.batch_generator = self.make_generator(0)
        return IndexBatches(
            dataset.X, dataset.y, batch_size=self.batch_size,
            image_shape=self.image_shape, units=self.units, shuffle=True,
            generator=self.batch_generator,
        )

    @property
    def generator(self):
        """Generator for draws made inside the loss (e.g. triplet mining)."""
        if not hasattr(self, "loss_generator"):
            self.loss_generator = self.make_generator(1)
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
            value = term.detach() * n
            sums[name] = sums[name] + value if name in sums else value
        self.epoch_term_count = getattr(self, "epoch_term_count", 0) + n
        return loss

    def on_epoch_end(self, net, **kwargs):
        super().on_epoch_end(net, **kwargs)
        sums = self.__dict__.pop("epoch_term_sums", {})
        count = max(self.__dict__.pop("epoch_term_count", 0), 1)
        if sums:
            names = list(sums)
            means = (torch.stack([sums[k].float() for k in names]) / count).tolist()
            for name, value in zip(names, means):
                self.history.record("train_" + name, value)
        loss = self.history[-1].get("train_loss")
        if loss is not None and not np.isfinite(loss):
            raise FloatingPointError(
                f"The training loss became {loss} in epoch {len(self.history)}. "
                "Lower lr, check the inputs for extreme values, or lower the loss "
                "weights."
            )

    # -- persistence ----------------------------------------------------------
    transient_attributes = (
        "batch_generator", "loss_generator", "epoch_term_sums", "epoch_term_count",
    )

    def __getstate__(self):
        state = super().__getstate__()
        for name in self.transient_attributes:
            state.pop(name, None)
        return state


def default_callbacks(verbose, callbacks):
    """User callbacks plus a progress bar when ``verbose >= 2``."""
    out = list(callbacks or [])
    if verbose >= 2:
        out.append(ProgressBar())
    return out


def fit_net(net, X, y, seed):
    """Initialise and train ``net`` with torch's global RNG seeded by ``seed``.

    The global random state is restored afterwards, so fitting does not change
    the caller's torch random stream.
    """
    devices = []
    if torch.device(net.device).type == "cuda":
        devices = [torch.device(net.device).index or 0]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        net.initialize()
        net.partial_fit(X, y)
    return net


class TorchEstimatorMixin:
    """What the estimators share about the skorch net they fit (``net_``).

    Expects the parameters ``lr``, ``max_epochs``, ``batch_size``, ``device``,
    ``random_state``, ``verbose`` and ``callbacks``.
    """

    @property
    def history_(self):
        return self.net_.history_

    @property
    def device_(self):
        return str(self.net_.device)

    def _train_net(self, net_class, X, y, *, pixels, **net_params):
        """Build ``net_class`` (cross-entropy, Adam) and train it on (X, y)."""
        device = resolve_device(self.device)
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        net = net_class(
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            device=device,
            verbose=self.verbose,
            callbacks=default_callbacks(self.verbose, self.callbacks),
            seed=seed,
            **net_params,
        )
        X_t = as_device_tensor(X, device, pixels=pixels)
        y_t = torch.as_tensor(y, device=device)
        self.net_ = fit_net(net, X_t, y_t, seed)
        return self.net_


@torch.no_grad()
def batched_apply(fn, X, *, units, image_shape, device, chunk, pixels=True):
    """Apply ``fn`` (unit-range images -> tensor) to a 2-D array in chunks.

    Returns a list of CPU tensors, one per chunk. Nothing is tracked by autograd.
    """
    outs = []
    for start in range(0, len(X), chunk):
        xb = as_device_tensor(X[start:start + chunk], device, pixels=pixels)
        xb = to_unit(xb, units).view(-1, *image_shape)
        outs.append(fn(xb).float().cpu())
    return outs
