"""Group-aware CIM: groups in fit, metadata routing, the objective's parts,
inferred groups and bad input."""

import warnings

import numpy as np
import pytest
import sklearn
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import Callback

from sklearn_cim import CIMTransformer, RemovalWarning
from sklearn_cim._cim import AUTO_INVARIANCE_WEIGHT, AUTO_MASK_WEIGHT
from sklearn_cim._groups import PairTable, cell_weights, check_groups, infer_groups
from sklearn_cim._networks import HARD_MASK_CUT


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def test_groups_change_the_training_and_none_trains_the_paper_objective(nuisance_images, tiny):
    X, y, groups = nuisance_images
    tiny.update(max_epochs=2)
    paper = CIMTransformer(**tiny).fit(X, y)
    assert not paper.group_aware_ and paper.groups_ is None
    assert paper.net_.objective.mask_weight == 0.0
    assert paper.mask_threshold_ is None and not paper.hard_mask_
    assert (paper.masks(X) > 0).all()  # no cut without groups
    # without groups, the group-aware parameters change nothing
    same = CIMTransformer(**tiny, group_weighting="none", group_triplets=False,
                          mask_weight=0.0).fit(X, y)
    np.testing.assert_array_equal(paper.transform(X), same.transform(X))
    assert not paper.net_.objective.hard_mask and paper.net_.objective.invariance_weight == 0
    aware = CIMTransformer(**tiny).fit(X, y, groups=groups)
    assert aware.group_aware_
    objective = aware.net_.objective  # the "auto" settings with groups
    assert objective.mask_weight == AUTO_MASK_WEIGHT == 0.3
    assert objective.invariance_weight == AUTO_INVARIANCE_WEIGHT == 3.0
    assert objective.hard_mask and aware.net_.module_.hard
    assert not np.allclose(paper.transform(X), aware.transform(X))
    assert {"train_mask", "train_invariance"} <= set(aware.history_[-1])


def test_cell_weights_give_every_cell_the_same_total():
    # classes and groups of 8 samples, 2 groups: cells (class * 2 + group)
    classes = torch.tensor([0, 0, 0, 0, 0, 1, 1, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 0, 0, 0])
    table = cell_weights(classes, groups, 2)
    # by hand: cell counts 5, 1, 2 (cell 3 absent); 3 cells present; weight
    # n / (present * count) = 8/15, 8/3, 4/3
    torch.testing.assert_close(table[:3], torch.tensor([8 / 15, 8 / 3, 4 / 3]))
    w = table[classes * 2 + groups]
    totals = torch.zeros(4).index_add_(0, classes * 2 + groups, w)
    torch.testing.assert_close(totals[:3], torch.full((3,), 8 / 3))
    assert torch.isclose(w.mean(), torch.tensor(1.0))


class _BatchGroups(Callback):
    """Records the (class, group) cell of every training row drawn, and whether
    the head's cross-entropy was weighted."""

    def __init__(self):
        self.cells, self.weighted = [], []

    def on_batch_begin(self, net, batch=None, training=None, **kwargs):
        if training:
            targets = batch[1]
            self.cells.append((targets.classes * 2 + targets.groups).cpu().numpy())
            self.weighted.append(net.cell_weights_ is not None)


@pytest.mark.parametrize("weighting", ["resampled", "balanced"])
def test_resampled_draws_every_cell_as_often(nuisance_images, tiny, fit_rows, weighting):
    """group_weighting="resampled" draws the training rows of each (class,
    group) cell equally often (with replacement; the head's CE unweighted);
    "balanced" draws each row once per epoch and weights the CE instead."""
    X, y, groups = nuisance_images
    seen = _BatchGroups()
    CIMTransformer(**{**tiny, "max_epochs": 40}, group_weighting=weighting,
                   triplet_weight=0.0, callbacks=[seen]).fit(X, y, groups=groups)
    cells = np.concatenate(seen.cells)
    drawn = np.bincount(cells, minlength=4) / len(cells)
    rows = fit_rows(y, groups, tiny["random_state"])
    share = np.bincount(y[rows] * 2 + groups[rows], minlength=4) / rows.sum()
    assert share.min() < 0.15  # the disagreeing cells are small
    if weighting == "resampled":
        np.testing.assert_allclose(drawn, 0.25, atol=0.04)
        assert not any(seen.weighted)  # the CE is not weighted as well
    else:
        np.testing.assert_allclose(drawn, share, atol=1e-9)
        assert all(seen.weighted)


