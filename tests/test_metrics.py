"""sklearn_cim.metrics: group accuracies and the worst-group scorer."""

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_cim.metrics import group_accuracies, make_worst_group_scorer, worst_group_accuracy

# Six samples by hand: group 0 = samples 0-2 (2 of 3 right), group 1 = 3-5 (3 of 3 right).
Y_TRUE = [0, 0, 1, 1, 1, 0]
Y_PRED = [0, 1, 1, 1, 1, 0]
GROUPS = [0, 0, 0, 1, 1, 1]


def test_group_accuracies_by_hand():
    accs = group_accuracies(Y_TRUE, Y_PRED, GROUPS)
    assert accs == pytest.approx({0: 2 / 3, 1: 1.0})
    assert all(type(g) is int and type(a) is float for g, a in accs.items())
    assert worst_group_accuracy(Y_TRUE, Y_PRED, GROUPS) == pytest.approx(2 / 3)
    # Groups are sorted, whatever order they come in.
    assert list(group_accuracies(Y_TRUE, Y_PRED, [2, 2, 0, 1, 1, 0])) == [0, 1, 2]
    assert group_accuracies(Y_TRUE, Y_PRED, [2, 2, 0, 1, 1, 0]) == pytest.approx(
        {0: 1.0, 1: 1.0, 2: 0.5})


def test_string_labels_and_groups_of_any_type():
    names = np.array(["cat", "dog"])
    accs = group_accuracies(names[Y_TRUE], names[Y_PRED], ["w", "w", "w", "l", "l", "l"])
    assert accs == pytest.approx({"l": 1.0, "w": 2 / 3})
    pairs = [(0, "a"), (0, "a"), (1, "b"), (1, "b"), (0, "b"), (0, "b")]
    assert group_accuracies(Y_TRUE, Y_PRED, pairs) == pytest.approx(
        {(0, "a"): 0.5, (0, "b"): 1.0, (1, "b"): 1.0})
    rows = np.array([[0, 1], [0, 1], [0, 1], [1, 0], [1, 0], [1, 0]])  # 2-D -> tuples
    assert group_accuracies(Y_TRUE, Y_PRED, rows) == pytest.approx({(0, 1): 2 / 3,
                                                                    (1, 0): 1.0})
    mixed = [None, None, "x", "x", 3, 3]  # not comparable with each other
    assert group_accuracies(Y_TRUE, Y_PRED, mixed) == pytest.approx(
        {None: 0.5, "x": 1.0, 3: 1.0})
    assert worst_group_accuracy(Y_TRUE, Y_PRED, mixed) == pytest.approx(0.5)


def test_errors():
    with pytest.raises(ValueError, match="empty"):
        group_accuracies([], [], [])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        worst_group_accuracy(Y_TRUE, Y_PRED[:5], GROUPS)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        worst_group_accuracy(Y_TRUE, Y_PRED, GROUPS[:4])
    with pytest.raises(ValueError, match="Mix of label input types"):
        worst_group_accuracy(["a"] * 6, Y_PRED, GROUPS)


def _hand_worst_group(y, pred, groups):
    return min(np.mean(pred[groups == g] == y[groups == g]) for g in np.unique(groups))


def test_scorer_in_grid_search_matches_hand_computation():
    rng = np.random.RandomState(0)
    n = 120
    y = rng.randint(0, 2, n)
    nuisance = np.where(rng.rand(n) < 0.8, y, 1 - y)  # agrees with y for most samples
    groups = y * 2 + nuisance
    X = np.c_[y + rng.normal(0, 1.5, n), nuisance + rng.normal(0, 0.3, n)]
    cv = KFold(3, shuffle=True, random_state=0)
    grid = {"C": [0.01, 1.0]}
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(LogisticRegression(), grid, cv=cv,
                              scoring=make_worst_group_scorer()).fit(X, y, groups=groups)
    below_accuracy = False
    for i, params in enumerate(search.cv_results_["params"]):
        for k, (train, test) in enumerate(cv.split(X)):
            model = clone(LogisticRegression()).set_params(**params).fit(X[train], y[train])
            pred = model.predict(X[test])
            expected = _hand_worst_group(y[test], pred, groups[test])
            assert search.cv_results_[f"split{k}_test_score"][i] == pytest.approx(expected)
            below_accuracy |= expected < np.mean(pred == y[test]) - 0.05
    assert below_accuracy  # the scores are not plain accuracy


def test_scorer_needs_metadata_routing():
    with sklearn.config_context(enable_metadata_routing=False):
        with pytest.raises(RuntimeError, match=r"set_config\(enable_metadata_routing=True\)"):
            make_worst_group_scorer()
    X, y = np.arange(12.0).reshape(6, 2), np.array(Y_TRUE)
    model = LogisticRegression().fit(X, y)
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_worst_group_scorer()
        assert scorer(model, X, y, groups=np.array(GROUPS)) == pytest.approx(
            _hand_worst_group(y, model.predict(X), np.array(GROUPS)))
        with pytest.raises(ValueError, match="received no groups.*groups=groups"):
            scorer(model, X, y)
