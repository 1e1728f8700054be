"""The removal check: out-of-fold linear probes on psi(x) and x after a
group-aware fit (``removal_check_``), its warning and its scorer."""

import warnings

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer, RemovalWarning
from sklearn_cim._removal import (
    cell_balanced_accuracy,
    cell_balanced_se,
    pooled_rows,
    removal_check,
)
from sklearn_cim.metrics import removal_score


def test_cell_balanced_accuracy_by_hand():
    cells = np.array([0, 0, 0, 1, 2, 2])
    correct = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    # cells 0, 1, 2: 2/3, 0, 1/2 -> their mean
    assert cell_balanced_accuracy(correct, cells) == pytest.approx((2 / 3 + 0 + 0.5) / 3)
    # binomial variance per cell / n, a one-image cell at the overall accuracy
    p = (2 / 3 + 0 + 0.5) / 3
    var = (2 / 3 * 1 / 3) / 3 + p * (1 - p) / 1 + 0.25 / 2
    assert cell_balanced_se(correct, cells) == pytest.approx(np.sqrt(var) / 3)


def test_pooling_keeps_small_images_and_averages_large_ones():
    small = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    assert np.array_equal(pooled_rows(small), small.reshape(2, -1))
    large = np.ones((1, 1, 64, 64), np.float32)
    large[0, 0, :2, :2] = 5.0  # one pooled pixel (4x4) holds the mark: (4*5 + 12) / 16
    rows = pooled_rows(large)
    assert rows.shape == (1, 16 * 16) and rows[0, 0] == pytest.approx(2.0)
    assert np.all(rows[0, 1:] == 1.0)


