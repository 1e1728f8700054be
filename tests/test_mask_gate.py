"""The mask-side terms wait for the head (``sklearn_cim._objective.head_gate``):
weighted by how well the head reads the classes from psi(x)."""

import pytest
import torch

import sklearn_cim._cim
from sklearn_cim import CIMTransformer
from sklearn_cim._objective import GATE_LEVEL, head_gate


def _logits(predicted, n_classes):
    return torch.nn.functional.one_hot(torch.as_tensor(predicted), n_classes).float() * 5


def test_head_gate_runs_from_chance_to_full_halfway_to_perfect():
    y = torch.arange(4).repeat(4)  # 16 rows, 4 classes: chance 0.25
    assert head_gate(_logits(y, 4), y) == 1.0  # perfect
    assert head_gate(_logits(torch.zeros(16, dtype=torch.long), 4), y) == 0.0  # chance
    wrong = (y + 1) % 4
    assert head_gate(_logits(wrong, 4), y) == 0.0  # below chance: 0, not negative
    # 10 of 16 right: 0.625 = chance + GATE_LEVEL * (1 - chance) -> 1
    assert GATE_LEVEL == 0.5
    predicted = torch.where(torch.arange(16) < 10, y, wrong)
    assert head_gate(_logits(predicted, 4), y) == pytest.approx(1.0)
    # 7 of 16 right: (0.4375 - 0.25) / 0.375 = 0.5
    predicted = torch.where(torch.arange(16) < 7, y, wrong)
    assert head_gate(_logits(predicted, 4), y) == pytest.approx(0.5)
    # weights: the 7 right rows weigh twice the others -> 14 / 23
    weights = torch.where(torch.arange(16) < 7, 2.0, 1.0)
    assert head_gate(_logits(predicted, 4), y, weights) == pytest.approx(
        (14 / 23 - 0.25) / 0.375)


@pytest.mark.parametrize("gated", [True, False])
def test_the_mask_penalty_is_weighted_by_the_gate(images, tiny, monkeypatch, gated):
    """The loss weighs the mask term by the batch's gate: nothing at chance,
    in full once the head reads the classes; without the gate (0.1's
    objective, and models fitted then) always in full."""
    X, y = images
    monkeypatch.setattr(sklearn_cim._cim, "GATE_MASK", gated)
    cim = CIMTransformer(**tiny, mask_weight=2.0, triplet_weight=0.0).fit(X, y)
    net = cim.net_
    x = torch.as_tensor(X[12:28])  # 8 of each class
    labels = torch.as_tensor(y[12:28])
    mask = torch.full((16, 1, 8, 8), 0.5)
    for logits, expected in ((_logits(torch.zeros(16, dtype=torch.long), 2), 0.0),
                             (_logits(labels, 2), 2.0)):
        terms = net.loss_terms((mask, mask * x, logits), (labels, None), x)
        weight, term = terms["mask"]
        assert float(term) == pytest.approx(0.5)
        assert float(weight) == pytest.approx(expected if gated else 2.0)
        assert ("mask_gate" in terms) == gated
    assert ("train_mask_gate" in cim.history_[-1]) == gated



def test_a_model_fitted_before_the_gate_is_continued_without_it(images, tiny):
    """Models fitted before the gate (0.1) unpickle with gate_mask_ False and
    a continuation trains as they were fitted; a fresh fit decides anew."""
    X, y = images
    cim = CIMTransformer(**tiny, mask_weight=0.5, triplet_weight=0.0).fit(X, y)
    assert cim.gate_mask_ is True
    state = cim.__getstate__()
    del state["gate_mask_"]  # as pickled before the gate
    old = CIMTransformer.__new__(CIMTransformer)
    old.__setstate__(state)
    assert old.gate_mask_ is False
    old.partial_fit(X, y)
    assert "train_mask_gate" in old.history_[0] and "train_mask_gate" not in old.history_[-1]
    old.set_params(warm_start=False).fit(X, y)
    assert old.gate_mask_ is True and "train_mask_gate" in old.history_[-1]
