"""Settings and data makers shared by the tests.

Test modules take them as fixtures (``tiny``, ``vib_tiny``, ``idx_bytes``,
``write_idx``, the image makers below), not by importing this file.
"""

import gzip

import numpy as np
import pytest

# Small, fast CPU settings shared by the tests (the ``tiny`` fixture gives a copy).
TINY = dict(
    distance="l2", max_epochs=1, batch_size=16, tn_width=4, tn_depth=1,
    head_width=4, device="cpu", random_state=0,
)
# The same for VIBClassifier (the ``vib_tiny`` fixture gives a copy).
VIB_TINY = dict(hidden_layer_sizes=(8,), latent_dim=4, max_epochs=2, batch_size=16,
                device="cpu", random_state=0)


def idx_bytes(array, code=0x08, dtype=">u1"):
    """``array`` in the idx format of MNIST (type ``code``, big-endian ``dtype``)."""
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + np.asarray(array, dtype).tobytes()


def write_idx(path, array, gz=False):
    """Write ``array`` as an idx file of unsigned bytes, gzip-compressed if ``gz``."""
    data = idx_bytes(array)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


@pytest.fixture
def tiny():
    return dict(TINY)


@pytest.fixture
def vib_tiny():
    return dict(VIB_TINY)


@pytest.fixture(name="idx_bytes")
def idx_bytes_fixture():
    """:func:`idx_bytes`, for the test modules (they take helpers as fixtures)."""
    return idx_bytes


@pytest.fixture(name="write_idx")
def write_idx_fixture():
    """:func:`write_idx`, for the test modules (they take helpers as fixtures)."""
    return write_idx


@pytest.fixture
def images():
    """40 grayscale 8x8 images in [0, 1], two classes told apart by brightness."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 20)
    X = (rng.rand(40, 1, 8, 8) * 0.5 + 0.5 * y[:, None, None, None]).astype(np.float32)
    return X, y


@pytest.fixture
def nuisance_images():
    """48 RGB 8x8 images: the class is a bright square top or bottom; the nuisance
    is the red channel of the background, agreeing with the class for 40 of them."""
    rng = np.random.RandomState(0)
    n = 48
    y = np.repeat([0, 1], n // 2)
    groups = y.copy()
    groups[::6] = 1 - groups[::6]  # 8 images whose nuisance disagrees
    X = rng.rand(n, 3, 8, 8).astype(np.float32) * 0.1
    X[:, 0] += 0.5 * groups[:, None, None]
    X[y == 0, :, 1:3, 2:6] = 1.0
    X[y == 1, :, 5:7, 2:6] = 1.0
    return np.clip(X, 0, 1), y, groups


def group_fit_rows(y, groups, random_state):
    """The rows a group-aware ``fit`` trains its mask on (it holds the removal
    check's images back), for integer ``y`` and ``groups`` that are their own
    codes and an int ``random_state``."""
    from sklearn_cim._removal import held_out_rows
    seed = np.random.RandomState(random_state).randint(np.iinfo(np.int32).max)
    return ~held_out_rows(y, groups, seed)


def gated_mean_of(history, epoch, name):
    """What a mask-side term ``name`` added to an epoch's logged loss, before
    its weight: the batch-size-weighted mean of ``train_mask_gate * train_<name>``
    over the epoch's batches (see ``sklearn_cim._objective.head_gate``)."""
    batches = history[epoch, "batches"]
    gate = np.array([b["train_mask_gate"] for b in batches])
    term = np.array([b["train_" + name] for b in batches])
    sizes = np.array([b["train_batch_size"] for b in batches])
    return float(np.average(gate * term, weights=sizes))


@pytest.fixture
def gated_mean():
    return gated_mean_of


@pytest.fixture
def fit_rows():
    return group_fit_rows
