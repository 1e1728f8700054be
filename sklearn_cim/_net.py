"""The skorch net the estimators train (:class:`TorchNet`) and its training loop.

skorch runs the loop (its train step, history, callbacks); what this adds
goes through skorch's own hooks:

* the dataset is a :class:`~sklearn_cim._batching.TrainingSet` and skorch's
  ``iterator_train`` is :class:`~sklearn_cim._batching.IndexBatches`: batches
  drawn by index, never converting the training set as a whole (see
  :func:`~sklearn_cim._devices.place_training_data`), each an ``(images,
  Targets(classes, groups))`` pair;
* the loss is a weighted sum of named terms (:meth:`TorchNet.loss_terms`);
  each unweighted term's epoch mean goes to ``history`` as ``train_<name>``;
* ``infer`` and ``get_loss`` run under autocast (``precision``); the module
  may be in channels_last memory format and the training forward compiled;
* seeded training (:func:`fit_net`): module initialisation, batch order and
  any sampling draw from generators seeded by ``random_state``, without
  touching torch's global random state (and safe in threads); out-of-memory
  retries with a halved batch and interrupted fits;
* data-parallel training (``world``): the module is wrapped in
  ``DistributedDataParallel`` for the training forward, each process draws its
  share of every epoch and the logged loss terms are averaged over the
  processes (see :mod:`sklearn_cim.distributed`).
"""

import copy
import math
from contextlib import contextmanager

import numpy as np
import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, ProgressBar
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ._batching import IndexBatches
from ._collectives import all_reduce_sum
from ._devices import autocast, move_net
from ._seeding import seeded_global_rng
from ._warn import warn


