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
    assert pipe.score(X.reshape(40, -1), y) > 0.9
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
