"""The skorch net the estimators train (:class:`TorchNet`) and its training loop.

What it adds to skorch:

* batches are drawn by index (:class:`~sklearn_cim._batching.IndexBatches`);
  the training set is never converted as a whole: on CPU, and on CUDA when it
  does not fit beside the model
  (:func:`~sklearn_cim._devices.place_training_data`), each batch is gathered
  from the array as given and streamed to the device; otherwise it is copied
  to the device once (uint8 stays uint8);
* the loss is a weighted sum of named terms (:meth:`TorchNet.loss_terms`);
  each unweighted term is accumulated on the device and its epoch mean is
  written to ``history`` as ``train_<name>``; batch losses too are read from
  the device once per epoch, so a training step never waits for the device;
* an optional fast path (:class:`TorchNet` parameters): bf16 autocast,
  channels_last memory format and a ``torch.compile``-d training forward;
  the fitted pickle leaves the optimizer state out unless asked;
* seeded training (:func:`fit_net`): module initialisation, batch order and
  any sampling draw from generators seeded by ``random_state``, without
  touching torch's global random state (and safe in threads); out-of-memory
  retries with a halved batch and interrupted fits;
* data-parallel training (``world``): the module is wrapped in
  ``DistributedDataParallel`` for the training forward, each process draws its
  share of every epoch and the logged losses are averaged over the processes
  (see :mod:`sklearn_cim.distributed`).
"""

import copy
import math
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, ProgressBar
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ._batching import IndexBatches
from ._collectives import all_reduce_sum
from ._devices import autocast
from ._seeding import seeded_global_rng


class TorchNet(NeuralNet):
    """skorch ``NeuralNet`` with device-resident batching and named loss terms.

    Subclasses implement :meth:`loss_terms`, returning ``{name: (weight,
    term)}``; the loss is ``sum(weight * term)``.

    Extra parameters: ``image_shape`` and ``input_range`` (the raw value range,
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

    def __init__(self, *args, image_shape=None, input_range=(0.0, 1.0), seed=0,
                 precision="float32", channels_last=False, compile_options=None,
                 keep_optimizer_state=False, world=None, **kwargs):
        kwargs.setdefault("train_split", None)
        kwargs.setdefault("predict_nonlinearity", None)
        super().__init__(*args, **kwargs)
        self.image_shape = image_shape
        self.input_range = input_range
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
            image_shape=self.image_shape, input_range=self.input_range,
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

    def reset_generators(self):
        """Forget the batch-order and loss generators: the next use draws them
        anew from ``seed`` and the epochs done (on the net's current device)."""
        self.__dict__.pop("batch_generator", None)
        self.__dict__.pop("loss_generator", None)

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
        "step_module", "ddp_frozen", "epochs_this_fit",
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
        if "units" in state:  # pickled before input_range had its one name
            state["input_range"] = state.pop("units")
        super().__setstate__(state)
        if getattr(self, "initialized_", False) and "optimizer_" not in self.__dict__:
            self.initialize_optimizer()


class FitProgress(Callback):
    """One progress bar for a whole fit (``verbose=1``): every batch of every
    epoch, with tqdm's rate and ETA, and the last epoch's loss terms."""

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        epochs = getattr(net, "epochs_this_fit", None) or net.max_epochs
        world = net.world[1] if getattr(net, "world", None) else 1
        per_epoch = math.ceil(math.ceil(len(X) / world) / net.batch_size)
        self.bar_ = tqdm(total=epochs * per_epoch, desc=type(net).__name__, unit="batch",
                         leave=True, dynamic_ncols=True)

    def on_batch_end(self, net, **kwargs):
        if getattr(self, "bar_", None) is not None:
            self.bar_.update(1)

    def on_epoch_end(self, net, **kwargs):
        if getattr(self, "bar_", None) is None:
            return
        last = net.history[-1]
        terms = {k[len("train_"):]: f"{last[k]:.4g}" for k in last
                 if k.startswith("train_") and k not in ("train_batch_count",)}
        self.bar_.set_postfix(epoch=len(net.history), **terms, refresh=False)

    def on_train_end(self, net, **kwargs):
        if getattr(self, "bar_", None) is not None:
            self.bar_.close()
        self.bar_ = None

    def __getstate__(self):  # the bar writes to a terminal: not pickled
        state = dict(self.__dict__)
        state.pop("bar_", None)
        return state


def net_verbosity(verbose):
    """skorch's own verbosity for the estimators' ``verbose``: its per-epoch
    table only from 2 (1 is :class:`FitProgress`'s single bar)."""
    return 1 if verbose >= 2 else 0


def default_callbacks(verbose, callbacks):
    """User callbacks plus progress: one bar for the whole fit at ``verbose=1``;
    skorch's per-epoch table (``net_verbosity``) and its per-epoch batch bar
    from ``verbose=2``."""
    out = list(callbacks or [])
    if verbose == 1:
        out.append(FitProgress())
    elif verbose >= 2:
        out.append(ProgressBar())
    return out


# Out-of-memory retries halve the batch size down to this floor.
MIN_RETRY_BATCH_SIZE = 8


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
        net.reset_generators()  # a retry, or a continuation, starts the streams its seed gives
        try:
            net.epochs_this_fit = epochs - (len(net.history) - start)  # for FitProgress
            net.partial_fit(X, y, epochs=net.epochs_this_fit)
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
