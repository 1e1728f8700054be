"""Estimator outputs pinned against hand computations on tiny cases.

Each estimator is fitted for one epoch on tiny data, then its network's weights
are overwritten with hand-chosen values so that the output can be computed in
numpy below, independently of the package's code. Only the public API and the
fitted networks (``net_.module_``) are used.

Mutations each test was seen to fail against (monkeypatched or edited in a
scratch copy of the package, never here):
- test_cim_soft_mask_broadcast: psi = x (mask ignored); psi = m * m * x;
  MaskNet output relu instead of sigmoid.
- test_cim_soft_mask_threshold_per_channel: cut with ``m > t`` instead of
  ``m >= t``; cut dropped; channel 0's mask used for every channel.
- test_cim_uint8_in_pixel_units: psi = low + (high - low) * m * u replaced by
  m * u (output in [0, 1]).
- test_cim_data_range_moves_towards_low: psi = m * x for data_range=(-1, 1)
  (``low +`` dropped); psi = low + m * u (scale dropped).
- test_cim_hard_mask_cut: HARD_MASK_CUT 0.5 -> 0.6; ``>=`` -> ``>``; the hard
  mask not applied at transform (soft mask used).
- test_vib_deterministic_softmax: decoder bias dropped; log_softmax instead of
  softmax; transform returning sigma instead of mu; predict argmin.
- test_vib_proba_averages_softmax_over_draws: softmax of the mean logit over the
  draws; a single draw instead of n_test_samples; SIGMA_SHIFT 5 -> 4; sigma doubled;
  z = mu + sigma**2 * eps; z = mu (no noise).
- test_shift_estimate_by_hand: the pooled rest weighted by its mean share
  instead of 1 - share; the bounds not counted in the spread.
- test_retained_share_by_hand: chance not subtracted; the clip at 0 dropped;
  the MIN_READABLE check dropped.
- test_per_image_figures_by_hand: ERASED_FRACTION of the mean instead of the
  median; thirds by index instead of brightness.
- test_the_warning_rules_by_hand: one standard error replaced by two.
- test_cell_balanced_accuracy_weights_cells_equally: plain accuracy
  (np.mean(correct)) instead of the cell-weighted mean.
"""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sklearn_cim import CIMTransformer, VIBClassifier
from sklearn_cim._removal import (
    cell_balanced_accuracy,
    not_better,
    per_image,
    retained_share,
    shift_estimate,
    worse_than_x,
)

SHAPE = (3, 5, 6)  # RGB, non-square: no ambiguity about the channel axis
N = 8


def _sigmoid(b):
    return 1.0 / (1.0 + np.exp(-np.asarray(b, dtype=np.float64)))


def _softplus(r):
    return np.log1p(np.exp(np.asarray(r, dtype=np.float64)))


def _images(dtype=np.float32, low=0.0, high=1.0):
    rng = np.random.RandomState(0)
    if dtype == np.uint8:
        return rng.randint(0, 256, size=(N,) + SHAPE).astype(np.uint8)
    return (low + (high - low) * rng.rand(N, *SHAPE)).astype(dtype)


