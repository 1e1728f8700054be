"""Pickles and weight files written by an earlier version still load and give
the same outputs.

The fixtures in ``tests/fixtures`` were written by ``make_pickles.py`` with the
code of commit 456c0b4, before ``_training.py`` and ``_cim.py`` were split into
modules by concept. A pickle names each class by the module it was defined in
then (``sklearn_cim._cim.CIMModule``, ``sklearn_cim._vib.VIBModule``, ...):
those names must keep resolving wherever the classes live now.
"""

import importlib
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from sklearn_cim import CIMTransformer

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
# What the fixtures' pickles name, as recorded by an Unpickler's find_class.
OLD_NAMES = [
    "sklearn_cim._cim.CIMModule", "sklearn_cim._cim.CIMNet", "sklearn_cim._cim.CIMObjective",
    "sklearn_cim._cim.CIMTransformer", "sklearn_cim._networks.ConvClassifier",
    "sklearn_cim._networks.ConvEncoder", "sklearn_cim._networks.MLPEncoder",
    "sklearn_cim._networks.MaskNet", "sklearn_cim._networks.NuisanceAdversary",
    "sklearn_cim._networks._ConvBlock", "sklearn_cim._networks._Pool",
    "sklearn_cim._vib.VIBClassifier", "sklearn_cim._vib.VIBModule",
    "sklearn_cim._vib.VIBNet",
]


def _load(name):
    with open(os.path.join(HERE, name), "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="module")
def expected():
    return dict(np.load(os.path.join(HERE, "expected.npz")))


_RECORD = """
import pickle, sys
names = set()
class Recorder(pickle.Unpickler):
    def find_class(self, module, name):
        if module.startswith("sklearn_cim"):
            names.add(module + "." + name)
        return super().find_class(module, name)
pickle.Unpickler = Recorder  # before torch is imported: skorch's torch.load uses it too
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        Recorder(f).load()
print(" ".join(sorted(names)))
"""


def test_the_fixtures_name_the_old_module_paths():
    paths = [os.path.join(HERE, name)
             for name in ("pipeline_cim_vib.pickle", "cim_groups_vib_head.pickle")]
    out = subprocess.run([sys.executable, "-c", _RECORD, *paths], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == OLD_NAMES


@pytest.mark.parametrize("name", OLD_NAMES)
def test_old_module_paths_resolve(name):
    # what pickle's find_class does: import the module, take the attribute
    module, _, attr = name.rpartition(".")
    assert isinstance(getattr(importlib.import_module(module), attr), type)


def test_old_pipeline_pickle_predicts_as_when_written(expected):
    pipe = _load("pipeline_cim_vib.pickle")
    X = expected["X"]
    np.testing.assert_allclose(pipe.named_steps["cim"].transform(X),
                               expected["pipeline_transform"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pipe.predict_proba(X), expected["pipeline_predict_proba"],
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(pipe.predict(X), expected["pipeline_predict"])


def test_old_group_aware_pickle_transforms_as_when_written_and_keeps_training(expected):
    cim = _load("cim_groups_vib_head.pickle")
    X = expected["X"]
    assert cim.group_aware_ and cim.input_range_ == (0.0, 1.0)
    # fitted before the nuisance map: it continues, and refits, without one
    assert cim.map_weight == 0.0 and cim.map_weight_ == 0.0
    # what the old net held and this version does not (the value range, pickled
    # as ``units``; the removed adversary's group count) is dropped on loading
    assert "units" not in vars(cim.net_) and not hasattr(cim, "n_groups_")
    np.testing.assert_allclose(cim.transform(X), expected["groups_transform"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cim.masks(X), expected["groups_masks"], rtol=1e-5, atol=1e-6)
    # the old net trains on: a warm fit reads everything the training loop needs
    y, groups = np.repeat([0, 1], 20), np.tile([0, 1], 20)
    cim.set_params(warm_start=True).fit(X, y, groups=groups)
    assert len(cim.history_) == 2


def test_old_weights_file_loads(expected):
    old = _load("pipeline_cim_vib.pickle").named_steps["cim"]
    fresh = CIMTransformer(**old.get_params()).load_params(os.path.join(HERE, "cim.pt"))
    np.testing.assert_allclose(fresh.transform(expected["X"]), expected["pipeline_transform"],
                               rtol=1e-5, atol=1e-6)
