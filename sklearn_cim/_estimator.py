"""What the estimators share about the skorch net they fit: :class:`TorchEstimatorMixin`.

Parameter checks, training a new net or continuing the fitted one
(``warm_start``, ``partial_fit``, data-parallel fits), and weights-only
persistence (``save_params`` / ``load_params``).
"""

import json
import os
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import ProgressBar
from torch import nn

from ._batching import TrainingSet
from ._checkpoint import (
    EpochCheckpoint,
    Resume,
    checkpoint_key,
    fingerprint,
    latest,
    saved_seed,
)
from ._collectives import broadcast_int, check_agreement, check_distributed, local_device, world
from ._devices import move_net, place_training_data, resolve_device
from ._net import FitProgress, default_callbacks, fit_net, net_verbosity, restored_on_error
from ._params import validate_params
from ._seeding import seeded_global_rng
from ._validation import unique_classes


def _same_callbacks(old, new):
    """Whether two :func:`default_callbacks` lists hold the same user callbacks
    (the same objects) and both a progress bar or neither."""
    old, new = list(old or []), list(new or [])
    return len(old) == len(new) and all(
        a is b or any(isinstance(a, kind) and isinstance(b, kind)
                      for kind in (ProgressBar, FitProgress))
        for a, b in zip(old, new))


