"""Persistence: weights-only files, pickles across processes."""

import json
import pickle
import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer, VIBClassifier


@pytest.fixture
def vib_tiny(vib_tiny):
    """conftest's tiny VIB settings, with 3 epochs."""
    return dict(vib_tiny, max_epochs=3)


def _fitted(kind, tiny, vib_tiny, X, y):
    if kind == "cim":
        return CIMTransformer(**tiny).fit(X, y), "transform"
    return VIBClassifier(**vib_tiny).fit(X, y), "predict_proba"


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
@pytest.mark.parametrize("kind", ["cim", "vib"])
def test_save_and_load_params(images, tiny, tmp_path, kind, suffix, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    est, method = _fitted(kind, tiny, vib_tiny, X, np.array(["no", "yes"])[y])
    path = tmp_path / f"model{suffix}"
    est.save_params(path)
    if suffix == ".pt":
        saved = torch.load(path, weights_only=True)  # plain tensors and strings only
        assert set(saved) == {"state_dict", "metadata"}
    fresh = type(est)(**est.get_params()).load_params(path)
    np.testing.assert_array_equal(getattr(fresh, method)(X), getattr(est, method)(X))
    assert list(fresh.classes_) == ["no", "yes"]
    assert fresh.n_features_in_ == 64
    if kind == "cim":
        assert fresh.image_shape_ == (1, 8, 8)


def test_load_params_checks_class_and_architecture(images, tiny, tmp_path, vib_tiny):
    X, y = images
    path = tmp_path / "cim.safetensors"
    CIMTransformer(**tiny).fit(X, y).save_params(path)
    with pytest.raises(ValueError, match="load it with that class"):
        VIBClassifier(**vib_tiny).load_params(path)
    with pytest.raises(ValueError, match="parameters it was saved with"):
        CIMTransformer(**{**tiny, "tn_width": 8}).load_params(path)


def test_loaded_weights_can_keep_training(images, tiny, tmp_path):
    X, y = images
    path = tmp_path / "cim.pt"
    trained = CIMTransformer(**{**tiny, "max_epochs": 10, "lr": 1e-2}).fit(X, y)
    trained.save_params(path)
    fresh_first_epoch = trained.history_[0, "train_ce"]
    est = CIMTransformer(**{**tiny, "warm_start": True, "lr": 1e-2}).load_params(path)
    est.fit(X, y)
    assert len(est.history_) == tiny["max_epochs"]
    # Training went on from the saved weights, not from a new initialisation.
    assert est.history_[0, "train_ce"] < 0.5 * fresh_first_epoch


def test_failed_load_keeps_the_previous_model(images, tiny, tmp_path):
    X, y = images
    path = tmp_path / "wide.safetensors"
    CIMTransformer(**{**tiny, "tn_width": 8}).fit(X, y).save_params(path)
    est = CIMTransformer(**tiny).fit(X, y)
    before = est.transform(X)
    with pytest.raises(ValueError, match="parameters it was saved with"):
        est.load_params(path)
    np.testing.assert_array_equal(est.transform(X), before)


LOAD_AND_PREDICT = """
import sys, joblib, numpy as np
pipe = joblib.load(sys.argv[1])
X = np.load(sys.argv[2])
np.save(sys.argv[3], pipe.predict_proba(X))
"""


def test_pipeline_pickled_in_one_process_predicts_identically_in_another(images, tiny,
                                                                          tmp_path, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    for clf in (LogisticRegression(max_iter=200), VIBClassifier(**vib_tiny)):
        pipe = Pipeline([("cim", CIMTransformer(**tiny)), ("clf", clf)]).fit(X, y)
        joblib.dump(pipe, tmp_path / "pipe.joblib")
        np.save(tmp_path / "X.npy", X)
        subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(tmp_path / "pipe.joblib"),
                        str(tmp_path / "X.npy"), str(tmp_path / "out.npy")], check=True,
                       timeout=300)
        np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), pipe.predict_proba(X))


def test_saved_params_keep_feature_names(images, tiny, tmp_path):
    import pandas as pd

    X, y = images
    df = pd.DataFrame(X.reshape(40, -1), columns=[f"px{i}" for i in range(64)])
    est = CIMTransformer(**tiny).fit(df, y)
    est.save_params(tmp_path / "cim.safetensors")
    loaded = CIMTransformer(**tiny).load_params(tmp_path / "cim.safetensors")
    assert list(loaded.get_feature_names_out()) == list(df.columns)
    np.testing.assert_array_equal(loaded.transform(df), est.transform(df))


def test_warm_start_after_unpickling_continues_exactly_with_a_random_lpips_trunk(images,
                                                                                 tiny):
    # the random trunk (pretrained=False) is not pickled: it must be rebuilt as it was
    _, y = images
    X3 = np.random.RandomState(0).rand(40, 3, 8, 8).astype(np.float32)
    params = {**tiny, "distance": "lpips-alex", "pretrained": False}
    cim = CIMTransformer(**params).fit(X3, y)
    back = pickle.loads(pickle.dumps(cim))
    assert getattr(back.net_, "metric", None) is None
    cim.set_params(warm_start=True).fit(X3, y)
    back.set_params(warm_start=True).fit(X3, y)
    assert len(back.history_) == len(cim.history_) == 2
    assert cim.history_[-1, "train_triplet"] > 0  # the trunk shapes the update
    assert back.history_[-1, "train_triplet"] == cim.history_[-1, "train_triplet"]
    assert np.array_equal(back.transform(X3), cim.transform(X3))


def test_weights_saved_before_the_nuisance_map_load_without_it(nuisance_images, tiny,
                                                              tmp_path):
    """A weights file of a group-aware fit saved before the map (its metadata
    without ``map_weight_``) loads with the objective it was trained on: no map
    term, the uniform sparsity weight it saved."""
    X, y, groups = nuisance_images
    cim = CIMTransformer(**tiny, map_weight=0.0).fit(X, y, groups=groups)
    path = tmp_path / "old.pt"
    cim.save_params(path)
    saved = torch.load(path, weights_only=True)
    fitted = json.loads(saved["metadata"]["fitted"])
    assert fitted.pop("map_weight_") == 0.0
    saved["metadata"]["fitted"] = json.dumps(fitted)
    torch.save(saved, path)
    loaded = CIMTransformer(**tiny, map_weight=3.0).load_params(path)
    assert loaded.group_aware_ and (loaded.map_weight_, loaded.mask_weight_) == (0.0, 0.3)
    np.testing.assert_array_equal(loaded.transform(X), cim.transform(X))
