"""Input validation: image shapes, value ranges, labels, parameters."""

import warnings

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from sklearn_cim import CIMTransformer, PaperObjectiveWarning, VIBClassifier
from sklearn_cim._validation import resolve_image_shape


@pytest.mark.parametrize("n_features, expected", [
    (64, (1, 8, 8)), (784, (1, 28, 28)), (3 * 32 * 32, (3, 32, 32)), (1, (1, 1, 1)),
])
def test_infers_square_grayscale_and_rgb(n_features, expected):
    assert resolve_image_shape(None, n_features) == expected


def test_inferred_square_rgb_is_not_a_silent_guess():
    """768 values are (3, 16, 16) RGB, or grayscale 16x48 or 24x32: fit says which
    reading it took and how to choose; an explicit or unambiguous shape is quiet."""
    rng = np.random.RandomState(0)
    X, y = rng.rand(32, 768).astype(np.float32), np.repeat([0, 1], 16)
    params = dict(distance="l2", max_epochs=1, batch_size=16, tn_width=4, tn_depth=1,
                  head_width=4, device="cpu", random_state=0)
    with pytest.warns(UserWarning, match=r"\(1, 16, 48\) or \(1, 24, 32\)\. Pass "
                                         r"image_shape=\(3, 16, 16\) to confirm"):
        assert CIMTransformer(**params).fit(X, y).image_shape_ == (3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", PaperObjectiveWarning)  # fit without groups: said elsewhere
        CIMTransformer(**params, image_shape=(3, 16, 16)).fit(X, y)
        CIMTransformer(**params, image_shape=(16, 48)).fit(X, y)
        CIMTransformer(**params).fit(X.reshape(32, 3, 16, 16), y)
        CIMTransformer(**params).fit(X[:, :64], y)  # square grayscale


@pytest.mark.parametrize("n_features", [10, 2 * 16 * 16, 3 * 16 * 20])
def test_ambiguous_shape_asks_for_image_shape(n_features):
    with pytest.raises(ValueError, match=r"Pass image_shape=\(C, H, W\)"):
        resolve_image_shape(None, n_features)


@pytest.mark.parametrize("image_shape, n_features, expected", [
    ((28, 28), 784, (1, 28, 28)),
    ((3, -1, 8), 96, (3, 4, 8)),
    ((1, 1, -1), 5, (1, 1, 5)),
])
def test_explicit_shapes(image_shape, n_features, expected):
    assert resolve_image_shape(image_shape, n_features) == expected


@pytest.mark.parametrize("image_shape, n_features, error, match", [
    ((1, 8, 8), 65, ValueError, "gives C\\*H\\*W=64 but X has 65"),
    ((1.5, 8, 8), 64, TypeError, "must hold integers"),
    ((0, 8, 8), 64, ValueError, "must be positive"),
    ((-1, -1, 8), 64, ValueError, "at most one -1"),
    ((3, -1, 5), 64, ValueError, "does not divide"),
    ((8,), 8, ValueError, r"\(C, H, W\) or \(H, W\)"),
])
def test_bad_image_shapes(image_shape, n_features, error, match):
    with pytest.raises(error, match=match):
        resolve_image_shape(image_shape, n_features)


def _fit(X, y, tiny, **params):
    return CIMTransformer(**{**tiny, **params}).fit(X, y)


def test_bad_inputs_get_clear_errors(images, tiny):
    X, y = images
    X2 = X.reshape(len(X), -1)
    cases = [
        (X[:, 0, 0, 0], y, {}, "Expected 2D array"),
        (X[:, None], y, {}, "must be 2-D .* or grayscale"),
        (np.where(np.arange(X2.size).reshape(X2.shape) == 3, np.nan, X2), y, {}, "NaN"),
        (np.where(np.arange(X2.size).reshape(X2.shape) == 3, np.inf, X2), y, {}, "infinity"),
        (X2, y, {"image_shape": (1, 7, 7)}, "C\\*H\\*W=49 but X has 64"),
        (X2 * 2, y, {}, "outside data_range"),
        (X2 - 0.5, y, {}, "outside data_range"),
        ((X2 * 300).astype(np.int64), y, {}, r"8-bit pixels in \[0, 255\]"),
        (X2, np.zeros(40), {}, "1 class"),
        (X2[:21], y[:21], {}, "at least 2 samples of every class"),
        (X2, y[:30], {}, "inconsistent numbers of samples"),
        (X2, y, {"margin": -0.1}, r"'margin' parameter of CIMTransformer must be a float"),
        (X2, y, {"triplet_weight": -1.0}, r"'triplet_weight' parameter of .* a float"),
        (X2, y, {"distance": "cosine"}, r"'distance' parameter .* a str among .*Got 'cosine'"),
        (X2, y, {"mining": "semi-hard"}, r"'mining' parameter .* str among .*Got 'semi-hard'"),
        (X2, y, {"batch_size": 1}, r"'batch_size' parameter .* an int in the range \[2, inf\)"),
        (X2, y, {"device": "tpu"}, "device='tpu'"),
        (X2, y, {"data_range": (1.0, 0.0)}, "low < high"),
        (X2, y, {"distance": "ssim", "data_range": None}, "needs images in a known range"),
        (X2, y, {"classifier_weight": 0.0, "triplet_weight": 0.0}, "both 0"),
        (np.repeat(X2, 2, axis=1), y, {"image_shape": (2, 8, 8), "distance": "lpips-alex",
                                       "pretrained": False}, "grayscale or RGB"),
    ]
    for Xb, yb, params, match in cases:
        with pytest.raises(ValueError, match=match):
            _fit(Xb, yb, tiny, **params)


def test_single_sample_class_is_fine_without_triplets(images, tiny):
    X, y = images
    X, y = X[:21], y[:21]
    cim = _fit(X, y, tiny, triplet_weight=0.0)
    assert cim.transform(X).shape == X.shape


def test_transform_errors(images, tiny):
    X, y = images
    with pytest.raises(NotFittedError):
        CIMTransformer(**tiny).transform(X)
    cim = _fit(X, y, tiny)
    X2 = X.reshape(len(X), -1)
    with pytest.raises(ValueError, match="X has 63 features, but CIMTransformer is expecting 64"):
        cim.transform(X2[:, :63])
    with pytest.raises(ValueError, match="fitted on images of shape"):
        cim.transform(X.reshape(40, 1, 4, 16))
    with pytest.raises(ValueError, match="outside data_range"):
        cim.transform(X2 + 1.0)


def test_uint8_and_float_inputs_agree(images, tiny):
    X, y = images
    X8 = np.round(X * 255).astype(np.uint8)
    cim = _fit(X8, y, tiny)
    psi8 = cim.transform(X8)
    psif = cim.transform(X8.astype(np.float32) / 255)
    assert psi8.dtype == np.float32 and psi8.max() > 1.0  # 0-255 units kept
    np.testing.assert_allclose(psi8 / 255, psif, atol=1e-5)


def test_data_range_other_than_unit(images, tiny):
    X, y = images
    Xs = X * 2 - 1  # in [-1, 1]
    cim = _fit(Xs, y, tiny, data_range=(-1.0, 1.0))
    psi, m = cim.transform(Xs), cim.masks(Xs)
    np.testing.assert_allclose(psi, -1 + m * (Xs + 1), atol=1e-5)


def test_bool_images_are_binary_not_8_bit(images, tiny):
    X, y = images
    Xb = X > 0.5
    cim = _fit(Xb, y, tiny)
    np.testing.assert_allclose(cim.transform(Xb), cim.masks(Xb) * Xb, atol=1e-6)
    assert cim.input_range_ == (0.0, 1.0)


# -- images as users hold them -------------------------------------------------------

def test_channels_last_grayscale_and_pil_images_read_as_channels_first(tiny):
    """Channels-last arrays (PIL, imageio), grayscale (n, H, W) and lists of PIL
    images give the model and outputs of the channels-first array, in their own
    layout."""
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 20)
    first = (rng.rand(40, 3, 8, 8) * 255).astype(np.uint8)
    last = np.ascontiguousarray(first.transpose(0, 2, 3, 1))
    ref = CIMTransformer(**tiny).fit(first, y)
    cim = CIMTransformer(**tiny).fit(last, y)
    assert cim.image_shape_ == (3, 8, 8)
    psi = cim.transform(last)
    assert psi.shape == (40, 8, 8, 3)
    np.testing.assert_array_equal(psi, ref.transform(first).transpose(0, 2, 3, 1))
    assert cim.masks(last).shape == (40, 8, 8, 1)
    pil = [Image.fromarray(image) for image in last]
    np.testing.assert_array_equal(CIMTransformer(**tiny).fit(pil, y).transform(pil), psi)
    grey = first[:, 0]
    ref_grey = CIMTransformer(**tiny).fit(grey[:, None], y)
    cim_grey = CIMTransformer(**tiny).fit(grey, y)
    assert cim_grey.image_shape_ == (1, 8, 8) and cim_grey.transform(grey).shape == (40, 8, 8)
    np.testing.assert_array_equal(cim_grey.transform(grey), ref_grey.transform(grey[:, None])[:, 0])
    vib = VIBClassifier(image_shape=(3, 8, 8), hidden_layer_sizes=(8,), latent_dim=4,
                        max_epochs=1, device="cpu", random_state=0)
    np.testing.assert_array_equal(vib.fit(last, y).predict_proba(last),
                                  vib.fit(first, y).predict_proba(first))


