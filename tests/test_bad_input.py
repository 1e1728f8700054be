"""Bad inputs to both estimators: each raises an error whose message names the fix.

One table covers ``CIMTransformer`` and ``VIBClassifier``. Every row expects a
``ValueError``/``TypeError`` (``NotFittedError`` for unfitted use) raised before
any training, matched on the part of the message that says what to do, and
never coming out of torch or skorch. A second table lists inputs that look
unusual but must work (a read-only memmap or a DataFrame trains exactly the
model of the same array in memory).
"""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.exceptions import NotFittedError

from sklearn_cim import CIMTransformer, VIBClassifier

LPIPS = dict(distance="lpips-alex", pretrained=False)
IMG = dict(image_shape=(1, 8, 8))  # VIBClassifier reading rows as 8x8 images


def make(kind, tiny, vib_tiny, params):
    if kind == "cim":
        return CIMTransformer(**{**tiny, **params})
    return VIBClassifier(**{**vib_tiny, **params})


def flat(X):
    return X.reshape(len(X), -1)


def with_value(X, value, dtype=None):
    X = flat(X).astype(dtype or X.dtype)
    X[0, 3] = value
    return X


def fit(X=flat, y=lambda y: y):
    """A call fitting on ``X(X_images)`` and ``y(y)``."""
    return lambda est, X_, y_: est.fit(X(X_), y(y_))


def after_fit(method, X):
    """A call fitting on the flat images, then calling ``method`` on ``X(X_images)``."""
    def call(est, X_, y_):
        est.fit(flat(X_), y_)
        return getattr(est, method)(X(X_))
    return call


def unfitted(method):
    return lambda est, X_, y_: getattr(est, method)(flat(X_))


_NAN = r"imputer transformer.*or drop samples"
_INF = r"Remove or replace the infinite values"
_CHOOSE = r"must be a str among"


def _param(name, allowed, estimator="CIMTransformer"):
    """scikit-learn's message for a parameter outside its table's constraints."""
    return rf"The '{name}' parameter of {estimator} must be {allowed}"
_SPARSE = r"Use '\.toarray\(\)' to convert to a dense numpy array"
_NUMBERS = r"Convert every entry to a number first"
_STRINGS = r"Convert your data to numeric values explicitly"
_COMPLEX = r"Pass X\.real"
_PAIRS = r"pass the labels y that belong to X \(same length"
_N_FEATURES = r"Pass rows of 64 features, as in fit"
_FIT_FIRST = r"Call 'fit' with appropriate arguments"
_ONE_CLASS = r"Pass labels of at least two classes"
_MIN_ONE = r"while a minimum of 1 is required"
_RESHAPE_2D_4D = r"Reshape it to one of these layouts"
_RESHAPE_2D = r"Reshape X to 2-D \(n_samples, n_features\), e\.g\. X\.reshape\(len\(X\), -1\)"

