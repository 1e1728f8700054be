"""Checkpoints: a fit that dies (pre-emption, out of memory, ``kill -9``)
resumes to the model it would have reached.

With ``checkpoint=<directory>``, ``fit`` writes the net's state at the end of
every epoch with skorch's own ``save_params`` (weights, optimizer state,
history) into ``<directory>/<fingerprint>/``, and a later ``fit`` of the same
estimator on the same data starts from the last one written. The fingerprint
(:func:`fingerprint`) names what shapes training: the parameters, the
callbacks, the seed source, the resolved precision and the training data
(sampled, not read whole), so a search (every candidate and fold) keeps one
slot per fit. What has no name that is the same in the next run (a lambda or
closure as ``distance``, a callback holding one, ``random_state=None``) is
refused with an error rather than keyed by something two fits could share. In
a data-parallel fit rank 0 alone looks for, reads and writes checkpoints, and
tells the other processes what it decided.

Why the result is exact: every epoch's batch order and random draws come from
generators seeded by the fit's seed and the epoch's number alone (see
:meth:`sklearn_cim._net.TorchNet.on_epoch_begin`), the seed is saved with the
state, and the optimizer state is saved whole. A checkpoint is written into a
temporary folder and renamed into place, so a kill while writing leaves the
previous checkpoint intact.
"""

import functools
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
import types

import numpy as np
from skorch.callbacks import Callback

from ._collectives import broadcast_object

#: Parameters that do not shape the fitted model, left out of the fingerprint
#: (``random_state``, ``callbacks`` and ``precision``, resolved for the device,
#: are keyed on their own terms).
UNFINGERPRINTED = ("checkpoint", "verbose", "callbacks", "warm_start", "device",
                   "distributed", "random_state", "precision")
#: Training rows hashed into the fingerprint (spread evenly over X, first and
#: last included); every label and group is hashed.
FINGERPRINT_ROWS = 256
_PREFIX = "epoch-"
_FILES = dict(f_params="params.pt", f_optimizer="optimizer.pt", f_history="history.json")


class UnkeyableError(ValueError):
    """A setting has no identity that stays the same from one run to the next."""


def _importable_name(value):
    """``module.qualname`` of a module-level function or class, or None when
    that name does not lead back to ``value`` (a lambda, a closure, a method of
    an instance, a class made in a function)."""
    module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", "")
    if module is None or "<" in qualname:
        return None
    found = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return f"{module}.{qualname}" if found is value else None


def describe(value, where):
    """A JSON-able description of a parameter value that is the same in every run
    that means the same setting, or :class:`UnkeyableError` naming ``where``:
    numbers, strings, paths, containers of them, module-level functions and
    classes (by import path), ``functools.partial`` of those, and objects with
    ``get_params`` (scikit-learn / skorch, e.g. callbacks) by class and
    parameters. A closure, a lambda or another object has no such identity: two
    of them that compute different things could share a slot."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [describe(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): describe(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, functools.partial):
        return {"partial": describe(value.func, where), "args": describe(value.args, where),
                "keywords": describe(value.keywords, where)}
    if isinstance(value, type) or inspect.isroutine(value):
        name = _importable_name(value)
        if name is not None and not isinstance(value, types.MethodType):
            return name
    elif hasattr(value, "get_params"):
        return {"class": describe(type(value), where),
                "params": describe(value.get_params(deep=False), where)}
    raise UnkeyableError(
        f"checkpoint= cannot tell this {where} ({value!r}) from another one that computes "
        "something else (a lambda, a closure or an object without get_params has no name "
        "that is the same in the next run), so a fit could resume another fit's model. "
        "Define it as a module-level function or class (keyed by its import path), or "
        "set checkpoint=None.")


def checkpoint_key(estimator, fast_path, world_size=1):
    """What shapes a fit besides its data, as a JSON text: the estimator's class
    and parameters (those in :data:`UNFINGERPRINTED` left out), its ``callbacks``
    (they change training: a learning-rate schedule), the seed source, the
    resolved fast path (``precision`` follows the device) and the number of
    data-parallel processes (the global batch is that many batches). Raises
    :class:`UnkeyableError` (a ``ValueError``) for what has no stable identity,
    and for ``random_state=None``: every fit then draws its own seed, so a fit run
    again could not be told from a killed one resuming."""
    params = {k: describe(v, k)
              for k, v in estimator.get_params(deep=False).items()
              if k not in UNFINGERPRINTED}
    params["callbacks"] = describe(list(estimator.callbacks or []), "callback")
    params["fast_path"] = describe(fast_path, "fast path")
    params["world_size"] = int(world_size)
    state = estimator.random_state
    if state is None:
        raise UnkeyableError(
            "checkpoint= needs a fixed random_state (an int, or a RandomState): with "
            "random_state=None every fit draws its own seed, and a fit run again could not be "
            "told from a killed fit resuming (an ensemble refitted with checkpoint= would "
            "get one model). Set random_state, or checkpoint=None.")
    if isinstance(state, (int, np.integer)):
        params["random_state"] = int(state)
    else:  # a RandomState: the seed it will draw follows from its state now
        kind, keys, pos, has_gauss, cached = state.get_state()
        digest = hashlib.blake2b(np.asarray(keys).tobytes(), digest_size=16)
        params["random_state"] = [kind, digest.hexdigest(), int(pos), int(has_gauss),
                                  float(cached)]
    return type(estimator).__qualname__ + json.dumps(params, sort_keys=True)


def _file_identity(X):
    """A memmap's file (path, size, inode, modification time) and offset, or None."""
    name = getattr(X, "filename", None)
    if not isinstance(X, np.memmap) or not name:
        return None
    st = os.stat(name)
    return [os.path.realpath(name), st.st_size, st.st_ino, st.st_mtime_ns,
            int(getattr(X, "offset", 0))]


