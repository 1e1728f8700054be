"""Warnings raised deep inside ``fit`` point at the caller's line (the first
frame outside sklearn_cim), whatever the depth they are raised at."""

import numpy as np
import pytest
from skorch.callbacks import Callback

from sklearn_cim import CIMTransformer, VIBClassifier


class _StopAfterOneEpoch(Callback):
    def on_epoch_end(self, net, **kwargs):
        raise KeyboardInterrupt


def test_an_interrupted_fit_warns_at_the_callers_line():
    rng = np.random.RandomState(0)
    X, y = rng.rand(40, 4), np.repeat([0, 1], 20)
    with pytest.warns(RuntimeWarning, match="interrupted after 1 of 3 epochs") as record:
        VIBClassifier(hidden_layer_sizes=(4,), latent_dim=2, max_epochs=3, batch_size=20,
                      device="cpu", random_state=0, callbacks=[_StopAfterOneEpoch()]).fit(X, y)
    said = [w for w in record if "interrupted" in str(w.message)]
    assert said and all(w.filename == __file__ for w in said)


def test_an_ambiguous_row_shape_warns_at_the_callers_line():
    rng = np.random.RandomState(0)
    X, y = rng.rand(8, 3 * 8 * 8).astype(np.float32), [0, 1] * 4
    cim = CIMTransformer(distance="l2", max_epochs=1, batch_size=4, tn_width=2, head_width=2,
                         device="cpu", random_state=0)
    with pytest.warns(UserWarning, match="read as square RGB images") as record:
        cim.fit(X, y)
    said = [w for w in record if "square RGB" in str(w.message)]
    assert said and all(w.filename == __file__ for w in said)