BAD_INPUTS = [
    # -- values --------------------------------------------------------------
    pytest.param("cim", {}, fit(lambda X: with_value(X, np.nan)), ValueError, _NAN,
                 id="cim-nan"),
    pytest.param("vib", {}, fit(lambda X: with_value(X, np.nan)), ValueError, _NAN,
                 id="vib-nan"),
    pytest.param("cim", {}, fit(lambda X: with_value(X, np.inf)), ValueError, _INF,
                 id="cim-inf"),
    pytest.param("cim", {}, fit(lambda X: with_value(X, -np.inf, np.float64)), ValueError,
                 _INF, id="cim-minus-inf-float64"),
    pytest.param("vib", {}, fit(lambda X: with_value(X, np.inf)), ValueError, _INF,
                 id="vib-inf"),
    pytest.param("cim", {}, after_fit("transform", lambda X: with_value(X, np.nan)),
                 ValueError, _NAN, id="cim-nan-at-transform"),
    pytest.param("vib", {}, after_fit("predict", lambda X: with_value(X, np.inf)),
                 ValueError, _INF, id="vib-inf-at-predict"),
    pytest.param("cim", {}, fit(lambda X: (flat(X) * 300).astype(np.int64)), ValueError,
                 r"Pass uint8 images, or floats scaled to data_range", id="cim-int-above-255"),
    pytest.param("cim", {}, fit(lambda X: (flat(X) * 100 - 50).astype(np.int16)),
                 ValueError, r"Pass uint8 images", id="cim-int-negative"),
    pytest.param("cim", {}, fit(lambda X: flat(X) * 2), ValueError,
                 r"Scale X into that range", id="cim-float-above-1"),
    pytest.param("cim", {}, fit(lambda X: flat(X) - 0.5), ValueError,
                 r"Scale X into that range", id="cim-float-below-0"),
    pytest.param("cim", {}, after_fit("transform", lambda X: flat(X) + 1), ValueError,
                 r"Scale X into that range", id="cim-float-above-1-at-transform"),
    pytest.param("cim", {"distance": "ssim", "data_range": None}, fit(), ValueError,
                 r"set data_range=\(low, high\) for float X", id="cim-ssim-unknown-range"),
    # -- dimensions and shapes ----------------------------------------------
    pytest.param("cim", {}, fit(lambda X: X[:, 0, 0, 0]), ValueError,
                 r"Reshape your data .*reshape\(1, -1\) if it contains a single sample",
                 id="cim-1d"),
    pytest.param("vib", {}, fit(lambda X: X[:, 0, 0, 0]), ValueError,
                 r"Reshape your data", id="vib-1d"),
    pytest.param("cim", {}, fit(lambda X: X[:, None]), ValueError, _RESHAPE_2D_4D,
                 id="cim-5d"),
    pytest.param("cim", {}, fit(lambda X: X[:, :, None].tolist()), ValueError, _RESHAPE_2D_4D,
                 id="cim-5d-nested-list"),
    pytest.param("cim", {}, fit(lambda X: X.repeat(3, 1)[:, :, :4, :3]), ValueError,
                 r"could hold 3-channel 4x3 images \(channels first\) or 3-channel 3x4 "
                 r"images \(channels last\)\. Pass image_shape=\(3, 4, 3\) for the first "
                 r"reading, image_shape=\(3, 3, 4\)", id="cim-4d-ambiguous-axes"),
    pytest.param("cim", {}, fit(lambda X: X.repeat(3, 1)[:, :, :3, :3]), ValueError,
                 r"same shape \(3, 3, 3\)\. Pass them as rows with image_shape=\(3, 3, 3\)",
                 id="cim-4d-cube-both-readings-one-shape"),
    pytest.param("vib", IMG, fit(lambda X: X[:, None]), ValueError, _RESHAPE_2D_4D,
                 id="vib-image-5d"),
    pytest.param("vib", {}, fit(lambda X: X[:, 0]), ValueError, _RESHAPE_2D,
                 id="vib-3d"),
    pytest.param("vib", {}, fit(lambda X: X), ValueError, r"with image_shape=\(C, H, W\)",
                 id="vib-4d-without-image_shape"),
    pytest.param("cim", {"image_shape": (1, 7, 7)}, fit(), ValueError,
                 r"pass the image_shape X was made with, or reshape X",
                 id="cim-image_shape-vs-n_features"),
    pytest.param("vib", {"image_shape": (1, 7, 7)}, fit(), ValueError,
                 r"pass the image_shape X was made with", id="vib-image_shape-vs-n_features"),
    pytest.param("cim", {"image_shape": (1, 4, 16)}, fit(lambda X: X), ValueError,
                 r"drop image_shape or make them agree", id="cim-image_shape-vs-4d-X"),
    pytest.param("cim", {}, fit(lambda X: flat(X)[:, :60]), ValueError,
                 r"Pass image_shape=\(C, H, W\)", id="cim-shape-not-inferable"),
    pytest.param("cim", {"image_shape": (1, 8.0, 8)}, fit(), TypeError,
                 r"write e\.g\. image_shape=\(1, 28, 28\)", id="cim-image_shape-float"),
    pytest.param("vib", {"image_shape": ("1", "8", "8")}, fit(), TypeError,
                 r"write e\.g\. image_shape=\(1, 28, 28\)", id="vib-image_shape-str"),
    pytest.param("cim", {"image_shape": "8x8"}, fit(), ValueError,
                 _param("image_shape", r"an instance of 'tuple'"),
                 id="cim-image_shape-not-tuple"),
    pytest.param("cim", {"image_shape": (4, 4, 4), **LPIPS}, fit(), ValueError,
                 r"use distance='ssim' or 'l2'", id="cim-lpips-4-channels"),
    pytest.param("cim", LPIPS, fit(lambda X: X.reshape(len(X), 2, 4, 8)), ValueError,
                 r"read as \(2, 4, 8\) .*use distance='ssim' or 'l2'",
                 id="cim-lpips-2-channels-4d"),
    pytest.param("cim", {"image_shape": (8, 8, 3), **LPIPS},
                 fit(lambda X: X.repeat(3, 1).transpose(0, 2, 3, 1).reshape(len(X), -1)),
                 ValueError, r"write image_shape=\(3, 8, 8\).*transpose\(0, 3, 1, 2\)",
                 id="cim-lpips-channels-last-image_shape"),
    pytest.param("cim", {}, fit(lambda X: flat(X)[:0], lambda y: y[:0]), ValueError,
                 _MIN_ONE, id="cim-0-samples"),
    pytest.param("vib", {}, fit(lambda X: flat(X)[:0], lambda y: y[:0]), ValueError,
                 _MIN_ONE, id="vib-0-samples"),
    pytest.param("cim", {}, fit(lambda X: flat(X)[:, :0]), ValueError, _MIN_ONE,
                 id="cim-0-features"),
    pytest.param("vib", {}, fit(lambda X: flat(X)[:, :0]), ValueError, _MIN_ONE,
                 id="vib-0-features"),
    pytest.param("cim", {}, fit(lambda X: [flat(X)[0], flat(X)[1, :60]],
                                lambda y: y[[0, 20]]),
                 ValueError, r"Resize them to one shape and stack them", id="cim-ragged-rows"),
    # -- labels --------------------------------------------------------------
    pytest.param("cim", {}, fit(y=np.zeros_like), ValueError, _ONE_CLASS,
                 id="cim-one-class"),
    pytest.param("vib", {}, fit(y=np.zeros_like), ValueError, _ONE_CLASS,
                 id="vib-one-class"),
    pytest.param("cim", {}, fit(lambda X: flat(X)[:21], lambda y: y[:21]), ValueError,
                 r"Add samples of those classes, drop them, or set triplet_weight=0",
                 id="cim-single-sample-class-triplets"),
    pytest.param("cim", {}, fit(y=lambda y: y[:30]), ValueError, _PAIRS,
                 id="cim-X-y-length"),
    pytest.param("vib", IMG, fit(y=lambda y: y[:30]), ValueError, _PAIRS,
                 id="vib-image-X-y-length"),
    pytest.param("vib", {}, fit(y=lambda y: y[:30]), ValueError, _PAIRS,
                 id="vib-X-y-length"),
    pytest.param("cim", {}, fit(y=lambda y: None), ValueError,
                 r"Pass the class labels: fit\(X, y\)", id="cim-y-None"),
    pytest.param("cim", {}, lambda est, X_, y_: est.fit_transform(flat(X_)), ValueError,
                 r"Call fit_transform\(X, y\)", id="cim-fit_transform-without-y"),
    pytest.param("vib", {}, lambda est, X_, y_: est.fit_transform(flat(X_)), ValueError,
                 r"Call fit_transform\(X, y\)", id="vib-fit_transform-without-y"),
    pytest.param("cim", {}, fit(y=lambda y: np.where(y == 0, np.nan, 1.0)), ValueError,
                 r"Drop the samples whose label is missing", id="cim-y-nan"),
    pytest.param("vib", {}, fit(y=lambda y: np.array(["a", None] * 20, dtype=object)),
                 TypeError, r"Use labels of one type", id="vib-y-str-and-None"),
    pytest.param("cim", {}, fit(y=lambda y: y + 0.5 * np.arange(len(y))), ValueError,
                 r"Unknown label type: continuous.*expects discrete classes",
                 id="cim-y-continuous"),
    # -- at transform / predict -----------------------------------------------
    pytest.param("cim", {}, after_fit("transform", lambda X: flat(X)[:, :63]), ValueError,
                 _N_FEATURES, id="cim-n_features-change"),
    pytest.param("cim", {}, after_fit("transform", lambda X: X.reshape(len(X), 1, 4, 16)),
                 ValueError, r"Pass images of shape \(1, 8, 8\)", id="cim-image-shape-change"),
    pytest.param("vib", IMG, after_fit("predict", lambda X: flat(X)[:, :63]), ValueError,
                 _N_FEATURES, id="vib-image-n_features-change"),
    pytest.param("vib", {}, after_fit("predict", lambda X: flat(X)[:, :63]), ValueError,
                 _N_FEATURES, id="vib-n_features-change-predict"),
    pytest.param("cim", {}, unfitted("transform"), NotFittedError, _FIT_FIRST,
                 id="cim-unfitted-transform"),
    pytest.param("cim", {}, unfitted("masks"), NotFittedError, _FIT_FIRST,
                 id="cim-unfitted-masks"),
    pytest.param("vib", {}, unfitted("predict"), NotFittedError, _FIT_FIRST,
                 id="vib-unfitted-predict"),
    pytest.param("vib", {}, unfitted("predict_proba"), NotFittedError, _FIT_FIRST,
                 id="vib-unfitted-predict_proba"),
    pytest.param("vib", {}, unfitted("transform"), NotFittedError, _FIT_FIRST,
                 id="vib-unfitted-transform"),
    # -- hyper-parameters ----------------------------------------------------
    pytest.param("cim", {"classifier_weight": -1.0}, fit(), ValueError,
                 _param("classifier_weight", r"a float in the range \[0.0, inf\)"),
                 id="cim-negative-classifier_weight"),
    pytest.param("cim", {"triplet_weight": -1.0}, fit(), ValueError,
                 _param("triplet_weight", r"a float in the range \[0.0, inf\)"),
                 id="cim-negative-triplet_weight"),
    pytest.param("cim", {"mask_weight": -0.5}, fit(), ValueError,
                 _param("mask_weight", r"a float in the range \[0.0, inf\) or a str among "
                        r"\{'auto'\}"),
                 id="cim-negative-mask_weight"),
    pytest.param("cim", {"head": "vib", "head_beta": -1e-3}, fit(), ValueError,
                 _param("head_beta", r"a float in the range \[0.0, inf\)"),
                 id="cim-negative-head_beta"),
    pytest.param("vib", {"beta": -1e-3}, fit(), ValueError,
                 _param("beta", r"a float in the range \[0.0, inf\)", "VIBClassifier"),
                 id="vib-negative-beta"),
    pytest.param("cim", {"margin": -0.1}, fit(), ValueError,
                 _param("margin", r"a float in the range \[0.0, inf\)"),
                 id="cim-negative-margin"),
    pytest.param("cim", {"classifier_weight": 0.0, "triplet_weight": 0.0}, fit(),
                 ValueError, r"Set at least one of them > 0", id="cim-all-weights-0"),
    pytest.param("cim", {"distance": "cosine"}, fit(), ValueError, _CHOOSE,
                 id="cim-unknown-distance"),
    pytest.param("cim", {"mining": "semi-hard"}, fit(), ValueError, _CHOOSE,
                 id="cim-unknown-mining"),
    pytest.param("cim", {"head": "mlp"}, fit(), ValueError, _CHOOSE, id="cim-unknown-head"),
    pytest.param("cim", {"device": "tpu"}, fit(), ValueError,
                 r"use 'auto', 'cpu', 'cuda' or 'cuda:N'", id="cim-unknown-device"),
    pytest.param("vib", {"device": "tpu"}, fit(), ValueError,
                 r"use 'auto', 'cpu', 'cuda' or 'cuda:N'", id="vib-unknown-device"),
    pytest.param("cim", {"batch_size": 1}, fit(), ValueError,
                 _param("batch_size", r"an int in the range \[2, inf\)"),
                 id="cim-batch_size-1"),
    pytest.param("vib", {"batch_size": 0}, fit(), ValueError,
                 _param("batch_size", r"an int in the range \[1, inf\)", "VIBClassifier"),
                 id="vib-batch_size-0"),
    pytest.param("vib", {"latent_dim": 0}, fit(), ValueError,
                 _param("latent_dim", r"an int in the range \[1, inf\)", "VIBClassifier"),
                 id="vib-latent_dim-0"),
    pytest.param("vib", {"n_test_samples": 0}, fit(), ValueError,
                 _param("n_test_samples", r"an int in the range \[1, inf\)", "VIBClassifier"),
                 id="vib-n_test_samples-0"),
    pytest.param("vib", {"hidden_layer_sizes": (8, 0)}, fit(), ValueError,
                 r"write e\.g\. hidden_layer_sizes=\(256, 256\)", id="vib-hidden-size-0"),
    pytest.param("cim", {"data_range": (1.0, 0.0)}, fit(), ValueError,
                 r"data_range must satisfy low < high", id="cim-data_range-reversed"),
    pytest.param("cim", {"pretrained": "no"}, fit(), TypeError,
                 _param("pretrained", r"an instance of 'bool'"), id="cim-pretrained-not-bool"),
    # -- containers and dtypes -----------------------------------------------
    pytest.param("cim", {}, fit(lambda X: sp.csr_matrix(flat(X))), TypeError, _SPARSE,
                 id="cim-sparse"),
    pytest.param("vib", {}, fit(lambda X: sp.csr_matrix(flat(X))), TypeError, _SPARSE,
                 id="vib-sparse"),
    pytest.param("cim", {}, after_fit("transform", lambda X: sp.csr_matrix(flat(X))),
                 TypeError, _SPARSE, id="cim-sparse-at-transform"),
    pytest.param("cim", {}, fit(lambda X: with_value(X, "dark", object)), ValueError,
                 _NUMBERS, id="cim-object-non-numeric"),
    pytest.param("vib", IMG, fit(lambda X: with_value(X, "dark", object)), ValueError,
                 _NUMBERS, id="vib-image-object-non-numeric"),
    pytest.param("vib", {}, fit(lambda X: with_value(X, "dark", object)), ValueError,
                 _NUMBERS, id="vib-object-non-numeric"),
    pytest.param("cim", {}, fit(lambda X: flat(X).astype(str)), ValueError, _STRINGS,
                 id="cim-string-images"),
    pytest.param("vib", {}, fit(lambda X: np.full(flat(X).shape, "px")), ValueError,
                 _NUMBERS, id="vib-string-features"),
    pytest.param("cim", {}, fit(lambda X: flat(X).astype(np.complex64)), ValueError,
                 _COMPLEX, id="cim-complex"),
    pytest.param("vib", IMG, fit(lambda X: flat(X).astype(np.complex64)), ValueError,
                 _COMPLEX, id="vib-image-complex"),
    pytest.param("vib", {}, fit(lambda X: flat(X).astype(np.complex64)), ValueError,
                 _COMPLEX, id="vib-complex"),
]


