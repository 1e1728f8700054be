"""Group inference seeds torch's global RNG only under the lock of
``_seeding.seeded_global_rng``, and only the CPU's generator: a fit initialising
in another thread is not disturbed."""

import threading

import numpy as np
import torch

from sklearn_cim import _groups, _seeding


def _proxy_data(nuisance_images):
    X, y, _ = nuisance_images
    return X, y


def _lock_is_free_for_another_thread():
    free = []

    def probe():
        got = _seeding._GLOBAL_RNG_LOCK.acquire(blocking=False)
        if got:
            _seeding._GLOBAL_RNG_LOCK.release()
        free.append(got)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    return free[0]


def test_local_proxy_initialises_under_the_lock_seeding_the_cpu_only(nuisance_images,
                                                                     monkeypatch):
    X, y = _proxy_data(nuisance_images)
    held, seeded_all = [], []

    class Recorded(_groups.LocalCueClassifier):
        def __init__(self, *args, **kwargs):
            held.append(not _lock_is_free_for_another_thread())
            super().__init__(*args, **kwargs)

    def refuse(name):
        def call(*args, **kwargs):
            seeded_all.append(name)
            raise AssertionError(f"{name} seeds generators outside the lock / of every GPU")
        return call

    monkeypatch.setattr(_groups, "LocalCueClassifier", Recorded)
    monkeypatch.setattr(torch, "manual_seed", refuse("torch.manual_seed"))
    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse("torch.cuda.manual_seed_all"))
    monkeypatch.setattr(torch.cuda, "manual_seed", refuse("torch.cuda.manual_seed"))
    state = torch.random.get_rng_state()
    pred = _groups.infer_groups(X, y, "local", random_state=0)
    assert held == [True] * _groups.PROXY_FOLDS  # one proxy per fold, each under the lock
    assert seeded_all == []
    assert torch.equal(torch.random.get_rng_state(), state)  # left as it was
    assert pred.shape == y.shape


def test_group_inference_does_not_disturb_another_threads_initialisation(nuisance_images,
                                                                         monkeypatch):
    """Thread A initialises (draws twice from the seeded global RNG) while thread B
    infers groups and builds its proxy in the middle of A's block; A must draw
    what it draws alone. B is made to build its proxy between A's two draws if it
    can (without the lock it can; with it, B waits until A's block ends)."""
    X, y = _proxy_data(nuisance_images)
    seed = 3
    with _seeding.seeded_global_rng(seed, "cpu"):
        expected = [torch.rand(4), torch.rand(4)]

    first_drawn, proxy_started, proxy_built = (threading.Event() for _ in range(3))

    class Interleaved(_groups.LocalCueClassifier):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if not proxy_started.is_set():
                proxy_started.set()
                proxy_built.wait(timeout=10)  # A's second draw happens here, if it can

    monkeypatch.setattr(_groups, "LocalCueClassifier", Interleaved)
    drawn, errors = [], []

    def initialise():
        try:
            with _seeding.seeded_global_rng(seed, "cpu"):
                drawn.append(torch.rand(4))
                first_drawn.set()
                proxy_started.wait(timeout=2)  # B blocked on the lock: times out
                drawn.append(torch.rand(4))
                proxy_built.set()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def infer():
        try:
            first_drawn.wait(timeout=10)
            _groups.infer_groups(X, y, "local", random_state=0)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=initialise), threading.Thread(target=infer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(drawn) == 2
    assert all(torch.equal(a, b) for a, b in zip(drawn, expected))


def test_inferred_groups_do_not_depend_on_the_global_rng(nuisance_images):
    X, y = _proxy_data(nuisance_images)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first = _groups.infer_groups(X, y, "local", random_state=5)
        torch.manual_seed(1)
        torch.rand(10)
        second = _groups.infer_groups(X, y, "local", random_state=5)
    np.testing.assert_array_equal(second, first)