class TorchEstimatorMixin:
    """What the estimators share about the skorch net they fit (``net_``).

    Expects the parameters ``lr``, ``max_epochs``, ``batch_size``, ``device``,
    ``random_state``, ``verbose``, ``callbacks``, ``warm_start``,
    ``checkpoint`` and ``distributed``, the methods ``_net_spec()`` (the net class and its
    parameters, from fitted attributes) and ``_data_layout()`` (the image
    shape and value range of the training rows), and the class attribute
    ``_saved_tuple_attributes``.
    """

    _pixels = True  # integer X holds 8-bit pixels
    # names of the fitted tuple (or None) attributes saved with the weights
    _saved_tuple_attributes = ()

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

    def _check_params(self):
        """Validate the parameters, once per ``fit`` / ``partial_fit``: the
        estimator's table (``_parameter_constraints``), the device and
        data-parallel settings, then what one parameter alone cannot say
        (:meth:`_check_param_combinations`)."""
        validate_params(self)
        resolve_device(self.device)
        check_distributed(self.distributed)
        self._check_param_combinations()

    def _check_param_combinations(self):
        """Checks that involve several parameters; none by default."""

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

    def _new_net(self, seed, device, world=None, checkpoint_slot=None):
        net_class, params = self._net_spec()
        verbose = self.verbose if world is None or world[0] == 0 else 0  # rank 0 prints
        callbacks = default_callbacks(verbose, self.callbacks)
        if checkpoint_slot is not None:  # rank 0 alone has a slot: it writes for all
            callbacks.append(EpochCheckpoint(checkpoint_slot))
        return net_class(
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=self.lr,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            device=device,
            verbose=net_verbosity(verbose),
            callbacks=callbacks,
            seed=seed,
            optimizer__fused=True,
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
            setattr(net, key, value)
        net.batch_size, net.max_epochs = self.batch_size, self.max_epochs
        net.set_params(lr=self.lr)
        verbose = self.verbose if world is None or world[0] == 0 else 0  # rank 0 prints
        net.verbose = net_verbosity(verbose)
        callbacks = default_callbacks(verbose, self.callbacks)
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

    def _start(self, X, y, groups, device, group):
        """The seed of a new fit and the checkpoint to resume it from
        (:class:`~sklearn_cim._checkpoint.Resume`, or None to train from scratch),
        with the slot its checkpoints go to (None without ``checkpoint``, and on
        data-parallel ranks other than 0). In a data-parallel fit rank 0 decides
        and every process follows: one seed, one decision to resume."""
        rank, size = group or (0, 1)
        slot = path = None
        if self.checkpoint is not None:
            # refused alike on every rank (no data read): nothing waits for a rank that raised
            checkpoint_key(self, self._fast_path(device), size)
            if rank == 0:
                slot = os.path.join(os.fspath(self.checkpoint),
                                    fingerprint(self, X, y, groups, device, size))
                path = latest(slot)
        resumed = path is not None
        if group is not None and self.checkpoint is not None:
            resumed = bool(broadcast_int(int(resumed), device))
        if not resumed:
            return self._shared_seed(), None, slot
        seed = saved_seed(path) if rank == 0 else 0
        if group is not None:
            seed = broadcast_int(seed, device)
        return seed, Resume(path, group, device), slot

    def _train(self, X, y, groups=None, *, warm=False, epochs=None, rows=None):
        """Train a new net on (X, y), or continue ``net_`` when ``warm``; in a
        data-parallel fit, with the other processes of the group. ``y``: class
        codes; ``groups``: group codes for the group-aware objective, or None;
        ``rows``: train on these rows of X only (None: all)."""
        group = world(self.distributed)
        device = resolve_device(local_device(self.device) if group else self.device)
        if group is not None:  # the first collective: do all processes agree?
            check_agreement(warm, len(X), X.shape[1], device)
        if self.checkpoint is not None and warm:
            raise ValueError(
                "checkpoint resumes a fit from scratch; a warm_start fit or partial_fit "
                "continues the model in memory instead. Set checkpoint=None for it, "
                "or warm_start=False.")
        # a warm fit that raises leaves net_ as it was (_all_or_nothing restores
        # the estimator's attributes, not the net they share)
        with restored_on_error(self.net_) if warm else nullcontext():
            resume = None
            if warm:
                net = self.net_
                self._refresh_net(net, device, group)  # e.g. rank 0's model, unpickled in all
                net.world = group
                seed = net.seed + len(net.history)
            else:
                # batch order, initial weights: a resumed fit keeps the seed it had
                seed, resume, slot = self._start(X, y, groups, device, group)
                net = self._new_net(seed, device, group, checkpoint_slot=slot)
            image_shape, input_range = self._data_layout()
            rank, size = group or (0, 1)
            if rows is not None:
                y = y[rows]
                groups = None if groups is None else groups[rows]
            data = TrainingSet(
                place_training_data(X, net.device, pixels=self._pixels),
                torch.as_tensor(y, device=net.device),
                None if groups is None else torch.as_tensor(groups, device=net.device),
                image_shape=image_shape, input_range=input_range,
                channels_last=net.channels_last, device=net.device, rank=rank,
                world_size=size, rows=rows)
            # an out-of-memory retry restarts from the net as refreshed for this call
            # (lr, device, ...): fit_net takes that state itself
            self.net_ = fit_net(net, data, seed, epochs=epochs, initialize=not warm,
                                resume=resume)
        return self.net_

    # -- weights-only persistence ----------------------------------------------
    def _fitted_metadata(self):
        meta = {"classes_": self.classes_.tolist(), "n_features_in_": int(self.n_features_in_)}
        for name in self._saved_tuple_attributes:
            value = getattr(self, name)
            meta[name] = None if value is None else list(value)
        if hasattr(self, "feature_names_in_"):
            meta["feature_names_in_"] = self.feature_names_in_.tolist()
        return meta

    def _restore_metadata(self, meta):
        self.classes_ = np.asarray(meta["classes_"])
        self.n_features_in_ = meta["n_features_in_"]
        for name in self._saved_tuple_attributes:
            setattr(self, name, None if meta[name] is None else tuple(meta[name]))
        if "feature_names_in_" in meta:
            self.feature_names_in_ = np.asarray(meta["feature_names_in_"], dtype=object)

    def __setstate__(self, state):
        # pickled by 0.1: keep_optimizer_state was a parameter (pickles now keep
        # the optimizer state); checkpoint was not one yet
        state.pop("keep_optimizer_state", None)
        state.setdefault("checkpoint", None)
        super().__setstate__(state)

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
