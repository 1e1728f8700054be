"""Validation of image arrays, image shapes, labels and numeric parameters.

Every check here raises a ``ValueError`` (or ``TypeError``) whose message says
what to change; nothing is silently converted or clipped.
"""

import re
from numbers import Integral, Real

import numpy as np
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from ._warn import warn

_UINT8_MAX = 255.0


def _sentence(msg):
    msg = str(msg).strip()
    return msg if msg.endswith(".") else msg + "."


def _explain(estimator, err):
    """A ``ValueError`` naming the fix for a message of sklearn's ``check_array``
    that only names the problem; None when ``err`` already names the fix."""
    msg = str(err)
    name = type(estimator).__name__
    first = msg.splitlines()[0] if msg else msg
    if msg.startswith("Complex data not supported"):
        # The prefix is kept: scikit-learn's estimator checks look for it.
        return ValueError(
            f"Complex data not supported: X holds complex numbers, but {name} needs "
            "real values. Pass X.real, or np.abs(X) for magnitudes."
        )
    if "could not convert" in msg:
        return ValueError(
            f"X holds entries that are not numbers ({first}). Convert every entry to "
            "a number first (decode images into arrays, encode or drop non-numeric "
            "columns), then pass a numeric array, e.g. np.asarray(X, dtype=np.float32)."
        )
    if "inhomogeneous" in msg or "setting an array element with a sequence" in msg:
        return ValueError(
            f"X cannot be stacked into one array ({first}): its images or rows differ "
            "in size. Resize them to one shape and stack them, e.g. np.stack(images)."
        )
    if "inconsistent numbers of samples" in msg:
        return ValueError(
            f"{_sentence(msg)} X and y need one entry per sample: pass the labels y "
            "that belong to X (same length, same order)."
        )
    if msg.startswith("Found array with dim"):
        images = ""
        if "image_shape" in estimator.get_params():
            images = (", or pass images (n, C, H, W) with image_shape=(C, H, W) to read them "
                      "as images")
        return ValueError(
            f"{_sentence(msg)} Reshape X to 2-D (n_samples, n_features), e.g. "
            f"X.reshape(len(X), -1){images}."
        )
    if "contains infinity" in msg:
        return ValueError(
            f"{_sentence(msg)} Remove or replace the infinite values (e.g. with "
            f"np.nan_to_num or by imputing them) before calling {name}."
        )
    if msg.startswith("Input y contains NaN"):
        return ValueError(
            f"{_sentence(msg)} Drop the samples whose label is missing, or fill the "
            "labels in."
        )
    match = re.match(r"X has \d+ features, but \w+ is expecting (\d+) features", msg)
    if match:
        return ValueError(
            f"{_sentence(msg)} Pass rows of {match[1]} features, as in fit (the same "
            f"columns, the same image size), or fit {name} again on the new data."
        )
    return None


def validate_data_with_fix(estimator, X, y="no_validation", *, reset=True,
                           **check_params):
    """scikit-learn's ``validate_data``, with error messages that name the fix.

    Mismatched X and y lengths, complex or non-numeric entries, ragged rows,
    arrays of more than 2 dimensions, infinite values, missing labels and a
    changed number of features raise a ``ValueError`` that keeps
    scikit-learn's description of the problem (which its estimator checks
    look for) and says what to change. Other errors pass through unchanged.
    """
    try:
        return validate_data(estimator, X, y, reset=reset, **check_params)
    except ValueError as err:
        clear = _explain(estimator, err)
        if clear is None:
            raise
        raise clear from None


