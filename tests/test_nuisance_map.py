"""The nuisance map (``sklearn_cim._nuisance_map``) and its term in the
group-aware objective: a probe's map lights up where the group is drawn and
nowhere else, the mask pays there and only there, ``map_weight`` turns it on
(with groups) in place of the uniform sparsity term, a fit with it keeps less
of a nuisance patch, and an empty map is said."""

import warnings

import numpy as np
import pytest
import torch

from sklearn_cim import CIMTransformer, _nuisance_map
from sklearn_cim._cim import AUTO_MASK_WEIGHT, resolve_auto
from sklearn_cim._nuisance_map import nuisance_map, train_probe, window_for


def test_window_grows_with_the_image():
    sides = (8, 16, 23, 24, 28, 32, 47, 48, 64)
    assert [window_for(side) for side in sides] == [1, 1, 1, 3, 3, 3, 3, 5, 5]


def _stroke_images(n=120, side=12, seed=0):
    """White strokes at random places on black; a 3x3 patch in one corner
    whose colour is the group (3 groups)."""
    rng = np.random.RandomState(seed)
    x = np.zeros((n, 3, side, side), np.float32)
    for i in range(n):
        r, c = rng.randint(4, side - 2, 2)
        x[i, :, r - 2:r + 2, c] = 1.0
    groups = rng.randint(0, 3, n)
    x[:, :, :3, :3] = (np.eye(3, dtype=np.float32) * 0.8)[groups][:, :, None, None]
    patch = np.zeros((side, side), bool)
    patch[:3, :3] = True
    return torch.tensor(x), torch.tensor(groups), torch.tensor(patch)


def _probe(x, groups):
    return train_probe(lambda rows: x[rows], len(x), groups, 0, device="cpu")


@pytest.mark.parametrize("window", [1, 3])
def test_map_marks_the_patch_not_the_strokes(window, monkeypatch):
    monkeypatch.setattr(_nuisance_map, "window_for", lambda side: window)
    x, groups, patch = _stroke_images()
    probe = _probe(x, groups)
    assert probe[0].kernel_size == (window, window) and not probe.training
    where = nuisance_map(probe, x, groups)
    assert where.shape == (len(x),) + tuple(patch.shape)
    # pixels at least 2 px from the patch: no window of 3 reaches it
    far = torch.ones_like(patch)
    far[:5, :5] = False
    assert where[:, patch].mean().item() > 0.5
    assert where[:, far].mean().item() < 0.05
    # windows that name the group little better than chance count 0, exactly
    assert (where[:, far] == 0).float().mean().item() > 0.95


def test_the_mask_pays_where_the_map_is_and_waits_for_the_head():
    """The term is ``map_weight * gate * mean(mean_c(m) * map)``: its gradient
    on the mask is positive on the patch and 0 on the strokes; at chance the
    gate gives it no weight."""
    x, groups, patch = _stroke_images(n=60)
    y = torch.arange(len(x)) % 2
    cim = CIMTransformer(distance="l2", max_epochs=1, batch_size=16, tn_width=4, tn_depth=1,
                         head_width=4, device="cpu", random_state=0, triplet_weight=0.0,
                         map_weight=3.0)
    cim.fit(x.numpy(), y.numpy(), groups=groups.numpy())
    net = cim.net_
    # what a fit holds while it trains (dropped after it): no pairs, the probe
    net.pair_table_, net.map_probe_ = None, (_probe(x, groups),)
    mask = torch.full((len(x), 1, 12, 12), 0.5, requires_grad=True)
    for logits, gate in ((torch.nn.functional.one_hot(y, 2).float() * 5, 1.0),
                         (torch.zeros(len(x), 2), 0.0)):
        terms = net.loss_terms((mask, mask * x, logits), (y, groups), x)
        weight, term = terms["nuisance_map"]
        assert float(weight) == pytest.approx(3.0 * gate)
    where = nuisance_map(net.map_probe_[0], x, groups)
    assert float(term.detach()) == pytest.approx(float(0.5 * where.mean()), rel=1e-5)
    term.backward()
    grad = mask.grad[:, 0]
    assert (grad[:, patch] > 0).float().mean() > 0.9
    strokes = (x[:, 0] == 1.0) & ~patch
    assert grad[strokes].abs().max() < 1e-7