def _fit_cim(X, **params):
    y = np.repeat([0, 1], N // 2)
    est = CIMTransformer(distance="l2", max_epochs=1, batch_size=N, tn_width=2, tn_depth=1,
                         head_width=2, device="cpu", random_state=0, image_shape=SHAPE,
                         **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def _set_constant_mask(est, logits):
    """Zero the mask net's last conv and set its bias: the mask net's output is
    then its output nonlinearity (a sigmoid) of the bias, on every pixel."""
    convs = [m for m in est.net_.module_.mask_net.modules() if isinstance(m, nn.Conv2d)]
    out = convs[-1]
    with torch.no_grad():
        out.weight.zero_()
        out.bias.copy_(torch.tensor(logits, dtype=out.bias.dtype))


# -- CIMTransformer -----------------------------------------------------------

def test_cim_soft_mask_broadcast():
    # One mask for all channels (per_channel_mask=False), logit 0.7: m = sigmoid(0.7)
    # = 0.6681878 on every pixel; psi = m * x on each of the 3 channels.
    X = _images()
    est = _fit_cim(X, hard_mask=False)
    _set_constant_mask(est, [0.7])
    m = _sigmoid(0.7)

    masks = est.masks(X)
    assert masks.shape == (N, 1) + SHAPE[1:]
    np.testing.assert_allclose(masks, m, rtol=0, atol=1e-6)
    np.testing.assert_allclose(est.transform(X), m * X.astype(np.float64), rtol=0, atol=1e-6)
    # 2-D rows (C*H*W features, channels first): the same numbers, flattened
    flat = X.reshape(N, -1)
    np.testing.assert_allclose(est.transform(flat), m * flat.astype(np.float64),
                               rtol=0, atol=1e-6)
    assert est.masks(flat).shape == (N, SHAPE[1] * SHAPE[2])


def test_cim_soft_mask_threshold_per_channel():
    # One mask per channel, logits (1, -0.5, 0): m = (0.7310585, 0.3775407, 0.5).
    # mask_threshold=0.5 sets mask values below 0.5 to 0 and keeps the rest
    # (0.5 itself is not below the cut): m = (0.7310585, 0, 0.5); psi = m_c * x_c.
    X = _images()
    est = _fit_cim(X, hard_mask=False, per_channel_mask=True, mask_threshold=0.5)
    _set_constant_mask(est, [1.0, -0.5, 0.0])
    m = _sigmoid([1.0, -0.5, 0.0])
    m[m < 0.5] = 0.0
    m = m[None, :, None, None]

    masks = est.masks(X)
    assert masks.shape == (N,) + SHAPE
    np.testing.assert_allclose(masks, np.broadcast_to(m, masks.shape), rtol=0, atol=1e-6)
    np.testing.assert_allclose(est.transform(X), m * X, rtol=0, atol=1e-6)
    assert np.all(est.transform(X)[:, 1] == 0.0)  # the cut channel is exactly 0


def test_cim_uint8_in_pixel_units():
    # uint8 X is read as pixels in [0, 255]; psi = m * x stays in 0-255 units
    # (float32): m = sigmoid(-1) = 0.2689414, so a pixel of 200 gives 53.788.
    X = _images(np.uint8)
    est = _fit_cim(X, hard_mask=False)
    _set_constant_mask(est, [-1.0])
    psi = est.transform(X)
    assert psi.dtype == np.float32
    np.testing.assert_allclose(psi, _sigmoid(-1.0) * X.astype(np.float64), rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(est.masks(X), _sigmoid(-1.0), rtol=0, atol=1e-6)


def test_cim_data_range_moves_towards_low():
    # data_range=(-1, 1): masked pixels move towards the low end,
    # psi = low + m * (x - low) = -1 + m * (x + 1), m = sigmoid(0.3) = 0.5744425.
    X = _images(low=-1.0, high=1.0)
    est = _fit_cim(X, hard_mask=False, data_range=(-1.0, 1.0))
    _set_constant_mask(est, [0.3])
    m = _sigmoid(0.3)
    np.testing.assert_allclose(est.transform(X), -1.0 + m * (X.astype(np.float64) + 1.0),
                               rtol=0, atol=1e-6)
    np.testing.assert_allclose(est.masks(X), m, rtol=0, atol=1e-6)


def test_cim_hard_mask_cut():
    # hard_mask=True: a pixel is kept (mask 1) where the mask net's output is at
    # least 0.5. Logits (0, -0.05, 0.05) give outputs (0.5, 0.4875, 0.5125), on
    # and on both sides of the cut: hard mask (1, 0, 1); psi = (x_0, 0, x_2).
    X = _images()
    est = _fit_cim(X, hard_mask=True, per_channel_mask=True)
    _set_constant_mask(est, [0.0, -0.05, 0.05])
    hard = np.array([1.0, 0.0, 1.0])[None, :, None, None]
    masks = est.masks(X)
    assert masks.shape == (N,) + SHAPE
    np.testing.assert_array_equal(masks, np.broadcast_to(hard, masks.shape))
    np.testing.assert_array_equal(est.transform(X), hard * X)


# -- VIBClassifier ------------------------------------------------------------

def _fit_vib(X, y, **params):
    est = VIBClassifier(hidden_layer_sizes=(), max_epochs=1, batch_size=len(X), lr=1e-3,
                        device="cpu", random_state=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


def _set_vib(est, mu_weight, mu_bias, raw_bias, dec_weight, dec_bias):
    """With hidden_layer_sizes=() the encoder is one linear layer to (mu, raw):
    mu = W x + b, sigma = softplus(raw - 5) with raw = raw_bias (weights 0);
    the decoder gives logits D z + d."""
    module = est.net_.module_
    k = len(mu_bias)
    with torch.no_grad():
        module.stats.weight.zero_()
        module.stats.weight[:k] = torch.tensor(mu_weight)
        module.stats.bias.copy_(torch.tensor(list(mu_bias) + list(raw_bias)))
        module.decoder.weight.copy_(torch.tensor(dec_weight))
        module.decoder.bias.copy_(torch.tensor(dec_bias))


def test_vib_deterministic_softmax():
    # raw = -1e4 makes sigma = softplus(-10005) = 0 (float64 inference on CPU), so
    # every draw is z = mu = W x + b and predict_proba is softmax(D mu + d).
    # Row (1, 0.5): mu = (1 - 1 + 0.25, 0.5 + 1.5 - 1) = (0.25, 1.0),
    # logits (0.25, 1.5, -1.75), softmax = (0.21618, 0.75456, 0.02926) -> "b".
    X = np.array([[1.0, 0.5], [0.0, -1.0], [-2.0, 0.25], [0.5, 0.5],
                  [1.0, 1.0], [-1.0, 0.0]] * 2)
    y = np.array(["a", "b", "c"] * 4)
    est = _fit_vib(X, y, latent_dim=2, n_test_samples=3)
    W = np.array([[1.0, -2.0], [0.5, 3.0]])
    b = np.array([0.25, -1.0])
    D = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    d = np.array([0.0, 0.5, -0.5])
    _set_vib(est, W, b, [-1e4, -1e4], D, d)

    mu = X @ W.T + b
    logits = mu @ D.T + d
    proba = np.exp(logits - logits.max(1, keepdims=True))
    proba /= proba.sum(1, keepdims=True)
    np.testing.assert_allclose(est.predict_proba(X), proba, rtol=0, atol=1e-6)
    np.testing.assert_allclose(est.predict_proba(X[:1]), [[0.21618, 0.75456, 0.02926]],
                               atol=1e-5)
    np.testing.assert_array_equal(est.predict(X), np.array(["a", "b", "c"])[proba.argmax(1)])
    assert len(set(est.predict(X))) == 3  # the rows exercise all three classes
    np.testing.assert_allclose(est.transform(X), mu, rtol=0, atol=1e-6)


def _draw_offsets(est, n_draws):
    """The draws s * eps_i of predict_proba, read through the public API.

    With mu = t (the single feature), sigma = s and logits (0, 1e9 * z), each
    draw's softmax is 1[z_i > 0] for z_i = t + s * eps_i, so
    predict_proba(t)[:, 1] * n_draws counts the draws with c_i = -s * eps_i < t
    (the same draws for every row and call, as documented). Bisection on t then
    finds each c_i, the k-th smallest being where the count reaches k."""
    k = np.arange(1, n_draws + 1)
    lo, hi = np.full(n_draws, -40.0), np.full(n_draws, 40.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        count = np.rint(est.predict_proba(mid[:, None])[:, 1] * n_draws)
        lo, hi = np.where(count >= k, lo, mid), np.where(count >= k, mid, hi)
    return hi


def test_vib_proba_averages_softmax_over_draws():
    # predict_proba is the softmax averaged over n_test_samples draws
    # z_i = mu + sigma * eps_i. The draws c_i = -sigma_a * eps_i are read at
    # raw = 5 (sigma_a = softplus(0) = ln 2) with a saturated decoder; then at
    # raw = 6 (sigma_b = softplus(1) = 1.3132617) and logits (0.5 z, -z + 0.25):
    # p_1(t) = mean_i sigmoid(-1.5 * z_i + 0.25), z_i = t - (sigma_b / sigma_a) c_i.
    S = 64
    X = np.linspace(-1, 1, 8)[:, None]
    est = _fit_vib(X, np.repeat([0, 1], 4), latent_dim=1, n_test_samples=S)
    _set_vib(est, [[1.0]], [0.0], [5.0], [[0.0], [1e9]], [0.0, 0.0])
    c = _draw_offsets(est, S)
    eps = -c / np.log(2.0)
    # the draws are standard normal noise: not all alike, spread about 1
    assert 0.7 < eps.std() < 1.4 and abs(eps.mean()) < 0.5

    _set_vib(est, [[1.0]], [0.0], [6.0], [[0.5], [-1.0]], [0.0, 0.25])
    t = np.array([-2.0, -0.5, 0.0, 0.75, 3.0])
    z = t[:, None] - (_softplus(1.0) / _softplus(0.0)) * c[None, :]
    p1 = (1.0 / (1.0 + np.exp(1.5 * z - 0.25))).mean(1)
    proba = est.predict_proba(t[:, None])
    np.testing.assert_allclose(proba[:, 1], p1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-12)
    # the softmax of the mean draw (mu itself) would be a different number
    assert np.max(np.abs(p1 - 1.0 / (1.0 + np.exp(1.5 * t - 0.25)))) > 1e-2


# -- the removal check --------------------------------------------------------
def test_shift_estimate_by_hand():
    # class 0 (majority group 0): in it 1, 1, 0; outside it 0. Class 1 (majority
    # group 1): in it 1, 1; outside it 1, 0. Groups half and half, classes too:
    # weights 1/2 * 1/2 for each class's majority pool, 1/2 for the pooled rest.
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    g = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    right = np.array([1, 1, 0, 0, 1, 1, 1, 0], dtype=float)
    est, se = shift_estimate(right, y, g, majority=np.array([0, 1]),
                             group_share=np.array([0.5, 0.5]))
    assert est == pytest.approx(0.25 * 2 / 3 + 0.25 * 1 + 0.5 * 1 / 3, abs=1e-12)  # 7/12
    # each pool's spread counts the bounds 0 and 1 as half an image each:
    # (sum of squared deviations + 0.5 * ((0 - m)^2 + (1 - m)^2)) / n, over n again
    spread_a = (2 / 3 + 0.5 * (4 / 9 + 1 / 9)) / 3  # class 0's pool, mean 2/3
    spread_b = (0 + 0.5 * (1 + 0)) / 2  # class 1's pool, mean 1
    spread_o = (2 / 3 + 0.5 * (1 / 9 + 4 / 9)) / 3  # the rest, mean 1/3
    var = 0.25 ** 2 * spread_a / 3 + 0.25 ** 2 * spread_b / 2 + 0.5 ** 2 * spread_o / 3
    assert se == pytest.approx(np.sqrt(var), abs=1e-12)
    # a class with no image in its majority group takes the mean of those that have
    est, _ = shift_estimate(right[:4], y[:4], np.array([1, 1, 1, 1]), np.array([0, 1]),
                            np.array([0.5, 0.5]))
    assert est == pytest.approx(0.5 * 2 / 4 + 0.5 * 2 / 4, abs=1e-12)


def test_retained_share_by_hand():
    assert retained_share(0.75, 1.0, 0.5) == pytest.approx(0.5, abs=1e-12)
    assert retained_share(0.4, 1.0, 0.5) == 0.0  # below chance: clipped
    assert np.isnan(retained_share(0.9, 0.52, 0.5))  # x shows under 0.05 beyond chance


def test_per_image_figures_by_hand():
    x = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], np.float32)[:, None, None, None]
    kept = np.array([0.5, 0.5, 0.5, 0.5, 0.05, 0.0])  # median 0.5: erased under 0.1
    right_psi = np.array([1, 1, 1, 1, 0, 0], bool)
    out = per_image(x, kept, right_psi, np.ones(6, bool))
    assert out["erased_share"] == pytest.approx(2 / 6)
    assert out["erased_brightness"] == pytest.approx(0.85)
    assert out["other_brightness"] == pytest.approx((0.1 + 0.2 + 0.3 + 0.7) / 4)
    assert (out["worst_third"], out["worst_third_accuracy"], out["worst_third_accuracy_x"],
            out["third_size"]) == ("brightest", 0.0, 1.0, 2)


def test_the_warning_rules_by_hand():
    from sklearn.utils import Bunch
    check = Bunch(balanced_accuracy=0.75, balanced_accuracy_x=0.625,
                  balanced_accuracy_se=0.125)
    assert not_better(check)  # 0.125 better: not more than one standard error
    check.balanced_accuracy_se = 0.0625
    assert not not_better(check)
    check = Bunch(balanced_accuracy=0.80, balanced_accuracy_x=0.85, balanced_accuracy_se=0.02)
    assert worse_than_x(check)
    check.balanced_accuracy_se = 0.03  # 0.05 is within twice the noise
    assert not worse_than_x(check)


def test_cell_balanced_accuracy_weights_cells_equally():
    # cells 0, 0, 0, 0, 1, 2, 2 with correct 1, 1, 1, 0, 0, 1, 1: cell accuracies
    # 3/4, 0, 1 -> mean 7/12 (plain accuracy 5/7).
    cells = np.array([0, 0, 0, 0, 1, 2, 2])
    correct = np.array([1, 1, 1, 0, 0, 1, 1], dtype=bool)
    assert cell_balanced_accuracy(correct, cells) == pytest.approx(7 / 12, abs=1e-12)
