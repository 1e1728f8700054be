"""The localisation trial's pieces (benchmarks/nuisance_map_trial.py): it sets
the package's map settings, and psi(x) with a grey fill. The map itself is
tested in test_nuisance_map.py."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
trial = pytest.importorskip("nuisance_map_trial")


def test_patch_sets_the_package_settings(monkeypatch):
    """The trial changes the package's map settings in its process (the
    package's are its defaults)."""
    from sklearn_cim import _cim, _nuisance_map
    for owner, name in ((_cim, "resolve_auto"), (_nuisance_map, "MAP_CUT"),
                        (_nuisance_map, "PROBE_EPOCHS"), (_nuisance_map, "PROBE_LR"),
                        (_nuisance_map, "window_for")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the test
    assert _nuisance_map.window_for(64) == 5
    params = _cim.CIMTransformer().get_params()
    assert _cim.resolve_auto(params, True)["map_weight"] == 0.0
    trial.patch(2.0, 0.5, "3", probe_epochs=7, probe_lr=0.1)
    assert _cim.resolve_auto(params, True)["map_weight"] == 2.0
    assert _cim.resolve_auto({**params, "map_weight": 1.0}, True)["map_weight"] == 1.0
    assert _cim.resolve_auto(params, False)["map_weight"] == 0.0
    assert _nuisance_map.MAP_CUT == 0.5
    assert (_nuisance_map.PROBE_EPOCHS, _nuisance_map.PROBE_LR) == (7, 0.1)
    assert _nuisance_map.window_for(64) == 3
    with pytest.raises(ValueError, match="f503985"):
        trial.patch(3.0, 0.25, "auto", gate=False)


def test_fill_makes_removed_pixels_grey(monkeypatch):
    from sklearn_cim import _cim
    from sklearn_cim._networks import CIMModule
    for owner, name in ((CIMModule, "masked"), (CIMModule, "forward"),
                        (_cim.CIMTransformer, "_apply_validated"),
                        (_cim.CIMTransformer, "_check_images")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the test
    trial.patch_fill(0.5)
    from sklearn_cim import CIMTransformer
    rng = np.random.RandomState(0)
    X = rng.rand(40, 3 * 8 * 8).astype(np.float32)
    y = np.arange(40) % 2
    cim = CIMTransformer(image_shape=(3, 8, 8), max_epochs=1, batch_size=20, pretrained=False,
                         distance="l2", random_state=0).fit(X, y)
    m = cim.masks(X).reshape(40, 1, 8, 8)
    psi = cim.transform(X).reshape(40, 3, 8, 8)
    expected = m * X.reshape(40, 3, 8, 8) + (1 - m) * 0.5
    np.testing.assert_allclose(psi, expected, atol=1e-6)
    module = cim.net_.module_.eval()
    with torch.no_grad():
        u = torch.tensor(X.reshape(40, 3, 8, 8))
        _, psi_train, _ = module(u)
        np.testing.assert_allclose(module.masked(u).numpy(), psi_train.numpy(), atol=1e-6)
