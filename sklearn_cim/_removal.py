"""The removal check: what psi(x) still carries of the nuisance, and what a
downstream model on psi(x) is estimated to score once the nuisance no longer
agrees with the label, measured on training images the mask network did not
train on (no test set, no deployment data).

A group-aware ``fit`` holds back :data:`HOLDOUT` of the training images (at
most :data:`MAX_HELD_OUT`; drawn apart from each class's images in its
majority group and from those in other groups, :func:`held_out_rows`); the
mask network trains on the rest. Then, on images pooled to at most
:data:`PROBE_SIDE` pixels a side for the convolutional probes (a 3 px stroke
at 64 px stays a 1.5 px one) and :data:`LINEAR_SIDE` for the linear ones:

* **class probes**, trained as a user's downstream model would be (on psi of up
  to :data:`MAX_TRAIN_ROWS` training images, unweighted) and scored on psi of
  the held-out images by the probability each gives the true class (an
  expected accuracy: steadier than right or wrong on the few images that go
  against the shortcut), reweighted to the nuisance being independent of the
  label (:func:`shift_estimate`): the estimated accuracy once the nuisance no
  longer agrees with the label. Two kinds, for the two kinds of downstream
  model: a **linear** one (scikit-learn's ``LogisticRegression`` on the pixels:
  ``balanced_accuracy``) and a **CNN** (the CIM head's architecture at 24
  channels: ``balanced_accuracy_cnn``), each also on x (``..._x``: what the
  same model scores without the CIM);
* two **nuisance probes** that predict the group, trained with every (class,
  group) cell drawn as often on up to :data:`NUISANCE_TRAIN_ROWS` training
  images and half of the held-out ones, and scored on the other half (then
  the halves swap), every cell weighing the same: a **linear** one
  (``retained``: what a linear model reads of the group in psi(x) beyond what
  the class tells, as a share of the same on x) and a **local** one, a
  convolutional net that sees 3x3 neighbourhoods and takes the maximum and the
  mean of each feature over the image (``retained_local``: it reads a colour,
  a texture, a patch or a small mark wherever it sits, and anti-aliased edges
  that still carry a background's colour, not an object's shape);
* **per image**: the share of each held-out image the mask keeps (images where
  it keeps under :data:`ERASED_FRACTION` of the median image's share count as
  erased, with their brightness against the rest's), and the accuracy of the
  CNN probe on psi(x) and on x in each third of the held-out images by
  brightness (the third where psi(x) loses most is kept).

:func:`removal_warnings` turns a check into the warnings ``fit`` gives.
"""

import time
import warnings
from contextlib import contextmanager

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.utils import Bunch
from threadpoolctl import threadpool_limits

from ._networks import ConvClassifier, LocalCueClassifier
from ._probes import pooled, predict_rows, seeded_net, train_probe


