"""The CIM training objective: its settings and the skorch net computing it.

:class:`CIMObjective` holds the weights and choices of the loss;
:class:`CIMNet` trains :class:`~sklearn_cim._networks.CIMModule` on it: the
head's cross-entropy (balanced over the (class, group) cells with groups),
the triplet loss under a perceptual distance (bias-contrastive with groups),
the invariance of psi(x) to the group within each class (with groups), the
mask's sparsity, the nuisance map term (with groups: the mask pays where a
per-pixel probe reads the group, :mod:`sklearn_cim._nuisance_map`) and the
VIB head's KL.
"""

import functools
from dataclasses import dataclass
from typing import Any

import torch

from ._distances import LPIPS_TRUNKS, make_distance
from ._groups import PairTable, cell_weights
from ._net import TorchNet
from ._networks import gaussian_kl
from ._nuisance_map import map_coverage, nuisance_map, train_probe
from ._removal import RemovalWarning
from ._seeding import seeded_global_rng
from ._triplet import mine_triplets, mining_distances, triplet_loss
from ._warn import warn


@dataclass(frozen=True)
class CIMObjective:
    """The weights and choices of the CIM loss, as :class:`CIMTransformer`'s
    parameters give them ("auto" resolved by ``sklearn_cim._cim.resolve_auto``);
    no defaults of its own."""

    classifier_weight: float
    triplet_weight: float
    margin: float
    mining: str
    pair_transform: bool
    mask_weight: float
    distance: Any
    pretrained: bool
    head: str
    head_beta: float
    group_weighting: str
    group_triplets: bool
    invariance_weight: float
    hard_mask: bool
    gate_mask: bool = False
    map_weight: float = 0.0

    def __setstate__(self, state):
        # pickled before the invariance term, hard masks and the nuisance map:
        # the objective then; adversary_weight: a field until the adversary was removed
        state = {"invariance_weight": 0.0, "hard_mask": False, "map_weight": 0.0, **state}
        state.pop("adversary_weight", None)
        self.__dict__.update(state)


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


#: The head's accuracy on psi(x), as a share of the way from chance to perfect,
#: at which the mask's sparsity term weighs in full (:func:`head_gate`).
GATE_LEVEL = 0.5


def head_gate(logits, y, weights=None):
    """How far the head reads the classes from psi(x) in this batch, in [0, 1]:
    its accuracy (weighted by ``weights`` per row, e.g. each row's (class,
    group) cell weight) above chance, over :data:`GATE_LEVEL` of the way from
    chance (1 / n_classes) to 1; no gradient.

    The mask's sparsity term is multiplied by it (unless
    ``sklearn_cim._cim.GATE_MASK`` is False: 0.1's objective). It is smallest
    at psi(x) = 0, and before the head reads anything its cross-entropy cannot
    pull back: a mask closed then stays closed (a collapse: the head's loss
    stuck at ln(n_classes)). Gated, it starts when the head reads the classes
    from psi(x), however long the head takes to learn (epochs, with few
    images in the cells where the nuisance disagrees). The invariance term is
    not gated: it too is 0 at psi(x) = 0, but it pushes down only what differs
    between groups within a class, never what the classes share, and removing
    the nuisance early is what lets the head learn the classes (measured: the
    changelog, 0.2). The gate cannot reopen a mask that closed later (e.g.
    under a large lr): the collapse warning says so.
    """
    with torch.no_grad():
        correct = (logits.argmax(1) == y).to(torch.float32)
        if weights is None:
            accuracy = correct.mean()
        else:
            accuracy = (correct * weights).sum() / weights.sum().clamp_min(1e-12)
        chance = 1.0 / logits.shape[1]
        return ((accuracy - chance) / (GATE_LEVEL * (1.0 - chance))).clamp(0.0, 1.0)


#: How many built metrics :func:`built_metric` keeps (least recently used dropped).
METRIC_CACHE_SIZE = 4


