"""Groups for group-aware CIM: checking them, balancing (class, group) cells,
drawing bias-contrastive pairs from the whole training set, and inferring
groups from a bias proxy when none are given.

A *group* labels the nuisance of a training image (a background colour, a
site, a scanner) or a full group id; a *cell* is a (class, group) pair. The
group-aware objective (see :class:`~sklearn_cim.CIMTransformer`) weights the
head's cross-entropy so that every cell counts the same, and draws triplets
whose positive shares the anchor's class but not its group, and whose negative
shares its group but not its class: the nuisance then cannot tell them apart.
"""

import numbers

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from ._networks import LocalCueClassifier
from ._probes import pooled, predict_rows, seeded_net, train_probe

GROUP_WEIGHTINGS = ("balanced", "resampled", "none")
INFER_GROUPS = ("local", "linear", "errors")
#: Regularisation of the linear bias proxy (a deliberately weak linear model:
#: it learns the simplest feature, which is what a spurious one often is).
PROXY_C = 1e-3
PROXY_FOLDS = 3
#: The local proxy: epochs, batch size, Adam lr, and the largest image side it
#: reads (larger images are average-pooled down to it).
LOCAL_PROXY_EPOCHS = 5
LOCAL_PROXY_BATCH = 32
LOCAL_PROXY_LR = 1e-2
LOCAL_PROXY_MAX_SIDE = 64


def encode_groups(groups, labels=None):
    """The package's one group encoder: ``(labels, codes)`` for a sequence of
    hashable group labels, with ``labels[code]`` the label of a code.

    Labels are sorted (labels of types that do not compare, e.g. ints and
    strings, by type name, then ``repr``); numpy scalars become Python
    objects. ``labels``: labels known from an earlier call, which keep their
    codes; labels not seen before are appended (in sorted order).
    """
    seen = list(dict.fromkeys(g.item() if isinstance(g, np.generic) else g for g in groups))
    try:
        new = sorted(seen)
    except TypeError:  # types that cannot be compared with each other
        new = sorted(seen, key=lambda g: (type(g).__name__, repr(g)))
    labels = [] if labels is None else list(labels)  # the caller's list is not changed
    lookup = {g: i for i, g in enumerate(labels)}
    for g in new:
        if g not in lookup:
            lookup[g] = len(labels)
            labels.append(g)
    codes = np.fromiter((lookup[g.item() if isinstance(g, np.generic) else g] for g in groups),
                        dtype=np.int64, count=len(groups))
    return labels, codes


def check_groups(groups, n_samples, labels=None, allow_single=False):
    """The group labels and the integer code of each training image's group.

    Any hashable labels are accepted (ints, strings; tuples of a site and a
    scanner are not: encode those as one string). ``labels`` are the labels
    known from an earlier fit: they keep their codes, and labels not seen
    before are appended. Returns ``(labels, codes)`` with ``labels[code]``
    the label of a code. Raises a ``ValueError`` that names the fix for a
    wrong length, missing values or (unless ``allow_single``) a single group.
    """
    arr = np.asarray(groups, dtype=object) if not isinstance(groups, np.ndarray) else groups
    if arr.ndim != 1:
        raise ValueError(
            f"groups must be 1-D, one label per training image; got shape {arr.shape}. "
            "Encode several attributes as one label each, e.g. a string 'site-scanner'.")
    if len(arr) != n_samples:
        raise ValueError(
            f"groups has {len(arr)} entries but X has {n_samples} images: pass one group "
            "label per training image, in the order of X.")
    flat = arr.tolist()
    missing = [i for i, g in enumerate(flat)
               if g is None or (isinstance(g, numbers.Real) and np.isnan(g))]
    if missing:
        raise ValueError(
            f"groups holds missing values (None or NaN) at {len(missing)} images, e.g. index "
            f"{missing[0]}. Give every image a group, drop those images, or leave groups "
            "out and set infer_groups=True to have them inferred.")
    labels, codes = encode_groups(flat, labels)
    if not allow_single and len(np.unique(codes)) < 2:
        raise ValueError(
            "groups holds a single group: there is no nuisance to balance or contrast. "
            "Pass the nuisance attribute of each image (at least two values), or leave "
            "groups out for the paper's objective.")
    return labels, codes


def check_groups_vary_within_classes(groups, codes, y):
    """Refuse groups that never vary within a class: (class, attribute)
    combination ids, the convention of GroupDRO and of this package's loaders'
    ``groups_*``. The group-aware objective needs the attribute itself (the
    nuisance): with combination ids no image shares an anchor's group but not
    its class, and the bias-contrastive triplet term would be 0 throughout.

    ``groups`` are the labels given, ``codes`` their integer codes, ``y``
    integer classes. The message names the exact fix when the ids are
    ``k * y + attribute`` with integer labels.
    """
    n_groups = int(codes.max()) + 1
    classes_per_group = np.zeros(n_groups, dtype=np.int64)
    pairs = np.unique(np.stack([codes, y], axis=1), axis=0)
    np.add.at(classes_per_group, pairs[:, 0], 1)
    if classes_per_group.max() > 1:
        return
    fix = "pass the attribute itself (the background, site or scanner of each image)"
    values = np.asarray(groups)
    if values.dtype.kind in "iu":
        for k in range(2, int(values.max()) + 2):
            attribute = values - k * y
            if attribute.min() >= 0 and attribute.max() < k:
                fix = (f"they read as {k} * y + attribute (y: the class codes 0..n-1): "
                       f"pass groups % {k}" if np.array_equal(attribute, values % k)
                       else f"pass groups - {k} * y")
                break
    raise ValueError(
        "Every group holds images of a single class, so the groups look like (class, "
        "attribute) combination ids (as GroupDRO's, or the loaders' groups_train = "
        "y * 10 + colour). The group-aware objective needs the nuisance attribute, which "
        f"varies within a class: {fix} (make_colored_digits and load_colored_mnist: "
        "nuisance_train). If the nuisance never varies within a class in your data, "
        "nothing can be balanced or contrasted: fit without groups.")


