"""The checkpoint key (the slot a fit resumes from) cannot hand a fit another
fit's model: what has no stable identity is refused, what changes training is
keyed, and X is fingerprinted without reading it whole."""

import os

import numpy as np
import pytest
from skorch.callbacks import LRScheduler

from sklearn_cim import CIMTransformer, VIBClassifier
from sklearn_cim._checkpoint import FINGERPRINT_ROWS, fingerprint

VIB = dict(hidden_layer_sizes=(8,), latent_dim=2, max_epochs=2, batch_size=16,
           device="cpu", random_state=0)


def _data():
    rng = np.random.RandomState(0)
    return rng.rand(60, 5).astype(np.float32), np.repeat([0, 1, 2], 20)


def scaled_l2(a, b):  # a module-level distance: keyed by its import path
    return (a - b).flatten(1).pow(2).mean(1).sqrt()


def l1(a, b):
    return (a - b).flatten(1).abs().mean(1)


def _scaled(factor):
    def distance(a, b):
        return factor * (a - b).flatten(1).pow(2).mean(1).sqrt()
    return distance


def test_closures_and_lambdas_are_refused(tmp_path, images, tiny):
    X, y = images
    for distance in (_scaled(1.0), lambda a, b: (a - b).flatten(1).abs().mean(1)):
        cim = CIMTransformer(**dict(tiny, distance=distance, checkpoint=tmp_path))
        with pytest.raises(ValueError, match="checkpoint= cannot tell this distance "):
            cim.fit(X, y)
    assert not any(tmp_path.iterdir())  # refused before anything was written
    # module-level functions have a name: each its own slot, its own model (a
    # margin the triplets do not meet at once, so that the distance matters)
    tiny.update(margin=1.0)
    one = CIMTransformer(**dict(tiny, distance=scaled_l2, checkpoint=tmp_path)).fit(X, y)
    two = CIMTransformer(**dict(tiny, distance=l1, checkpoint=tmp_path)).fit(X, y)
    assert len(list(tmp_path.iterdir())) == 2
    alone = CIMTransformer(**dict(tiny, distance=l1)).fit(X, y)
    np.testing.assert_array_equal(two.transform(X), alone.transform(X))
    assert not np.array_equal(one.transform(X), two.transform(X))


def test_callbacks_are_keyed(tmp_path):
    X, y = _data()
    scheduled = VIBClassifier(**VIB, checkpoint=tmp_path,
                              callbacks=[LRScheduler("StepLR", step_size=1, gamma=0.0)])
    scheduled.fit(X, y)
    plain = VIBClassifier(**VIB, checkpoint=tmp_path).fit(X, y)  # its own slot
    assert len(list(tmp_path.iterdir())) == 2
    alone = VIBClassifier(**VIB).fit(X, y)
    np.testing.assert_array_equal(plain.predict_proba(X), alone.predict_proba(X))
    assert not np.array_equal(plain.predict_proba(X), scheduled.predict_proba(X))
    # and the other way round: a scheduled fit after a plain one trains its own
    again = VIBClassifier(**VIB, checkpoint=tmp_path,
                          callbacks=[LRScheduler("StepLR", step_size=1, gamma=0.0)]).fit(X, y)
    np.testing.assert_array_equal(again.predict_proba(X), scheduled.predict_proba(X))
    lam = LRScheduler("LambdaLR", lr_lambda=lambda epoch: 0.5 ** epoch)
    with pytest.raises(ValueError, match="cannot tell this callback"):
        VIBClassifier(**VIB, checkpoint=tmp_path, callbacks=[lam]).fit(X, y)


def test_the_resolved_precision_is_keyed(images, tiny):
    X, y = images
    key = {p: fingerprint(CIMTransformer(**tiny, precision=p), X, y, None)  # on the CPU
           for p in ("auto", "float32", "bfloat16")}
    assert key["auto"] == key["float32"] != key["bfloat16"]  # "auto" is float32 on CPU


def test_random_state_none_is_refused_and_a_random_state_keyed_by_its_state(tmp_path):
    X, y = _data()
    with pytest.raises(ValueError, match="checkpoint= needs a fixed random_state"):
        VIBClassifier(**dict(VIB, random_state=None), checkpoint=tmp_path).fit(X, y)
    # a RandomState: the same state, the same slot; drawn from since, another slot
    a = fingerprint(VIBClassifier(**dict(VIB, random_state=np.random.RandomState(3))),
                    X, y, None)
    b = fingerprint(VIBClassifier(**dict(VIB, random_state=np.random.RandomState(3))),
                    X, y, None)
    drawn = np.random.RandomState(3)
    drawn.randint(10)
    c = fingerprint(VIBClassifier(**dict(VIB, random_state=drawn)), X, y, None)
    assert a == b != c
    # an ensemble refitted from one RandomState gets a model per fit
    state = np.random.RandomState(0)
    models = [VIBClassifier(**dict(VIB, random_state=state), checkpoint=tmp_path).fit(X, y)
              for _ in range(2)]
    assert not np.array_equal(models[0].predict_proba(X), models[1].predict_proba(X))


class _Recording(np.ndarray):
    """An array that records the rows each indexing reads."""

    def __getitem__(self, key):
        type(self).read += np.size(np.arange(len(self))[key])
        return np.asarray(self)[key]


def test_x_is_fingerprinted_from_samples_and_a_memmaps_file(tmp_path):
    rng = np.random.RandomState(0)
    X = rng.rand(5000, 16).astype(np.float32)
    y = np.arange(5000) % 3
    est = VIBClassifier(**VIB)
    _Recording.read = 0
    base = fingerprint(est, X.view(_Recording), y, None)
    assert 0 < _Recording.read <= FINGERPRINT_ROWS  # not read whole
    assert base == fingerprint(est, X, y, None)
    changed = X.copy()
    changed[0, 0] += 1  # a sampled row (the first)
    assert fingerprint(est, changed, y, None) != base
    assert fingerprint(est, X, y[::-1].copy(), None) != base
    # a memmap: its file's identity (a rewrite changes it), not only the samples
    mm = np.memmap(tmp_path / "x.f4", dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()
    first = fingerprint(est, np.memmap(tmp_path / "x.f4", np.float32, "r", shape=X.shape),
                        y, None)
    again = fingerprint(est, np.memmap(tmp_path / "x.f4", np.float32, "r", shape=X.shape),
                        y, None)
    assert first == again
    sampled = set(np.linspace(0, len(X) - 1, FINGERPRINT_ROWS).astype(int).tolist())
    unsampled = min(set(range(len(X))) - sampled)
    mm[unsampled, 0] += 1  # a row the samples miss, written to the file
    mm.flush()
    del mm
    os.utime(tmp_path / "x.f4", ns=(0, 10 ** 18))  # the write's new modification time
    rewritten = fingerprint(est, np.memmap(tmp_path / "x.f4", np.float32, "r",
                                           shape=X.shape), y, None)
    assert rewritten != first
