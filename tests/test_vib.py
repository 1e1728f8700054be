"""VIBClassifier: learning, probabilities, reproducibility, rate/distortion, errors."""

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_digits, make_blobs
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_cim import VIBClassifier
from sklearn_cim._networks import gaussian_kl

# Small, fast CPU settings; tests override what they exercise.
FAST = dict(
    hidden_layer_sizes=(32,), latent_dim=8, max_epochs=15, batch_size=32, lr=1e-2,
    device="cpu", random_state=0,
)


@pytest.fixture
def blobs():
    X, y = make_blobs(n_samples=240, centers=3, n_features=5, cluster_std=2.0,
                      random_state=0)
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(np.float32), y


@pytest.mark.slow
def test_learns_digits_held_out(digits):
    X, y = digits
    clf = VIBClassifier(hidden_layer_sizes=(128,), latent_dim=32, max_epochs=30,
                        batch_size=64, lr=2e-3, device="cpu", random_state=0)
    clf.fit(X[:1000], y[:1000])
    assert clf.score(X[1000:], y[1000:]) > 0.9


def test_cnn_path_learns_digits_images(digits):
    X, y = digits
    X4 = X[:600].reshape(-1, 1, 8, 8)
    clf = VIBClassifier(image_shape=(8, 8), conv_width=8, hidden_layer_sizes=(32,),
                        latent_dim=16, max_epochs=15, batch_size=32, lr=3e-3,
                        device="cpu", random_state=0)
    clf.fit(X[:600], y[:600])
    assert clf.image_shape_ == (1, 8, 8)
    assert clf.n_features_in_ == 64
    assert clf.score(X[600:900], y[600:900]) > 0.8
    # 4-D input gives the same answers as the 2-D rows it reshapes.
    np.testing.assert_array_equal(clf.predict_proba(X4), clf.predict_proba(X[:600]))
    assert clf.transform(X4).shape == (600, 16)
    with pytest.raises(ValueError, match="shape"):
        clf.predict(X[:10].reshape(-1, 1, 4, 16))


def test_string_labels_proba_columns_follow_classes(blobs):
    X, y = blobs
    names = np.array(["zebra", "ant", "moose"])
    clf = VIBClassifier(**FAST).fit(X, names[y])
    np.testing.assert_array_equal(clf.classes_, ["ant", "moose", "zebra"])
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert ((proba >= 0) & (proba <= 1)).all()
    # Column k holds the probability of classes_[k]: highest on its own class.
    for k, label in enumerate(clf.classes_):
        mean_proba = proba[names[y] == label].mean(axis=0)
        assert mean_proba.argmax() == k
    pred = clf.predict(X)
    np.testing.assert_array_equal(pred, clf.classes_[proba.argmax(axis=1)])
    assert np.mean(pred == names[y]) > 0.8
    np.testing.assert_allclose(np.exp(clf.predict_log_proba(X)), proba)


def test_predict_proba_reproducible(blobs):
    X, y = blobs
    a = VIBClassifier(**FAST).fit(X, y)
    b = VIBClassifier(**FAST).fit(X, y)
    p = a.predict_proba(X)
    np.testing.assert_array_equal(p, a.predict_proba(X))  # repeated call
    np.testing.assert_array_equal(p, b.predict_proba(X))  # refit, same seed
    c = VIBClassifier(**{**FAST, "random_state": 1}).fit(X, y)
    assert not np.allclose(p, c.predict_proba(X))
    # Each row's probabilities depend only on that row.
    np.testing.assert_allclose(a.predict_proba(X[7:8]), p[7:8], rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.predict_proba(X[::-1]), p[::-1], rtol=0, atol=1e-12)


def test_test_time_draws_are_averaged(blobs):
    X, y = blobs
    clf = VIBClassifier(**{**FAST, "beta": 1e-1}).fit(X, y)
    one = clf.set_params(n_test_samples=1).predict_proba(X)
    many = clf.set_params(n_test_samples=12).predict_proba(X)
    assert not np.allclose(one, many)
    # n_test_samples is read at predict time and checked there too, from the table.
    with pytest.raises(ValueError, match=r"'n_test_samples' parameter of VIBClassifier"):
        clf.set_params(n_test_samples=0).predict_proba(X)


def test_transform_returns_latent_means(blobs):
    X, y = blobs
    clf = VIBClassifier(**FAST).fit(X, y)
    Z = clf.transform(X)
    assert Z.shape == (len(X), FAST["latent_dim"]) and Z.dtype == np.float32
    assert clf.transform(X.astype(np.float64)).dtype == np.float64
    np.testing.assert_array_equal(Z, clf.transform(X))
    with torch.no_grad():
        mu, _ = clf.net_.module_(torch.as_tensor(X))
    np.testing.assert_allclose(Z, mu.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(clone(clf).fit_transform(X, y), Z)


def test_embedding_step_in_pipeline(blobs):
    X, y = blobs
    pipe = make_pipeline(VIBClassifier(**FAST), LogisticRegression())
    assert pipe.fit(X, y).score(X, y) > 0.8


def test_history_records_rate_and_distortion(blobs):
    X, y = blobs
    clf = VIBClassifier(**{**FAST, "beta": 0.01, "max_epochs": 6}).fit(X, y)
    kl = np.array(clf.history_[:, "train_kl"])
    ce = np.array(clf.history_[:, "train_ce"])
    loss = np.array(clf.history_[:, "train_loss"])
    assert kl.shape == ce.shape == (6,)
    assert (kl > 0).all() and (ce > 0).all()
    np.testing.assert_allclose(loss, ce + 0.01 * kl, rtol=1e-4)
    assert ce[-1] < ce[0]


def test_kl_shrinks_as_beta_grows(blobs):
    X, y = blobs
    kl = {}
    for beta in (1e-4, 1e-1):
        clf = VIBClassifier(**{**FAST, "beta": beta}).fit(X, y)
        kl[beta] = clf.history_[-1, "train_kl"]
    assert kl[1e-1] < 0.5 * kl[1e-4]


def test_beta_zero_and_linear_encoder(blobs):
    X, y = blobs
    clf = VIBClassifier(**{**FAST, "beta": 0.0, "hidden_layer_sizes": ()}).fit(X, y)
    assert np.isfinite(clf.history_[:, "train_kl"]).all()
    assert clf.score(X, y) > 0.8


def test_gaussian_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=gen)
    sigma = torch.rand(5, 3, generator=gen) + 0.1
    p = torch.distributions.Normal(mu, sigma)
    q = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    expected = torch.distributions.kl_divergence(p, q).sum(-1).mean()
    torch.testing.assert_close(gaussian_kl(mu, sigma), expected)


