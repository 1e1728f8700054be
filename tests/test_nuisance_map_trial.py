"""The localisation trial's pieces (benchmarks/nuisance_map_trial.py): the
window that grows with the image, a map that lights up where the group is
drawn and nowhere else, and psi(x) with a grey fill."""

import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
trial = pytest.importorskip("nuisance_map_trial")


def test_window_grows_with_the_image():
    sides = (8, 16, 28, 32, 48, 64)
    assert [trial.window_for(side, "auto") for side in sides] == [1, 1, 3, 3, 5, 5]
    assert trial.window_for(64, "3") == 3


def _patch_images(n=120, side=12, seed=0):
    """White strokes at random places on black; a 3x3 patch in one corner
    whose colour is the group (3 groups)."""
    rng = np.random.RandomState(seed)
    x = np.zeros((n, 3, side, side), np.float32)
    for i in range(n):
        r, c = rng.randint(4, side - 2, 2)
        x[i, :, r - 2:r + 2, c] = 1.0
    groups = rng.randint(0, 3, n)
    colours = np.eye(3, dtype=np.float32) * 0.8
    x[:, :, :3, :3] = colours[groups][:, :, None, None]
    patch = np.zeros((side, side), bool)
    patch[:3, :3] = True
    return torch.tensor(x), torch.tensor(groups), torch.tensor(patch)


@pytest.mark.parametrize("window", [1, 3])
def test_map_marks_the_patch_not_the_strokes(window):
    x, groups, patch = _patch_images()
    probe = trial.train_probe(x, groups, 0, window=window, epochs=30, lr=1e-2)
    where = trial.nuisance_map(probe, x, groups, 0.25)
    assert where.shape == (len(x),) + tuple(patch.shape)
    inside = where[:, patch].mean().item()
    # pixels at least 2 px from the patch: no window of 3 reaches it
    far = torch.ones_like(patch)
    far[:5, :5] = False
    assert inside > 0.5, inside
    assert where[:, far].mean().item() < 0.05


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
