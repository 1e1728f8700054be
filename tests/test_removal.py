"""The removal check (``removal_check_``): probes on psi(x) and x of training
images the mask network did not train on, its warnings and its scorer. The
probe-level tests fail if the check goes blind: to a mark at a random place,
to a small mark at its true size, to what only a CNN reads, to objects erased
in some images, or to a mask that learned only its training images."""

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

import sklearn_cim._cim as cim_module
from sklearn_cim import CIMTransformer, RemovalWarning
from sklearn_cim._removal import (
    HOLDOUT,
    held_out_rows,
    not_better,
    removal_check,
    removal_warnings,
)
from sklearn_cim.metrics import removal_score


def _marked(n=600, side=16, mark="moving", agree=0.85, seed=0, bar=0.08):
    """Noisy grey images of two classes told apart by a faint bar (a linear
    model reads it over its many pixels; a small CNN prefers the mark); three
    groups, each a colour of a 2x2 mark that agrees with the class in ``agree``
    of the images: at a random place (``"moving"``) or in the top-left corner
    (``"corner"``). Returns x, the images without the mark, y and the groups."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 2
    groups = np.where(rng.rand(n) < agree, y, (y + 1 + rng.randint(0, 2, n)) % 3)
    clean = 0.3 + 0.4 * rng.rand(n, 3, side, side).astype(np.float32)
    clean[y == 1, :, side // 2 - 1:side // 2 + 1, 2:side - 2] += bar
    x = clean.copy()
    for i in range(n):
        top, left = (0, 0) if mark == "corner" else rng.randint(0, side - 2, 2)
        x[i, :, top:top + 2, left:left + 2] = np.eye(3, dtype=np.float32)[groups[i], :, None,
                                                                          None]
    return x, clean, y, groups


def _check(psi, x, y, groups, epochs=8, **kwargs):
    # the probes' epochs of a short fit (the check a quick fit gets), unless given
    return removal_check(psi, x, y, groups, held_out_rows(y, groups, 0), random_state=0,
                         epochs=epochs, **kwargs)


def test_a_mark_at_a_random_place_is_seen():
    x, clean, y, groups = _marked(agree=0.9, bar=0.06)
    kept, removed = _check(x, x, y, groups, None), _check(clean, x, y, groups, None)
    # the local probe reads the mark wherever it is ...
    assert kept.nuisance_local_x > kept.chance + 0.3
    assert kept.retained_local > 0.8 and removed.retained_local < 0.3
    # ... and the CNN probe follows it in x (a linear one hardly does): psi(x) = x
    # is no better, psi(x) without the mark is, beyond the noise
    assert not_better(kept, "cnn")
    assert not not_better(removed, "cnn")
    cnn_gain = removed.balanced_accuracy_cnn - removed.balanced_accuracy_cnn_x
    linear_gain = removed.balanced_accuracy - removed.balanced_accuracy_x
    assert cnn_gain > 0.2 and cnn_gain > 2 * linear_gain


def test_a_small_corner_mark_is_seen_at_its_true_size():
    """A 2x2 mark in a corner of 64 px images (the old check pooled them to 16
    px, a quarter-pixel mark)."""
    x, clean, y, groups = _marked(n=400, side=64, mark="corner")
    kept, removed = _check(x, x, y, groups), _check(clean, x, y, groups)
    assert kept.retained_local > 0.8 and removed.retained_local < 0.3
    assert kept.nuisance_local_x > kept.chance + 0.3


def test_the_check_reads_the_held_out_images():
    """A mask that keeps the object on its own training images only (erased on
    the held-out ones): the check, scored on the held-out images, says psi(x)
    is worse than x; the same psi read on training images would pass."""
    x, clean, y, groups = _marked(mark="corner", agree=0.9)
    held = held_out_rows(y, groups, 0)
    good = _check(clean, x, y, groups)  # the mark removed everywhere: better than x
    assert not not_better(good, "linear") and not not_better(good, "cnn")
    erased = clean.copy()
    erased[:, :, 7:9, :] = 0.3  # the bar's rows, flat: the object gone
    only_training = np.where(held[:, None, None, None], erased, clean)
    check = _check(only_training, x, y, groups)
    assert not_better(check, "linear") and not_better(check, "cnn")
    assert check.balanced_accuracy < good.balanced_accuracy - 0.2
    assert check.n_images == held.sum()


def test_objects_erased_in_some_images_are_warned_about():
    x, clean, y, groups = _marked(n=400, bar=0.4)
    rng = np.random.RandomState(1)
    level = rng.rand(len(y)).astype(np.float32)
    clean = np.clip(clean + 0.4 * level[:, None, None, None], 0, 1)
    bright = level > np.quantile(level, 2 / 3)  # the mask erases the brightest third
    psi = np.where(bright[:, None, None, None], 0.0, clean).astype(np.float32)
    kept = np.where(bright, 0.0, 1.0)
    check = _check(psi, clean, y, groups, kept=kept)
    assert check.erased_share == pytest.approx(bright[held_out_rows(y, groups, 0)].mean())
    assert check.erased_brightness > check.other_brightness + 0.1
    assert check.worst_third == "brightest"
    said = removal_warnings(check, source="the groups given")
    assert any("keeps almost nothing" in s and "brightness" in s for s in said)
    assert any("On the brightest third" in s for s in said)
    whole = _check(clean, clean, y, groups, kept=np.ones(len(y)))
    assert whole.erased_share == 0.0
    assert not any("almost nothing" in s for s in removal_warnings(whole, source="g"))


def test_the_held_out_images_are_a_share_of_each_class_and_side_of_the_shortcut():
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1, 2], 200)
    groups = np.where(rng.rand(600) < 0.9, y, (y + 1) % 3)
    held = held_out_rows(y, groups, 0)
    for c in range(3):
        for agrees in (True, False):
            part = (y == c) & ((groups == c) == agrees)
            assert held[part].sum() == max(1, round(HOLDOUT * part.sum()))
    np.testing.assert_array_equal(held, held_out_rows(y, groups, 0))
    assert not np.array_equal(held, held_out_rows(y, groups, 1))


def test_a_fit_holds_the_checks_images_back_from_the_mask_network(nuisance_images, tiny,
                                                                  monkeypatch, fit_rows):
    """The mask network never reads a held-out image (the rows its batches and
    drawn pairs gather), and the check scores exactly those images."""
    from sklearn_cim._networks import MaskNet

    X, y, groups = nuisance_images
    row_of = {X[i].tobytes(): i for i in range(len(X))}  # every image is distinct
    read, checked = set(), []
    real_forward, real_check = MaskNet.forward, cim_module.removal_check

    def forward(self, x, *args, **kwargs):  # the images the mask network trains on
        if self.training:
            read.update(row_of[im.tobytes()] for im in x.detach().contiguous().numpy())
        return real_forward(self, x, *args, **kwargs)

    def check(psi, x, y_, g_, held_out, **kwargs):
        checked.append(np.asarray(held_out))
        return real_check(psi, x, y_, g_, held_out, **kwargs)

    monkeypatch.setattr(MaskNet, "forward", forward)
    monkeypatch.setattr(cim_module, "removal_check", check)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        cim = CIMTransformer(**tiny).fit(X, y, groups=groups)
    held = ~fit_rows(y, groups, tiny["random_state"])
    np.testing.assert_array_equal(cim.held_out_, held)
    assert held.any() and read == set(np.flatnonzero(~held).tolist())  # never a held-out row
    (scored,) = checked  # the check's rows are all the fit's rows here (48 < 2,048)
    np.testing.assert_array_equal(scored, held)
    assert cim.removal_check_.n_images == held.sum()
    # a warm fit of the same images holds back the same ones
    cim.set_params(warm_start=True, random_state=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        cim.fit(X, y, groups=groups)
    np.testing.assert_array_equal(cim.held_out_, held)
    # the paper's objective and partial_fit train on every image
    read.clear()
    CIMTransformer(**tiny).partial_fit(X, y, groups=groups)
    assert read == set(range(len(y)))


def test_a_fit_that_cannot_be_checked_says_so(tiny):
    """Too few images to hold any back, or a continuation of a mask that saw
    every image: the fit trains on every image and says it was not checked."""
    rng = np.random.RandomState(0)
    X = rng.rand(8, 3, 8, 8).astype(np.float32)
    y, groups = np.repeat([0, 1], 4), np.array([0, 0, 1, 1, 1, 1, 0, 0])
    with pytest.warns(RemovalWarning, match="did not run: no image could be held back"):
        cim = CIMTransformer(**tiny).fit(X, y, groups=groups)
    assert cim.removal_check_ is None and cim.held_out_ is None
    x, _, y, groups = _marked(n=60)
    streamed = CIMTransformer(**tiny).partial_fit(x, y, groups=groups)
    with pytest.warns(RemovalWarning, match="did not run: this fit continues a mask that has"):
        streamed.set_params(warm_start=True).fit(x, y, groups=groups)
    assert streamed.removal_check_ is None


def test_a_soft_mask_without_a_cut_has_no_erased_images(nuisance_images, tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        cim = _fit(nuisance_images, tiny, hard_mask=False, mask_threshold=None)
    assert np.isnan(cim.removal_check_.erased_share)  # it keeps every pixel, however dim
    cut = _fit(nuisance_images, tiny, hard_mask=False, mask_threshold=np.float32(0.5))
    assert 0 <= cut.removal_check_.erased_share <= 1
    assert type(cut.mask_threshold_) is float  # saved as JSON with the weights


def _fit(nuisance_images, tiny, **params):
    X, y, groups = nuisance_images
    return CIMTransformer(**{**tiny, **params}).fit(X, y, groups=groups)


def test_a_hard_mask_that_kept_every_pixel_says_nothing_was_removed(nuisance_images, tiny):
    """One epoch: every hard-mask value is still above the cut, psi(x) is x. The
    fit says that, not a share the probe may misread; a mask that cuts does not."""
    X, y, groups = nuisance_images
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cim = _fit(nuisance_images, tiny, mask_weight=0.0)
    said = [str(w.message) for w in caught if w.category is RemovalWarning]
    assert len(said) == 1 and "psi(x) is x, and nothing was removed" in said[0], said
    np.testing.assert_array_equal(cim.transform(X), X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cut = _fit(nuisance_images, tiny, max_epochs=10, mask_weight=3.0, lr=3e-2)
    assert 0 < (cut.masks(X) > 0).mean() < 1
    assert not any("nothing was removed" in str(w.message) for w in caught)


def test_a_fit_whose_psi_keeps_the_nuisance_warns(nuisance_images, tiny):
    # a soft mask without a penalty or cut: psi(x) is x, dimmed, nuisance and all
    with pytest.warns(RemovalWarning, match="not estimated to make a linear model") as record:
        cim = _fit(nuisance_images, tiny, mask_weight=0.0, mask_threshold=None,
                   hard_mask=False)
    assert all(w.filename == __file__ for w in record if w.category is RemovalWarning)
    check = cim.removal_check_
    assert not_better(check, "linear") and check.n_images > 0
    assert 0 < check.seconds


def test_a_nuisance_no_probe_can_see_is_said():
    """Groups no pixel shows (drawn at random): retained is undefined for both
    probes and the check says it cannot tell, instead of staying silent."""
    _, clean, y, _ = _marked(n=400)
    hidden = np.random.RandomState(1).randint(0, 3, len(y))
    check = _check(clean, clean, y, hidden)
    assert np.isnan(check.retained) and np.isnan(check.retained_local)
    said = removal_warnings(check, source="the groups given")
    assert any("cannot tell whether the nuisance was removed" in s for s in said)


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
    assert removal_score(pipe, metric="balanced_accuracy_cnn") == check.balanced_accuracy_cnn
    assert removal_score(pipe, metric="removed") == pytest.approx(1 - check.retained,
                                                                  nan_ok=True)
    with pytest.raises(ValueError, match="metric must be"):
        removal_score(pipe, metric="auc")
    with pytest.raises(ValueError, match="needs a fitted CIMTransformer"):
        removal_score(LogisticRegression())


def test_removal_score_ranks_a_search(nuisance_images, tiny):
    """GridSearchCV scored by the check: one split is enough (the scorer reads the
    check, not the validation images), and each score is that candidate's own
    check, as a fit with its parameters measures it."""
    X, y, groups = nuisance_images
    X = X.reshape(len(X), -1)
    pipe = Pipeline([("cim", CIMTransformer(image_shape=(3, 8, 8), **tiny)),
                     ("clf", LogisticRegression())])
    grid = {"cim__mask_weight": [0.0, 1.0]}
    search = GridSearchCV(pipe, grid, cv=[(np.arange(len(y)), np.arange(2))],
                          scoring=removal_score, refit=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        search.fit(X, y, cim__groups=groups)
        for i, params in enumerate(search.cv_results_["params"]):
            alone = clone(pipe).set_params(**params).fit(X, y, cim__groups=groups)
            assert (search.cv_results_["split0_test_score"][i]
                    == alone.named_steps["cim"].removal_check_.balanced_accuracy)


def test_check_survives_save_and_load(nuisance_images, tiny, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        cim = _fit(nuisance_images, tiny)
    path = tmp_path / "cim.pt"
    cim.save_params(path)
    fresh = CIMTransformer(**cim.get_params()).load_params(path)
    assert fresh.removal_check_.keys() == cim.removal_check_.keys()
    for key, value in cim.removal_check_.items():
        if isinstance(value, str):
            assert fresh.removal_check_[key] == value
        else:
            assert fresh.removal_check_[key] == pytest.approx(value, nan_ok=True)


@pytest.mark.filterwarnings("ignore:infer_groups found a single group:RuntimeWarning")
def test_untrusted_inferred_groups_fall_back_to_the_identity(nuisance_images, tiny,
                                                            monkeypatch):
    X, y, groups = nuisance_images
    monkeypatch.setattr(cim_module, "worse_than_x", lambda check: True)
    with pytest.warns(RemovalWarning, match="Falling back"):
        # a soft mask (about 0.88 after one epoch): psi(x) differs from x unless it falls back
        cim = CIMTransformer(**tiny, infer_groups=True, hard_mask=False).fit(X, y)
    assert cim.fallback_
    np.testing.assert_array_equal(cim.transform(X), X)
    assert np.all(cim.masks(X) == 1)
    cim.fallback_ = False
    assert not np.allclose(cim.transform(X), X)
    # groups given never fall back
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


def test_a_check_of_an_earlier_version_reads_nan_for_the_figures_it_lacks(nuisance_images,
                                                                          tiny):
    import pickle

    from sklearn.utils import Bunch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RemovalWarning)
        cim = _fit(nuisance_images, tiny)
    cim.removal_check_ = Bunch(retained=0.1, nuisance_psi=0.4, nuisance_x=0.9, chance=0.5,
                               balanced_accuracy=0.8, balanced_accuracy_x=0.7,
                               balanced_accuracy_se=0.05, n_images=40)  # as 0.1 wrote it
    del cim.held_out_
    loaded = pickle.loads(pickle.dumps(cim))
    assert removal_score(loaded) == 0.8
    assert np.isnan(removal_score(loaded, metric="balanced_accuracy_cnn"))
    assert loaded.held_out_ is None