def test_pil_images_of_several_sizes_or_modes_are_refused_with_the_fix(tiny):
    Image = pytest.importorskip("PIL.Image")
    y = np.repeat([0, 1], 2)
    sizes = [Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9))] * 2
    with pytest.raises(ValueError, match=r"resize them to one, e\.g\. \[im\.resize"):
        CIMTransformer(**tiny).fit(sizes, y)
    modes = [Image.new("RGB", (8, 8)), Image.new("L", (8, 8))] * 2
    with pytest.raises(ValueError, match=r"im\.convert\('RGB'\)"):
        CIMTransformer(**tiny).fit(modes, y)


def test_image_shape_decides_an_ambiguous_axis_order(tiny):
    rng = np.random.RandomState(0)
    X = rng.rand(40, 3, 4, 3).astype(np.float32)  # 3 channels of 4x3, or of 3x4
    y = np.repeat([0, 1], 20)
    first = CIMTransformer(**tiny, image_shape=(3, 4, 3)).fit(X, y)
    assert first.image_shape_ == (3, 4, 3) and first.transform(X).shape == X.shape
    last = CIMTransformer(**tiny, image_shape=(3, 3, 4)).fit(X, y)
    assert last.image_shape_ == (3, 3, 4) and last.transform(X).shape == X.shape


def test_cube_images_name_the_reshape_not_image_shape():
    """(n, 3, 3, 3): both readings have shape (3, 3, 3), so image_shape cannot decide;
    the error names rows + image_shape, which can, and refuses even with image_shape."""
    from sklearn_cim._validation import validate_images
    X = np.random.RandomState(0).rand(4, 3, 3, 3).astype(np.float32)
    for image_shape in (None, (3, 3, 3)):
        with pytest.raises(ValueError, match=r"X\.reshape\(len\(X\), -1\) if they are channels "
                                             r"first, X\.transpose\(0, 3, 1, 2\)\.reshape"):
            validate_images(CIMTransformer(), X, np.arange(4), image_shape=image_shape)
    rows = X.transpose(0, 3, 1, 2).reshape(4, -1)  # the fix for channels-last cubes
    Xv, _, shape, layout = validate_images(CIMTransformer(), rows, np.arange(4),
                                           image_shape=(3, 3, 3))
    assert shape == (3, 3, 3) and layout.kind == "rows"
    np.testing.assert_array_equal(Xv, rows)
