"""Triplet mining inside a batch and the margin triplet loss.

For each anchor ``i`` a positive ``p`` (same class, ``p != i``) and a negative
``q`` (other class) are drawn from the batch:

* ``"random"``: uniformly among the valid candidates;
* ``"hard"``: the farthest positive and the nearest negative under a pairwise
  distance matrix of the original images.

Anchors with no valid positive or negative in the batch are left out of the
loss (``valid`` is False for them).
"""

import torch

MININGS = ("random", "hard")


def mine_triplets(y, mining, *, generator=None, pairwise=None):
    """Return ``(positive_index, negative_index, valid)`` for each anchor."""
    n = y.shape[0]
    same = y[:, None] == y[None, :]
    eye = torch.eye(n, dtype=torch.bool, device=y.device)
    pos_ok = same & ~eye
    neg_ok = ~same
    valid = pos_ok.any(dim=1) & neg_ok.any(dim=1)
    if mining == "random":
        scores = torch.rand((n, n), generator=generator, device=y.device)
        pos_scores, neg_scores = scores, scores
    elif mining == "hard":
        pos_scores, neg_scores = pairwise, -pairwise
    else:
        raise ValueError(f"mining={mining!r} is unknown; choose one of {MININGS}.")
    low = torch.finfo(pos_scores.dtype).min
    pos = torch.where(pos_ok, pos_scores, low).argmax(dim=1)
    neg = torch.where(neg_ok, neg_scores, low).argmax(dim=1)
    return pos, neg, valid


def mining_distances(metric, embedding):
    """``metric``'s pairwise distance matrix of ``embedding`` for hard mining,
    in float32 whatever autocast is active.

    Under bf16 the matrix (a difference of Gram products for "l2" and LPIPS)
    cancels badly: near-duplicates read as 0 and the nearest negative changes.
    """
    device_type = embedding[0].device.type
    with torch.autocast(device_type=device_type, enabled=False):
        return metric.pairwise([e.float() for e in embedding]).float()


def triplet_loss(d_pos, d_neg, margin, valid):
    """Mean of ``relu(d_pos - d_neg + margin)`` over the valid anchors."""
    per_anchor = torch.relu(d_pos - d_neg + margin) * valid
    return per_anchor.sum() / valid.sum().clamp_min(1)