@pytest.mark.parametrize("kind, params, call, error, match", BAD_INPUTS)
def test_bad_input_names_the_fix(kind, params, call, error, match, images, tiny, vib_tiny):
    X, y = images
    est = make(kind, tiny, vib_tiny, params)
    with pytest.raises(error, match=match) as excinfo:
        call(est, X, y)
    # Raised by the validation layer (or scikit-learn), never out of torch/skorch.
    frames = [str(entry.path) for entry in excinfo.traceback]
    assert not any("/torch/" in f or "/skorch/" in f for f in frames), frames[-1]
    assert not isinstance(excinfo.value.__cause__, RuntimeError)


# -- inputs that must work -------------------------------------------------------

def _memmap(X, tmp_path):
    path = tmp_path / "X.npy"
    np.save(path, flat(X))
    X = np.load(path, mmap_mode="r")
    assert not X.flags.writeable
    return X


def _frame(X, tmp_path):
    pd = pytest.importorskip("pandas")
    X = flat(X)
    return pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])


#: Inputs holding exactly the values of ``flat(X_images)``: they must train the
#: model the array in memory trains, bit for bit.
SAME_VALUES = (_memmap, _frame)


MUST_WORK = [
    pytest.param("cim", {}, _memmap, None, id="cim-read-only-memmap"),
    pytest.param("vib", {}, _memmap, None, id="vib-read-only-memmap"),
    pytest.param("cim", {}, _frame, None, id="cim-pandas-dataframe"),
    pytest.param("vib", {}, _frame, None, id="vib-pandas-dataframe"),
    pytest.param("cim", LPIPS, lambda X, _: X, None, id="cim-lpips-alex-8px-images"),
    pytest.param("cim", {}, lambda X, _: flat(X).astype(np.float64), None,
                 id="cim-float64"),
    pytest.param("vib", {}, lambda X, _: flat(X).astype(np.float64), None,
                 id="vib-float64"),
    pytest.param("cim", {}, lambda X, _: np.round(flat(X) * 255).astype(np.uint8), None,
                 id="cim-uint8"),
    pytest.param("vib", IMG, lambda X, _: np.round(X * 255).astype(np.uint8), None,
                 id="vib-image-uint8-4d"),
    pytest.param("cim", {}, lambda X, _: X.tolist(), None, id="cim-4d-nested-list"),
    pytest.param("cim", {}, None, lambda y: np.array(["cat", "dog"])[y],
                 id="cim-string-labels"),
    pytest.param("vib", {}, None, lambda y: np.array(["cat", "dog"])[y],
                 id="vib-string-labels"),
]


