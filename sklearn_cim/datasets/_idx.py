"""MNIST idx files: ``read_idx`` and ``load_colored_mnist``."""

import gzip
import os

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state

from ._nuisance import _nuisance_bunch

# idx type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path):
    """Read an idx file (the MNIST format), gzipped or not, into a numpy array.

    Parameters
    ----------
    path : str or path-like
        An idx file such as ``t10k-images-idx3-ubyte`` or its ``.gz`` version
        (gzip is recognised by its magic bytes, whatever the file name).

    Returns
    -------
    data : ndarray
        Native-endian array with the shape stored in the file (``uint8`` for
        MNIST images ``(n, 28, 28)`` and labels ``(n,)``).

    Raises
    ------
    ValueError
        If the file does not start with idx magic bytes or its size does not
        match the stored shape.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from sklearn_cim.datasets import read_idx
    >>> path = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 1]))
    >>> read_idx(path)
    array([7, 2, 1], dtype=uint8)
    """
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{os.fspath(path)!r} is not an idx file: it should start with bytes "
            f"00 00 <type code> <ndim>, but starts with {data[:4].hex(' ') or 'nothing'}. "
            "Pass an MNIST-style idx file (optionally gzipped)."
        )
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(dims) != ndim or len(data) != expected:
        raise ValueError(
            f"{os.fspath(path)!r} is a truncated or corrupt idx file: shape {dims} needs "
            f"{expected} bytes, the file has {len(data)}. Download it again."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _find(root, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(root, name)
        if os.path.isfile(path):
            return path
    return None


def _read_pair(root, images, labels):
    X = read_idx(images)
    y = read_idx(labels)
    if X.ndim != 3 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(
            f"{images} and {labels} do not form an image/label pair: shapes {X.shape} and "
            f"{y.shape}; expected (n, H, W) and (n,)."
        )
    return X.astype(np.float32) / 255, y.astype(np.int64)


def _mnist_files(root):
    found = {stem: _find(root, stem) for stem in _STEMS}
    expected = ", ".join(f"{stem}[.gz]" for stem in _STEMS)
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"MNIST directory {root!r} does not exist. Pass the directory that holds "
            f"{expected} (the train pair is optional)."
        )
    missing = [stem for stem in _STEMS[2:] if found[stem] is None]
    if missing:
        raise FileNotFoundError(
            f"{' and '.join(s + '[.gz]' for s in missing)} not found in {root!r}. "
            f"load_colored_mnist reads the standard MNIST idx files {expected}; the "
            "t10k pair is required, the train pair is optional."
        )
    has_train = [found[stem] is not None for stem in _STEMS[:2]]
    if any(has_train) and not all(has_train):
        present, absent = _STEMS[:2] if has_train[0] else _STEMS[1::-1]
        raise FileNotFoundError(
            f"{present} is in {root!r} but {absent}[.gz] is not: the train images and "
            "labels must come together. Add the missing file or remove the other one."
        )
    return found, all(has_train)


def load_colored_mnist(root, *, nuisance="background", p_train=0.95, shift="random",
                       n_train=None, test_size=0.2, random_state=0):
    """MNIST digits with a colour nuisance (see :func:`make_colored_digits`).

    Reads the standard MNIST idx files from ``root`` (nothing is downloaded):
    ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally
    gzipped (``.gz``). If the train pair is present it is used for training and
    the t10k pair for testing; if only the t10k pair is present, it is split
    (stratified) into training and test sets.

    Parameters
    ----------
    root : str or path-like
        Directory holding the idx files.
    nuisance : {"background", "corner", "mark", "none"}, default="background"
        See :func:`add_nuisance`.
    p_train : float in [0, 1], default=0.95
        Probability that the nuisance agrees with the label in the training and
        in-distribution test sets.
    shift : {"random", "reversed"}, default="random"
        How the out-of-distribution test nuisance is drawn (see
        :func:`add_nuisance`; it never deliberately agrees with the label).
    n_train : int or None, default=None
        Subsample this many training images (stratified). None keeps all.
    test_size : float or int, default=0.2
        Only when the train pair is absent: the share (or count) of the t10k
        images held out for testing (0.2 gives 8,000 train / 2,000 test).
    random_state : int, RandomState instance or None, default=0
        Seeds the split, the subsample and the nuisance draws.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        The keys of :func:`make_colored_digits`; images are ``(n, 3, 28, 28)``
        float32 in [0, 1].

    Raises
    ------
    FileNotFoundError
        If the t10k pair (or half of the train pair) is missing; the message
        lists the expected file names and ``root``.

    Examples
    --------
    >>> from sklearn_cim.datasets import load_colored_mnist
    >>> data = load_colored_mnist("data/mnist", n_train=2000)  # doctest: +SKIP
    >>> data.X_train.shape  # doctest: +SKIP
    (2000, 3, 28, 28)
    """
    root = os.fspath(root)
    found, has_train = _mnist_files(root)
    rng = check_random_state(random_state)
    g_test, y_test = _read_pair(root, found[_STEMS[2]], found[_STEMS[3]])
    if has_train:
        g_train, y_train = _read_pair(root, found[_STEMS[0]], found[_STEMS[1]])
        source = "MNIST train (training) and t10k (test) sets"
    else:
        g_train, g_test, y_train, y_test = train_test_split(
            g_test, y_test, test_size=test_size, stratify=y_test, random_state=rng)
        source = f"MNIST t10k set split into training and test (test_size={test_size})"
    if n_train is not None and n_train != len(y_train):
        if not isinstance(n_train, (int, np.integer)) or not 1 <= n_train <= len(y_train):
            raise ValueError(
                f"n_train must be an integer in [1, {len(y_train)}] (the training images "
                f"available in {root!r}) or None, got {n_train!r}."
            )
        g_train, _, y_train, _ = train_test_split(
            g_train, y_train, train_size=int(n_train), stratify=y_train, random_state=rng)
    return _nuisance_bunch(
        g_train, y_train, g_test, y_test, nuisance=nuisance, p_train=p_train, shift=shift,
        rng=rng, source=f"{source} from {root!r}")
