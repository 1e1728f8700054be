"""The removal check: how much of the nuisance psi(x) still carries, measured
on the training images alone (no test set, no deployment data).

After a group-aware fit, two linear probes are fitted out of fold on up to
:data:`MAX_ROWS` training images, once on psi(x) and once on x:

* the **nuisance probe** predicts the group from the pixels, trained and scored
  with every (class, group) cell weighing the same, so that the class alone
  tells little about the group. Its cell-balanced accuracy above what the class
  alone gives (``chance``), as a share of the same on x, is ``retained``: 0
  when psi(x) carries nothing of the nuisance a linear model can read, 1 when it
  carries as much as x;
* the **class probe** predicts the class, trained as a user's downstream model
  would be (unweighted), and is scored with every cell weighing the same: an
  estimate of the accuracy once the nuisance no longer agrees with the label
  (``balanced_accuracy``; ``balanced_accuracy_x`` on x).

Both probes are multinomial logistic regressions on the images average-pooled
to at most :data:`MAX_SIDE` pixels a side (pooling is linear: a nuisance
readable before it stays readable, mixed with neighbouring pixels; it keeps the
check to seconds). A nuisance a linear model cannot read in x itself (a mark at
a random position) leaves ``retained`` undefined: the check cannot see it, and
says so.
"""

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.utils import Bunch


class RemovalWarning(UserWarning):
    """A group-aware fit whose psi(x) still carries the nuisance, or is
    estimated to do worse than x once the nuisance shifts (see
    ``CIMTransformer.removal_check_``).

    Turn it into an error where a kept nuisance must stop a pipeline (e.g. in a
    training job that should fail rather than ship such a transform).

    Examples
    --------
    >>> import warnings
    >>> from sklearn_cim import RemovalWarning
    >>> issubclass(RemovalWarning, UserWarning)
    True
    >>> with warnings.catch_warnings():  # as around CIMTransformer().fit(X, y, groups=g)
    ...     warnings.simplefilter("error", RemovalWarning)
    ...     try:
    ...         warnings.warn("psi(x) still carries 80% of the nuisance", RemovalWarning)
    ...     except RemovalWarning as exc:
    ...         print("stopped:", exc)
    stopped: psi(x) still carries 80% of the nuisance
    """


class PaperObjectiveWarning(UserWarning):
    """``fit`` got no groups and ``infer_groups`` is off: it trains the paper's
    objective, which does not remove a nuisance that agrees with the label in
    most training images (there is nothing to check removal against either).
    Python shows it once per line that calls ``fit``; silence it with
    ``warnings.filterwarnings("ignore", category=PaperObjectiveWarning)`` when
    the paper's objective is what you want.

    Examples
    --------
    >>> from sklearn_cim import PaperObjectiveWarning
    >>> issubclass(PaperObjectiveWarning, UserWarning)
    True
    """


#: Training images the check reads (spread over the training set).
MAX_ROWS = 2048
#: Images are average-pooled to at most this side before probing.
MAX_SIDE = 16
#: Inverse regularisation and iterations of both probes (pixels in [0, 1]).
PROBE_C = 1.0
PROBE_MAX_ITER = 300
FOLDS = 3
#: ``retained`` above this makes ``fit`` warn: psi(x) still carries most of the nuisance.
WARN_RETAINED = 0.5
#: Below this margin over ``chance``, the nuisance is not linearly readable in x
#: itself and ``retained`` is undefined (NaN).
MIN_READABLE = 0.05


def pooled_rows(images):
    """``(n, C, H, W)`` float images in [0, 1] as rows, average-pooled to at most
    :data:`MAX_SIDE` pixels a side."""
    t = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)
    h, w = t.shape[-2:]
    if max(h, w) > MAX_SIDE:
        t = F.adaptive_avg_pool2d(t, (min(h, MAX_SIDE), min(w, MAX_SIDE)))
    return t.flatten(1).numpy()


def cell_balanced_accuracy(correct, cells):
    """Mean over the (class, group) cells present of the accuracy within each."""
    counts = np.bincount(cells)
    weight = 1.0 / counts[cells]
    return float(np.sum(weight * correct) / np.sum(weight))


