import numpy as np
import pytest

# Small, fast CPU settings shared by the tests.
TINY = dict(
    distance="l2", max_epochs=1, batch_size=16, tn_width=4, tn_depth=1,
    head_width=4, device="cpu", random_state=0,
)


@pytest.fixture
def tiny():
    return dict(TINY)


@pytest.fixture
def images():
    """40 grayscale 8x8 images in [0, 1], two classes told apart by brightness."""
    rng = np.random.RandomState(0)
    y = np.repeat([0, 1], 20)
    X = (rng.rand(40, 1, 8, 8) * 0.5 + 0.5 * y[:, None, None, None]).astype(np.float32)
    return X, y