def resolve_image_shape(image_shape, n_features):
    """Return the ``(C, H, W)`` image shape for rows of ``n_features`` values.

    ``image_shape`` may be ``(C, H, W)``, ``(H, W)`` (grayscale), with at most
    one entry equal to ``-1`` (inferred as in :func:`numpy.reshape`), or
    ``None``: then only square grayscale (``H*H``) and square RGB (``3*H*H``)
    rows are inferred.
    """
    if image_shape is None:
        side = int(round(np.sqrt(n_features)))
        if side * side == n_features:
            return (1, side, side)
        side = int(round(np.sqrt(n_features / 3)))
        if 3 * side * side == n_features:
            return (3, side, side)
        raise ValueError(
            f"Cannot infer the image shape of rows with {n_features} features: "
            "only square grayscale (H*H) and square RGB (3*H*H) rows are inferred. "
            "Pass image_shape=(C, H, W), e.g. image_shape=(3, 32, 48), or give X "
            "as a 4-D array of shape (n_samples, C, H, W)."
        )
    if not isinstance(image_shape, (tuple, list)) or len(image_shape) not in (2, 3):
        raise ValueError(
            f"image_shape must be a tuple (C, H, W) or (H, W), got {image_shape!r}."
        )
    for dim in image_shape:
        if isinstance(dim, bool) or not isinstance(dim, Integral):
            raise TypeError(
                f"image_shape must hold integers, got {image_shape!r}; "
                "write e.g. image_shape=(1, 28, 28)."
            )
        if dim == 0 or dim < -1:
            raise ValueError(
                f"image_shape entries must be positive (or one -1 to infer), "
                f"got {image_shape!r}."
            )
    shape = tuple(int(d) for d in image_shape)
    if len(shape) == 2:
        shape = (1,) + shape
    if shape.count(-1) > 1:
        raise ValueError(f"image_shape may hold at most one -1, got {image_shape!r}.")
    if -1 in shape:
        known = int(np.prod([d for d in shape if d != -1]))
        if n_features % known:
            raise ValueError(
                f"image_shape={image_shape!r} does not divide the {n_features} "
                "features of each row; fix image_shape so that C*H*W equals "
                "n_features."
            )
        shape = tuple(n_features // known if d == -1 else d for d in shape)
    if int(np.prod(shape)) != n_features:
        raise ValueError(
            f"image_shape={image_shape!r} gives C*H*W={int(np.prod(shape))} but X "
            f"has {n_features} features per row; pass the image_shape X was made "
            "with, or reshape X."
        )
    return shape


def check_data_range(data_range):
    """Return ``(low, high)`` floats or ``None`` after checking them."""
    if data_range is None:
        return None
    if not isinstance(data_range, (tuple, list)) or len(data_range) != 2:
        raise ValueError(
            f"data_range must be a (low, high) pair or None, got {data_range!r}."
        )
    low, high = data_range
    if not all(isinstance(v, Real) and np.isfinite(v) for v in (low, high)):
        raise ValueError(f"data_range must hold two finite numbers, got {data_range!r}.")
    if not low < high:
        raise ValueError(f"data_range must satisfy low < high, got {data_range!r}.")
    return float(low), float(high)


def input_range_of(X, data_range):
    """Return ``(low, high)``, the value range X is read in (the fitted
    ``input_range_``), after checking X lies inside it.

    Integer X holds 8-bit pixels: ``(0, 255)``; bool X is binary ``(0, 1)``.
    Float X must lie in
    ``data_range``; with ``data_range=None`` floats are taken as they are and
    ``(0, 1)`` is returned (no rescaling).
    """
    if X.size == 0:
        return (0.0, 1.0)
    if X.dtype == np.bool_:
        return (0.0, 1.0)  # binary images: True is full intensity
    if np.issubdtype(X.dtype, np.integer):
        lo, hi = X.min(), X.max()
        if lo < 0 or hi > _UINT8_MAX:
            raise ValueError(
                f"Integer X is read as 8-bit pixels in [0, 255], but it holds values "
                f"in [{lo}, {hi}]. Pass uint8 images, or floats scaled to data_range."
            )
        return (0.0, _UINT8_MAX)
    if data_range is None:
        return (0.0, 1.0)
    low, high = data_range
    lo, hi = X.min(), X.max()
    # Compare at X's precision: float32 X clipped to data_range=(0.01, 1) holds
    # float32(0.01), a hair below the float64 0.01.
    with np.errstate(over="ignore"):
        low_x, high_x = X.dtype.type(low), X.dtype.type(high)
    if lo < low_x or hi > high_x:
        raise ValueError(
            f"X holds values in [{float(lo):.4g}, {float(hi):.4g}], outside data_range=({low:g}, "
            f"{high:g}). Scale X into that range (float images are expected in "
            "[0, 1]; uint8 in [0, 255]), or set data_range to the range your data "
            "uses (data_range=None takes floats as they are, only with "
            "distance='l2' or a callable)."
        )
    return (low, high)


def _warn_inferred_rgb(shape):
    """Rows of 3*H*H values are also grayscale images of other shapes (768 values:
    (3, 16, 16), or grayscale 16x48 or 24x32): say which reading was taken."""
    _, h, _ = shape
    n = 3 * h * h
    other = f"(1, {h}, {3 * h})" + (f" or (1, {3 * h // 2}, {2 * h})" if h % 2 == 0 else "")
    warn(
        f"image_shape=None: rows of {n} features are read as square RGB images "
        f"{shape}, but {n} values could also be grayscale images, e.g. {other}. "
        f"Pass image_shape={shape} to confirm (and silence this warning), or the "
        "shape your rows hold, or give X as a 4-D array (n_samples, C, H, W).",
        UserWarning)


#: Channel counts that mark an axis of 4-D X as the channel axis.
_CHANNELS = (1, 3, 4)


class Layout:
    """How the images of X were laid out, to return outputs the same way:
    ``"rows"`` (n, C*H*W), ``"nchw"``, ``"nhwc"`` (channels last, as PIL and
    imageio give them) or ``"nhw"`` (grayscale without a channel axis)."""

    def __init__(self, kind):
        self.kind = kind

    def images(self):
        return self.kind != "rows"

    def restore(self, out):
        """``out`` of shape (n, C, H, W) in this layout."""
        if self.kind == "rows":
            return out.reshape(len(out), -1)
        if self.kind == "nhwc":
            return np.ascontiguousarray(out.transpose(0, 2, 3, 1))
        if self.kind == "nhw":
            return out[:, 0]
        return out


def _stack_pil(images):
    """A list of PIL images as one array (n, H, W) or (n, H, W, C), as PIL gives."""
    sizes = {im.size for im in images}
    modes = {im.mode for im in images}
    if len(sizes) > 1:
        raise ValueError(
            f"X holds PIL images of {len(sizes)} sizes (e.g. {sorted(sizes)[:3]}, width x "
            "height); resize them to one, e.g. [im.resize((64, 64)) for im in images].")
    if len(modes) > 1:
        raise ValueError(
            f"X holds PIL images of modes {sorted(modes)}; convert them to one, e.g. "
            "[im.convert('RGB') for im in images].")
    return np.stack([np.asarray(im) for im in images])


def _channel_axis(shape, image_shape):
    """``"nchw"`` or ``"nhwc"`` for 4-D X of ``shape``; the rule of the docs:
    channels first when axis 1 has 1, 3 or 4 entries and axis 3 does not,
    channels last in the opposite case; otherwise ``image_shape`` decides, and
    without it the ambiguous (both) are refused and the rest (neither) read
    channels first."""
    first, last = shape[1] in _CHANNELS, shape[3] in _CHANNELS
    if first != last:
        return "nchw" if first else "nhwc"
    n, a, b, c = shape
    if image_shape is not None and len(image_shape) == 3:
        fits_first = tuple(shape[1:]) == tuple(image_shape)
        fits_last = (c, a, b) == tuple(image_shape)
        if fits_first != fits_last:
            return "nchw" if fits_first else "nhwc"
    if not first:
        return "nchw"
    if a == b == c:  # both readings have one shape: image_shape cannot tell them apart
        raise ValueError(
            f"4-D X of shape {tuple(shape)} could hold channels-first or channels-last "
            f"images of the same shape ({a}, {a}, {a}). Pass them as rows with "
            f"image_shape=({a}, {a}, {a}): X.reshape(len(X), -1) if they are channels first, "
            "X.transpose(0, 3, 1, 2).reshape(len(X), -1) if they are channels last.")
    raise ValueError(
        f"4-D X of shape {tuple(shape)} could hold {a}-channel {b}x{c} images "
        f"(channels first) or {c}-channel {a}x{b} images (channels last). Pass "
        f"image_shape=({a}, {b}, {c}) for the first reading, image_shape=({c}, {a}, {b}) "
        f"for the second, or transpose channels-last images first: "
        "X.transpose(0, 3, 1, 2).")


def _from_list(X):
    """A list of PIL images, or nested lists of images, as an array; other X as is."""
    if isinstance(X, (list, tuple)) and len(X) and all(hasattr(im, "getbands") for im in X):
        return _stack_pil(X)
    if isinstance(X, (list, tuple)):
        try:
            arr = np.asarray(X)
        except (ValueError, TypeError):
            return X  # ragged or odd entries: validate_data_with_fix explains
        if arr.ndim > 2:
            return arr  # nested lists of images are read like arrays
    return X


def _as_images(X, image_shape):
    """Channels-last and grayscale (n, H, W) arrays as channels-first
    ``(n, C, H, W)``, with their layout; None for other X."""
    ndim = getattr(X, "ndim", None)
    if ndim == 3 and hasattr(X, "shape"):
        X = np.asarray(X)
        return X[:, None], Layout("nhw")
    if ndim == 4:
        X = np.asarray(X)
        kind = _channel_axis(X.shape, image_shape)
        if kind == "nhwc":
            X = np.ascontiguousarray(X.transpose(0, 3, 1, 2))
        return X, Layout(kind)
    return None, Layout("rows")


def validate_images(estimator, X, y=None, *, image_shape=None, reset=True):
    """Validate X (2-D rows or images) and optionally y.

    Images may be 4-D channels first ``(n, C, H, W)`` or channels last
    ``(n, H, W, C)`` (see :func:`_channel_axis` for the rule), grayscale
    ``(n, H, W)``, or a list of equally sized PIL images of one mode.
    Returns ``(X2d, y, image_shape, layout)`` where ``X2d`` holds the images
    as channels-first rows and keeps the input's numeric dtype (uint8 stays
    uint8), ``n_features_in_`` counts C*H*W and ``layout`` (:class:`Layout`)
    puts outputs back in X's layout. With ``image_shape=None`` and 2-D X the
    shape is inferred (see :func:`resolve_image_shape`); square RGB (``3*H*H``
    values, which grayscale images of other shapes also have) comes with a
    ``UserWarning``.
    """
    if image_shape is None and not reset:
        image_shape = getattr(estimator, "image_shape_", None)
    X = _from_list(X)
    images, layout = _as_images(X, image_shape)
    shape4 = None
    if images is not None:
        shape4 = tuple(images.shape[1:])
        X = images.reshape(images.shape[0], -1)
    elif getattr(X, "ndim", 2) not in (1, 2) and hasattr(X, "shape"):
        raise ValueError(
            f"X must be 2-D (n_samples, C*H*W), images (n_samples, C, H, W) or "
            f"(n_samples, H, W, C), or grayscale (n_samples, H, W); got {X.ndim}-D with "
            f"shape {X.shape}. Reshape it to one of these layouts."
        )
    kwargs = dict(dtype="numeric", ensure_all_finite=True, accept_sparse=False)
    if y is None:
        X = validate_data_with_fix(estimator, X, reset=reset, **kwargs)
    else:
        X, y = validate_data_with_fix(estimator, X, y, reset=reset, **kwargs)
    if reset:
        if images is not None:
            if image_shape is not None and resolve_image_shape(
                image_shape, X.shape[1]
            ) != shape4:
                raise ValueError(
                    f"image_shape={image_shape!r} disagrees with the images of X, read as "
                    f"{shape4} (channels first); drop image_shape or make them agree."
                )
            shape = shape4
        else:
            shape = resolve_image_shape(image_shape, X.shape[1])
            if image_shape is None and shape[0] == 3:
                _warn_inferred_rgb(shape)
    else:
        shape = estimator.image_shape_
        if images is not None and shape4 != tuple(shape):
            raise ValueError(
                f"X has images of shape {shape4} (channels first), but "
                f"{type(estimator).__name__} was fitted on images of shape {tuple(shape)}. "
                f"Pass images of shape {tuple(shape)} (resize them), or fit again on the "
                "new images."
            )
    return X, y, shape, layout


def require_y(estimator, y, method):
    """Raise a ``ValueError`` naming the fix when ``method`` got no labels y."""
    if y is None:
        raise ValueError(
            f"{type(estimator).__name__} requires y to be passed, but the target y "
            f"is None: {method} trains on the class labels of X. Call {method}(X, y)."
        )


def encode_labels(y, *, min_per_class=1, classes=None):
    """Return ``(classes, y_encoded)`` after checking the labels.

    With ``classes`` (warm starts, ``partial_fit``) y is encoded against them:
    labels outside raise, and ``min_per_class`` applies to the classes present.
    """
    if y is None:
        raise ValueError(
            "This estimator requires y to be passed, but the target y is None. "
            "Pass the class labels: fit(X, y)."
        )
    try:
        check_classification_targets(y)
        found, y_enc = np.unique(y, return_inverse=True)
        if classes is not None:
            unknown = np.setdiff1d(found, classes)
            y_enc = np.searchsorted(classes, found)[y_enc]
    except TypeError as err:
        raise TypeError(
            f"The labels in y cannot be sorted ({err}): they mix types, e.g. "
            "strings and numbers or None. Use labels of one type, e.g. "
            "y.astype(str), and drop samples whose label is missing."
        ) from None
    if classes is None:
        classes = found
        if len(classes) < 2:
            raise ValueError(
                f"y holds 1 class ({classes[0]!r}); training needs at least 2 classes. "
                "Pass labels of at least two classes."
            )
    elif unknown.size:
        raise ValueError(
            f"y holds labels {unknown[:10].tolist()!r} that are not among the classes "
            f"{classes[:10].tolist()!r} fixed by the first fit; pass every label in "
            "`classes` on the first partial_fit call, or fit from scratch "
            "(warm_start=False)."
        )
    counts = np.bincount(y_enc, minlength=len(classes))
    small = classes[(counts > 0) & (counts < min_per_class)]
    if small.size:
        raise ValueError(
            f"Triplet mining needs at least {min_per_class} samples of every class "
            f"(a same-class positive besides the anchor); classes {small[:10].tolist()!r} "
            "have fewer (one sample). Add samples of those classes, drop them, or set "
            "triplet_weight=0."
        )
    return classes, y_enc.astype(np.int64)


def unique_classes(classes):
    """Sorted unique ``classes`` for a first ``partial_fit``; at least 2."""
    classes = np.unique(np.asarray(classes))
    if len(classes) < 2:
        raise ValueError(
            f"classes must list at least 2 labels, got {classes.tolist()!r}.")
    return classes
