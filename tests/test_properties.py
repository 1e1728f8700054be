"""Property-based tests (hypothesis) of the validation layer, plus one light
end-to-end property of CIMTransformer over image shapes and dtypes."""

import numpy as np
import pytest

pytest.importorskip("hypothesis")  # the "test" extra; without it this file skips

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sklearn_cim import CIMTransformer
from sklearn_cim._validation import (
    encode_labels,
    input_range_of,
    resolve_image_shape,
    validate_images,
)

FAST = settings(max_examples=60, deadline=None)

channels = st.sampled_from([1, 3])
sides = st.integers(1, 64)
DTYPES = [np.uint8, np.float32, np.float64]


# -- resolve_image_shape ---------------------------------------------------------

@FAST
@given(c=channels, h=sides, w=sides)
def test_explicit_image_shape_round_trips(c, h, w):
    assert resolve_image_shape((c, h, w), c * h * w) == (c, h, w)
    assert resolve_image_shape([c, h, w], c * h * w) == (c, h, w)
    if c == 1:
        assert resolve_image_shape((h, w), h * w) == (1, h, w)


@FAST
@given(c=channels, h=sides, w=sides, where=st.integers(0, 2))
def test_one_minus_one_is_inferred(c, h, w, where):
    shape = [c, h, w]
    shape[where] = -1
    assert resolve_image_shape(tuple(shape), c * h * w) == (c, h, w)


@FAST
@given(h=sides)
def test_square_gray_and_rgb_are_inferred(h):
    assert resolve_image_shape(None, h * h) == (1, h, h)
    assert resolve_image_shape(None, 3 * h * h) == (3, h, h)


@FAST
@given(n=st.integers(1, 20000))
def test_inference_returns_a_square_or_asks_for_image_shape(n):
    try:
        c, h, w = resolve_image_shape(None, n)
    except ValueError as err:
        assert "Pass image_shape=(C, H, W)" in str(err)
        root, root3 = int(np.sqrt(n)), int(np.sqrt(n / 3))
        assert all(s * s != n for s in (root - 1, root, root + 1))
        assert all(3 * s * s != n for s in (root3 - 1, root3, root3 + 1))
    else:
        assert c in (1, 3) and h == w and c * h * w == n


@FAST
@given(c=channels, h=sides, w=sides, delta=st.integers(-5, 5).filter(bool))
def test_image_shape_not_matching_n_features_raises(c, h, w, delta):
    n = c * h * w + delta
    assume(n >= 1)
    with pytest.raises(ValueError, match="C\\*H\\*W|does not divide"):
        resolve_image_shape((c, h, w), n)


# -- validate_images -------------------------------------------------------------

def _images(n, c, h, w, dtype, seed):
    rng = np.random.RandomState(seed)
    if dtype == np.uint8:
        return rng.randint(0, 256, size=(n, c, h, w)).astype(np.uint8)
    return rng.rand(n, c, h, w).astype(dtype)


@FAST
@given(n=st.integers(1, 5), c=channels, h=st.integers(1, 9), w=st.integers(1, 9),
       dtype=st.sampled_from(DTYPES), four_d=st.booleans(), seed=st.integers(0, 99))
def test_validate_images_keeps_dtype_and_counts_features(n, c, h, w, dtype, four_d, seed):
    X4 = _images(n, c, h, w, dtype, seed)
    X = X4 if four_d else X4.reshape(n, -1)
    est = CIMTransformer()
    if four_d and w in (1, 3, 4):  # (n, c, h, w) reads as channels last too: refused
        with pytest.raises(ValueError, match=r"channels.last.*(image_shape|transpose)"):
            validate_images(est, X, np.arange(n))
        X = X4.reshape(n, -1)  # the fix it names: rows with image_shape
    X2, y, shape, layout = validate_images(
        est, X, np.arange(n), image_shape=None if X.ndim == 4 else (c, h, w))
    assert X2.dtype == dtype  # uint8 stays uint8, floats keep their width
    assert X2.shape == (n, c * h * w)
    assert est.n_features_in_ == c * h * w
    assert shape == (c, h, w) and layout.images() == (X.ndim == 4)
    np.testing.assert_array_equal(X2, X4.reshape(n, -1))
    np.testing.assert_array_equal(y, np.arange(n))
    # The same layout validates again against the fitted shape.
    est.image_shape_ = shape
    X2b, _, shape_b, layout_b = validate_images(est, X, reset=False)
    assert shape_b == shape and layout_b.kind == layout.kind
    np.testing.assert_array_equal(X2b, X2)