def test_balanced_cross_entropy_uses_the_cell_weights(nuisance_images, tiny):
    X, y, groups = nuisance_images
    cim = CIMTransformer(**tiny, triplet_weight=0.0).fit(X, y, groups=groups)
    net = cim.net_
    y_t, g_t = torch.as_tensor(y), torch.as_tensor(groups)
    net.cell_weights_, net.n_cell_groups_ = cell_weights(y_t, g_t, 2), 2
    logits = torch.randn(6, 2)
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    batch_groups = torch.tensor([1, 1, 0, 0, 0, 0])
    per = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    weights = net.cell_weights_[labels * 2 + batch_groups]
    torch.testing.assert_close(net.cross_entropy(logits, labels, batch_groups),
                               (per * weights).mean())
    assert not torch.allclose(net.cross_entropy(logits, labels, batch_groups),
                              net.cross_entropy(logits, labels))


def test_pair_table_draws_bias_contrastive_pairs():
    rng = np.random.RandomState(0)
    y = torch.as_tensor(rng.randint(0, 3, 300))
    g = torch.as_tensor(rng.randint(0, 4, 300))
    g[y == 2] = 3  # class 2 only in group 3: no other-group positive for it
    table = PairTable(y, g)
    gen = torch.Generator().manual_seed(0)
    pos, pos_ok = table.positives(y, g, gen)
    neg, neg_ok = table.negatives(y, g, gen)
    assert torch.equal(pos_ok, y != 2)
    assert (y[pos][pos_ok] == y[pos_ok]).all() and (g[pos][pos_ok] != g[pos_ok]).all()
    assert (g[neg][neg_ok] == g[neg_ok]).all() and (y[neg][neg_ok] != y[neg_ok]).all()
    # uniform over the pool: every candidate of one anchor's pool is drawn
    anchor_y, anchor_g = torch.zeros(4000, dtype=torch.long), torch.zeros(4000, dtype=torch.long)
    drawn, _ = table.positives(anchor_y, anchor_g, gen)
    pool = torch.nonzero((y == 0) & (g != 0)).reshape(-1)
    assert set(drawn.tolist()) == set(pool.tolist())
    counts = torch.bincount(drawn, minlength=300)[pool].float()
    assert counts.std() / counts.mean() < 0.3


def test_group_triplets_contrast_across_groups(nuisance_images, tiny, monkeypatch):
    X, y, groups = nuisance_images
    seen, tables = [], []
    original, original_init = PairTable.positives, PairTable.__init__

    def spy(self, yy, gg, generator):
        idx, ok = original(self, yy, gg, generator)
        seen.append((yy.clone(), gg.clone(), idx.clone(), ok.clone()))
        return idx, ok

    def init(self, yy, gg):  # the training set's labels: drawn indices are its rows
        tables.append((yy.clone(), gg.clone()))
        original_init(self, yy, gg)

    monkeypatch.setattr(PairTable, "positives", spy)
    monkeypatch.setattr(PairTable, "__init__", init)
    cim = CIMTransformer(**tiny).fit(X, y, groups=groups)
    assert seen
    (table_y, table_g), = tables
    n_train = len(y) - cim.removal_check_.n_images  # the check's images are held back
    assert len(table_y) == n_train
    for yy, gg, idx, ok in seen:
        assert ok.any()
        assert (table_g[idx][ok] != gg[ok]).all()
        assert (table_y[idx][ok] == yy[ok]).all()
    seen.clear()
    CIMTransformer(**tiny, group_triplets=False, invariance_weight=0.0).fit(X, y, groups=groups)
    assert not seen
    # the invariance term draws them too: one draw per step, shared by both terms
    triplets_only = len(list(range(0, n_train, tiny["batch_size"])))
    CIMTransformer(**tiny, group_triplets=False).fit(X, y, groups=groups)
    assert len(seen) == triplets_only
    seen.clear()
    CIMTransformer(**tiny).fit(X, y, groups=groups)
    assert len(seen) == triplets_only


