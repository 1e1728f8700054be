"""sklearn_cim.plotting, rendered headless (Agg)."""

import sys

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sklearn_cim import CIMTransformer, VIBClassifier

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sklearn_cim.plotting import plot_history, plot_masks  # noqa: E402

CIM = dict(distance="l2", max_epochs=1, batch_size=16, device="cpu", random_state=0,
           tn_width=4, tn_depth=1, head_width=4)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def rgb():
    rng = np.random.RandomState(0)
    X = rng.rand(20, 3, 8, 8).astype(np.float32)
    return X, np.repeat([0, 1], 10)


@pytest.fixture(scope="module")
def pipe(rgb):
    """CIM -> LR fitted in a Pipeline on flat rows."""
    X, y = rgb
    return Pipeline([("cim", CIMTransformer(image_shape=(3, 8, 8), **CIM)),
                     ("clf", LogisticRegression())]).fit(X.reshape(20, -1), y)


@pytest.fixture(scope="module")
def cim3(rgb):
    """CIMTransformer fitted for 3 epochs on 4-D images."""
    return CIMTransformer(**{**CIM, "max_epochs": 3}).fit(*rgb)


def images_of(fig, n):
    axes = np.array(fig.axes).reshape(3, n)
    assert all(len(ax.images) == 1 for ax in axes.ravel())
    return [[np.asarray(ax.images[0].get_array()) for ax in row] for row in axes]


def test_plot_masks_pipeline_fitted_transformer(pipe, rgb):
    X, _ = rgb
    flat = X.reshape(20, -1)
    cim = pipe.named_steps["cim"]
    fig = plot_masks(cim, flat, n=4)
    assert len(fig.axes) == 12
    x_row, m_row, psi_row = images_of(fig, 4)
    masks = cim.masks(flat[:4]).reshape(4, 1, 8, 8)
    psi = cim.transform(flat[:4]).reshape(4, 3, 8, 8)
    for c in range(4):
        np.testing.assert_allclose(x_row[c], X[c].transpose(1, 2, 0), rtol=1e-6)
        np.testing.assert_allclose(m_row[c], masks[c, 0], rtol=1e-6)
        np.testing.assert_allclose(psi_row[c], psi[c].transpose(1, 2, 0), rtol=1e-6)
    assert [ax.get_ylabel() for ax in np.array(fig.axes)[::4]] == ["x", "m", "psi(x)"]
    # The Pipeline itself works too, and n is capped by the number of images.
    assert len(plot_masks(pipe, flat[:3], n=8).axes) == 9


def test_plot_masks_steps_before_cim_and_grey_images(images, tiny):
    X, y = images  # 40 grey 1x8x8
    X255 = (X * 255).round().astype(np.uint8)
    pipe = Pipeline([("to_unit", FunctionTransformer(lambda Z: Z / 255.0)),
                     ("cim", CIMTransformer(**tiny))]).fit(X255, y)
    fig = plot_masks(pipe, X255, n=2)
    x_row, _, psi_row = images_of(fig, 2)
    np.testing.assert_allclose(x_row[1], X255[1, 0] / 255.0, rtol=1e-6)  # passed through
    assert x_row[1].ndim == 2 and fig.axes[0].images[0].get_cmap().name == "gray"
    np.testing.assert_allclose(
        psi_row[0], pipe.named_steps["cim"].transform(X255[:1] / 255.0)[0, 0], rtol=1e-5)


def test_plot_masks_into_given_axes(pipe, rgb):
    X, _ = rgb
    fig, axes = plt.subplots(3, 2)
    assert plot_masks(pipe, X.reshape(20, -1), n=2, axes=axes) is fig
    assert all(len(ax.images) == 1 for ax in axes.ravel())


def test_plot_masks_errors(rgb):
    X, y = rgb
    with pytest.raises(NotFittedError):
        plot_masks(CIMTransformer(**CIM), X)
    with pytest.raises(TypeError, match="needs a fitted CIMTransformer.*StandardScaler"):
        plot_masks(StandardScaler().fit(X.reshape(20, -1)), X.reshape(20, -1))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        plot_masks(CIMTransformer(**CIM), X, n=0)


def test_plot_history(rgb, pipe, cim3):
    X, y = rgb
    fig = plot_history(cim3)
    assert [ax.get_title() for ax in fig.axes] == ["train_loss", "train_ce", "train_triplet"]
    line = fig.axes[1].lines[0]
    np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(), cim3.history_[:, "train_ce"])
    assert len(plot_history(cim3, keys=["train_triplet"]).axes) == 1
    assert [ax.get_title() for ax in plot_history(pipe).axes][0] == "train_loss"
    vib = CIMTransformer(**{**CIM, "head": "vib", "mask_weight": 0.1}).fit(X, y)
    assert {ax.get_title() for ax in plot_history(vib).axes} == {
        "train_loss", "train_ce", "train_triplet", "train_mask", "train_kl",
        "train_mask_gate"}


def test_plot_history_errors(rgb, cim3):
    X, y = rgb
    with pytest.raises(NotFittedError):
        plot_history(CIMTransformer())
    with pytest.raises(NotFittedError):
        plot_history(Pipeline([("scale", StandardScaler()), ("vib", VIBClassifier())]))
    with pytest.raises(TypeError, match="needs an estimator with a training history_"):
        plot_history(LogisticRegression().fit(X.reshape(20, -1), y))
    with pytest.raises(ValueError, match=r"several steps with a history_: \['cim', 'vib'\]"):
        plot_history(Pipeline([("cim", CIMTransformer()), ("vib", VIBClassifier())]))
    with pytest.raises(ValueError, match=r"Unknown history key\(s\) \['train_acc'\]"):
        plot_history(cim3, keys=["train_loss", "train_acc"])


def test_missing_matplotlib_names_the_extra(monkeypatch, pipe, rgb):
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r'pip install "sklearn-cim\[plot\]"'):
        plot_history(pipe)
