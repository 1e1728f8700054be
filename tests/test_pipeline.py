"""CIMTransformer inside Pipelines and searches."""

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer


def _pipeline(tiny):
    return Pipeline([("cim", CIMTransformer(**tiny)),
                     ("clf", LogisticRegression(max_iter=200))])


def test_pipeline_fit_predict_score(images, tiny, tmp_path):
    X, y = images
    pipe = _pipeline(tiny).fit(X.reshape(40, -1), y)
    # the classifier is fitted on psi(x) and predicts from psi(x) (the images are
    # told apart by brightness alone, so a score says nothing about CIM here)
    cim = CIMTransformer(**tiny).fit(X.reshape(40, -1), y)
    psi = cim.transform(X.reshape(40, -1))
    alone = LogisticRegression(max_iter=200).fit(psi, y)
    np.testing.assert_allclose(pipe.predict_proba(X.reshape(40, -1)), alone.predict_proba(psi))
    path = tmp_path / "pipe.joblib"
    joblib.dump(pipe, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict_proba(X.reshape(40, -1)),
                                  pipe.predict_proba(X.reshape(40, -1)))


def test_grid_search_sequential_and_parallel_agree(images, tiny):
    X, y = images
    X = X.reshape(40, -1)
    grid = {"cim__triplet_weight": [0.0, 1.0], "cim__margin": [0.05, 0.2]}
    results = []
    for n_jobs in (1, 2):
        search = GridSearchCV(_pipeline(tiny), grid, cv=2, n_jobs=n_jobs).fit(X, y)
        results.append(search.cv_results_["mean_test_score"])
        assert search.best_estimator_.predict(X).shape == (40,)
    np.testing.assert_allclose(results[0], results[1])


def test_clone_and_set_params_round_trip(tiny):
    pipe = _pipeline(tiny)
    pipe.set_params(cim__triplet_weight=0.5, cim__margin=0.3, cim__distance="ssim")
    params = clone(pipe).get_params()
    assert params["cim__triplet_weight"] == 0.5
    assert params["cim__margin"] == 0.3
    assert params["cim__distance"] == "ssim"
    assert clone(pipe.named_steps["cim"]).get_params() == pipe.named_steps["cim"].get_params()


def _cim_vib(tiny):
    from sklearn_cim import VIBClassifier

    vib = VIBClassifier(hidden_layer_sizes=(16,), latent_dim=8, max_epochs=15, batch_size=16,
                        lr=1e-2, device="cpu", random_state=0)
    return Pipeline([("cim", CIMTransformer(**tiny)), ("clf", vib)])


def test_cim_then_vib_pipeline(images, tiny, tmp_path):
    X, y = images
    labels = np.where(y == 1, "bright", "dark")
    pipe = _cim_vib(tiny).fit(X.reshape(40, -1), labels)
    proba = pipe.predict_proba(X.reshape(40, -1))
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert list(pipe.classes_) == ["bright", "dark"]
    psi = CIMTransformer(**tiny).fit(X.reshape(40, -1), labels).transform(X.reshape(40, -1))
    alone = clone(pipe.named_steps["clf"]).fit(psi, labels)
    np.testing.assert_allclose(proba, alone.predict_proba(psi))
    path = tmp_path / "cim_vib.joblib"
    joblib.dump(pipe, path)
    np.testing.assert_array_equal(joblib.load(path).predict_proba(X.reshape(40, -1)), proba)


def test_grid_search_over_triplet_weight_and_beta(images, tiny):
    X, y = images
    grid = {"cim__triplet_weight": [0.0, 1.0], "clf__beta": [1e-3, 1e-1]}
    search = GridSearchCV(_cim_vib(tiny), grid, cv=2).fit(X.reshape(40, -1), y)
    scores = search.cv_results_["mean_test_score"]
    assert len(scores) == 4 and np.all(np.isfinite(scores))
    assert set(search.best_params_) == set(grid)


def test_cim_then_vib_pipeline_set_output_pandas(images, tiny):
    import pandas as pd
    from sklearn.pipeline import make_pipeline

    from sklearn_cim import VIBClassifier

    X, y = images
    X = X.reshape(40, -1)
    vib = VIBClassifier(hidden_layer_sizes=(8,), latent_dim=3, max_epochs=2,
                        batch_size=16, device="cpu", random_state=0)
    pipe = make_pipeline(CIMTransformer(**tiny), vib).set_output(transform="pandas")
    pipe.fit(X, y)
    out = pipe.transform(X)
    assert isinstance(out, pd.DataFrame)
    assert out.shape == (40, 3)
    names = pipe[-1].get_feature_names_out()
    assert list(out.columns) == list(names) == [f"vibclassifier{i}" for i in range(3)]
    assert len(names) == vib.transform(pipe[0].transform(X)).shape[1]
    assert pipe.predict(X).shape == (40,)