def test_any_value_range_after_standard_scaler(blobs):
    X, y = blobs
    X_wide = X.astype(np.float64) * np.array([1e4, 1e-3, 1.0, 250.0, -7.0]) + 1e3
    pipe = make_pipeline(StandardScaler(), VIBClassifier(**FAST))
    assert pipe.fit(X_wide, y).score(X_wide, y) > 0.8


def test_torch_global_rng_untouched(blobs):
    X, y = blobs
    state = torch.random.get_rng_state()
    clf = VIBClassifier(**FAST).fit(X, y)
    clf.predict_proba(X)
    clf.predict(X)
    clf.transform(X)
    assert torch.equal(state, torch.random.get_rng_state())


def test_joblib_roundtrip(blobs, tmp_path):
    X, y = blobs
    clf = VIBClassifier(**FAST).fit(X, y)
    path = tmp_path / "vib.joblib"
    joblib.dump(clf, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(loaded.transform(X), clf.transform(X))


# skorch says it moved the net to the CPU: what this test asks of it
@pytest.mark.filterwarnings("ignore:Setting self.device = cpu:UserWarning")
def test_cuda_fitted_model_loads_on_cpu(blobs, tmp_path, monkeypatch):
    """Simulate a model pickled on a CUDA machine and loaded on a CPU-only one."""
    X, y = blobs
    clf = VIBClassifier(**FAST).fit(X, y)
    expected = clf.predict_proba(X)
    clf.net_.device = "cuda"  # what a CUDA fit records
    path = tmp_path / "vib_cuda.joblib"
    joblib.dump(clf, path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="no CUDA devices"):
        loaded = joblib.load(path)
    assert loaded.device_ == "cpu"
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)


X_OK = np.random.RandomState(0).rand(10, 3)
Y_OK = np.repeat([0, 1], 5)


def _with(value, index=(0, 0)):
    X = X_OK.copy()
    X[index] = value
    return X


@pytest.mark.parametrize(
    "params, X, y, error, match",
    [
        ({"beta": -1.0}, X_OK, Y_OK, ValueError, r"'beta' parameter .* float in the range \[0"),
        ({"latent_dim": 0}, X_OK, Y_OK, ValueError, r"'latent_dim' parameter .* int in the"),
        ({"latent_dim": 2.5}, X_OK, Y_OK, TypeError, r"'latent_dim' parameter .* int in the range"),
        ({"n_test_samples": 0}, X_OK, Y_OK, ValueError, r"'n_test_samples' parameter .* int in"),
        ({"n_train_samples": 0}, X_OK, Y_OK, ValueError, r"'n_train_samples' parameter .* int in"),
        ({"hidden_layer_sizes": (16, 0)}, X_OK, Y_OK, ValueError,
         r"hidden_layer_sizes must be a tuple of positive integers.*e\.g\."),
        ({"lr": 0.0}, X_OK, Y_OK, ValueError, r"'lr' parameter .* float in the range \(0.0"),
        ({"device": "tpu"}, X_OK, Y_OK, ValueError, "use 'auto', 'cpu'"),
        ({"image_shape": (2, 2)}, X_OK, Y_OK, ValueError, "pass the image_shape"),
        ({}, X_OK, np.zeros(10), ValueError, "Pass labels of at least two classes"),
        ({}, _with(np.nan), Y_OK, ValueError, r"NaN(.|\n)*imputer"),
        ({}, _with(np.inf), Y_OK, ValueError, "infinity.*Remove or replace"),
        ({}, _with(1e300), Y_OK, ValueError, "too large for float32.*StandardScaler"),
        ({}, X_OK, Y_OK[:-1], ValueError, "inconsistent numbers of samples"),
        ({}, X_OK, None, ValueError, "requires y to be passed"),
    ],
)
def test_bad_input_raises_with_fix(params, X, y, error, match):
    clf = VIBClassifier(**{**FAST, "max_epochs": 1, **params})
    with pytest.raises(error, match=match):
        clf.fit(X, y)


def test_bad_input_at_predict(blobs):
    X, y = blobs
    clf = VIBClassifier(**{**FAST, "max_epochs": 1}).fit(X, y)
    X_nan = X[:10].copy()
    X_nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.predict_proba(X_nan)
    with pytest.raises(ValueError, match="features"):
        clf.transform(X[:, :3])


def test_init_only_stores_params():
    clf = VIBClassifier(beta=-5, latent_dim=0)  # checked in fit, not here
    assert clf.get_params()["beta"] == -5
    assert not [k for k in vars(clf) if k.endswith("_")]