def test_mask_threshold_zeroes_dimmed_pixels(nuisance_images, tiny):
    X, y, groups = nuisance_images
    def fit(threshold):  # the cut is transform's: training is the same for each
        return CIMTransformer(**tiny, hard_mask=False, mask_threshold=threshold).fit(
            X, y, groups=groups)

    cim = fit(None)
    soft = cim.masks(X)
    assert 0 < soft.min() and len(np.unique(soft)) > 2
    np.testing.assert_array_equal(fit("auto").masks(X), soft)  # soft masks: no cut
    threshold = float(np.median(soft))
    cim.set_params(mask_threshold=threshold)  # after fit: the fit's decision stands
    np.testing.assert_array_equal(cim.masks(X), soft)
    cim = fit(threshold)
    assert cim.mask_threshold_ == threshold
    hard = cim.masks(X)
    np.testing.assert_array_equal(hard, np.where(soft >= threshold, soft, 0))
    assert (hard == 0).mean() > 0.4
    np.testing.assert_allclose(cim.transform(X), hard * X, atol=1e-6)


def test_hard_masks_keep_or_drop_whole_pixels_in_training_and_transform(nuisance_images, tiny):
    X, y, groups = nuisance_images
    cim = CIMTransformer(**tiny).fit(X, y, groups=groups)  # hard_mask="auto": hard
    assert cim.hard_mask_
    with torch.no_grad():
        soft = cim.net_.module_.mask_net(torch.as_tensor(X)).numpy()
    hard = cim.masks(X)  # the cut of a hard mask: the net's output >= 0.5
    np.testing.assert_array_equal(hard, (soft >= HARD_MASK_CUT).astype(np.float32))
    np.testing.assert_allclose(cim.transform(X), hard * X, atol=1e-6)
    cim.set_params(hard_mask=False)  # after fit: the fit's decision stands
    np.testing.assert_array_equal(cim.masks(X), hard)
    # in training the head sees the cut images, and the gradient reaches the mask net
    module = CIMTransformer(**tiny).fit(X, y, groups=groups).net_.module_
    x = torch.as_tensor(X[:4])
    mask, psi, _ = module(x)
    torch.testing.assert_close(psi, (mask >= HARD_MASK_CUT).float() * x)
    psi.sum().backward()
    assert module.mask_net.out.weight.grad.abs().sum() > 0


