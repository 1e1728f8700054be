"""The Waterbirds dataset (Sagawa et al., 2020) from a local folder."""

import csv
import os

import numpy as np
from sklearn.utils import Bunch

from ._images import check_size, check_splits, read_images

_COLUMNS = ("img_filename", "y", "split", "place")


def _read_metadata(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path!r} not found. load_waterbirds expects root/metadata.csv with columns "
            f"{', '.join(_COLUMNS)} (as in the Waterbirds release) and the images under root."
        )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    header = rows[0].keys() if rows else ()
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path!r} lacks the column(s) {missing}; load_waterbirds needs "
                         f"{list(_COLUMNS)}.")
    out = {"img_filename": np.array([r["img_filename"] for r in rows], dtype=object)}
    for col in ("y", "split", "place"):
        try:
            out[col] = np.array([int(r[col]) for r in rows], dtype=np.int64)
        except ValueError as exc:
            raise ValueError(f"Column {col!r} of {path!r} must hold integers: {exc}.") from None
    for col, valid in (("y", (0, 1)), ("place", (0, 1)), ("split", (0, 1, 2))):
        bad = np.setdiff1d(out[col], valid)
        if len(bad):
            raise ValueError(f"Column {col!r} of {path!r} must hold values in {valid}, "
                             f"found {bad.tolist()}.")
    return out


def load_waterbirds(root, *, size=64, splits=None):
    """Load Waterbirds from a local folder (nothing is downloaded).

    Birds (landbird ``y=0`` / waterbird ``y=1``) pasted on land (``place=0``)
    or water (``place=1``) backgrounds; the place is the nuisance.

    Parameters
    ----------
    root : str or path-like
        Folder with ``metadata.csv`` (columns ``img_filename``, ``y``,
        ``split``, ``place``; others are ignored) and the images at
        ``root/img_filename``.
    size : int, default=64
        Images are converted to RGB and resized (bilinear) to size x size.
    splits : int, str, list of them or None, default=None
        Keep only these splits: 0 or ``"train"``, 1 or ``"val"``, 2 or
        ``"test"``. None keeps all.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``X`` uint8 ``(n, 3, size, size)``; ``y`` int64; ``nuisance`` (the
        place, int64: what ``CIMTransformer.fit`` takes as ``groups``);
        ``groups = y * 2 + place`` int64 (the (class, place) cells, for group
        metrics); ``split`` int64; ``filenames`` (object array of str), in the
        order of ``metadata.csv``.

    Raises
    ------
    FileNotFoundError
        If ``metadata.csv`` or a listed image is missing.

    Examples
    --------
    >>> from sklearn_cim.datasets import load_waterbirds
    >>> data = load_waterbirds("data/waterbird_complete95_forest2water2",
    ...                        splits="train")  # doctest: +SKIP
    >>> data.X.shape  # doctest: +SKIP
    (4795, 3, 64, 64)
    """
    root = os.fspath(root)
    size = check_size(size)
    codes = check_splits(splits)
    meta = _read_metadata(os.path.join(root, "metadata.csv"))
    keep = np.ones(len(meta["y"]), bool) if codes is None else np.isin(meta["split"], codes)
    meta = {k: v[keep] for k, v in meta.items()}
    return Bunch(
        X=read_images(root, meta["img_filename"], size),
        y=meta["y"], nuisance=meta["place"], groups=meta["y"] * 2 + meta["place"],
        split=meta["split"],
        filenames=meta["img_filename"],
    )
