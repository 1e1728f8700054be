"""The own-images benchmark's plumbing: what a seed's process is told, and the
per-brightness share of kept objects."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks"))
own_images = pytest.importorskip("own_images_64px")


def test_each_seed_gets_every_setting():
    args = own_images.parse(["--mnist", "m", "--out", "o.jsonl", "--cim", '{"lr": 0.01}',
                             "--models", "group CIM -> LR", "group CIM -> CNN",
                             "--figures", "figs", "--threads", "2", "--n-train", "50"])
    child = own_images.parse(own_images.child_command(args, 7)[2:])
    for name in ("mnist", "out", "cim", "models", "figures", "threads", "n_train", "n_test"):
        assert getattr(child, name) == getattr(args, name), name
    assert child.seed == 7


def test_kept_share_split_by_scene_brightness():
    n, side = 8, 4
    obj = np.zeros((n, side, side), bool)
    obj[:, 1:3, 1:3] = True
    X = np.zeros((n, 3, side, side), np.float32)
    X[:2] = 0.9  # the two brightest scenes
    X[:, :, 1:3, 1:3] = 1.0  # the object, white on every scene
    masks = np.ones((n, side, side), np.float32)
    masks[:2] = 0.0  # the object erased on the bright scenes only
    got = own_images.kept_by_brightness(masks, obj, X)
    assert got == {"object_kept_bright": 0.0, "object_kept_dark": 1.0}


def test_marks_sit_clear_of_the_digit_in_their_colour():
    from sklearn_cim.datasets._nuisance import PALETTE
    rng = np.random.RandomState(0)
    n, side, mark = 40, own_images.SIDE, own_images.MARK
    ink = np.zeros((n, own_images.DIGIT, own_images.DIGIT), np.float32)
    ink[:, 4:40, 18:26] = 1.0  # a thick stroke down the middle
    colours = rng.randint(0, len(PALETTE), n)
    X = np.zeros((n, 3, side, side), np.float32)
    own_images.add_marks(X, ink, colours, rng)
    placed = own_images._placed(ink) > 0
    rows, cols = np.nonzero(placed[0])
    for i in range(n):
        hit = np.all(np.abs(X[i] - PALETTE[colours[i]][:, None, None]) < 1e-6, axis=0)
        r, c = np.nonzero(hit)
        assert hit.sum() == mark * mark
        assert r.max() - r.min() == c.max() - c.min() == mark - 1  # one square
        # at least 2 px (the dark rim) between the square and any ink
        gap_r = np.maximum(0, np.maximum(r.min() - rows, rows - r.max()))
        gap_c = np.maximum(0, np.maximum(c.min() - cols, cols - c.max()))
        assert np.maximum(gap_r, gap_c).min() > 2
    corners = {(np.nonzero(X[i].any(0))[0].min(), np.nonzero(X[i].any(0))[1].min())
               for i in range(n)}
    assert len(corners) > n // 2  # at a random place, not one spot