# -- input_range_of -----------------------------------------------------------------

shapes_2d = hnp.array_shapes(min_dims=2, max_dims=2, max_side=6)
int_arrays = st.one_of(
    hnp.arrays(np.uint8, shapes_2d, elements=st.integers(0, 255)),
    hnp.arrays(st.sampled_from([np.int16, np.int32, np.int64]), shapes_2d,
               elements=st.integers(-300, 300)),
)
float_arrays = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64]),
    shape=shapes_2d,
    elements=st.floats(-3, 3, width=32),
)
ranges = st.tuples(st.floats(-2, 2), st.floats(0.01, 4)).map(lambda t: (t[0], t[0] + t[1]))


@FAST
@given(X=int_arrays, data_range=st.one_of(st.none(), ranges))
def test_input_range_of_integers_are_8bit_pixels(X, data_range):
    if X.min() >= 0 and X.max() <= 255:
        assert input_range_of(X, data_range) == (0.0, 255.0)
    else:
        with pytest.raises(ValueError, match="Pass uint8 images"):
            input_range_of(X, data_range)


@FAST
@given(X=float_arrays, data_range=ranges)
# float32 X clipped to data_range holds float32(0.01) < 0.01 (found by hypothesis).
@example(X=np.array([[0.01]], np.float32), data_range=(0.01, 1.01))
def test_input_range_of_floats_accepted_exactly_inside_data_range(X, data_range):
    low, high = data_range
    if X.min() >= low and X.max() <= high:
        assert input_range_of(X, data_range) == (low, high)
    else:
        with pytest.raises(ValueError, match="Scale X into that range"):
            input_range_of(X, data_range)


@FAST
@given(X=float_arrays)
def test_input_range_of_without_range_takes_floats_as_they_are(X):
    assert input_range_of(X, None) == (0.0, 1.0)


# -- encode_labels ---------------------------------------------------------------

int_labels = st.lists(st.integers(-5, 5), min_size=1, max_size=30)
str_labels = st.lists(st.sampled_from(["cat", "dog", "Ant", "zebra", "", "b"]),
                      min_size=1, max_size=30)


@FAST
@given(labels=st.one_of(int_labels, str_labels), min_per_class=st.sampled_from([1, 2]))
def test_encode_labels_sorted_and_invertible(labels, min_per_class):
    y = np.asarray(labels)
    values, counts = np.unique(y, return_counts=True)
    if len(values) < 2:
        with pytest.raises(ValueError, match="Pass labels of at least two classes"):
            encode_labels(y, min_per_class=min_per_class)
        return
    if counts.min() < min_per_class:
        with pytest.raises(ValueError, match="set triplet_weight=0"):
            encode_labels(y, min_per_class=min_per_class)
        return
    classes, y_enc = encode_labels(y, min_per_class=min_per_class)
    assert list(classes) == sorted(set(labels))
    assert y_enc.dtype == np.int64 and y_enc.shape == y.shape
    assert list(classes[y_enc]) == list(labels)


# -- end to end ------------------------------------------------------------------

# `tiny` is a read-only dict: sharing it between examples is fine.
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(c=channels, h=st.integers(1, 9), w=st.integers(1, 9),
       dtype=st.sampled_from(DTYPES), four_d=st.booleans())
@example(c=3, h=3, w=3, dtype=np.uint8, four_d=True)  # drawn once by CI: refused
@example(c=3, h=3, w=3, dtype=np.uint8, four_d=False)  # the fix the refusal names
def test_cim_transform_keeps_shape_and_float_dtype(tiny, c, h, w, dtype, four_d):
    X4 = _images(16, c, h, w, dtype, seed=h * 10 + w)
    X = X4 if four_d else X4.reshape(16, -1)
    y = np.tile([0, 1], 8)
    cim = CIMTransformer(**{**tiny, "distance": "l2", "image_shape": (c, h, w)})
    if four_d and c == h == w:  # (n, c, c, c): channels first or last, image_shape cannot tell
        with pytest.raises(ValueError, match="could hold channels-first or channels-last"):
            cim.fit(X, y)
        return
    psi = cim.fit(X, y).transform(X)
    assert psi.shape == X.shape
    assert psi.dtype == (dtype if dtype != np.uint8 else np.float32)
    assert np.isfinite(psi).all()
    high = 255.0 if dtype == np.uint8 else 1.0
    assert psi.min() >= 0 and psi.max() <= high * (1 + 1e-6)