def test_inferred_groups_are_kept_and_follow_the_simple_feature(tiny):
    rng = np.random.RandomState(0)
    n = 120
    y = np.repeat([0, 1], n // 2)
    X = rng.rand(n, 3, 8, 8).astype(np.float32) * 0.2
    X[:, 1] += 0.6 * y[:, None, None]  # a colour the weak proxy reads
    X[:5, 1] += 0.6  # 5 class-0 images with class 1's colour
    colour = (X[:, 1].mean(axis=(1, 2)) > 0.4).astype(int)
    for strategy in (True, "linear"):
        cim = CIMTransformer(**tiny, infer_groups=strategy).fit(X, y)
        assert cim.group_aware_ and cim.groups_.shape == (n,)
        assert np.mean(cim.groups_ == colour) > 0.95
    errors = CIMTransformer(**tiny, infer_groups="errors").fit(X, y)
    np.testing.assert_array_equal(errors.groups_, (cim.groups_ == y).astype(int))


def _shape_and_patch(n=300, seed=0):
    """Class: a grey bar at the top or the bottom; nuisance: a small coloured
    patch at a random position on the left, red or green, agreeing with the
    class for 90% of the images."""
    rng = np.random.RandomState(seed)
    y = rng.randint(0, 2, n)
    patch = np.where(rng.rand(n) < 0.9, y, 1 - y)
    X = rng.rand(n, 3, 12, 12).astype(np.float32) * 0.1
    X[y == 0, :, 1:3, 3:11] += 0.6
    X[y == 1, :, 9:11, 3:11] += 0.6
    rows = rng.randint(4, 7, n)
    for i in range(n):
        X[i, patch[i], rows[i]:rows[i] + 2, 0:2] = 1.0
    return X, y, patch


def test_local_proxy_follows_a_small_patch_where_the_linear_one_follows_the_object():
    X, y, patch = _shape_and_patch()
    conflicting = patch != y
    local = infer_groups(X, y, "local", 0)
    linear = infer_groups(X, y, "linear", 0)
    # on the images where the patch disagrees with the class, the local proxy
    # predicts the patch's class and the linear one the object's
    assert np.mean(local[conflicting] == patch[conflicting]) > 0.8
    assert np.mean(linear[conflicting] == patch[conflicting]) < 0.5
    assert np.mean(local == patch) > 0.9


def test_pipeline_routes_groups_to_the_cim_only(nuisance_images, tiny, routing):
    X, y, groups = nuisance_images

    class Recorder(ClassifierMixin, BaseEstimator):
        def fit(self, X, y, groups=None):
            self.got_groups_ = groups
            self.classes_ = np.unique(y)
            return self

        def predict(self, X):
            return np.full(len(X), self.classes_[0])

    pipe = Pipeline([("cim", CIMTransformer(**tiny).set_fit_request(groups=True)),
                     ("clf", Recorder().set_fit_request(groups=False))])
    pipe.fit(X, y, groups=groups)
    assert pipe.named_steps["cim"].group_aware_
    assert pipe.named_steps["clf"].got_groups_ is None


def test_grid_search_routes_groups_to_cv_and_cim(nuisance_images, tiny, routing):
    """Without set_fit_request, fit asks for groups: a search routes them to the
    CIM (and to a splitter that asks); an alias gives the splitter and the CIM
    groups of their own (sites to split by, the nuisance to remove)."""
    X, y, groups = nuisance_images
    X = X.reshape(len(X), -1)
    pipe = Pipeline([("cim", CIMTransformer(**tiny, image_shape=(3, 8, 8))),
                     ("clf", LogisticRegression(max_iter=200))])
    search = GridSearchCV(pipe, {"cim__mask_weight": [0.0, 1.0]}, cv=2, error_score="raise")
    search.fit(X, y, groups=groups)
    assert search.best_estimator_.named_steps["cim"].group_aware_
    sites = (np.arange(len(y)) // 2) % 4  # every site holds images of both nuisances
    pipe.named_steps["cim"].set_fit_request(groups="nuisance")
    search = GridSearchCV(pipe, {"cim__mask_weight": [0.0, 1.0]}, cv=GroupKFold(2),
                          error_score="raise")
    search.fit(X, y, groups=sites, nuisance=groups)
    cim = search.best_estimator_.named_steps["cim"]
    assert cim.group_aware_ and list(cim.group_labels_) == [0, 1]  # the nuisance, not sites
    assert np.all(np.isfinite(search.cv_results_["mean_test_score"]))


def test_pipeline_without_routing_takes_step_parameters(nuisance_images, tiny):
    X, y, groups = nuisance_images
    pipe = Pipeline([("cim", CIMTransformer(**tiny, image_shape=(3, 8, 8))),
                     ("clf", LogisticRegression())])
    pipe.fit(X.reshape(len(X), -1), y, cim__groups=groups)
    assert pipe.named_steps["cim"].group_aware_


def test_partial_fit_takes_groups(nuisance_images, tiny):
    X, y, groups = nuisance_images
    cim = CIMTransformer(**tiny).partial_fit(X, y, groups=groups)
    assert cim.group_aware_ and len(cim.history_) == 1


def test_partial_fit_with_groups_trains_what_fit_with_groups_trains(nuisance_images, tiny,
                                                                    fit_rows):
    """Each partial_fit with groups is one epoch of the group-aware objective: two
    calls give the model of a two-epoch fit with groups, bit for bit (on the
    images that fit trains the mask on: it holds the removal check's back), and
    not the paper's objective that partial_fit without groups trains."""
    X, y, groups = nuisance_images
    fitted = CIMTransformer(**dict(tiny, max_epochs=2)).fit(X, y, groups=groups)
    rows = fit_rows(y, groups, tiny["random_state"])
    assert rows.sum() == len(y) - fitted.removal_check_.n_images
    X_all, y_all, groups_all = X, y, groups
    X, y, groups = X[rows], y[rows], groups[rows]
    partial = CIMTransformer(**tiny).partial_fit(X, y, groups=groups)
    assert partial.group_aware_ and partial.hard_mask_
    assert {"train_mask", "train_invariance"} <= set(partial.history_[-1])
    assert partial.history_[0, "train_loss"] == fitted.history_[0, "train_loss"]
    partial.partial_fit(X, y, groups=groups)
    assert partial.history_[:, "train_loss"] == fitted.history_[:, "train_loss"]
    assert partial.history_[:, "train_invariance"] == fitted.history_[:, "train_invariance"]
    np.testing.assert_array_equal(partial.transform(X), fitted.transform(X))
    # with the map term: each call trains the same probe on the same images
    fitted = CIMTransformer(**dict(tiny, max_epochs=2), map_weight=3.0).fit(
        X_all, y_all, groups=groups_all)
    partial = CIMTransformer(**tiny, map_weight=3.0)
    for _ in range(2):
        partial.partial_fit(X, y, groups=groups)
    assert partial.history_[:, "train_loss"] == fitted.history_[:, "train_loss"]
    assert "train_nuisance_map" in partial.history_[-1]
    np.testing.assert_array_equal(partial.transform(X), fitted.transform(X))
    paper = CIMTransformer(**tiny).partial_fit(X, y)
    assert not paper.group_aware_ and "train_invariance" not in paper.history_[-1]
    assert paper.history_[0, "train_loss"] != partial.history_[0, "train_loss"]


def test_string_groups_and_codes():
    labels, codes = check_groups(np.array(["red", "blue", "red", "green"]), 4)
    assert codes.tolist() == [2, 0, 2, 1] and labels == ["blue", "green", "red"]
    assert check_groups(["a", 1, "a", 1], 4)[1].tolist() in ([0, 1, 0, 1], [1, 0, 1, 0])


@pytest.mark.parametrize("groups, match", [
    (np.zeros(47), "47 entries but X has 48"),
    ([0, None] * 24, "missing values"),
    (np.r_[np.nan, np.ones(47)], "missing values"),
    (np.ones(48), "single group"),
    (np.zeros((48, 2)), "1-D"),
])
def test_bad_groups_raise_with_a_fix(nuisance_images, tiny, groups, match):
    X, y, _ = nuisance_images
    with pytest.raises(ValueError, match=match):
        CIMTransformer(**tiny).fit(X, y, groups=groups)


def test_infer_groups_needs_two_images_per_class(tiny):
    X = np.random.RandomState(0).rand(5, 1, 8, 8).astype(np.float32)
    y = np.array([0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match="at least 2 training images of every class"):
        CIMTransformer(**{**tiny, "triplet_weight": 0.0}, infer_groups=True).fit(X, y)


def test_routed_groups_reach_the_cim_unless_it_declines(nuisance_images, tiny, routing):
    """Under routing, Pipeline.fit(X, y, groups=g) trains the group-aware CIM
    without a set_fit_request call (it raised UnsetMetadataPassedError, whose
    hint, set_transform_request, does not exist on a CIM); declining trains
    the paper's objective; the step-parameter form is refused by Pipeline."""
    X, y, groups = nuisance_images
    X = X.reshape(len(X), -1)

    def pipe():
        return Pipeline([("cim", CIMTransformer(**tiny, image_shape=(3, 8, 8))),
                         ("clf", LogisticRegression())])

    assert pipe().fit(X, y, groups=groups).named_steps["cim"].group_aware_
    declined = pipe()
    declined.named_steps["cim"].set_fit_request(groups=False)
    with pytest.raises(Exception, match="not routed to any object"):
        declined.fit(X, y, groups=groups)  # nothing asks for them: scikit-learn says so
    with pytest.raises(TypeError, match="cim__groups"):
        pipe().fit(X, y, cim__groups=groups)


@pytest.mark.parametrize("params, error", [
    (dict(group_weighting="dro"), ValueError),
    (dict(infer_groups="kmeans"), ValueError),
    (dict(group_triplets="yes"), TypeError),
    (dict(mask_weight="big"), TypeError),
    (dict(mask_threshold=1.5), ValueError),
])
def test_bad_group_parameters(nuisance_images, tiny, params, error):
    X, y, groups = nuisance_images
    with pytest.raises(error):
        CIMTransformer(**tiny, **params).fit(X, y, groups=groups)


def test_removed_adversary_weight_is_refused_and_old_objectives_load():
    with pytest.raises(TypeError, match="adversary_weight"):
        CIMTransformer(adversary_weight=1.0)
    import pickle

    from sklearn_cim._objective import CIMObjective
    old = CIMObjective.__new__(CIMObjective)
    state = dict(classifier_weight=1.0, triplet_weight=1.0, margin=0.1, mining="random",
                 pair_transform=False, mask_weight=0.0, distance="l2", pretrained=True,
                 head="cnn", head_beta=1e-3, group_weighting="balanced", group_triplets=True,
                 adversary_weight=1.0)  # written before invariance and hard masks, with one
    old.__setstate__(state)
    assert old.invariance_weight == 0.0 and old.hard_mask is False
    assert not hasattr(old, "adversary_weight")
    assert pickle.loads(pickle.dumps(old)) == old


def test_without_routing_groups_reach_the_cim_as_a_step_parameter(nuisance_images, tiny):
    X, y, groups = nuisance_images
    flat = X.reshape(len(X), -1)
    pipe = Pipeline([("cim", CIMTransformer(**tiny, image_shape=(3, 8, 8))),
                     ("clf", LogisticRegression())])
    # scikit-learn's own error names the fix (stepname__parameter)
    with pytest.raises(ValueError, match="stepname__parameter"):
        pipe.fit(flat, y, groups=groups)
    # a search slices step parameters per fold
    search = GridSearchCV(pipe, {"cim__margin": [0.1]}, cv=2).fit(flat, y, cim__groups=groups)
    assert search.best_estimator_.named_steps["cim"].group_aware_


def test_auto_threshold_survives_save_and_load(nuisance_images, tiny, tmp_path):
    # a strong sparsity pressure pushes masks under the auto threshold (0.2)
    X, y, groups = nuisance_images
    # three epochs: the head learns first (the gate), then the mask cuts
    cim = CIMTransformer(**{**tiny, "max_epochs": 3}, mask_weight=5.0, lr=0.1).fit(
        X, y, groups=groups)
    assert (cim.masks(X) == 0).any()  # the cut applies
    path = tmp_path / "cim.pt"
    cim.save_params(path)
    loaded = CIMTransformer(**tiny, mask_weight=5.0, lr=0.1).load_params(path)
    assert loaded.group_aware_
    np.testing.assert_array_equal(loaded.transform(X), cim.transform(X))


def test_training_set_is_not_kept_after_fit(nuisance_images, tiny):
    X, y, groups = nuisance_images
    cim = CIMTransformer(**tiny).fit(X, y, groups=groups)
    net = cim.net_
    for name in ("training_set_", "pair_table_", "cell_weights_", "loss_generator_",
                 "step_modules_"):
        assert not hasattr(net, name), name


def test_warm_calls_encode_groups_as_the_first_fit(nuisance_images, tiny):
    X, y, groups = nuisance_images
    names = np.where(groups == groups.max(), "red", "blue")
    cim = CIMTransformer(**tiny)
    cim.partial_fit(X, y, groups=names)
    assert cim.group_labels_.tolist() == ["blue", "red"]
    # a later batch may hold one group; it keeps its first code
    red = names == "red"
    cim.partial_fit(X[red], y[red], groups=names[red])
    assert cim.group_labels_.tolist() == ["blue", "red"] and len(cim.history_) == 2
    labels, codes = check_groups(["red", "red"], 2, labels=["blue", "red"], allow_single=True)
    assert codes.tolist() == [1, 1] and labels == ["blue", "red"]
    # a new label gets the next code
    cim.partial_fit(X[:4], y[:4], groups=["green", "blue", "green", "blue"])
    assert cim.group_labels_.tolist() == ["blue", "red", "green"]


def test_a_mask_that_cuts_every_pixel_warns(nuisance_images, tiny, monkeypatch):
    # a sparsity pressure that wins outright: psi(x) is all zero (ungated, as a
    # model fitted before the gate and continued trains)
    import sklearn_cim._cim
    monkeypatch.setattr(sklearn_cim._cim, "GATE_MASK", False)
    X, y, groups = nuisance_images
    params = dict(tiny, max_epochs=8, mask_weight=50.0, lr=0.1)
    with pytest.warns(ConvergenceWarning, match="mask keeps 0.0% of the pixels"):
        cim = CIMTransformer(**params).fit(X, y, groups=groups)
    assert not cim.transform(X).any()  # the warning tells the truth
    # a working fit stays quiet
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        CIMTransformer(**tiny).fit(X, y, groups=groups)


def test_the_collapse_check_neither_undoes_a_fit_nor_misreads_its_input(nuisance_images, tiny):
    """The check runs on the validated training rows (no feature-name warning
    for a DataFrame), after the fitted state is set (a warning filtered into an
    error leaves the finished fit in place), and not after partial_fit."""
    pd = pytest.importorskip("pandas")
    X, y, groups = nuisance_images
    frame = pd.DataFrame(X.reshape(len(X), -1)).add_prefix("px")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", RemovalWarning)  # two steps keep the nuisance
        CIMTransformer(**tiny, image_shape=(3, 8, 8)).fit(frame, y, groups=groups)
    # a cut no sigmoid mask reaches: nothing is kept, whatever the training
    cim = CIMTransformer(**tiny, hard_mask=False, mask_threshold=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        with pytest.raises(ConvergenceWarning, match="keeps 0.0%"):
            cim.fit(X, y, groups=groups)
    check_is_fitted(cim)  # the finished fit is kept, not rolled back
    assert len(cim.history_) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        cim.partial_fit(X, y, groups=groups)


def test_group_mean_gap_by_hand():
    from sklearn_cim._objective import group_mean_gap
    diff = torch.tensor([[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [2.0, 2.0], [5.0, 5.0],
                         [7.0, 7.0]])
    groups = torch.tensor([0, 0, 1, 1, 1, 2])
    valid = torch.tensor([True, True, True, True, False, True])
    half = torch.tensor([True, False, True, False, True, True])
    # group 0: A mean (1, 0), B mean (3, 2) -> 3; share 2/5
    # group 1: A mean (0, 4) (row 4 is not valid), B mean (2, 2) -> 8; share 2/5
    # group 2: only in A -> 0
    expected = 2 / 5 * 3 + 2 / 5 * 8
    assert float(group_mean_gap(diff, groups, valid, half)) == pytest.approx(expected)
    # no group gap when, within each group, both halves agree on a zero mean
    same = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [2.0, 0.0], [-2.0, 0.0]])
    assert float(group_mean_gap(same, torch.tensor([0, 0, 0, 0]),
                                torch.ones(4, dtype=torch.bool),
                                torch.tensor([True, True, False, False]))) == 0.0


def test_invariance_weight_enters_the_loss(nuisance_images, tiny, gated_mean):
    X, y, groups = nuisance_images
    without = CIMTransformer(**tiny, invariance_weight=0.0).fit(X, y, groups=groups)
    assert "train_invariance" not in without.history_[-1]
    cim = CIMTransformer(**{**tiny, "max_epochs": 3}, invariance_weight=7.0).fit(
        X, y, groups=groups)
    net = cim.net_
    assert net.objective.invariance_weight == 7.0
    first = [b["train_mask_gate"] for b in cim.history_[0, "batches"]]
    assert min(first) < 0.9 and cim.history_[-1]["train_invariance"] > 0
    # the sparsity term is weighted by each batch's gate (head_gate); the
    # invariance term is not, also while the head is still learning
    for epoch in (0, -1):
        h = cim.history_[epoch]
        expected = (h["train_ce"] + h["train_triplet"] + 7.0 * h["train_invariance"]
                    + 0.3 * gated_mean(cim.history_, epoch, "mask"))
        assert h["train_loss"] == pytest.approx(expected, rel=1e-4)


def test_combination_ids_are_refused_with_the_exact_fix(tiny):
    """(class, attribute) ids never vary within a class: no image shares an
    anchor's group but not its class, so the bias-contrastive triplet term would
    be 0 throughout (it was, silently, with the README's groups_train)."""
    from sklearn_cim.datasets import make_colored_digits
    d = make_colored_digits(image_size=8, test_size=0.8, random_state=0)
    X, y = d.X_train, d.y_train
    with pytest.raises(ValueError, match=r"combination ids .* pass groups % 10 "
                                         r"\(make_colored_digits .*nuisance_train\)"):
        CIMTransformer(**tiny).fit(X, y, groups=d.groups_train)
    waterbirds_style = 2 * np.searchsorted(np.unique(y), y) + (d.nuisance_train > 4)
    with pytest.raises(ValueError, match="pass groups % 2"):
        CIMTransformer(**tiny).fit(X, y, groups=waterbirds_style)
    with pytest.raises(ValueError, match="pass the attribute itself"):
        CIMTransformer(**tiny).fit(X, y, groups=[f"{c}-site" for c in y])
    cim = CIMTransformer(**tiny).fit(X, y, groups=d.nuisance_train)
    assert cim.history_[-1]["train_triplet"] > 0  # the term is in play