def cell_balanced_se(correct, cells):
    """Binomial standard error of :func:`cell_balanced_accuracy` (a cell's
    accuracy taken from its images; a cell of one image counts as p(1-p) with
    the overall accuracy, not 0)."""
    counts = np.bincount(cells)
    present = counts > 0
    hits = np.bincount(cells, weights=correct.astype(float))[present]
    n = counts[present]
    overall = cell_balanced_accuracy(correct, cells)
    p = np.where(n > 1, hits / n, overall)
    var = np.where(n > 1, p * (1 - p), overall * (1 - overall)) / n
    return float(np.sqrt(var.sum()) / present.sum())


def _folds(y, random_state):
    counts = np.bincount(y)
    if counts[counts > 0].min() >= FOLDS:
        return StratifiedKFold(FOLDS, shuffle=True, random_state=random_state).split(y, y)
    return KFold(FOLDS, shuffle=True, random_state=random_state).split(y)


def _out_of_fold(features, target, folds, sample_weight=None):
    pred = np.empty_like(target)
    for train, test in folds:
        if np.unique(target[train]).size < 2:  # nothing to learn: the only label
            pred[test] = target[train][0]
            continue
        probe = LogisticRegression(C=PROBE_C, max_iter=PROBE_MAX_ITER)
        weight = None if sample_weight is None else sample_weight[train]
        with warnings.catch_warnings():  # a probe short of convergence still reads
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.fit(features[train], target[train], sample_weight=weight)
        pred[test] = probe.predict(features[test])
    return pred


def removal_check(psi_rows, x_rows, y, groups, random_state=0):
    """The removal check on pooled rows of psi(x) and x (see the module docstring).

    Parameters
    ----------
    psi_rows, x_rows : ndarray of shape (n, d)
        psi(x) and x, in [0, 1], pooled (:func:`pooled_rows`).
    y, groups : ndarray of int, shape (n,)
        Class and group codes.
    random_state : int
        Seeds the folds.

    Returns
    -------
    check : Bunch
        ``retained`` (share of the nuisance's linear readability that psi keeps;
        NaN when x itself shows none), ``nuisance_psi``, ``nuisance_x`` and
        ``chance`` (cell-balanced accuracies of the nuisance probe and of a probe
        that knows only the class), ``balanced_accuracy``,
        ``balanced_accuracy_x`` (cell-balanced accuracy of the class probe on
        psi and on x), ``balanced_accuracy_se`` (standard error of their
        difference) and ``n_images``.
    """
    y = np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups, dtype=np.int64)
    n_groups = int(groups.max()) + 1
    cells = np.unique(y * n_groups + groups, return_inverse=True)[1].reshape(-1)
    n_cells = int(cells.max()) + 1
    weight = (len(cells) / (n_cells * np.bincount(cells)))[cells]
    folds = list(_folds(y, random_state))
    scores = {}
    for name, rows in (("psi", psi_rows), ("x", x_rows)):
        group_pred = _out_of_fold(rows, groups, folds, sample_weight=weight)
        scores["nuisance_" + name] = cell_balanced_accuracy(group_pred == groups, cells)
        correct = _out_of_fold(rows, y, folds) == y
        scores["balanced_accuracy_" + name] = cell_balanced_accuracy(correct, cells)
        scores["se_" + name] = cell_balanced_se(correct, cells)
    # a probe that reads only the class: right on one cell of each class
    chance = np.unique(y).size / n_cells
    readable_x = scores["nuisance_x"] - chance
    retained = ((scores["nuisance_psi"] - chance) / readable_x
                if readable_x >= MIN_READABLE else float("nan"))
    return Bunch(
        retained=float(np.clip(retained, 0.0, None)) if np.isfinite(retained) else retained,
        nuisance_psi=scores["nuisance_psi"], nuisance_x=scores["nuisance_x"],
        chance=float(chance), balanced_accuracy=scores["balanced_accuracy_psi"],
        balanced_accuracy_x=scores["balanced_accuracy_x"],
        balanced_accuracy_se=float(np.hypot(scores["se_psi"], scores["se_x"])),
        n_images=int(len(y)))