@pytest.mark.parametrize(("aware", "params", "mask", "map_"), [
    (True, {}, AUTO_MASK_WEIGHT, 0.0),                    # the default: the uniform term
    (True, {"map_weight": 3.0}, 0.0, 3.0),                # the map in its place
    (True, {"map_weight": 3.0, "mask_weight": 0.5}, 0.5, 3.0),
    (False, {"map_weight": 3.0}, 0.0, 0.0),               # the paper's objective: neither
])
def test_the_map_replaces_the_auto_sparsity_term(aware, params, mask, map_):
    all_params = {**CIMTransformer().get_params(), **params}
    decided = resolve_auto(all_params, aware)
    assert (decided["mask_weight"], decided["map_weight"]) == (mask, map_)


def test_a_fit_trains_the_map_term_when_asked_with_groups(nuisance_images, tiny):
    from sklearn_cim import PaperObjectiveWarning
    X, y, groups = nuisance_images
    cim = CIMTransformer(**tiny, map_weight=3.0).fit(X, y, groups=groups)
    assert (cim.map_weight_, cim.mask_weight_) == (3.0, 0.0)
    assert "train_nuisance_map" in cim.history_[-1]
    assert "train_mask" not in cim.history_[-1]
    assert not hasattr(cim.net_, "map_probe_")  # the fit's, dropped with it
    off = CIMTransformer(**tiny).fit(X, y, groups=groups)
    assert (off.map_weight_, off.mask_weight_) == (0.0, AUTO_MASK_WEIGHT)
    assert "train_nuisance_map" not in off.history_[-1]
    with pytest.warns(PaperObjectiveWarning, match="do nothing: map_weight=3.0"):
        paper = CIMTransformer(**tiny, map_weight=3.0).fit(X, y)
    assert paper.map_weight_ == 0.0 and "train_nuisance_map" not in paper.history_[-1]


def _patch_split(n=160, side=12, seed=0):
    """A bar whose row is the class; a red or blue corner patch (the group)
    agreeing with the class in 85% of the images."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 2
    groups = np.where(rng.rand(n) < 0.85, y, 1 - y)
    X = rng.rand(n, 3, side, side).astype(np.float32) * 0.1
    for i in range(n):
        c = rng.randint(4, side - 2)
        rows = slice(4, 7) if y[i] == 0 else slice(8, 11)
        X[i, :, rows, c - 2:c + 1] = 1.0
    colours = np.array([[0.9, 0.1, 0.1], [0.1, 0.1, 0.9]], np.float32)
    X[:, :, :3, :3] = colours[groups][:, :, None, None]
    patch = np.zeros((side, side), bool)
    patch[:3, :3] = True
    return X, y, groups, patch


def test_the_map_term_lowers_the_mask_on_the_patch_only():
    """Soft masks, no other term on the mask: with the map the mask keeps less
    of the patch (measured: 0.58 against 0.76) and as much of the rest."""
    X, y, groups, patch = _patch_split()
    settings = dict(distance="l2", max_epochs=8, batch_size=16, tn_width=8, tn_depth=1,
                    head_width=8, device="cpu", random_state=0, hard_mask=False,
                    invariance_weight=0.0, mask_weight=0.0)
    means = {}
    for weight in (3.0, 0.0):
        cim = CIMTransformer(**settings, map_weight=weight).fit(X, y, groups=groups)
        m = cim.masks(X).reshape(len(X), *patch.shape)
        means[weight] = (m[:, patch].mean(), m[:, ~patch].mean())
    assert means[3.0][0] < means[0.0][0] - 0.1, means
    assert abs(means[3.0][1] - means[0.0][1]) < 0.05, means


def test_an_empty_map_is_said(nuisance_images, tiny):
    """Groups no small window can read (drawn at random): the map term would
    cost nothing, silently; the fit says so. Groups the probe reads: no word."""
    from sklearn_cim import RemovalWarning
    X, y, groups = nuisance_images
    random_groups = np.random.RandomState(0).randint(0, 2, len(y))
    with pytest.warns(RemovalWarning, match="nuisance map is empty.*map_weight=0"):
        CIMTransformer(**tiny, map_weight=3.0).fit(X, y, groups=random_groups)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        CIMTransformer(**tiny, map_weight=3.0).fit(X, y, groups=groups)
    assert not [w for w in record if "nuisance map is empty" in str(w.message)]
