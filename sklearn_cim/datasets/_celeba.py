"""CelebA (Liu et al., 2015) from a local folder in its standard layout."""

import numbers
import os

import numpy as np
from sklearn.utils import Bunch

from ._images import check_size, check_splits, read_images

_LAYOUT = ("list_attr_celeba.txt, list_eval_partition.txt and the images in "
           "img_align_celeba/")


def _lines(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} not found. load_celeba expects root to hold "
                                f"{_LAYOUT} (the standard CelebA files).")
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


def _read_attributes(path):
    lines = _lines(path)
    if len(lines) < 2 or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise ValueError(f"{path!r} does not look like list_attr_celeba.txt: line 1 should be "
                         "the image count, line 2 the attribute names.")
    names, rows = lines[1], lines[2:]
    if int(lines[0][0]) != len(rows) or any(len(r) != len(names) + 1 for r in rows):
        raise ValueError(f"{path!r} is truncated or malformed: expected {lines[0][0]} rows "
                         f"of a file name and {len(names)} values.")
    values = np.array([r[1:] for r in rows], dtype=np.int64).reshape(len(rows), len(names))
    if not np.isin(values, (-1, 1)).all():
        raise ValueError(f"{path!r} must hold attribute values -1 or 1.")
    return names, np.array([r[0] for r in rows], dtype=object), values


def load_celeba(root, *, target="Blond_Hair", group_attr="Male", size=64, splits=None,
                max_samples=None):
    """Load CelebA from a local folder (nothing is downloaded).

    Parameters
    ----------
    root : str or path-like
        Folder with the standard CelebA files: ``list_attr_celeba.txt`` (image
        count, the 40 attribute names, then ``filename v1 .. v40`` with values
        -1/1), ``list_eval_partition.txt`` (``filename 0|1|2``) and the
        images in ``img_align_celeba/``.
    target : str, default="Blond_Hair"
        Attribute used as the label ``y`` (1 where the attribute is 1, else 0).
    group_attr : str, default="Male"
        Attribute that, with the label, defines the groups.
    size : int, default=64
        Images are converted to RGB and resized (bilinear) to size x size.
    splits : int, str, list of them or None, default=None
        Keep only these splits: 0 or ``"train"``, 1 or ``"val"``, 2 or
        ``"test"``. None keeps all.
    max_samples : int or None, default=None
        Keep only the first ``max_samples`` images (in file order) of the
        selected splits; loading all 202,599 images at 64 px takes ~2.5 GB.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``X`` uint8 ``(n, 3, size, size)``; ``y`` int64 in {0, 1};
        ``nuisance`` = ``group_attr`` in {0, 1} (what ``CIMTransformer.fit``
        takes as ``groups``); ``groups = y * 2 + nuisance`` (the cells, for
        group metrics);
        ``split`` int64; ``filenames`` (object array of str).

    Raises
    ------
    FileNotFoundError
        If a metadata file or a listed image is missing.
    ValueError
        If ``target`` or ``group_attr`` is not an attribute of the file (the
        message lists the valid ones).

    Examples
    --------
    >>> from sklearn_cim.datasets import load_celeba
    >>> data = load_celeba("data/celeba", splits="test", max_samples=1000)  # doctest: +SKIP
    >>> data.X.shape, sorted(set(data.groups))  # doctest: +SKIP
    ((1000, 3, 64, 64), [0, 1, 2, 3])
    """
    root = os.fspath(root)
    size = check_size(size)
    codes = check_splits(splits)
    if max_samples is not None and (not isinstance(max_samples, numbers.Integral)
                                    or isinstance(max_samples, bool) or max_samples < 1):
        raise ValueError(f"max_samples must be a positive integer or None, got "
                         f"{max_samples!r}.")
    attr_path = os.path.join(root, "list_attr_celeba.txt")
    names, filenames, values = _read_attributes(attr_path)
    for param, name in (("target", target), ("group_attr", group_attr)):
        if name not in names:
            raise ValueError(f"Unknown {param} attribute {name!r}; valid attributes of "
                             f"{attr_path!r}: {', '.join(names)}.")
    part_path = os.path.join(root, "list_eval_partition.txt")
    partition = {row[0]: row[-1] for row in _lines(part_path)}
    missing = [f for f in filenames if f not in partition]
    if missing:
        raise ValueError(f"{len(missing)} image(s) of {attr_path!r} have no split in "
                         f"{part_path!r}, e.g. {missing[0]!r}.")
    split = np.array([int(partition[f]) for f in filenames], dtype=np.int64)
    keep = np.flatnonzero(np.ones(len(split), bool) if codes is None
                          else np.isin(split, codes))[:max_samples]
    y = (values[keep, names.index(target)] == 1).astype(np.int64)
    attr = (values[keep, names.index(group_attr)] == 1).astype(np.int64)
    return Bunch(
        X=read_images(os.path.join(root, "img_align_celeba"), filenames[keep], size),
        y=y, nuisance=attr, groups=y * 2 + attr, split=split[keep],
        filenames=filenames[keep],
    )
