"""Colour nuisances on grey digits: ``add_nuisance`` and ``make_colored_digits``."""

import numbers

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch, check_random_state

#: Ten well-separated colours, one per class (RGB in [0, 1]).
PALETTE = np.array([
    [0.90, 0.10, 0.10], [0.10, 0.70, 0.10], [0.10, 0.20, 0.90], [0.90, 0.80, 0.10],
    [0.70, 0.10, 0.80], [0.10, 0.80, 0.80], [0.95, 0.50, 0.10], [0.50, 0.30, 0.10],
    [0.40, 0.40, 0.40], [0.60, 0.90, 0.50],
], dtype=np.float32)
PALETTE.flags.writeable = False

NUISANCES = ("background", "corner", "mark", "none")
SHIFTS = ("random", "reversed")
_CLEAN_GREY = 0.5


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")


def _check_probability(name, value):
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not 0 <= value <= 1):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")


def _check_grey(grey, y):
    grey = np.asarray(grey)
    if grey.ndim != 3:
        raise ValueError(
            f"grey must be grey images of shape (n, H, W), got shape {grey.shape}. "
            "Drop a channel axis of size 1 with grey[:, 0]."
        )
    grey = grey.astype(np.float32)
    if not np.isfinite(grey).all() or grey.min(initial=0) < 0 or grey.max(initial=0) > 1:
        raise ValueError(
            "grey must hold finite values in [0, 1] (digit bright on dark); divide 8-bit "
            "pixels by 255."
        )
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != len(grey):
        raise ValueError(f"y must have shape ({len(grey)},), one label per image, got "
                         f"{y.shape}.")
    if y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise ValueError(
            "y must hold non-negative integer class labels (the nuisance index is "
            "y % n_nuisances); encode other labels with sklearn.preprocessing.LabelEncoder."
        )
    return grey, y.astype(np.int64)