def cell_weights(classes, groups, n_groups):
    """The balancing weight of each (class, group) cell, indexed by ``class *
    n_groups + group``: inverse frequency, with mean 1 over the samples, so
    every cell present carries the same total weight (cells absent: inf, never
    read)."""
    cells = torch.as_tensor(classes) * n_groups + torch.as_tensor(groups)
    counts = torch.bincount(cells).float()
    present = (counts > 0).sum()
    return len(cells) / (present * counts)


class PairTable:
    """Draws, for anchors of known class and group, a *positive* (same class,
    other group) and a *negative* (same group, other class) uniformly from the
    whole training set.

    Two orders of the training set are kept: by (class, group) and by
    (group, class). The positives of an anchor in cell (c, g) are class c's
    run of the first order with the run of cell (c, g) cut out, so one uniform
    draw and one shift give a uniform positive; likewise for negatives. Memory
    is two permutations of the training set, whatever the number of cells.
    """

    def __init__(self, y, groups):
        y, groups = y.long(), groups.long()
        self.n_classes = int(y.max()) + 1
        self.n_groups = int(groups.max()) + 1
        self.by_class = self._order(y, groups, self.n_groups)
        self.by_group = self._order(groups, y, self.n_classes)

    @staticmethod
    def _order(major, minor, n_minor):
        key = major * n_minor + minor
        sorted_key, order = torch.sort(key, stable=True)
        return sorted_key, order, n_minor

    @staticmethod
    def _draw(table, major, minor, u):
        sorted_key, order, n_minor = table
        lo = torch.searchsorted(sorted_key, major * n_minor)
        hi = torch.searchsorted(sorted_key, (major + 1) * n_minor)
        cell_lo = torch.searchsorted(sorted_key, major * n_minor + minor)
        cell_hi = torch.searchsorted(sorted_key, major * n_minor + minor + 1)
        pool = (hi - lo) - (cell_hi - cell_lo)
        valid = pool > 0
        r = (u * pool.clamp_min(1)).long().clamp_max((pool - 1).clamp_min(0))
        pos = lo + r
        pos = pos + (pos >= cell_lo) * (cell_hi - cell_lo)
        return order[pos.clamp_max(len(order) - 1)], valid

    def positives(self, y, groups, generator):
        """Indices of a same-class, other-group sample per anchor, and whether one exists."""
        u = torch.rand(len(y), generator=generator, device=generator.device).to(y.device)
        return self._draw(self.by_class, y.long(), groups.long(), u)

    def negatives(self, y, groups, generator):
        """Indices of a same-group, other-class sample per anchor, and whether one exists."""
        u = torch.rand(len(y), generator=generator, device=generator.device).to(y.device)
        return self._draw(self.by_group, groups.long(), y.long(), u)


def infer_groups(X, y, strategy, random_state, device="cpu"):
    """Bias-proxy groups: the out-of-fold predicted class of a model that can
    learn the nuisance but not the object; cells (class, predicted class) then
    separate the images that follow the shortcut from those that do not.

    ``"local"``: :class:`~sklearn_cim._networks.LocalCueClassifier`, which sees
    only 3x3 neighbourhoods (pooled over the image): it learns a colour, a
    texture, a patch or a mark wherever it is, but not an object's shape.
    ``"linear"``: a strongly regularised logistic regression (``C=1e-3``) on
    the pixels, which learns the simplest feature spread over many pixels (a
    background colour) and misses a small one (its errors then follow the
    object). ``"errors"`` (JTT-style): whether the linear prediction was right.

    X is a float array ``(n, C, H, W)`` in [0, 1]; y integer classes.
    """
    counts = np.bincount(y)
    folds = int(min(PROXY_FOLDS, counts[counts > 0].min()))
    if folds < 2:
        raise ValueError(
            "infer_groups needs at least 2 training images of every class to infer groups "
            f"from out-of-fold predictions; the rarest class has {counts[counts > 0].min()}. "
            "Pass groups to fit, collect more images, or set infer_groups=False.")
    cv = StratifiedKFold(folds, shuffle=True, random_state=random_state)
    if strategy == "local":
        return _local_proxy_predictions(X, y, cv, random_state, device)
    proxy = LogisticRegression(C=PROXY_C, max_iter=200)
    pred = cross_val_predict(proxy, X.reshape(len(X), -1), y, cv=cv)
    if strategy == "errors":
        return (pred == y).astype(np.int64)
    return pred.astype(np.int64)


def _local_proxy_predictions(X, y, cv, random_state, device):
    """Out-of-fold predictions of a :class:`LocalCueClassifier` per fold."""
    images = pooled(X, LOCAL_PROXY_MAX_SIDE)
    labels = torch.as_tensor(y, dtype=torch.long)
    n_classes = int(labels.max()) + 1
    seed = int(np.random.RandomState(random_state).randint(2 ** 31))
    generator = torch.Generator().manual_seed(seed)
    pred = np.empty(len(y), dtype=np.int64)
    for train, test in cv.split(np.zeros(len(y)), y):
        net = seeded_net(lambda: LocalCueClassifier(images.shape[1], n_classes), seed)
        net = train_probe(net, images, labels, train, epochs=LOCAL_PROXY_EPOCHS,
                          batch_size=LOCAL_PROXY_BATCH, lr=LOCAL_PROXY_LR,
                          generator=generator, device=device)
        pred[test] = predict_rows(net, images, test, device)
    return pred