class TorchNet(NeuralNet):
    """skorch ``NeuralNet`` trained on a :class:`~sklearn_cim._batching.TrainingSet`
    with a loss made of named terms.

    Subclasses implement :meth:`loss_terms`, returning ``{name: (weight,
    term)}``; the loss is ``sum(weight * term)`` and each unweighted term's
    epoch mean is written to ``history`` as ``train_<name>``.

    Extra parameters: ``seed`` seeds the batch order and the draws a subclass
    makes with :attr:`generator` (streams fixed by ``seed`` and the epochs
    done). The fast path: ``precision`` ("float32" or "bfloat16" autocast of
    forward and loss), ``channels_last`` (module in channels_last memory
    format) and ``compile_options`` (None, or keyword arguments of
    ``torch.compile`` for the training forward; the compiled wrapper lives for
    one fit, ``module_`` stays the plain module). ``world``: None, or
    ``(rank, world_size)`` of an initialised torch.distributed process group to
    train data-parallel in.
    """

    def __init__(self, *args, seed=0, precision="float32", channels_last=False,
                 compile_options=None, world=None, **kwargs):
        kwargs.setdefault("train_split", None)
        kwargs.setdefault("predict_nonlinearity", None)
        kwargs.setdefault("iterator_train", IndexBatches)
        super().__init__(*args, **kwargs)
        self.seed = seed
        self.precision = precision
        self.channels_last = channels_last
        self.compile_options = compile_options
        self.world = world

    def initialize_module(self):
        super().initialize_module()
        if self.channels_last:
            self.module_.to(memory_format=torch.channels_last)
        return self

    # -- one fit: its data, streams and training forward ---------------------------
    def on_train_begin(self, net, X=None, y=None, **kwargs):
        """Start a fit on the :class:`~sklearn_cim._batching.TrainingSet` X:
        keep it, make the loss stream (:attr:`generator`) and wrap the module
        for training."""
        super().on_train_begin(net, X=X, y=y, **kwargs)
        self.training_set_ = X
        self.loss_generator_ = torch.Generator(device=self.device)
        self.step_modules_ = {"train": self.training_module()}

    def on_epoch_begin(self, net, **kwargs):
        """Seed the epoch's batch order and loss stream by ``seed`` and the
        epoch's number alone (the loss stream also by the rank of a
        data-parallel fit): an epoch draws the same whether the fit ran
        through, was continued (``warm_start``, ``partial_fit``, unpickled)
        or resumed from a checkpoint."""
        super().on_epoch_begin(net, **kwargs)
        epoch = len(self.history)  # this epoch's number, from 1
        self.training_set_.generator.manual_seed(self.seed + 16 * (epoch - 1))
        self.loss_generator_.manual_seed(
            self.seed + 1 + 16 * epoch + (self.training_set_.rank << 32))

    @property
    def generator(self):
        """The fit's generator for draws made inside the loss (e.g. triplet mining)."""
        return self.loss_generator_

    def on_train_end(self, net, X=None, y=None, **kwargs):
        super().on_train_end(net, X=X, y=y, **kwargs)
        self.end_training()

    #: What one fit holds: its training set (with the batch-order generator),
    #: the loss stream, the compiled / DDP wrapper (with any CUDA-graph memory),
    #: what DDP froze and the last batch's loss terms. Dropped when the fit
    #: ends or raises, and never pickled (e.g. by a callback, mid-fit).
    fit_scoped = ("training_set_", "loss_generator_", "step_modules_", "frozen_",
                  "batch_terms_")

    def end_training(self):
        """Unfreeze what the DDP wrapper froze and drop what the fit held
        (:attr:`fit_scoped`); after a fit, and when a fit raised."""
        for param in getattr(self, "frozen_", []):
            param.requires_grad_(True)
        for name in self.fit_scoped:
            if hasattr(self, name):
                delattr(self, name)

    def __getstate__(self):
        state = super().__getstate__()
        for name in self.fit_scoped:
            state.pop(name, None)
        return state

    def training_module(self):
        """``module_`` wrapped for training: DDP, then ``torch.compile`` (or
        ``module_`` itself)."""
        module = self.module_
        if self.world is not None:
            # DDP waits for a gradient of every trainable parameter in every
            # step: those the loss does not use are frozen for this fit
            self.frozen_ = [p for p in self.untrained_parameters() if p.requires_grad]
            for param in self.frozen_:
                param.requires_grad_(False)
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

    def infer(self, x, **fit_params):
        """Forward pass under autocast; in training through the fit's DDP /
        compiled wrapper."""
        module = self.module_
        if module.training and hasattr(self, "step_modules_"):
            module = self.step_modules_["train"]
        with autocast(self.device, self.precision):
            return module(x, **fit_params)

    def train_step(self, batch, **fit_params):
        """skorch's step; in a data-parallel fit the loss it logs is the mean
        over the processes (the gradients are already averaged by DDP)."""
        step = super().train_step(batch, **fit_params)
        if self.world is not None:
            loss = step["loss"].detach().reshape(1)
            step["loss"] = all_reduce_sum(loss, self.device)[0] / self.world[1]
        return step

    # -- loss -----------------------------------------------------------------
    def loss_terms(self, y_pred, y_true, X):
        raise NotImplementedError

    def get_loss(self, y_pred, y_true, X=None, training=False):
        with autocast(self.device, self.precision):
            terms = self.loss_terms(y_pred, y_true, X)
            loss = sum(weight * term for weight, term in terms.values())
        self.batch_terms_ = {name: term.detach() for name, (_, term) in terms.items()}
        return loss

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        super().on_batch_end(net, batch=batch, training=training, **kwargs)
        for name, term in self.batch_terms_.items():
            self.history.record_batch("train_" + name, term.item())

    def on_epoch_end(self, net, **kwargs):
        super().on_epoch_end(net, **kwargs)
        names = list(getattr(self, "batch_terms_", {}))
        if not names:
            return
        sizes = np.asarray(self.history[-1, "batches", :, "train_batch_size"], np.float64)
        means = {n: float(sizes @ np.asarray(self.history[-1, "batches", :, "train_" + n])
                          / sizes.sum()) for n in names}
        if self.world is not None:  # the same means, over all processes, everywhere
            totals = torch.tensor([means[n] * sizes.sum() for n in names] + [sizes.sum()],
                                  dtype=torch.float64, device=self.device)
            totals = all_reduce_sum(totals, self.device)
            means = dict(zip(names, (totals[:-1] / totals[-1]).tolist()))
        for name, value in means.items():
            self.history.record("train_" + name, value)
        bad = [f"{n}={v}" for n, v in means.items() if not np.isfinite(v)]
        if bad:
            raise FloatingPointError(
                f"The training loss became non-finite in epoch {len(self.history)} "
                f"({', '.join(bad)}). Lower lr, check the inputs for extreme values, "
                "or lower the loss weights."
            )

    def __setstate__(self, state):
        # pickled before this version: attributes since moved to the TrainingSet
        # of each fit or removed, and skorch's default iterator
        for name in ("units", "input_range", "image_shape", "keep_optimizer_state"):
            state.pop(name, None)
        state["iterator_train"] = IndexBatches
        super().__setstate__(state)
        if getattr(self, "initialized_", False) and "optimizer_" not in self.__dict__:
            self.initialize_optimizer()  # pickled without its optimizer: a fresh Adam