class RemovalWarning(UserWarning):
    """A group-aware fit whose psi(x) still carries the nuisance, is not
    estimated to make a downstream model more accurate than x once the
    nuisance shifts, or erases the object in some images (see
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


#: Share of the training images held back from the mask network for the check.
HOLDOUT = 0.2
#: At most this many held-back images.
MAX_HELD_OUT = 1024
#: The class probes train on up to this many of the mask network's images.
MAX_TRAIN_ROWS = 2048
#: Images are average-pooled to at most this side before the convolutional
#: probes, and to at most LINEAR_SIDE before the linear ones (a linear model
#: reads what is spread over many pixels; pooling is linear and keeps it).
PROBE_SIDE = 32
LINEAR_SIDE = 16
#: The nuisance probe trains on up to this many of them (and held-out ones).
NUISANCE_TRAIN_ROWS = 512
#: The linear probe: LogisticRegression's C and iterations (pixels in [0, 1]).
LINEAR_C, LINEAR_MAX_ITER = 1.0, 300
#: Epochs (at most: no more than the fit trained), batch size, Adam's step (and
#: width) of the convolutional probes.
CNN_EPOCHS, CNN_BATCH, CNN_LR, CNN_WIDTH = 15, 64, 3e-3, 24
NUISANCE_EPOCHS, NUISANCE_BATCH, NUISANCE_LR = 5, 64, 1e-2
#: ``retained`` above this makes ``fit`` warn: psi(x) still carries most of the nuisance.
WARN_RETAINED = 0.5
#: Below this margin over ``chance``, the nuisance is not readable in x
#: itself and ``retained`` is undefined (NaN).
MIN_READABLE = 0.05
#: An image whose kept share is under this fraction of the median image's is erased.
ERASED_FRACTION = 0.2
#: ``fit`` warns when more than this share of the held-out images is erased ...
WARN_ERASED = 0.05
#: ... or when psi(x) loses this much accuracy against x in a third of the
#: held-out images by brightness (of at least WARN_THIRD_MIN images).
WARN_THIRD_LOSS = 0.2
WARN_THIRD_MIN = 20


def majority_groups(y, groups):
    """Each class's most frequent group (``(n_classes,)``) and each group's share
    of the images (``(n_groups,)``)."""
    y, groups = np.asarray(y, np.int64), np.asarray(groups, np.int64)
    table = np.zeros((int(y.max()) + 1, int(groups.max()) + 1))
    np.add.at(table, (y, groups), 1)
    return table.argmax(1), table.sum(0) / max(1.0, table.sum())


def held_out_rows(y, groups, random_state):
    """Boolean mask of the training images held back from the mask network:
    :data:`HOLDOUT` (at most :data:`MAX_HELD_OUT` images in all) of each class's
    images in its majority group and of its images in other groups, drawn
    apart (with ``random_state``) so that the few images that go against the
    shortcut are held back in the same share; a part of fewer than three
    images keeps all of them for training."""
    y, groups = np.asarray(y, np.int64), np.asarray(groups, np.int64)
    share = min(HOLDOUT, MAX_HELD_OUT / max(1, len(y)))
    majority, _ = majority_groups(y, groups)
    strata = 2 * y + (groups == majority[y])
    rng = np.random.RandomState(random_state)
    held = np.zeros(len(y), dtype=bool)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        if len(members) >= 3:
            k = max(1, int(round(share * len(members))))
            held[rng.choice(members, size=k, replace=False)] = True
    if held.sum() > MAX_HELD_OUT:  # many small parts, one image each: the cap holds
        drop = rng.choice(np.flatnonzero(held), size=held.sum() - MAX_HELD_OUT, replace=False)
        held[drop] = False
    return held


def check_rows(held, y, most=MAX_TRAIN_ROWS):
    """The rows the check reads: every held-out one and up to ``most`` of the
    others, spread over each class in proportion to it (at least one each)."""
    held, y = np.asarray(held, bool), np.asarray(y, np.int64)
    train = np.flatnonzero(~held)
    if len(train) > most:
        kept = []
        for c in np.unique(y[train]):
            members = train[y[train] == c]
            k = max(1, int(round(most * len(members) / len(train))))
            kept.append(members[np.linspace(0, len(members) - 1, min(k, len(members)))
                                .astype(np.int64)])
        train = np.concatenate(kept)
    return np.sort(np.concatenate([np.flatnonzero(held), train]))


#: Every figure of a check, with what a check of an earlier version that lacks
#: it reads (NaN: not measured).
CHECK_FIGURES = dict(
    retained=np.nan, nuisance_psi=np.nan, nuisance_x=np.nan, chance=np.nan,
    retained_local=np.nan, nuisance_local_psi=np.nan, nuisance_local_x=np.nan,
    balanced_accuracy=np.nan, balanced_accuracy_x=np.nan, balanced_accuracy_se=np.nan,
    balanced_accuracy_cnn=np.nan, balanced_accuracy_cnn_x=np.nan,
    balanced_accuracy_cnn_se=np.nan, n_images=0, n_train_images=0, seconds=np.nan,
    erased_share=np.nan, erased_brightness=np.nan, other_brightness=np.nan,
    worst_third="", worst_third_accuracy=np.nan, worst_third_accuracy_x=np.nan,
    third_size=0)


def complete_check(check):
    """A check of an earlier version (a pickle, a weights file) with the figures
    it lacks as :data:`CHECK_FIGURES` says (NaN), or None."""
    if check is None:
        return None
    return Bunch(**{**CHECK_FIGURES, **dict(check)})


def cell_balanced_accuracy(correct, cells):
    """Mean over the (class, group) cells present of the accuracy within each."""
    counts = np.bincount(cells)
    weight = 1.0 / counts[cells]
    return float(np.sum(weight * correct) / np.sum(weight))


def _codes(y, groups):
    y, groups = np.asarray(y, np.int64), np.asarray(groups, np.int64)
    cells = np.unique(y * (int(groups.max()) + 1) + groups, return_inverse=True)[1].reshape(-1)
    return y, groups, cells


@contextmanager
def _quiet_blas():
    """One BLAS thread and no ConvergenceWarning, for the small logistic
    regressions of the check (several BLAS threads on such matrices were 8x
    slower on 2 busy cores; a probe short of convergence still reads)."""
    with threadpool_limits(1, user_api="blas"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _class_probe(kind, images, y, train, test, seed, device, epochs=CNN_EPOCHS):
    """The probability a class probe (``"linear"`` or ``"cnn"``), trained
    unweighted on ``train`` as a user's downstream model, gives the true class
    of each ``test`` image, and whether it predicts it."""
    n_classes = int(y.max()) + 1
    if kind == "linear":  # images: rows, pooled
        proba = np.zeros((len(test), n_classes))
        if np.unique(y[train]).size < 2:  # nothing to learn: the only label
            proba[:, y[train][0]] = 1.0
        else:
            probe = LogisticRegression(C=LINEAR_C, max_iter=LINEAR_MAX_ITER)
            with _quiet_blas():
                probe.fit(images[train], y[train])
            proba[:, probe.classes_] = probe.predict_proba(images[test])
    else:
        generator = torch.Generator().manual_seed(seed)
        net = seeded_net(lambda: ConvClassifier(images.shape[1], n_classes, CNN_WIDTH), seed)
        train_probe(net, images, torch.as_tensor(y), train, epochs=epochs,
                    batch_size=CNN_BATCH, lr=CNN_LR, generator=generator, device=device)
        proba = predict_rows(net, images, test, device, proba=True)
    return proba[np.arange(len(test)), y[test]], proba.argmax(1) == y[test]


def _nuisance_probe(kind, images, groups, cells, train, test, seed, device,
                    epochs=NUISANCE_EPOCHS):
    """Cell-balanced accuracy on the ``test`` images of a nuisance probe
    (``"linear"``: LogisticRegression on the pixels; ``"local"``: the
    convolutional one), trained with every (class, group) cell weighing the
    same on ``train`` and half of ``test``, scored on the other half, then the
    halves swapped."""
    n_groups = int(groups.max()) + 1
    halves = np.array_split(np.random.RandomState(seed).permutation(test), 2)
    generator = torch.Generator().manual_seed(seed)
    right = np.zeros(len(groups), bool)
    for k, scored in enumerate(halves):
        fit = np.concatenate([train, halves[1 - k]])
        if len(scored) == 0 or np.unique(groups[fit]).size < 2:
            right[scored] = groups[scored] == (groups[fit][0] if len(fit) else 0)
            continue
        fit_cells = np.unique(cells[fit], return_inverse=True)[1].reshape(-1)
        counts = np.bincount(fit_cells)
        weight = len(fit) / (len(counts) * counts[fit_cells])
        if kind == "linear":  # images: rows, pooled
            rows = images
            probe = LogisticRegression(C=LINEAR_C, max_iter=LINEAR_MAX_ITER)
            with _quiet_blas():
                probe.fit(rows[fit], groups[fit], sample_weight=weight)
            right[scored] = probe.predict(rows[scored]) == groups[scored]
            continue
        weights = torch.zeros(len(groups))
        weights[fit] = torch.as_tensor(weight, dtype=torch.float32)
        net = seeded_net(lambda: LocalCueClassifier(images.shape[1], n_groups), seed + k)
        train_probe(net, images, torch.as_tensor(groups), fit, epochs=epochs,
                    batch_size=NUISANCE_BATCH, lr=NUISANCE_LR, generator=generator,
                    device=device, weights=weights)
        right[scored] = predict_rows(net, images, scored, device) == groups[scored]
    test_cells = np.unique(cells[test], return_inverse=True)[1].reshape(-1)
    return cell_balanced_accuracy(right[test], test_cells)


def retained_share(on_psi, on_x, chance):
    """How much of what a nuisance probe reads beyond ``chance`` in x it still
    reads in psi(x): ``(on_psi - chance) / (on_x - chance)``, clipped at 0; NaN
    when x itself shows less than :data:`MIN_READABLE` beyond chance."""
    readable_x = on_x - chance
    if readable_x < MIN_READABLE:
        return float("nan")
    return float(max(0.0, (on_psi - chance) / readable_x))


def shift_estimate(values, y, groups, majority, group_share, bounds=(0.0, 1.0)):
    """The mean of per-image ``values`` (correctness, or a difference of two)
    once the nuisance is independent of the label, and its standard error.

    Each class c has a majority group (``majority[c]``, the most frequent in
    its training images); under independence a class-c image is in it with
    the group's share of all training images (``group_share``). The estimate
    weighs, within each class (as frequent as in the images given), the mean
    over its majority-group images by that share and the mean over all the
    images outside their class's majority group, pooled over the classes (too
    few per class), by the rest:
    ``sum_c pi_c * (s_c * mean_maj(c) + (1 - s_c) * mean_other)``. Pools with no
    image take the mean of the other kind. The standard error is that of a
    weighted sum of pool means, each pool's spread counting the two ``bounds``
    of the values as half an image each (a pool of few images that all agree
    is not taken as certain)."""
    values = np.asarray(values, float)
    y, groups = np.asarray(y, np.int64), np.asarray(groups, np.int64)
    aligned = groups == majority[y]
    classes, counts = np.unique(y, return_counts=True)
    pi = counts / counts.sum()
    share = group_share[majority[classes]]
    pools, weights = [], []
    other = ~aligned
    for c, p, s_c in zip(classes, pi, share):
        pools.append(aligned & (y == c))
        weights.append(p * s_c)
    pools.append(other)
    weights.append(float(np.sum(pi * (1 - share))))
    means = [values[m].mean() if m.any() else np.nan for m in pools]
    fallback = values[aligned].mean() if aligned.any() else values.mean()
    means = [fallback if (np.isnan(v) and k < len(pools) - 1) else v
             for k, v in enumerate(means)]
    if np.isnan(means[-1]):
        means[-1] = values.mean()
    estimate = float(np.dot(weights, means) / np.sum(weights))
    var = 0.0
    for m, w, mean in zip(pools, weights, means):
        n = int(m.sum())
        # the bounds as one more image between them: few agreeing images are not certain
        spread = (np.sum((values[m] - mean) ** 2)
                  + 0.5 * sum((b - mean) ** 2 for b in bounds)) / max(n, 1)
        var += (w / np.sum(weights)) ** 2 * spread / max(n, 1)
    return estimate, float(np.sqrt(var))


def removal_check(psi, x, y, groups, held_out, *, kept=None, random_state=0, device="cpu",
                  epochs=None):
    """The removal check (see the module docstring).

    Parameters
    ----------
    psi, x : ndarray of shape (n, C, H, W)
        psi(x) and x in [0, 1], for the training images the check reads (at
        any size: they are pooled to :data:`PROBE_SIDE` and
        :data:`LINEAR_SIDE` here).
    y, groups : ndarray of int, shape (n,)
        Class and group codes.
    held_out : ndarray of bool, shape (n,)
        The images the mask network did not train on: the probes are scored on
        them (the class probes trained on the others).
    kept : ndarray of shape (n,) or None
        Each image's share of kept mask values (per-image figures; None: not
        measured).
    random_state : int
        Seeds the probes and the folds.
    device : str
        Where the probes train.
    epochs : int or None
        The epochs the fit trained: the convolutional probes train as many, at
        most :data:`CNN_EPOCHS` (:data:`NUISANCE_EPOCHS` for the nuisance
        probe), so that a short fit gets a quick (rougher) check. None: the
        most.

    Returns
    -------
    check : Bunch
        ``retained``, ``nuisance_psi``, ``nuisance_x`` (linear nuisance probe),
        ``retained_local``, ``nuisance_local_psi``, ``nuisance_local_x`` (local
        one), ``chance``;
        ``balanced_accuracy`` and ``balanced_accuracy_x`` (linear probe),
        ``balanced_accuracy_cnn`` and ``balanced_accuracy_cnn_x`` (CNN probe),
        with ``balanced_accuracy_se`` and ``balanced_accuracy_cnn_se`` (the
        standard errors of the psi - x differences, paired on the same images);
        ``n_images`` (held-out images scored), ``n_train_images``;
        ``erased_share``, ``erased_brightness``, ``other_brightness``;
        ``worst_third`` ("darkest", "middle", "brightest"),
        ``worst_third_accuracy``, ``worst_third_accuracy_x``, ``third_size``;
        ``seconds`` (the check's own time).
    """
    start = time.perf_counter()
    y, groups, cells = _codes(y, groups)
    held = np.asarray(held_out, bool)
    test = np.flatnonzero(held)
    train = np.setdiff1d(check_rows(held, y), test)
    if len(test) == 0 or len(train) == 0:
        raise ValueError("the removal check needs held-out and training images")
    seed = int(np.random.RandomState(random_state).randint(2 ** 31 - 64))
    images = {"psi": pooled(psi, PROBE_SIDE), "x": pooled(x, PROBE_SIDE)}
    rows = {name: pooled(im, LINEAR_SIDE).flatten(1).numpy() for name, im in images.items()}
    # each class's majority group and the groups' shares, from the training images
    majority, group_share = majority_groups(y[train], groups[train])
    majority = np.concatenate([majority, np.zeros(max(0, int(y.max()) + 1 - len(majority)),
                                                  np.int64)])
    group_share = np.concatenate([group_share, np.zeros(max(0, int(groups.max()) + 1
                                                            - len(group_share)))])

    def estimate(values):
        return shift_estimate(values, y[test], groups[test], majority, group_share)

    out = {}
    sure, correct = {}, {}
    for kind, key in (("linear", "balanced_accuracy"), ("cnn", "balanced_accuracy_cnn")):
        for name in ("psi", "x"):
            data = rows[name] if kind == "linear" else images[name]
            sure[kind, name], correct[kind, name] = _class_probe(
                kind, data, y, train, test, seed + 1, device, epochs=_capped(epochs, CNN_EPOCHS))
            out[key + ("" if name == "psi" else "_x")] = estimate(sure[kind, name])[0]
        diff = sure[kind, "psi"] - sure[kind, "x"]
        out[key + "_se"] = shift_estimate(diff, y[test], groups[test], majority, group_share,
                                          bounds=(-1.0, 1.0))[1]
    nuisance_train = train[np.linspace(0, len(train) - 1, min(len(train), NUISANCE_TRAIN_ROWS))
                           .astype(np.int64)]
    test_cells = np.unique(cells[test], return_inverse=True)[1].reshape(-1)
    # a probe that reads only the class: right on one cell of each class
    chance = np.unique(y[test]).size / (int(test_cells.max()) + 1)
    for kind, suffix in (("linear", ""), ("local", "_local")):
        for name in ("psi", "x"):
            data = rows[name] if kind == "linear" else images[name]
            out[f"nuisance{suffix}_{name}"] = _nuisance_probe(
                kind, data, groups, cells, nuisance_train, test, seed + 2, device,
                epochs=_capped(epochs, NUISANCE_EPOCHS))
        out["retained" + suffix] = retained_share(out[f"nuisance{suffix}_psi"],
                                                  out[f"nuisance{suffix}_x"], chance)
    out.update(per_image(x[test], None if kept is None else np.asarray(kept)[test],
                         correct["cnn", "psi"], correct["cnn", "x"]))
    return Bunch(
        chance=float(chance), n_images=int(len(test)), n_train_images=int(len(train)),
        seconds=float(time.perf_counter() - start), **out)


def _capped(epochs, most):
    return most if epochs is None else int(min(most, max(1, epochs)))


def per_image(x, kept, correct_psi, correct_x):
    """Per-image figures of the held-out images ``x`` (see the module docstring)."""
    brightness = np.asarray(x, np.float32).reshape(len(x), -1).mean(1)
    out = dict(erased_share=float("nan"), erased_brightness=float("nan"),
               other_brightness=float("nan"))
    if kept is not None and len(kept):
        median = float(np.median(kept))
        erased = kept < ERASED_FRACTION * median if median > 0 else np.ones(len(kept), bool)
        out.update(erased_share=float(erased.mean()),
                   erased_brightness=float(brightness[erased].mean()) if erased.any()
                   else float("nan"),
                   other_brightness=float(brightness[~erased].mean()) if (~erased).any()
                   else float("nan"))
    order = np.argsort(brightness, kind="stable")
    thirds = np.array_split(order, 3)
    losses = [correct_x[t].mean() - correct_psi[t].mean() if len(t) else -np.inf
              for t in thirds]
    worst = int(np.argmax(losses))
    out.update(worst_third=("darkest", "middle", "brightest")[worst],
               worst_third_accuracy=float(correct_psi[thirds[worst]].mean()),
               worst_third_accuracy_x=float(correct_x[thirds[worst]].mean()),
               third_size=int(len(thirds[worst])))
    return out


def not_better(check, kind="linear"):
    """Whether psi(x) is not estimated to make a ``kind`` ("linear" or "cnn")
    downstream model more accurate than x once the nuisance shifts: the
    estimate on psi(x) is not above the one on x by more than one standard
    error of their difference."""
    key = "balanced_accuracy" if kind == "linear" else "balanced_accuracy_cnn"
    return check[key] - check[key + "_x"] <= check[key + "_se"]


def worse_than_x(check):
    """Whether a linear model on psi(x) is estimated less accurate than on x
    beyond twice the standard error of the difference (inferred groups then
    fall back to the identity)."""
    return check.balanced_accuracy < check.balanced_accuracy_x - 2 * check.balanced_accuracy_se


def removal_warnings(check, *, source, kept_everything=False):
    """The messages of the :class:`RemovalWarning` s a group-aware fit gives
    for ``check`` (``source``: what the groups were, for the messages;
    ``kept_everything``: a hard mask kept every pixel checked)."""
    if kept_everything:
        return [
            "The mask keeps every pixel of the training images it was checked on: psi(x) "
            "is x, and nothing was removed (no mask value fell below the cut). Train longer "
            "(max_epochs), raise mask_weight, or check that groups name the nuisance."]
    said = []
    where = (f"measured on {check.n_images} training images the mask network did not "
             f"train on, against {source}")
    if not (np.isfinite(check.retained) or np.isfinite(check.retained_local)):
        said.append(
            f"The removal check cannot tell whether the nuisance was removed: its probes do "
            f"not read the groups in x either (removal_check_.nuisance_x "
            f"{check.nuisance_x:.3f}, nuisance_local_x {check.nuisance_local_x:.3f}, chance "
            f"{check.chance:.3f}; {where}). Measure the downstream model on held-out images "
            "whose nuisance disagrees with the label before relying on this transform.")
    elif check.retained > WARN_RETAINED:
        said.append(
            f"psi(x) still carries {check.retained:.0%} of the nuisance that a linear model "
            f"reads in x (removal_check_.retained, {where}): a downstream model can still rely "
            "on it. Train longer (max_epochs), raise mask_weight, or check that groups name "
            "the nuisance.")
    local = ""
    if np.isfinite(check.retained_local) and check.retained_local > WARN_RETAINED:
        local = (f" A probe that reads small local cues anywhere in the image still reads "
                 f"{check.retained_local:.0%} of the nuisance in psi(x) "
                 "(removal_check_.retained_local).")
    for kind, key, model in (("linear", "balanced_accuracy", "a linear model"),
                             ("cnn", "balanced_accuracy_cnn", "a CNN")):
        if not_better(check, kind):
            said.append(
                f"psi(x) is not estimated to make {model} more accurate than x once the "
                f"nuisance no longer agrees with the label: {check[key]:.3f} on psi(x) against "
                f"{check[key + '_x']:.3f} on x (removal_check_.{key}, standard error of the "
                f"difference {check[key + '_se']:.3f}; {where}).{local} Do not rely on this "
                f"transform for {model} as it is; see the user guide's settings for your "
                "image size.")
    if check.erased_share > WARN_ERASED:
        said.append(
            f"The mask keeps almost nothing (under {ERASED_FRACTION:.0%} of the median "
            f"image's share) of {check.erased_share:.0%} of the held-out training images: "
            f"their mean brightness is {check.erased_brightness:.2f} against "
            f"{check.other_brightness:.2f} for the others (removal_check_.erased_share). "
            "The object is likely erased with the nuisance there.")
    loss = check.worst_third_accuracy_x - check.worst_third_accuracy
    if check.third_size >= WARN_THIRD_MIN and loss >= WARN_THIRD_LOSS:
        said.append(
            f"On the {check.worst_third} third of the held-out training images, a CNN on "
            f"psi(x) is right on {check.worst_third_accuracy:.0%} of them against "
            f"{check.worst_third_accuracy_x:.0%} on x (removal_check_.worst_third): the mask "
            "removes the object in images like these.")
    return said