@pytest.mark.parametrize("kind, params, make_X, make_y", MUST_WORK)
def test_unusual_input_works(kind, params, make_X, make_y, images, tiny, tmp_path, vib_tiny):
    X_img, y = images
    X = flat(X_img) if make_X is None else make_X(X_img, tmp_path)
    if make_y is not None:
        y = make_y(y)
    est = make(kind, tiny, vib_tiny, params).fit(X, y)
    assert set(est.classes_) == set(y)
    out = est.transform(X)
    if make_X in SAME_VALUES:
        ref = make(kind, tiny, vib_tiny, params).fit(flat(X_img), y)
        assert est.history_[:, "train_loss"] == ref.history_[:, "train_loss"]
        np.testing.assert_array_equal(np.asarray(out), ref.transform(flat(X_img)))
        if kind == "vib":
            np.testing.assert_array_equal(est.predict_proba(X), ref.predict_proba(flat(X_img)))
    if kind == "cim":
        assert out.shape == np.shape(X)
        dtype = getattr(X, "dtype", None)
        if dtype in (np.float32, np.float64):
            assert out.dtype == dtype
        assert np.isfinite(out).all()
    else:
        assert out.shape == (len(y), vib_tiny["latent_dim"])
        pred = est.predict(X)
        assert pred.shape == (len(y),) and set(pred) <= set(y)
