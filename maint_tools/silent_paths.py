"""The silent paths a review found (issue 31), each run as a user would meet it:
every case prints the model it got or the error it was given, and ``ok`` when
that is the right model or a clear error.

    python maint_tools/silent_paths.py

Exits 1 if a case went wrong. Tiny CPU settings; about half a minute.
"""

import sys
import tempfile
import warnings

import numpy as np
import torch
from skorch.callbacks import LRScheduler

from sklearn_cim import CIMTransformer, VIBClassifier
from sklearn_cim._net import TorchNet

TINY = dict(distance="l2", max_epochs=2, batch_size=16, tn_width=4, tn_depth=1,
            head_width=4, device="cpu", random_state=0)
VIB = dict(hidden_layer_sizes=(8,), latent_dim=2, max_epochs=2, batch_size=16,
           device="cpu", random_state=0)


def images():
    rng = np.random.RandomState(0)
    n = 48
    y = np.repeat([0, 1], n // 2)
    groups = y.copy()
    groups[::6] = 1 - groups[::6]
    X = rng.rand(n, 3, 8, 8).astype(np.float32) * 0.1
    X[:, 0] += 0.5 * groups[:, None, None]
    X[y == 0, :, 1:3, 2:6] = 1.0
    X[y == 1, :, 5:7, 2:6] = 1.0
    return np.clip(X, 0, 1), y, groups


def rms(a, b):
    return (a - b).flatten(1).pow(2).mean(1).sqrt()


def closure(scale):
    def distance(a, b):
        return scale * (a - b).flatten(1).pow(2).mean(1).sqrt()
    return distance


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


@case
def warm_fit_without_groups(X, y, g, tmp):
    cim = CIMTransformer(**TINY).fit(X, y, groups=g)
    before = cim.transform(X)
    try:
        cim.set_params(warm_start=True).fit(X, y)
    except ValueError as exc:
        same = np.array_equal(cim.transform(X), before)
        return same, f"ValueError: {exc} [model unchanged: {same}]"
    return False, "trained without a word"


@case
def partial_fit_without_groups(X, y, g, tmp):
    cim = CIMTransformer(**TINY).partial_fit(X, y, groups=g)
    try:
        cim.partial_fit(X, y)
    except ValueError as exc:
        return len(cim.history_) == 1, f"ValueError: {exc}"
    return False, "trained without a word"


@case
def set_params_after_fit(X, y, g, tmp):
    cim = CIMTransformer(**TINY).fit(X, y, groups=g)
    psi = cim.transform(X)
    cim.set_params(hard_mask=False, mask_threshold=0.9)
    same = np.array_equal(cim.transform(X), psi)
    return same, f"transform unchanged after set_params(hard_mask=False): {same}"


@case
def two_closures_with_checkpoint(X, y, g, tmp):
    try:
        CIMTransformer(**dict(TINY, distance=closure(1.0)), checkpoint=tmp).fit(X, y, groups=g)
    except ValueError as exc:
        return True, f"ValueError: {exc}"
    return False, "keyed a closure"


@case
def module_level_distances_with_checkpoint(X, y, g, tmp):
    one = CIMTransformer(**dict(TINY, distance=rms, margin=1.0), checkpoint=tmp)
    two = CIMTransformer(**dict(TINY, distance="l2", margin=1.0), checkpoint=tmp)
    one.fit(X, y, groups=g)
    two.fit(X, y, groups=g)
    alone = CIMTransformer(**dict(TINY, distance="l2", margin=1.0)).fit(X, y, groups=g)
    right = np.array_equal(two.transform(X), alone.transform(X))
    return right, f"the second fit got its own model: {right}"


@case
def a_callback_with_checkpoint(X, y, g, tmp):
    Xf = X.reshape(len(X), -1)
    sched = [LRScheduler("StepLR", step_size=1, gamma=0.0)]
    VIBClassifier(**VIB, checkpoint=tmp, callbacks=sched).fit(Xf, y)
    plain = VIBClassifier(**VIB, checkpoint=tmp).fit(Xf, y)
    alone = VIBClassifier(**VIB).fit(Xf, y)
    right = np.array_equal(plain.predict_proba(Xf), alone.predict_proba(Xf))
    return right, f"the plain fit got the plain model (not the scheduled one): {right}"


@case
def random_state_none_with_checkpoint(X, y, g, tmp):
    try:
        VIBClassifier(**dict(VIB, random_state=None), checkpoint=tmp).fit(
            X.reshape(len(X), -1), y)
    except ValueError as exc:
        return True, f"ValueError: {exc}"
    return False, "a second fit would return the first model"


@case
def out_of_memory_in_batch_2_of_a_partial_fit(X, y, g, tmp):
    est = CIMTransformer(**TINY).fit(X, y, groups=g)
    twin = CIMTransformer(**TINY).fit(X, y, groups=g)
    real, seen = TorchNet.train_step, []

    def train_step(self, batch, **kwargs):  # batch 2 runs out of memory, once
        seen.append(1)
        if len(seen) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(self, batch, **kwargs)

    TorchNet.train_step = train_step
    try:
        est.partial_fit(X, y, groups=g)
    finally:
        TorchNet.train_step = real
    twin.net_.batch_size = 8
    twin.set_params(batch_size=8).partial_fit(X, y, groups=g)
    whole = all("train_loss" in row for row in est.history_)
    equal = all(torch.equal(a, b) for a, b in zip(est.net_.module_.state_dict().values(),
                                                  twin.net_.module_.state_dict().values()))
    return whole and equal and len(est.history_) == 3, (
        f"{len(est.history_)} epochs, each a whole one: {whole}; equals a partial_fit at "
        f"batch 8 from the same state (every weight): {equal}")


def main():
    X, y, g = images()
    bad = 0
    warnings.simplefilter("ignore")
    for fn in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                ok, said = fn(X, y, g, tmp)
            except Exception as exc:  # an error no case expects
                ok, said = False, f"{type(exc).__name__}: {exc}"
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {fn.__name__}: {said}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