def _shortcut_data(n=360, seed=0):
    """Two classes told apart by a faint, noisy bar; three groups told apart by
    a bright patch colour that agrees with the class for 90% of the images."""
    rng = np.random.RandomState(seed)
    y = np.repeat([0, 1], n // 2)
    groups = np.where(rng.rand(n) < 0.9, y, (y + 1 + rng.randint(0, 2, n)) % 3)
    clean = rng.rand(n, 3, 8, 8).astype(np.float32) * 0.6
    clean[y == 1, :, 2:4, 2:6] += 0.15
    x = clean.copy()
    x[:, :, 0:2, 0:2] = (np.eye(3)[groups] * 0.9)[:, :, None, None]
    return pooled_rows(clean), pooled_rows(x), y, groups


def test_check_reads_a_kept_nuisance_and_not_a_removed_one():
    clean, x, y, groups = _shortcut_data()
    kept = removal_check(x, x, y, groups, random_state=0)
    removed = removal_check(clean, x, y, groups, random_state=0)
    assert kept.retained == pytest.approx(1.0)  # psi = x keeps all of it
    assert kept.nuisance_x > 0.9 > 0.5 > removed.nuisance_psi
    assert removed.retained < 0.1
    # the shortcut costs a linear model on x accuracy on the cells it misleads
    assert removed.balanced_accuracy > kept.balanced_accuracy_x + 0.05
    assert kept.n_images == len(y)


def test_nuisance_probe_weighs_the_cells_to_read_a_faint_cue():
    """A faint patch colour beside a clear class: a probe trained unweighted
    leans on the class (the group agrees with it 90% of the time) and scores
    near chance once every cell weighs the same (0.47 measured); the cell-weighted
    probe reads the colour (0.80)."""
    rng = np.random.RandomState(0)
    n = 360
    y = np.repeat([0, 1], n // 2)
    groups = np.where(rng.rand(n) < 0.9, y, (y + 1 + rng.randint(0, 2, n)) % 3)
    x = rng.rand(n, 3, 8, 8).astype(np.float32) * 0.6
    x[y == 1, :, 2:4, 2:6] += 0.4
    x[:, :, 0:2, 0:2] += (np.eye(3)[groups] * 0.3)[:, :, None, None]
    rows = pooled_rows(np.clip(x, 0, 1))
    check = removal_check(rows, rows, y, groups, random_state=0)
    assert check.nuisance_x > check.chance + 0.3


def test_check_is_undefined_when_x_shows_no_nuisance():
    clean, _, y, groups = _shortcut_data()
    check = removal_check(clean, clean, y, groups, random_state=0)
    assert np.isnan(check.retained)


def _fit(nuisance_images, tiny, **params):
    X, y, groups = nuisance_images
    return CIMTransformer(**{**tiny, **params}).fit(X, y, groups=groups)


def test_group_fit_has_the_check_and_warns_when_psi_keeps_the_nuisance(nuisance_images, tiny):
    # one epoch of a soft mask without a penalty or cut: psi(x) is x, dimmed, nuisance and all
    with pytest.warns(RemovalWarning, match="still carries"):
        cim = _fit(nuisance_images, tiny, mask_weight=0.0, mask_threshold=None, hard_mask=False)
    check = cim.removal_check_
    assert check.retained > 0.5 and check.nuisance_x > check.chance + 0.05


def test_a_hard_mask_that_kept_every_pixel_says_nothing_was_removed(nuisance_images, tiny):
    """One epoch: every hard-mask value is still above the cut, psi(x) is x. The
    fit says that, not a share the probe may misread; a mask that cuts is quiet."""
    X, y, groups = nuisance_images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cim = _fit(nuisance_images, tiny, mask_weight=0.0)
    said = [str(w.message) for w in caught if w.category is RemovalWarning]
    assert len(said) == 1 and "psi(x) is x, and nothing was removed" in said[0], said
    np.testing.assert_array_equal(cim.transform(X), X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = _fit(nuisance_images, tiny, max_epochs=40, mask_weight=3.0, lr=3e-2)
    assert 0 < (cut.masks(X) > 0).mean() < 1
    assert not any("nothing was removed" in str(w.message) for w in caught)


def test_a_nuisance_the_probe_cannot_see_in_x_is_said(nuisance_images, tiny):
    """Groups no pixel shows (drawn at random): retained is undefined and fit
    says the check cannot tell, instead of staying silent."""
    X, y, _ = nuisance_images
    hidden = np.random.RandomState(1).randint(0, 2, len(y))
    with pytest.warns(RemovalWarning, match="cannot tell whether the nuisance was removed"):
        cim = CIMTransformer(**{**tiny, "hard_mask": False}).fit(X, y, groups=hidden)
    assert np.isnan(cim.removal_check_.retained)


def test_the_warning_points_at_the_callers_line(nuisance_images, tiny):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(nuisance_images, tiny, mask_weight=0.0, mask_threshold=None)
    removal = [w for w in caught if w.category is RemovalWarning]
    assert removal and all(w.filename == __file__ for w in removal)


def test_paper_objective_and_partial_fit_have_no_check(nuisance_images, tiny):
    X, y, groups = nuisance_images
    with warnings.catch_warnings():
        warnings.simplefilter("error", RemovalWarning)
        paper = CIMTransformer(**tiny).fit(X, y)
    assert paper.removal_check_ is None
    with pytest.raises(ValueError, match="fitted without groups"):
        removal_score(paper)
    aware = CIMTransformer(**tiny).partial_fit(X, y, groups=groups)
    assert aware.removal_check_ is None


def test_removal_score_reads_the_check_of_a_pipeline(nuisance_images, tiny):
    X, y, groups = nuisance_images
    X = X.reshape(len(X), -1)
    pipe = Pipeline([("cim", CIMTransformer(image_shape=(3, 8, 8), **tiny)),
                     ("clf", LogisticRegression(max_iter=500))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        pipe.fit(X, y, cim__groups=groups)
    check = pipe.named_steps["cim"].removal_check_
    assert removal_score(pipe) == check.balanced_accuracy
    assert removal_score(pipe, metric="removed") == pytest.approx(1 - check.retained,
                                                                  nan_ok=True)
    with pytest.raises(ValueError, match="metric must be"):
        removal_score(pipe, metric="auc")
    with pytest.raises(ValueError, match="needs a fitted CIMTransformer"):
        removal_score(LogisticRegression())


def test_removal_score_ranks_a_search(nuisance_images, tiny):
    """GridSearchCV with the scorer picks the candidate with the best check."""
    X, y, groups = nuisance_images
    X = X.reshape(len(X), -1)
    search = GridSearchCV(
        Pipeline([("cim", CIMTransformer(image_shape=(3, 8, 8), **tiny)),
                  ("clf", LogisticRegression())]),
        {"cim__mask_weight": [0.0, 1.0]}, cv=2, scoring=removal_score, refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        search.fit(X, y, cim__groups=groups)
    scores = search.cv_results_["mean_test_score"]
    assert np.all((scores >= 0) & (scores <= 1))
    assert search.best_index_ == int(np.argmax(scores))


def test_check_survives_save_and_load(nuisance_images, tiny, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        cim = _fit(nuisance_images, tiny)
    path = tmp_path / "cim.pt"
    cim.save_params(path)
    fresh = CIMTransformer(**cim.get_params()).load_params(path)
    assert dict(fresh.removal_check_) == pytest.approx(dict(cim.removal_check_), nan_ok=True)


def test_worse_than_x_needs_more_than_twice_the_standard_error():
    from sklearn.utils import Bunch

    from sklearn_cim._cim import _worse_than_x
    check = Bunch(balanced_accuracy=0.80, balanced_accuracy_x=0.85, balanced_accuracy_se=0.02)
    assert _worse_than_x(check)
    check.balanced_accuracy_se = 0.03  # 0.05 is within twice the noise
    assert not _worse_than_x(check)


@pytest.mark.filterwarnings("ignore:infer_groups found a single group:RuntimeWarning")
def test_untrusted_inferred_groups_fall_back_to_the_identity(nuisance_images, tiny,
                                                            monkeypatch):
    import sklearn_cim._cim as cim_module
    X, y, groups = nuisance_images
    monkeypatch.setattr(cim_module, "_worse_than_x", lambda check: True)
    with pytest.warns(RemovalWarning, match="Falling back"):
        # a soft mask (about 0.88 after one epoch): psi(x) differs from x unless it falls back
        cim = CIMTransformer(**tiny, infer_groups=True, hard_mask=False).fit(X, y)
    assert cim.fallback_
    np.testing.assert_array_equal(cim.transform(X), X)
    assert np.all(cim.masks(X) == 1)
    cim.fallback_ = False
    assert not np.allclose(cim.transform(X), X)
    # groups given never fall back (the warning says the estimate instead)
    with pytest.warns(RemovalWarning, match="less accurate than one on x"):
        known = CIMTransformer(**tiny, hard_mask=False).fit(X, y, groups=groups)
    assert not known.fallback_


@pytest.mark.filterwarnings("ignore:infer_groups found a single group:RuntimeWarning")
def test_a_fit_without_groups_says_what_it_trains(nuisance_images, tiny):
    """fit(X, y) trains the paper's objective: it says so, at the caller's line,
    with the two ways to the group-aware one; groups, inferred groups and
    continuing fits stay quiet."""
    from sklearn_cim import PaperObjectiveWarning
    X, y, groups = nuisance_images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cim = CIMTransformer(**tiny).fit(X, y)
    said = [w for w in caught if w.category is PaperObjectiveWarning]
    assert len(said) == 1 and said[0].filename == __file__
    assert "cim__groups=g" in str(said[0].message)
    assert "infer_groups=True" in str(said[0].message)
    for fit in (lambda: CIMTransformer(**tiny).fit(X, y, groups=groups),
                lambda: CIMTransformer(**tiny, infer_groups=True).fit(X, y),
                lambda: cim.partial_fit(X, y),
                lambda: cim.set_params(warm_start=True).fit(X, y)):
        with warnings.catch_warnings():
            warnings.simplefilter("error", PaperObjectiveWarning)
            fit()