class FitProgress(Callback):
    """One progress bar for a whole fit (``verbose=1``): every batch of every
    epoch, with tqdm's rate and ETA, and the last epoch's loss terms."""

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        epochs = getattr(net, "epochs_this_fit_", None) or net.max_epochs
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


def fit_net(net, data, seed, *, epochs=None, initialize=True, resume=None):
    """Train ``net`` on the :class:`~sklearn_cim._batching.TrainingSet` ``data``,
    initialised (and prepared) with torch's global RNG seeded by ``seed``; the
    global RNG is restored and training itself draws only from the fit's own
    generators, so fits in concurrent threads do not mix.

    ``initialize=False`` continues training an initialised net;
    ``resume``: None, or a callable that loads a checkpoint into the new net once
    initialised (:class:`sklearn_cim._checkpoint.Resume`), for the epochs it had
    not done. On an out-of-memory error the batch
    size is halved (with a warning) and training starts again from where this
    call began (a new net initialised again, a continued one put back as it was:
    weights, optimizer state and history, so the epoch cut short is neither kept
    nor counted), down to :data:`MIN_RETRY_BATCH_SIZE`; below that (and in a
    data-parallel fit, whose processes must agree) the error is raised with
    advice. A ``KeyboardInterrupt`` stops training early (skorch keeps the
    weights reached) with a warning; the net stays usable.
    """
    epochs = net.max_epochs if epochs is None else epochs
    before = None if initialize else NetState(net)  # what a retry restarts from
    start = 0 if initialize else len(net.history)
    while True:
        with seeded_global_rng(seed, net.device):
            if initialize:
                net.initialize()
            net.prepare_training()
        if resume is not None:
            resume(net)
        try:
            net.epochs_this_fit_ = epochs - (len(net.history) - start)  # for FitProgress
            net.partial_fit(data, epochs=net.epochs_this_fit_)
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
            warn(
                f"Out of memory with batch_size={net.batch_size}; retrying with "
                f"batch_size={smaller}.", RuntimeWarning)
            if before is not None:  # the continued net as this call found it
                before.restore(net)
            net.batch_size = smaller
        finally:
            net.end_training()  # also when training raised
    done = len(net.history) - start
    if done < epochs:
        warn(
            f"Training was interrupted after {done} of {epochs} epochs; the estimator "
            "keeps the weights reached and is usable (fit again, or use warm_start=True "
            "to continue).", RuntimeWarning)
    return net


class NetState:
    """A fitted net's state, to put it back: weights, optimizer state, epochs
    of history, batch size and device. Training only appends epochs to the
    history, so it is cut back rather than copied."""

    def __init__(self, net):
        self.epochs = len(net.history_)
        self.batch_size, self.device = net.batch_size, net.device
        self.weights = {k: v.detach().clone() for k, v in net.module_.state_dict().items()}
        self.optimizer = copy.deepcopy(net.optimizer_.state_dict())

    def restore(self, net):
        del net.history_[self.epochs:]
        net.batch_size = self.batch_size
        if torch.device(net.device) != torch.device(self.device):
            move_net(net, self.device)
        net.module_.load_state_dict(self.weights)
        # a copy: the optimizer takes tensors of the same device as they are, and
        # would update the kept state in place
        net.optimizer_.load_state_dict(copy.deepcopy(self.optimizer))


@contextmanager
def restored_on_error(net):
    """Put a fitted ``net`` back as it was (:class:`NetState`) if the block
    raises: training changes it in place."""
    before = NetState(net)
    try:
        yield
    except BaseException:
        before.restore(net)
        raise
