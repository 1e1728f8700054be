"""Checkpoints: a fit that dies (pre-emption, out of memory, ``kill -9``)
resumes to the model it would have reached.

With ``checkpoint=<directory>``, ``fit`` writes the net's state at the end of
every epoch with skorch's own ``save_params`` (weights, optimizer state,
history) into ``<directory>/<fingerprint>/``, and a later ``fit`` of the same
estimator on the same data starts from the last one written. The fingerprint
names the parameters that shape training and the training data, so a search
(every candidate and fold) keeps one slot per fit and never resumes another
fit's state.

Why the result is exact: every epoch's batch order and random draws come from
generators seeded by the fit's seed and the epoch's number alone (see
:meth:`sklearn_cim._net.TorchNet.on_epoch_begin`), the seed is saved with the
state, and the optimizer state is saved whole. A checkpoint is written into a
temporary folder and renamed into place, so a kill while writing leaves the
previous checkpoint intact.
"""

import hashlib
import json
import os
import shutil

import numpy as np
from skorch.callbacks import Callback

#: Parameters that do not shape the fitted model, left out of the fingerprint.
UNFINGERPRINTED = ("checkpoint", "verbose", "callbacks", "warm_start", "device",
                   "distributed", "random_state")
_PREFIX = "epoch-"
_FILES = dict(f_params="params.pt", f_optimizer="optimizer.pt", f_history="history.json")


def _describe(value):
    """A stable text for a parameter value JSON cannot hold (a callable distance)."""
    kind = value if callable(value) and hasattr(value, "__qualname__") else type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def fingerprint(estimator, X, y, groups):
    """A hex digest of what shapes the fit: the estimator's class and
    parameters (but those in :data:`UNFINGERPRINTED`; an int ``random_state``
    is included, otherwise the saved seed is reused), and the training rows,
    labels and groups, read a block of rows at a time."""
    params = {k: v for k, v in estimator.get_params(deep=False).items()
              if k not in UNFINGERPRINTED}
    if isinstance(estimator.random_state, (int, np.integer)):
        params["random_state"] = int(estimator.random_state)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(type(estimator).__qualname__.encode())
    digest.update(json.dumps(params, sort_keys=True, default=_describe).encode())
    digest.update(f"{X.shape}{X.dtype.str}".encode())
    step = max(1, 2 ** 24 // max(1, X.itemsize * int(np.prod(X.shape[1:]))))
    for start in range(0, len(X), step):
        digest.update(np.ascontiguousarray(X[start:start + step]).tobytes())
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


class EpochCheckpoint(Callback):
    """Writes the net's state at the end of each epoch into ``slot`` (only on
    the data-parallel rank 0: every process holds the same model), replacing
    the previous checkpoint once the new one is complete."""

    def __init__(self, slot, write=True):
        self.slot = slot
        self.write = write

    def on_epoch_end(self, net, **kwargs):
        if not self.write:
            return
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
