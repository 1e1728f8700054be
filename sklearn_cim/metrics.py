"""Group-wise accuracy: per-group, worst-group, a worst-group scorer, and the
removal check as a scorer."""

import numpy as np
from sklearn import get_config
from sklearn.metrics import accuracy_score, make_scorer
from sklearn.utils import check_consistent_length, column_or_1d

from ._groups import encode_groups

__all__ = ["group_accuracies", "worst_group_accuracy", "make_worst_group_scorer",
           "removal_score"]


def _as_groups(groups):
    """1-D array of group labels; rows of a 2-D input become tuples."""
    arr = np.asarray(groups)
    if arr.ndim == 2:
        rows = np.empty(len(arr), dtype=object)
        rows[:] = [tuple(row) for row in np.asarray(groups, dtype=object).tolist()]
        return rows
    return column_or_1d(arr, warn=False)


def group_accuracies(y_true, y_pred, groups):
    """Accuracy within each group.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        True labels (any type scikit-learn's ``accuracy_score`` accepts).
    y_pred : array-like of shape (n_samples,)
        Predicted labels.
    groups : array-like of shape (n_samples,) or (n_samples, k)
        Group of each sample, of any hashable type (ints, strings, ...); rows of
        a 2-D array become tuples, e.g. ``(class, nuisance)``.

    Returns
    -------
    accuracies : dict
        ``{group: accuracy}`` for each group present, in sorted group order;
        accuracies are Python floats.

    Raises
    ------
    ValueError
        If the inputs are empty or of different lengths.

    Examples
    --------
    >>> from sklearn_cim.metrics import group_accuracies
    >>> group_accuracies([0, 1, 1, 0], [0, 1, 0, 0], groups=["a", "a", "b", "b"])
    {'a': 1.0, 'b': 0.5}
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    groups = _as_groups(groups)
    check_consistent_length(y_true, y_pred, groups)
    if len(groups) == 0:
        raise ValueError("group_accuracies needs at least one sample; got empty inputs.")
    accuracy_score(y_true, y_pred)  # checks that the labels are comparable classes
    correct = column_or_1d(y_true) == column_or_1d(y_pred)
    uniques, codes = encode_groups(list(groups))
    hits = np.bincount(codes, weights=correct, minlength=len(uniques))
    sizes = np.bincount(codes, minlength=len(uniques))
    return {g: float(h / n) for g, h, n in zip(uniques, hits, sizes)}


def worst_group_accuracy(y_true, y_pred, groups):
    """Lowest accuracy over the groups present.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
    y_pred : array-like of shape (n_samples,)
    groups : array-like of shape (n_samples,) or (n_samples, k)
        See :func:`group_accuracies`.

    Returns
    -------
    accuracy : float

    Examples
    --------
    >>> from sklearn_cim.metrics import worst_group_accuracy
    >>> worst_group_accuracy([0, 1, 1, 0], [0, 1, 0, 0], groups=[0, 0, 1, 1])
    0.5
    """
    return min(group_accuracies(y_true, y_pred, groups).values())


def _routed_worst_group_accuracy(y_true, y_pred, groups=None):
    if groups is None:
        raise ValueError(
            "The worst-group scorer received no groups. Enable metadata routing with "
            "sklearn.set_config(enable_metadata_routing=True) and pass them to fit, "
            "e.g. GridSearchCV(...).fit(X, y, groups=groups)."
        )
    return worst_group_accuracy(y_true, y_pred, groups)


def make_worst_group_scorer():
    """A scorer of worst-group accuracy that gets ``groups`` by metadata routing.

    Use it as ``scoring`` of :class:`~sklearn.model_selection.GridSearchCV`,
    :func:`~sklearn.model_selection.cross_validate` and friends, and pass the
    groups to their ``fit`` (or ``params``): each test fold is scored with the
    groups of its samples. Requires scikit-learn's metadata routing, enabled
    globally with ``sklearn.set_config(enable_metadata_routing=True)`` or in a
    ``with sklearn.config_context(enable_metadata_routing=True):`` block, both
    when the scorer is made and when it is used.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y, groups=groups)``; greater is better.

    Raises
    ------
    RuntimeError
        If metadata routing is not enabled.

    Examples
    --------
    >>> import numpy as np
    >>> import sklearn
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import GridSearchCV
    >>> from sklearn_cim.metrics import make_worst_group_scorer
    >>> rng = np.random.RandomState(0)
    >>> X, y = rng.rand(60, 4), np.tile([0, 1], 30)
    >>> groups = rng.randint(0, 3, 60)
    >>> with sklearn.config_context(enable_metadata_routing=True):
    ...     search = GridSearchCV(LogisticRegression(), {"C": [0.1, 1.0]}, cv=3,
    ...                           scoring=make_worst_group_scorer())
    ...     search = search.fit(X, y, groups=groups)
    >>> sorted(search.best_params_)
    ['C']
    """
    if not get_config()["enable_metadata_routing"]:
        raise RuntimeError(
            "make_worst_group_scorer needs scikit-learn's metadata routing to receive the "
            "groups: call sklearn.set_config(enable_metadata_routing=True) first, or work "
            "inside `with sklearn.config_context(enable_metadata_routing=True):`."
        )
    return make_scorer(_routed_worst_group_accuracy).set_score_request(groups=True)


def _removal_check_of(estimator):
    """The ``removal_check_`` of a fitted CIMTransformer, alone or a step of a pipeline."""
    steps = [estimator]
    if hasattr(estimator, "steps"):
        steps = [step for _, step in estimator.steps]
    for step in steps:
        if hasattr(step, "removal_check_"):
            if step.removal_check_ is None:
                raise ValueError(
                    f"{type(step).__name__} was fitted without groups, so it has no removal "
                    "check: fit it with groups=... or infer_groups=True (the paper's objective "
                    "is not group-aware).")
            return step.removal_check_
    raise ValueError(
        f"removal_score needs a fitted CIMTransformer, or a pipeline holding one; got "
        f"{type(estimator).__name__}.")


def removal_score(estimator, X=None, y=None, *, metric="balanced_accuracy"):
    """The removal check of a fitted CIMTransformer (or pipeline) as a score.

    A scorer for :class:`~sklearn.model_selection.GridSearchCV` that needs no
    test set: it reads ``removal_check_``, measured on training images each
    candidate's mask network held back, and ignores ``X`` and ``y`` (the
    validation split, which carries the nuisance as training does and so
    rewards keeping it). Greater is better. Since it ignores the validation
    split, one split is enough (e.g. ``cv=[(np.arange(n), np.arange(1))]``:
    each candidate fitted once, on every image).

    Parameters
    ----------
    estimator : CIMTransformer or Pipeline
        Fitted with groups (given or inferred).
    X, y : ignored
        Present for the scorer signature ``scorer(estimator, X, y)``.
    metric : {"balanced_accuracy", "balanced_accuracy_cnn", "removed"}, \
            default="balanced_accuracy"
        ``"balanced_accuracy"``: the estimated accuracy of a linear model on
        psi(x) once the nuisance no longer agrees with the label (on images the
        mask did not train on, reweighted to a nuisance independent of the
        label); ``"balanced_accuracy_cnn"``:
        the same for a CNN (choose the one of your downstream model).
        ``"removed"``: ``1 - retained``, the share of the nuisance's
        readability removed (NaN when x itself shows none). Pass it with
        ``functools.partial``.

    Returns
    -------
    score : float

    Raises
    ------
    ValueError
        If no fitted CIMTransformer is found, or it was fitted without groups.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cim import CIMTransformer
    >>> from sklearn_cim.metrics import removal_score
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(60, 3, 8, 8).astype(np.float32)
    >>> y, groups = np.repeat([0, 1], 30), np.tile([0, 1, 2], 20)
    >>> cim = CIMTransformer(distance="l2", max_epochs=1, batch_size=16, device="cpu",
    ...                      random_state=0).fit(X, y, groups=groups)
    >>> 0.0 <= removal_score(cim) <= 1.0
    True
    """
    check = _removal_check_of(estimator)
    if metric in ("balanced_accuracy", "balanced_accuracy_cnn"):
        return float(check[metric])
    if metric == "removed":
        return float(1.0 - check.retained)
    raise ValueError(
        "metric must be 'balanced_accuracy', 'balanced_accuracy_cnn' or 'removed', got "
        f"{metric!r}.")