def fingerprint(estimator, X, y, groups, device="cpu", world_size=1):
    """A hex digest naming one fit: :func:`checkpoint_key` (on ``device``, with
    ``world_size`` data-parallel processes), X's
    shape and dtype, a memmap's file identity, :data:`FINGERPRINT_ROWS` rows of X
    spread over it, and every label and group.

    X is not read whole (it may be a memmap of many GiB, fingerprinted again by
    every fold and candidate of a search). The residual risk: two training sets
    of the same shape and dtype, with the same labels and groups, that agree on
    the sampled rows but differ elsewhere (and, for memmaps, live in the same
    file unmodified since) share a slot."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(checkpoint_key(estimator, estimator._fast_path(device), world_size).encode())
    digest.update(json.dumps([list(X.shape), X.dtype.str, _file_identity(X)]).encode())
    rows = np.unique(np.linspace(0, len(X) - 1, min(len(X), FINGERPRINT_ROWS)).astype(np.int64))
    digest.update(np.ascontiguousarray(X[rows]).tobytes())
    for part in (y, groups):
        if part is not None:
            digest.update(np.ascontiguousarray(np.asarray(part, dtype=np.int64)).tobytes())
    return digest.hexdigest()


def latest(slot):
    """The last complete checkpoint in ``slot`` (a folder), or None."""
    if not os.path.isdir(slot):
        return None
    done = sorted(name for name in os.listdir(slot)
                  if name.startswith(_PREFIX) and name[len(_PREFIX):].isdigit())
    return os.path.join(slot, done[-1]) if done else None


def saved_seed(path):
    with open(os.path.join(path, "seed.json")) as f:
        return int(json.load(f)["seed"])


def restore(net, path):
    """Load the weights, optimizer state and history saved at ``path`` into the
    initialised ``net`` (skorch's ``load_params``)."""
    net.load_params(**{k: os.path.join(path, v) for k, v in _FILES.items()})


class Resume:
    """Loads a checkpoint into the initialised net of a resumed fit (called by
    :func:`~sklearn_cim._net.fit_net`, again on an out-of-memory retry, which
    starts over from the same checkpoint). Its files are read once and kept:
    the epochs trained since replace it in its folder. In a data-parallel fit
    only rank 0 reads them (it is the one that writes checkpoints, and may be
    the only one that sees the folder) and sends them to the other processes."""

    def __init__(self, path, group=None, device="cpu"):
        self.path, self.group, self.device = path, group, device
        self.files = None

    def _read(self):
        files = None
        if self.group is None or self.group[0] == 0:
            files = {}
            for name in _FILES.values():
                with open(os.path.join(self.path, name), "rb") as f:
                    files[name] = f.read()
        if self.group is not None:
            files = broadcast_object(files, self.device)
        return files

    def __call__(self, net):
        if self.files is None:
            self.files = self._read()
        with tempfile.TemporaryDirectory(prefix="sklearn-cim-resume-") as here:
            for name, content in self.files.items():
                with open(os.path.join(here, name), "wb") as f:
                    f.write(content)
            restore(net, here)


class EpochCheckpoint(Callback):
    """Writes the net's state at the end of each epoch into ``slot`` (the
    data-parallel rank 0 alone has one: every process holds the same model),
    replacing the previous checkpoint once the new one is complete."""

    def __init__(self, slot):
        self.slot = slot

    def on_epoch_end(self, net, **kwargs):
        epochs = len(net.history)
        final = os.path.join(self.slot, f"{_PREFIX}{epochs:06d}")
        partial = final + ".partial"
        shutil.rmtree(partial, ignore_errors=True)  # left by a kill while writing
        os.makedirs(partial)
        net.save_params(**{k: os.path.join(partial, v) for k, v in _FILES.items()})
        with open(os.path.join(partial, "seed.json"), "w") as f:
            json.dump({"seed": int(net.seed)}, f)
        if os.path.exists(final):  # written by an attempt this one replaces (an OOM retry)
            shutil.rmtree(final)
        os.replace(partial, final)  # atomic: a checkpoint is whole or absent
        for name in os.listdir(self.slot):
            path = os.path.join(self.slot, name)
            if path != final and name.startswith(_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
