"""The CIM training objective: its settings and the skorch net computing it.

:class:`CIMObjective` holds the weights and choices of the loss;
:class:`CIMNet` trains :class:`~sklearn_cim._networks.CIMModule` on it: the
head's cross-entropy (balanced over the (class, group) cells with groups),
the triplet loss under a perceptual distance (bias-contrastive with groups),
the invariance of psi(x) to the group within each class (with groups), the
mask's sparsity, the VIB head's KL and the group adversary.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._batching import as_images, to_unit
from ._devices import native_rows
from ._distances import make_distance
from ._groups import PairTable, balanced_weights
from ._net import TorchNet
from ._networks import gaussian_kl
from ._seeding import seeded_global_rng
from ._triplet import mine_triplets, mining_distances, triplet_loss


@dataclass(frozen=True)
class CIMObjective:
    """The weights and choices of the CIM loss (see :class:`CIMTransformer`)."""

    classifier_weight: float = 1.0
    triplet_weight: float = 1.0
    margin: float = 0.1
    mining: str = "random"
    pair_transform: bool = False
    mask_weight: float = 0.0
    distance: Any = "lpips-alex"
    pretrained: bool = True
    head: str = "cnn"
    head_beta: float = 1e-3
    group_weighting: str = "balanced"
    group_triplets: bool = True
    adversary_weight: float = 0.0
    # (pickles written before these fields existed read the class defaults)
    invariance_weight: float = 0.0
    hard_mask: bool = False


def group_mean_gap(diff, groups, valid, half):
    """``sum_g share_g * <mean_A(diff | g), mean_B(diff | g)>``: for each group
    g, the inner product of the mean rows of ``diff`` over its valid rows in
    half A (``half`` True) and in half B, weighted by the group's share of the
    valid rows; groups missing from a half count 0. An unbiased estimate of
    ``sum_g share_g * |E[diff | g]|^2``."""
    n_groups = int(groups.max()) + 1
    member = torch.nn.functional.one_hot(groups, n_groups).to(diff.dtype) * valid[:, None]
    first, second = member * half[:, None], member * (~half)[:, None]
    n_first, n_second = first.sum(0), second.sum(0)
    mean_first = (first.T @ diff) / n_first.clamp_min(1)[:, None]
    mean_second = (second.T @ diff) / n_second.clamp_min(1)[:, None]
    both = (n_first > 0) & (n_second > 0)
    share = (n_first + n_second) / valid.sum().clamp_min(1)
    return ((mean_first * mean_second).sum(1) * share * both).sum()


class CIMNet(TorchNet):
    """skorch net training :class:`~sklearn_cim._networks.CIMModule` on the CIM objective.

    The perceptual metric is built on first use, kept outside skorch's module
    registry (so it is never optimised, never switched to train mode and never
    pickled) and stays frozen in eval mode.
    """

    def __init__(self, *args, objective=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective

    transient_attributes = TorchNet.transient_attributes + (
        "metric", "metric_key", "train_X", "pair_table", "sample_weights", "group_aware")

    def set_training_data(self, X, y):
        """Keep what the group-aware objective reads across the training set.

        ``y`` is 1-D (classes: the paper's objective) or ``(n, 3)`` rows of
        (class, group, row index); then each sample's balancing weight and a
        :class:`PairTable` for bias-contrastive triplets are built here.
        """
        self.release_training_data()
        self.group_aware = y.ndim == 2
        if y.ndim == 2:
            obj = self.objective
            classes, groups = y[:, 0], y[:, 1]
            if obj.group_weighting == "balanced":
                cells = classes * (int(groups.max()) + 1) + groups
                self.sample_weights = balanced_weights(cells)
            if (obj.group_triplets and obj.triplet_weight > 0) or obj.invariance_weight > 0:
                self.pair_table = PairTable(classes, groups)
                self.train_X = X  # pairs are drawn from the whole training set

    def release_training_data(self):
        self.train_X = self.pair_table = self.sample_weights = None

    def prepare_training(self):
        # psi(x) in training: hard or soft, as the objective says
        self.module_.hard = bool(self.objective.hard_mask)
        # the metric (a random trunk with pretrained=False) is drawn from the
        # global RNG seeded by ``seed``: the same in every process of a
        # data-parallel fit and whenever it is rebuilt (after unpickling)
        if self.objective.triplet_weight > 0:
            self.get_metric()  # fail before the first step if the trunk is unavailable

    def untrained_parameters(self):
        out = []
        if self.objective.classifier_weight == 0:  # nothing trains the head
            out += list(self.module_.head.parameters())
        adversary = self.module_.adversary
        if adversary is not None and not self.uses_adversary():
            out += list(adversary.parameters())
        return out

    def uses_adversary(self):
        return (self.objective.adversary_weight > 0 and self.module_.adversary is not None
                and getattr(self, "group_aware", False))

    def get_metric(self):
        key = (self.objective.distance, self.objective.pretrained, str(self.device))
        if getattr(self, "metric", None) is None or getattr(self, "metric_key", None) != key:
            with seeded_global_rng(self.seed, self.device):  # not by the epochs done
                self.metric = make_distance(*key[:2]).to(self.device)
            if self.channels_last:
                self.metric.use_channels_last()
            self.metric_key = key
        return self.metric

    def loss_terms(self, y_pred, y_true, X):
        mask, psi, head_out = y_pred  # head_out: logits, or (mu, sigma) of the vib head
        obj = self.objective
        terms = {}
        groups = rows = None
        if y_true.ndim == 2:  # (class, group, row index): the group-aware objective
            y_true, groups, rows = y_true.unbind(1)
        if obj.head == "vib":
            mu, sigma = head_out
            logits = self.module_.head.sample_logits(mu, sigma, self.generator)[0]
            if obj.classifier_weight > 0:
                terms["kl"] = (obj.classifier_weight * obj.head_beta, gaussian_kl(mu, sigma))
        else:
            logits = head_out
        if obj.classifier_weight > 0:
            terms["ce"] = (obj.classifier_weight, self.cross_entropy(logits, y_true, rows))
        positives = None
        if groups is not None and self.pair_table is not None:
            # one same-class, other-group image per anchor (rows, valid, images), drawn
            # and copied to the device once for the terms below
            pos, pos_ok = self.pair_table.positives(y_true, groups, self.generator)
            positives = (pos, pos_ok, self.training_images(pos))
        if obj.triplet_weight > 0:
            terms["triplet"] = (obj.triplet_weight,
                                self.triplet_term(psi, X, y_true, groups, positives))
        if positives is not None and obj.invariance_weight > 0:
            terms["invariance"] = (obj.invariance_weight,
                                   self.invariance_term(psi, groups, positives))
        if obj.mask_weight > 0:
            terms["mask"] = (obj.mask_weight, mask.mean())
        if groups is not None and self.uses_adversary():
            terms["adversary"] = (obj.adversary_weight,
                                  self.adversary_term(psi, groups, rows))
        return terms

    def adversary_term(self, psi, groups, rows):
        """Cross-entropy of the linear group adversary on psi(x), balanced over the
        cells like the head's (so the class alone does not predict the group).
        The adversary descends it; the mask net, through the reversed gradient,
        ascends it."""
        return self.cross_entropy(self.module_.adversary(psi), groups, rows)

    def cross_entropy(self, logits, y, rows=None):
        """The head's cross-entropy; with groups, weighted to balance the cells."""
        if rows is None or self.sample_weights is None:
            return self.criterion_(logits, y)
        per_sample = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
        return (per_sample * self.sample_weights[rows]).mean()

    def invariance_term(self, psi, groups, positives):
        """How far psi(x) of each group is, on average, from psi of same-class
        images of other groups: ``sum_g share_g * <D_g, D'_g> / (H * W)``, with
        ``D_g`` and ``D'_g`` the mean of ``psi(x) - psi(p)`` over two random
        halves of the batch's anchors of group g (``p`` each anchor's positive,
        through the mask net without gradient) and ``share_g`` the share of
        anchors in group g.

        Within a class, the group-wise means of psi(x) then agree: a linear
        model on psi(x) cannot read the group from them. The product of two
        independent halves is an unbiased estimate of ``|E[D_g]|^2`` (the
        squared norm of one mean would also count the spread of same-class
        images, and shrink psi as a whole).
        """
        _, valid, pos_images = positives
        with torch.no_grad():
            psi_pos = self.module_.masked(pos_images)
        half = torch.rand(len(groups), generator=self.generator,
                          device=self.generator.device).to(groups.device) < 0.5
        h, w = psi.shape[-2:]
        return group_mean_gap((psi.float() - psi_pos.float()).flatten(1), groups, valid,
                              half) / (h * w)

    def triplet_term(self, psi, x, y, groups=None, positives=None):
        """``mean(relu(d(psi(x), p) - d(psi(x), q) + margin))`` over the batch.

        One trunk pass with gradient (the anchors psi(x)); positives and
        negatives are rows of gradient-free embeddings: of the originals, or of
        psi itself (detached) with ``pair_transform=True``. Hard mining uses the
        originals' pairwise distances, in float32 (outside autocast). With groups
        and ``group_triplets``, the positive and the negative are drawn from the
        whole training set (:meth:`group_triplet_term`; the caller draws
        ``positives``).
        """
        obj = self.objective
        metric = self.get_metric()
        anchor = metric.embed(psi)
        if groups is not None and obj.group_triplets and positives is not None:
            return self.group_triplet_term(metric, anchor, y, groups, positives)
        with torch.no_grad():
            need_originals = not obj.pair_transform or obj.mining == "hard"
            originals = metric.embed(x) if need_originals else None
            pairwise = mining_distances(metric, originals) if obj.mining == "hard" else None
        pos, neg, valid = mine_triplets(
            y, obj.mining, generator=self.generator, pairwise=pairwise)
        pairs = [e.detach() for e in anchor] if obj.pair_transform else originals
        d_pos = metric.between(anchor, metric.take(pairs, pos))
        d_neg = metric.between(anchor, metric.take(pairs, neg))
        return triplet_loss(d_pos, d_neg, obj.margin, valid)

    def group_triplet_term(self, metric, anchor, y, groups, positives):
        """Bias-contrastive triplets: the positive has the anchor's class and
        another group, the negative the anchor's group and another class, both
        drawn from the whole training set; anchors without one are left out."""
        _, pos_ok, pos_images = positives
        neg, neg_ok = self.pair_table.negatives(y, groups, self.generator)
        with torch.no_grad():
            pairs = torch.cat([pos_images, self.training_images(neg)])
            if self.objective.pair_transform:
                pairs = self.module_.masked(pairs)
            emb = metric.embed(pairs)
        n = len(y)
        d_pos = metric.between(anchor, metric.take(emb, slice(0, n)))
        d_neg = metric.between(anchor, metric.take(emb, slice(n, 2 * n)))
        return triplet_loss(d_pos, d_neg, self.objective.margin, pos_ok & neg_ok)

    def training_images(self, rows):
        """Rows of the training set as unit-range images on the device."""
        X = self.train_X
        if torch.is_tensor(X):
            xb = X[rows.to(X.device)]
        else:
            xb = torch.from_numpy(native_rows(np.asarray(X[rows.cpu().numpy()])))
        xb = xb.to(self.device)
        return as_images(to_unit(xb, self.input_range), self.image_shape, self.channels_last)
