"""The perceptual metrics fits keep (``_objective.built_metric``): keyed by what
changes the metric, freed by ``clear_metric_cache``, never failing on a callable."""

import gc
import weakref
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import sklearn_cim
from sklearn_cim import CIMTransformer, _distances, _objective


@pytest.fixture
def rgb_images(images):
    X, y = images
    return np.repeat(X, 3, axis=1), y


@pytest.fixture
def clear_after():
    yield
    sklearn_cim.clear_metric_cache()  # leave no fake or test-only metric behind


def test_pretrained_trunk_is_shared_by_fits_of_any_seed(rgb_images, tiny, monkeypatch,
                                                        clear_after):
    """Three fits with random_state=None on the pretrained trunk hold one metric:
    the seed draws nothing there. (Offline, the "pretrained" trunk is a random one
    built by the real loader; what is counted is how often it is built.)"""
    X, y = rgb_images
    load_lpips = _distances.load_lpips
    loads = []

    def offline_load(trunk, pretrained):
        loads.append(pretrained)
        return load_lpips(trunk, pretrained=False)

    monkeypatch.setattr(_distances, "load_lpips", offline_load)
    sklearn_cim.clear_metric_cache()  # nothing kept from a test before
    params = {**tiny, "distance": "lpips-alex", "pretrained": True, "random_state": None}
    fits = [CIMTransformer(**params).fit(X, y) for _ in range(3)]
    assert len({cim.net_.seed for cim in fits}) == 3  # three seeds drawn
    metrics = {id(cim.net_.get_metric()) for cim in fits}
    assert len(metrics) == 1
    assert loads == [True]  # built once, for the three fits


def test_distances_without_weights_ignore_seed_and_flags(clear_after):
    for distance in ("l2", "ssim"):
        first = _objective.built_metric(distance, True, "cpu", 1, False)
        assert _objective.built_metric(distance, False, "cpu", 2, True) is first


def test_random_trunk_is_keyed_by_seed_and_rebuilt_bitwise(clear_after):
    """pretrained=False: the trunk is drawn from the seed, so each seed has its
    own; cleared and rebuilt, a seed gives the same weights bit for bit."""
    first = _objective.built_metric("lpips-squeeze", False, "cpu", 11, False)
    weights = [p.detach().clone() for p in first.model.parameters()]
    other = _objective.built_metric("lpips-squeeze", False, "cpu", 12, False)
    assert other is not first
    assert not all(torch.equal(a, b) for a, b in zip(weights, other.model.parameters()))
    assert _objective.built_metric("lpips-squeeze", False, "cpu", 11, False) is first
    sklearn_cim.clear_metric_cache()
    again = _objective.built_metric("lpips-squeeze", False, "cpu", 11, False)
    assert again is not first
    assert all(torch.equal(a, b) for a, b in zip(weights, again.model.parameters()))


def test_clear_metric_cache_frees_the_trunk(rgb_images, tiny):
    X, y = rgb_images
    params = {**tiny, "distance": "lpips-alex", "pretrained": False, "random_state": 123}
    cim = CIMTransformer(**params).fit(X, y)
    psi = cim.transform(X)
    held = weakref.ref(cim.net_.get_metric().model)
    gc.collect()
    assert held() is not None  # kept for the next fit
    sklearn_cim.clear_metric_cache()
    gc.collect()
    assert held() is None  # nothing else held it: the model does not
    np.testing.assert_array_equal(cim.transform(X), psi)  # the fitted model needs none
    refit = CIMTransformer(**params).fit(X, y)  # builds it again: the same trunk
    np.testing.assert_array_equal(refit.transform(X), psi)


def test_cuda_is_keyed_as_the_current_cuda_device(monkeypatch, clear_after):
    """"cuda" (what device="auto" resolves to) and "cuda:<current>" are one
    metric, built on "cuda:<current>"; another index is another metric. (No GPU
    needed: the device calls are recorded, not made.)"""
    built, seeded = [], []

    class Fake:
        def to(self, device):
            self.device = device
            return self

    def make_distance(distance, pretrained):
        built.append(Fake())
        return built[-1]

    @contextmanager
    def seeded_global_rng(seed, device):
        seeded.append(device)
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(_objective, "make_distance", make_distance)
    monkeypatch.setattr(_objective, "seeded_global_rng", seeded_global_rng)
    plain = _objective.built_metric("lpips-alex", False, "cuda", 5, False)
    indexed = _objective.built_metric("lpips-alex", False, "cuda:1", 5, False)
    assert plain is indexed and len(built) == 1
    assert plain.device == "cuda:1" and seeded == ["cuda:1"]
    assert _objective.built_metric("lpips-alex", False, "cuda:0", 5, False) is not plain


class RMSDistance:
    """A callable distance that cannot be hashed (it defines ``__eq__`` only)."""

    def __init__(self):
        self.calls = 0

    def __eq__(self, other):
        return isinstance(other, RMSDistance)

    def __call__(self, a, b):
        self.calls += 1
        return (a - b).pow(2).flatten(1).mean(1).sqrt()


def test_unhashable_callable_distance_is_wrapped_not_hashed(clear_after):
    distance = RMSDistance()
    with pytest.raises(TypeError):
        hash(distance)
    metric = _objective.built_metric(distance, True, "cpu", 0, False)
    a, b = torch.zeros(4, 1, 8, 8), torch.ones(4, 1, 8, 8)
    np.testing.assert_allclose(metric(a, b).numpy(), np.ones(4))
    assert distance.calls == 1  # the loss measures with the user's object itself
    assert _objective.built_metric(distance, True, "cpu", 0, False)(a, b).shape == (4,)


def test_a_fit_measures_with_an_unhashable_callable_distance(images, tiny, clear_after):
    X, y = images
    distance = RMSDistance()
    cim = CIMTransformer(**dict(tiny, distance=distance, margin=1.0)).fit(X, y)
    assert distance.calls > 0 and cim.history_[-1, "train_triplet"] > 0