def mark_side(image_side):
    """Side of the ``"mark"`` nuisance's square for images of this side."""
    return max(2, image_side // 5)


#: Largest grey value under a ``"mark"``: it is placed off the digit.
_MARK_OFF_OBJECT = 0.05


def _mark_positions(grey, rng):
    """Top-left corner (row, column) of a mark per image, uniform over the
    positions whose square lies on dark pixels (the digit's darkest square when
    there is none)."""
    side = mark_side(grey.shape[-1])
    t = torch.from_numpy(np.ascontiguousarray(grey))[:, None]
    # the brightest pixel under each possible square
    under = F.max_pool2d(t, side, stride=1)[:, 0].numpy()
    n, rows, cols = under.shape
    free = under <= _MARK_OFF_OBJECT
    none = ~free.reshape(n, -1).any(1)
    if none.any():
        darkest = under[none].reshape(int(none.sum()), -1).min(1)
        free[none] = under[none] <= darkest[:, None, None]
    # a uniform draw among the free positions: the argmax of uniform scores
    scores = np.where(free.reshape(n, -1), rng.rand(n, rows * cols), -1.0)
    flat = scores.argmax(1)
    return flat // cols, flat % cols


def _render(grey, nuisance, index, positions=None):
    """Images (n, 3, H, W) for ``nuisance``; ``index=None`` means without the nuisance."""
    g = grey[:, None]
    if nuisance in ("corner", "mark"):
        X = np.repeat(g, 3, axis=1)
        if index is None:
            return X
        colours = PALETTE[index][:, :, None, None]
        if nuisance == "corner":
            side = max(1, grey.shape[1] // 5)
            X[:, :, :side, :side] = colours
            return X
        side = mark_side(grey.shape[-1])
        rows, cols = positions
        window = np.arange(side)
        r = (rows[:, None] + window)[:, :, None]
        c = (cols[:, None] + window)[:, None, :]
        images = np.arange(len(X))[:, None, None]
        for channel in range(3):
            X[images, channel, r, c] = colours[:, channel]
        return X
    if index is None:
        colours = np.full((1, 3, 1, 1), _CLEAN_GREY, dtype=np.float32)
    else:
        colours = PALETTE[index][:, :, None, None]
    return (g + (1 - g) * colours).astype(np.float32)


def add_nuisance(grey, y, *, nuisance="background", p_agree=0.95, shift="random",
                 random_state=None, n_nuisances=10):
    """Colour grey digit images with a nuisance that agrees with the label w.p. ``p_agree``.

    With probability ``p_agree`` an image's nuisance index is ``y % n_nuisances``;
    otherwise it is drawn per ``shift``. The index picks a colour of
    :data:`PALETTE`.

    Parameters
    ----------
    grey : array-like of shape (n_samples, H, W)
        Grey images in [0, 1], digit bright on a dark background.
    y : array-like of shape (n_samples,)
        Non-negative integer labels.
    nuisance : {"background", "corner", "mark", "none"}, default="background"
        ``"background"``: a white digit on a coloured background,
        ``g + (1 - g) * colour``. ``"corner"``: the grey digit on all three
        channels plus a coloured square (side ``max(1, H // 5)``) in the
        top-left corner. ``"mark"``: the grey digit plus a small coloured
        square (side ``max(2, H // 5)``, as the corner patch) at a position drawn uniformly among
        those where the digit is dark (grey <= 0.05): a shortcut that moves,
        which a linear model on pixels barely reads and a CNN does.
        ``"none"`` (the oracle's data): a white digit on a
        mid-grey (0.5) background for every image, nuisance index 0.
    p_agree : float in [0, 1], default=0.95
        Probability that the nuisance index is the label's.
    shift : {"random", "reversed"}, default="random"
        How the other images' indices are drawn: ``"random"`` uniformly over
        the ``n_nuisances`` (so it can match the label by chance: overall
        agreement is ``p_agree + (1 - p_agree) / n_nuisances``); ``"reversed"``
        uniformly over the indices other than the label's,
        ``(y + 1 + uniform{0..n_nuisances-2}) % n_nuisances``.
    random_state : int, RandomState instance or None, default=None
    n_nuisances : int in [2, 10], default=10
        Number of nuisance values (colours used).

    Returns
    -------
    X : ndarray of shape (n_samples, 3, H, W), float32 in [0, 1]
    nuisance_index : ndarray of shape (n_samples,), int64
        The colour index of each image; ``y * n_nuisances + nuisance_index``
        gives class x nuisance groups.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cim.datasets import add_nuisance
    >>> grey = np.zeros((4, 10, 10), dtype=np.float32)
    >>> X, index = add_nuisance(grey, np.array([0, 1, 2, 3]), p_agree=1.0)
    >>> X.shape, index.tolist()
    ((4, 3, 10, 10), [0, 1, 2, 3])
    """
    _check_choice("nuisance", nuisance, NUISANCES)
    _check_choice("shift", shift, SHIFTS)
    _check_probability("p_agree", p_agree)
    if (not isinstance(n_nuisances, numbers.Integral) or isinstance(n_nuisances, bool)
            or not 2 <= n_nuisances <= len(PALETTE)):
        raise ValueError(f"n_nuisances must be an integer in [2, {len(PALETTE)}] (one "
                         f"colour of PALETTE each), got {n_nuisances!r}.")
    grey, y = _check_grey(grey, y)
    rng = check_random_state(random_state)
    n = len(y)
    agree = rng.rand(n) < p_agree
    if shift == "random":
        other = rng.randint(0, n_nuisances, n)
    else:
        other = (y + 1 + rng.randint(0, n_nuisances - 1, n)) % n_nuisances
    index = np.where(agree, y % n_nuisances, other).astype(np.int64)
    if nuisance == "none":
        return _render(grey, "background", None), np.zeros(n, dtype=np.int64)
    positions = _mark_positions(grey, rng) if nuisance == "mark" else None
    return _render(grey, nuisance, index, positions), index


def agreement_groups(y, groups, n_nuisances=10):
    """Coarse groups: class x whether the nuisance agrees with the label.

    The ``groups`` of the loaders (class x nuisance: 100 groups with 10
    classes) are too many to measure on a few thousand test images; these 20
    groups (``2 * y + agrees``) keep what worst-group accuracy is about: the
    images whose nuisance points to another class.

    Parameters
    ----------
    y : array-like of int, shape (n_samples,)
    groups : array-like of int, shape (n_samples,)
        ``y * n_nuisances + nuisance_index``, as the loaders return.
    n_nuisances : int, default=10

    Returns
    -------
    coarse : ndarray of int, shape (n_samples,)

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cim.datasets import agreement_groups
    >>> agreement_groups(np.array([1, 1, 2]), np.array([11, 13, 22])).tolist()
    [3, 2, 5]
    """
    y = np.asarray(y)
    nuisance = np.asarray(groups) % n_nuisances
    return 2 * y + (nuisance == y % n_nuisances)


def _nuisance_bunch(g_train, y_train, g_test, y_test, *, nuisance, p_train, shift, rng,
                    source):
    _check_choice("nuisance", nuisance, NUISANCES)
    _check_choice("shift", shift, SHIFTS)
    _check_probability("p_train", p_train)
    n_nuis = len(PALETTE)
    # Disagreeing training / in-distribution images never carry the label's
    # colour, so the nuisance agrees with the label exactly w.p. p_train.
    X_train, i_train = add_nuisance(g_train, y_train, nuisance=nuisance, p_agree=p_train,
                                    shift="reversed", random_state=rng)
    X_id, i_id = add_nuisance(g_test, y_test, nuisance=nuisance, p_agree=p_train,
                              shift="reversed", random_state=rng)
    X_ood, i_ood = add_nuisance(g_test, y_test, nuisance=nuisance, p_agree=0.0, shift=shift,
                                random_state=rng)
    clean = "background" if nuisance == "none" else nuisance
    descr = (
        f"Coloured digits: {source}. Nuisance {nuisance!r}: in training and the "
        f"in-distribution test set its colour agrees with the label with probability "
        f"{p_train} (otherwise another class's colour); in the out-of-distribution test "
        f"set it is drawn with shift={shift!r}. nuisance = the colour index (what "
        f"CIMTransformer.fit takes as groups); groups = y * {n_nuis} + nuisance, the "
        "(class, nuisance) cells, for group metrics. "
        "X_*_clean hold the same digits without the nuisance (mid-grey background, or no "
        "corner patch), the data of an oracle. Images are float32 (n, 3, H, W) in [0, 1]."
    )
    return Bunch(
        X_train=X_train, y_train=y_train, nuisance_train=i_train,
        groups_train=y_train * n_nuis + i_train,
        X_test_id=X_id, nuisance_test_id=i_id, groups_test_id=y_test * n_nuis + i_id,
        X_test_ood=X_ood, nuisance_test_ood=i_ood, groups_test_ood=y_test * n_nuis + i_ood,
        y_test=y_test,
        X_train_clean=_render(g_train, clean, None), X_test_clean=_render(g_test, clean, None),
        nuisance=nuisance, p_train=p_train, shift=shift, DESCR=descr,
    )


def make_colored_digits(*, nuisance="background", p_train=0.95, shift="random",
                        image_size=32, test_size=0.3, random_state=0):
    """Scikit-learn's 8x8 digits, upsampled, with a colour nuisance.

    The 1,797 images of :func:`sklearn.datasets.load_digits` are upsampled
    (bilinear) to ``image_size`` pixels, split (stratified) into training and
    test sets, and coloured with :func:`add_nuisance`. In the training and
    in-distribution test sets the nuisance agrees with the label with
    probability ``p_train`` (other images get another class's colour); in the
    out-of-distribution (OOD) test set it is drawn per ``shift``.

    Parameters
    ----------
    nuisance : {"background", "corner", "mark", "none"}, default="background"
        See :func:`add_nuisance`.
    p_train : float in [0, 1], default=0.95
    shift : {"random", "reversed"}, default="random"
        OOD nuisance: uniformly random (agrees with the label 1 time in 10 by
        chance) or never the label's.
    image_size : int >= 8, default=32
    test_size : float or int, default=0.3
        Share (or count) of the images held out for testing.
    random_state : int, RandomState instance or None, default=0
        Seeds the split and the nuisance draws; equal ints give equal data.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``X_train``, ``y_train``, ``nuisance_train``, ``groups_train``;
        ``X_test_id``, ``nuisance_test_id``, ``groups_test_id`` (in
        distribution); ``X_test_ood``, ``nuisance_test_ood``,
        ``groups_test_ood``; ``y_test`` (labels of both test sets);
        ``X_train_clean``, ``X_test_clean`` (no nuisance: mid-grey background,
        or no corner patch or mark); ``nuisance``, ``p_train``, ``shift``, ``DESCR``.
        Images are float32 ``(n, 3, image_size, image_size)`` in [0, 1].
        ``nuisance_*`` is each image's colour index, the attribute to pass as
        ``CIMTransformer.fit(..., groups=data.nuisance_train)``;
        ``groups_* = y * 10 + nuisance_*`` are the (class, nuisance) cells,
        for group metrics (a ``fit`` refuses them: they never vary within a
        class).

    Examples
    --------
    >>> from sklearn_cim.datasets import make_colored_digits
    >>> data = make_colored_digits(image_size=16)
    >>> data.X_train.shape, data.X_test_ood.shape
    ((1257, 3, 16, 16), (540, 3, 16, 16))
    """
    if (not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool)
            or image_size < 8):
        raise ValueError(f"image_size must be an integer >= 8 (the digits are 8x8 "
                         f"pixels), got {image_size!r}.")
    _check_choice("nuisance", nuisance, NUISANCES)
    _check_choice("shift", shift, SHIFTS)
    _check_probability("p_train", p_train)
    digits = load_digits()
    small = torch.from_numpy(digits.images.astype(np.float32) / 16)[:, None]
    big = F.interpolate(small, size=(int(image_size),) * 2, mode="bilinear",
                        align_corners=False)
    grey = big[:, 0].clamp(0, 1).numpy()
    rng = check_random_state(random_state)
    g_train, g_test, y_train, y_test = train_test_split(
        grey, digits.target.astype(np.int64), test_size=test_size, stratify=digits.target,
        random_state=rng)
    return _nuisance_bunch(
        g_train, y_train, g_test, y_test, nuisance=nuisance, p_train=p_train, shift=shift,
        rng=rng, source=f"sklearn's load_digits upsampled to {image_size} px")