def _normalised_device(device):
    """``device`` as one string per device: ``"cuda"`` names the current CUDA
    device (``"cuda:<index>"``), ``"cpu:0"`` is ``"cpu"``."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    elif device.type == "cpu":
        device = torch.device("cpu")
    return str(device)


def metric_key(distance, pretrained, device, seed, channels_last):
    """The arguments of :func:`built_metric` reduced to what the metric depends
    on, or None for a callable distance (not cached: wrapping it costs nothing,
    and a user's object need not be hashable).

    The device is normalised (:func:`_normalised_device`); the seed counts only
    for a random trunk (an LPIPS distance with ``pretrained=False``: the
    ImageNet trunk, "ssim" and "l2" draw nothing), ``pretrained`` and
    ``channels_last`` only for an LPIPS distance (the others have no weights).
    """
    if callable(distance):
        return None
    device = _normalised_device(device)
    if distance not in LPIPS_TRUNKS:
        return (distance, True, device, None, False)
    pretrained = bool(pretrained)
    return (distance, pretrained, device, None if pretrained else seed, bool(channels_last))


def _build_metric(distance, pretrained, device, seed, channels_last):
    with seeded_global_rng(seed, device):
        metric = make_distance(distance, pretrained).to(device)
    if channels_last:
        metric.use_channels_last()
    return metric


_cached_metric = functools.lru_cache(maxsize=METRIC_CACHE_SIZE)(_build_metric)


def built_metric(distance, pretrained, device, seed, channels_last):
    """The :class:`~sklearn_cim._distances.Distance` a fit measures with,
    frozen in eval mode; a random trunk (``pretrained=False``) is drawn from
    torch's global RNG seeded by ``seed`` (the net's, not by the epochs done):
    the same in every process of a data-parallel fit and in every fit of that
    seed.

    Built once for the fits that share what it depends on (:func:`metric_key`:
    a search, a ``partial_fit`` loop, fits of any seed on a pretrained trunk)
    and kept here, outside the nets: never in skorch's module registry (so
    never optimised or switched to train mode) and never pickled with a model.
    The last :data:`METRIC_CACHE_SIZE` are kept until
    :func:`clear_metric_cache`. A metric is only read (forward passes), so fits
    in concurrent threads may share it. A callable distance is wrapped anew on
    every call, never cached.
    """
    key = metric_key(distance, pretrained, device, seed, channels_last)
    if key is None:  # draws nothing: no lock, no global RNG fork, on every step
        return make_distance(distance, pretrained)
    return _cached_metric(*key)


def clear_metric_cache():
    """Free the perceptual distances that fits keep for later fits.

    A ``CIMTransformer`` fit builds the distance its triplet loss measures
    with (for an LPIPS distance, a trunk on the fit's device: about 10 MB for
    AlexNet, 3 MB for SqueezeNet, 59 MB for VGG-16) and keeps it, so that the
    next fits with the same ``distance``, ``pretrained``, device,
    ``channels_last`` and, for a random trunk (``pretrained=False``), seed
    reuse it: a search or a loop of fits loads a trunk once. The last four are
    kept for the life of the process, outside the fitted models (which never
    pickle them).

    Call this to free that memory, GPU memory included, once the fits are done
    (e.g. after a search, before other work on the GPU). Fitted models are
    unaffected (``transform`` needs no distance); a later fit, or the next step
    of a fit in progress in another thread, builds its distance again, the
    same weights for the same settings and seed.

    Returns
    -------
    None

    Examples
    --------
    >>> from sklearn_cim import clear_metric_cache
    >>> clear_metric_cache()  # after the fits, to free their LPIPS trunks
    """
    _cached_metric.cache_clear()


class CIMNet(TorchNet):
    """skorch net training :class:`~sklearn_cim._networks.CIMModule` on the CIM
    objective, with the perceptual distance of :func:`built_metric`."""

    def __init__(self, *args, objective=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        """With groups (``X.groups``), build each (class, group) cell's
        balancing weight and a :class:`PairTable` for the pairs drawn from the
        whole training set."""
        super().on_train_begin(net, X=X, y=y, **kwargs)
        obj = self.objective
        self.cell_weights_ = self.pair_table_ = None
        if X.groups is not None:
            self.n_cell_groups_ = int(X.groups.max()) + 1
            weights = cell_weights(X.y, X.groups, self.n_cell_groups_)
            if obj.group_weighting == "balanced":
                self.cell_weights_ = weights
            elif obj.group_weighting == "resampled":
                # every (class, group) cell drawn as often, each row by its cell's weight
                X.sampling_weights = weights[X.y * self.n_cell_groups_ + X.groups]
            if (obj.group_triplets and obj.triplet_weight > 0) or obj.invariance_weight > 0:
                self.pair_table_ = PairTable(X.y, X.groups)
        self.map_probe_ = None
        if X.groups is not None and obj.map_weight > 0:
            # a tuple: skorch takes a module attribute for one of its own (registered,
            # moved, optimised, pickled); this one is the fit's, frozen
            self.map_probe_ = (train_probe(X.images, len(X), X.groups, self.seed,
                                           device=self.device),)
            if map_coverage(self.map_probe_[0], X.images, len(X), X.groups) == 0:
                warn(
                    "The nuisance map is empty: the per-pixel probe could not read the "
                    "groups from any small window of the training images, so the map term "
                    f"(map_weight={obj.map_weight:g}) costs nothing and only the invariance "
                    "term pushes the nuisance out. If the groups name something spread over "
                    "the whole image (a brightness, a blur) rather than a place, set "
                    "map_weight=0 to train the uniform sparsity term (mask_weight='auto': "
                    "0.3) instead; check that groups name the nuisance.", RemovalWarning)

    fit_scoped = TorchNet.fit_scoped + ("cell_weights_", "pair_table_", "n_cell_groups_",
                                        "map_probe_")

    def prepare_training(self):
        # psi(x) in training: hard or soft, as the objective says
        self.module_.hard = bool(self.objective.hard_mask)
        # the metric (a random trunk with pretrained=False) is drawn from the
        # global RNG seeded by ``seed``: the same in every process of a
        # data-parallel fit and whenever it is rebuilt (after unpickling)
        if self.objective.triplet_weight > 0:
            self.get_metric()  # fail before the first step if the trunk is unavailable

    def untrained_parameters(self):
        if self.objective.classifier_weight == 0:  # nothing trains the head
            return list(self.module_.head.parameters())
        return []

    def get_metric(self):
        """The objective's perceptual distance on the net's device (shared, see
        :func:`built_metric`)."""
        obj = self.objective
        return built_metric(obj.distance, obj.pretrained, str(self.device), self.seed,
                            bool(self.channels_last))

    def loss_terms(self, y_pred, targets, X):
        mask, psi, head_out = y_pred  # head_out: logits, or (mu, sigma) of the vib head
        obj = self.objective
        terms = {}
        y_true, groups = targets  # groups: None for the paper's objective
        if obj.head == "vib":
            mu, sigma = head_out
            logits = self.module_.head.sample_logits(mu, sigma, self.generator)[0]
            if obj.classifier_weight > 0:
                terms["kl"] = (obj.classifier_weight * obj.head_beta, gaussian_kl(mu, sigma))
        else:
            logits = head_out
        gate = 1.0
        if obj.classifier_weight > 0:
            terms["ce"] = (obj.classifier_weight, self.cross_entropy(logits, y_true, groups))
            if obj.gate_mask and (obj.mask_weight > 0 or obj.map_weight > 0):
                gate = head_gate(logits, y_true, self.row_weights(y_true, groups))
                terms["mask_gate"] = (0.0, gate)  # logged only
        positives = None
        if groups is not None and self.pair_table_ is not None:
            # one same-class, other-group image per anchor (rows, valid, images), drawn
            # and copied to the device once for the terms below
            pos, pos_ok = self.pair_table_.positives(y_true, groups, self.generator)
            positives = (pos, pos_ok, self.training_set_.images(pos))
        if obj.triplet_weight > 0:
            terms["triplet"] = (obj.triplet_weight,
                                self.triplet_term(psi, X, y_true, groups, positives))
        if positives is not None and obj.invariance_weight > 0:
            terms["invariance"] = (obj.invariance_weight,
                                   self.invariance_term(psi, groups, positives))
        if obj.mask_weight > 0:
            terms["mask"] = (obj.mask_weight * gate, mask.mean())
        probe = getattr(self, "map_probe_", None)
        if probe is not None and groups is not None:
            where = nuisance_map(probe[0], X, groups)
            terms["nuisance_map"] = (obj.map_weight * gate, (mask.float().mean(1) * where).mean())
        return terms

    def row_weights(self, y, groups):
        """Each row's (class, group) cell weight, or None (no groups, or
        unweighted)."""
        weights = getattr(self, "cell_weights_", None)
        if groups is None or weights is None:
            return None
        return weights[y * self.n_cell_groups_ + groups]

    def cross_entropy(self, logits, y, groups=None):
        """The head's cross-entropy; with groups and balanced weighting, each
        sample weighted by its (class, group) cell."""
        weights = self.row_weights(y, groups)
        if weights is None:
            return self.criterion_(logits, y)
        per_sample = torch.nn.functional.cross_entropy(logits.float(), y, reduction="none")
        return (per_sample * weights).mean()

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
        neg, neg_ok = self.pair_table_.negatives(y, groups, self.generator)
        with torch.no_grad():
            pairs = torch.cat([pos_images, self.training_set_.images(neg)])
            if self.objective.pair_transform:
                pairs = self.module_.masked(pairs)
            emb = metric.embed(pairs)
        n = len(y)
        d_pos = metric.between(anchor, metric.take(emb, slice(0, n)))
        d_neg = metric.between(anchor, metric.take(emb, slice(n, 2 * n)))
        return triplet_loss(d_pos, d_neg, self.objective.margin, pos_ok & neg_ok)
