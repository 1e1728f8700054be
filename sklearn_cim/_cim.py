"""CIMTransformer: Contrastive Input Morphing as a scikit-learn transformer."""

import json
from dataclasses import fields
from numbers import Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.validation import check_is_fitted

from ._batching import batched_apply
from ._collectives import broadcast_object, local_device, world
from ._devices import PRECISIONS, resolve_device, resolve_precision
from ._distances import DISTANCES, LPIPS_TRUNKS
from ._estimator import TorchEstimatorMixin
from ._groups import (
    GROUP_WEIGHTINGS,
    INFER_GROUPS,
    check_groups,
    check_groups_vary_within_classes,
    infer_groups,
)
from ._networks import HARD_MASK_CUT, CIMModule
from ._objective import CIMNet, CIMObjective
from ._params import (
    Interval,
    StrOptions,
    non_negative,
    positive_int,
    training_constraints,
)
from ._probes import pooled
from ._removal import MAX_TRAIN_ROWS as _REMOVAL_TRAIN_ROWS
from ._removal import (
    PROBE_SIDE,
    PaperObjectiveWarning,
    RemovalWarning,
    check_rows,
    complete_check,
    held_out_rows,
    removal_check,
    removal_warnings,
    worse_than_x,
)
from ._triplet import MININGS
from ._validation import (
    check_data_range,
    encode_labels,
    input_range_of,
    require_y,
    validate_images,
)
from ._warn import warn

# CIMModule, CIMNet and CIMObjective were defined in this module until the
# split by concept; pickles written then name them ``sklearn_cim._cim.<name>``,
# and the imports above keep those names resolving (tests/test_old_pickles.py).

# Training images checked for a collapsed mask after fit, and the share of
# mask values under which the mask counts as cutting everything.
_COLLAPSE_CHECK_ROWS = 256
_COLLAPSE_KEPT = 0.005

# Activation budget (elements) of one transform chunk: chunk * H * W * tn_width,
# on CPU and on CUDA (where large chunks keep the GPU busy; an out-of-memory
# error halves the chunk).
_TRANSFORM_BUDGET = 2 ** 25
_TRANSFORM_BUDGET_CUDA = 2 ** 28


HEADS = ("cnn", "vib")
#: mask_weight="auto": the sparsity weight of the group-aware objective when its
#: map term is off (0 without groups, and with the map term on).
AUTO_MASK_WEIGHT = 0.3
#: invariance_weight="auto": the weight of the group-aware objective's invariance term.
AUTO_INVARIANCE_WEIGHT = 3.0


#: The sparsity term waits for the head (``sklearn_cim._objective.head_gate``);
#: False trains 0.1's objective (the benchmarks' ``--no-gate``).
GATE_MASK = True

#: The parameters whose "auto" a fit decides (by whether it is group-aware),
#: kept as fitted attributes of the same name with a trailing underscore.
AUTO_DECIDED = ("mask_weight", "invariance_weight", "hard_mask", "mask_threshold",
                "map_weight")
#: Parameters only the group-aware objective reads, with their defaults.
GROUP_ONLY = dict(invariance_weight="auto", group_weighting="balanced", group_triplets=True,
                  map_weight=0.0)


def resolve_auto(params, aware):
    """The values of :data:`AUTO_DECIDED` for a fit with (``aware``) or
    without groups, from the parameters ``params`` ("auto" resolved): the one
    place they are decided."""
    def pick(name, with_groups, without_groups):
        value = params[name]
        if isinstance(value, str) and value == "auto":
            return with_groups if aware else without_groups
        return value

    hard = bool(pick("hard_mask", True, False))
    threshold = None if hard else pick("mask_threshold", None, None)
    # the map term (group-aware only) replaces the uniform sparsity term
    map_weight = float(params["map_weight"]) if aware else 0.0
    return dict(
        map_weight=map_weight,
        mask_weight=float(pick("mask_weight", 0.0 if map_weight > 0 else AUTO_MASK_WEIGHT,
                               0.0)),
        invariance_weight=float(pick("invariance_weight", AUTO_INVARIANCE_WEIGHT, 0.0)),
        hard_mask=hard,
        # the transform-time cut of a soft mask (None: no cut; hard masks: None)
        mask_threshold=None if threshold is None else float(threshold),
    )


class CIMTransformer(OneToOneFeatureMixin, TransformerMixin, TorchEstimatorMixin,
                     BaseEstimator):
    """Contrastive Input Morphing (Taghanaki et al., ICML 2021).

    ``fit`` trains a transformation network that maps each image ``x`` to a
    mask ``m`` in [0, 1]; ``transform`` returns ``psi(x) = m * x``. Training
    minimises::

        classifier_weight * CE(head(psi(x)), y)
        + triplet_weight * mean(relu(d(psi(x), p) - d(psi(x), q) + margin))
        + mask_weight * mean(m)

    with ``p`` a same-class and ``q`` an other-class image from the batch and
    ``d`` a perceptual distance (LPIPS by default). Pixels the mask keeps are
    those that make ``psi(x)`` look like its class and unlike other classes;
    nuisance features that do not help that are dimmed towards 0 (black).
    That is the paper's objective, trained when ``fit`` gets no groups.

    **Group-aware objective** (this package's extension; ``fit(X, y, groups)``
    with the nuisance of each training image, or ``infer_groups=True``). A
    nuisance that agrees with the label in most training images is rewarded
    by both terms above, so the paper's objective keeps it. With groups, (1)
    the head's cross-entropy is weighted so that every (class, group) cell
    weighs the same (``group_weighting="balanced"``): the nuisance no longer
    predicts the label; (2) the triplets are bias-contrastive
    (``group_triplets=True``): the positive has the anchor's class and another
    group, the negative another class and the anchor's group, drawn from the
    whole training set, so only what the class shares across groups brings
    psi(x) closer; (3) an invariance term (``invariance_weight="auto"``: 3)
    makes the mean of psi(x) over each group agree, within a class, with the
    mean over the class's other groups: what a linear model could read of the
    group is removed, however few pixels carry it; (4) the mask is hard
    (``hard_mask="auto"``): each pixel is kept whole or set to 0, in training
    (a straight-through gradient) as at transform, since a dimmed colour is
    still a colour to a linear model; (5) ``mask_weight="auto"`` puts a
    uniform sparsity weight of 0.3 on the mask. Optionally (``map_weight``
    > 0; 3 was measured) the mask pays where the nuisance is instead: before
    the mask trains, a small per-pixel probe learns where each training
    image's group can be read (a window about a stroke wide: 1 px below 24
    px, 3 below 48, 5 from 48), and the loss adds ``map_weight * mean(m *
    map)``, the map being 0 where the window says nothing of the group and 1
    where it names it (:mod:`sklearn_cim._nuisance_map`); ``mask_weight="auto"``
    is then 0, since the uniform term pays for the object's pixels too. Both
    terms (smallest at psi(x) = 0) are weighted in each batch by how well the head reads the
    classes from psi(x) there (0 at chance, 1 halfway from chance to perfect):
    they cannot close the mask before the head has learned the classes
    (``history_``'s ``train_mask_gate``). The invariance term is not gated:
    it removes only what differs between groups, and removing the nuisance
    early is what lets the head learn the classes.

    Parameters
    ----------
    image_shape : tuple of int or None, default=None
        ``(C, H, W)`` (or ``(H, W)`` for grayscale) of each row of a 2-D X; one
        entry may be -1. None infers square grayscale (``H*H`` features) and
        square RGB (``3*H*H``) rows, and is not needed for 4-D X. Square RGB
        comes with a ``UserWarning``: ``3*H*H`` values are also grayscale images
        of other shapes (768: ``(3, 16, 16)``, or 16x48 or 24x32 grayscale); pass
        ``image_shape`` to choose.
    distance : {"lpips-alex", "lpips-vgg", "lpips-squeeze", "ssim", "l2"} or \
            callable, default="lpips-alex"
        ``d`` of the triplet loss. A callable takes two float tensors
        ``(N, C, H, W)`` in [0, 1] and returns ``(N,)`` distances. Scales:
        LPIPS ~0.1-0.7 between different images; ``ssim`` is ``1 - SSIM`` in
        [0, 2]; ``l2`` is the RMS pixel difference in [0, 1].
    pretrained : bool, default=True
        LPIPS only: use the ImageNet trunk from torchvision's cache. When it
        cannot be obtained (offline), ``fit`` raises and names the cache
        directory; ``pretrained=False`` uses a random trunk.
    classifier_weight : float, default=1.0
        Weight of the auxiliary classifier's cross-entropy on psi(x).
    triplet_weight : float, default=1.0
        Weight of the triplet loss. 0 disables it.
    margin : float, default=0.1
        Triplet margin, an absolute distance in the units of ``distance``.
        Shrinking every image cannot make the loss vanish.
    mining : {"random", "hard"}, default="random"
        How positives and negatives are drawn from the batch; ``"hard"`` takes
        the farthest positive and the nearest negative under ``distance`` on the
        original images.
    pair_transform : bool, default=False
        If True, positives and negatives are also passed through the
        transformation network (as constants: no gradient flows through them);
        if False they are the original images.
    mask_weight : float or "auto", default="auto"
        Weight of ``mean(m)``; > 0 pushes towards sparser masks. ``"auto"``: 0
        for the paper's objective and when the map term is on
        (``map_weight`` > 0), 0.3 with groups otherwise.
    map_weight : float, default=0.0
        Group-aware objective only: weight of ``mean(m * map)``, the mask's
        cost where a per-pixel probe reads the image's group (see above); 0
        turns it off. 3 closed 77% of the LR gap on 64 px photos (45% without)
        and all of the MNIST corner gap, but collapsed the mask on three of
        five seeds of a 32 px colour-background split (with a warning): see
        the docs' Results. The probe trains at the start of every ``fit`` and
        ``partial_fit`` call on that call's training images (30 epochs of a
        three-layer convolution of width 16).
    hard_mask : bool or "auto", default="auto"
        True: psi(x) keeps a pixel whole where the mask net's output is at
        least 0.5 and sets it to 0 elsewhere, in training (the gradient passes
        straight through the cut) and at ``transform``; :meth:`masks` returns
        the 0/1 mask. False: psi(x) = m * x with the soft mask (then
        ``mask_threshold`` applies). ``"auto"``: False for the paper's
        objective, True with groups.
    mask_threshold : float in [0, 1], "auto" or None, default="auto"
        Soft masks only (``hard_mask`` False): at ``transform`` (and in
        :meth:`masks`), mask values below it become exactly 0, so dimmed pixels
        carry nothing; training uses the soft mask. ``"auto"``: None (no cut).
        When the mask keeps under 0.5 % of the pixels of the training images
        (hard, or after the cut; up to 256 images spread over X are checked
        after each ``fit``, not after ``partial_fit``), ``fit`` warns
        (``ConvergenceWarning``): the mask collapsed and psi(x) is all but zero.
    group_weighting : {"balanced", "resampled", "none"}, default="balanced"
        With groups, how every (class, group) cell of the training set comes
        to count the same. ``"balanced"``: each row once per epoch, the head's
        cross-entropy weighted by inverse cell frequency (mean 1).
        ``"resampled"``: each epoch draws as many rows as the training set has,
        with replacement, every cell equally often (a row of a cell of ``k``
        images in proportion to ``1 / k``), and the losses are unweighted.
        With few images in the cells where the nuisance disagrees, the few
        heavily weighted rows of ``"balanced"`` make the head's gradient so
        noisy that it can stay at chance for epochs (the sparsity term waits
        for it, see above); ``"resampled"`` learns the classes in the first epoch,
        but in our measurements it thinned the object more and did not close
        more of the gap (see the docs' Results). ``"none"``: each row once,
        unweighted.
    group_triplets : bool, default=True
        With groups: draw each anchor's positive among the same-class images of
        other groups and its negative among the other-class images of its group,
        from the whole training set (anchors with none are left out); these
        pairs are drawn at random, ``mining`` does not apply to them. False
        mines inside the batch as without groups.
    invariance_weight : float or "auto", default="auto"
        With groups: the weight of the invariance term (see above; it draws one
        same-class, other-group image per anchor from the training set and
        passes it through the mask net without gradient). ``"auto"``: 3 with
        groups. Without groups there is nothing to be invariant to.
    infer_groups : bool or {"local", "linear", "errors"}, default=False
        When ``fit`` gets no groups: infer them from a bias proxy, a model that
        can learn the nuisance but not the object, as its out-of-fold predicted
        class (kept in ``groups_``). ``True`` or ``"local"``: a small conv net
        that sees only 3x3 neighbourhoods, pooled over the image (a colour,
        texture, patch or mark wherever it is, but not an object's shape; 5
        epochs per fold, images pooled to at most 64 px). ``"linear"``: a
        strongly regularised logistic regression on the pixels (finds a
        background colour, misses a small patch); ``"errors"``: whether the
        linear prediction was right, as in JTT. The proxy reads a float32 copy
        of the training pixels (one more copy of X in memory while it fits).
    per_channel_mask : bool, default=False
        One mask per colour channel instead of one broadcast over channels.
    tn_width, tn_depth : int, default=16, 2
        Width (first-stage channels) and number of down-sampling stages of the
        U-Net transformation network.
    head : {"cnn", "vib"}, default="cnn"
        The auxiliary head on psi(x): a small CNN classifier, or a variational
        information bottleneck (CIM+VIB): a conv encoder to a Gaussian latent of
        size ``2 * head_width`` and a linear decoder, trained with
        ``CE + head_beta * KL`` (the KL term is weighted by
        ``classifier_weight * head_beta``).
    head_width : int, default=32
        Width of the auxiliary head's conv layers.
    head_beta : float, default=1e-3
        Weight of the KL (rate) term of the ``"vib"`` head.
    data_range : (float, float) or None, default=(0.0, 1.0)
        Value range of float X; values outside raise. Integer X is always read
        as 8-bit pixels in [0, 255]. ``None`` takes floats as they are (only
        with ``distance="l2"`` or a callable). Masked pixels move towards the
        range's low end: ``psi(x) = low + m * (x - low)``, which is ``m * x``
        for the default range and for uint8.
    max_epochs : int, default=10
        Removing a nuisance takes about 500 optimizer steps or more
        (``max_epochs * n_samples / batch_size``); the removal check
        (``removal_check_``) says when a fit stopped short of it.
    batch_size : int, default=32
        Without groups, triplets are mined inside each batch: it must be >= 2,
        and large enough to hold several samples of each class. On CPU a fit
        costs about the same per epoch at 32 as at 128 (the per-image work
        dominates), and takes four times the steps: on 1,500 MNIST images and
        12 epochs the group CIM removed a background at 32 (94% of the ERM ->
        oracle gap, seed 0) and not at 128 (35%). On a GPU, larger batches are
        faster per epoch; raise ``max_epochs`` with them.
    lr : float, default=1e-3
        Adam learning rate.
    device : str, default="auto"
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``.
    precision : {"auto", "float32", "bfloat16"}, default="auto"
        Arithmetic of the networks and the distance in ``fit`` and ``transform``:
        ``"bfloat16"`` runs them under bf16 autocast (the product m * X, SSIM's
        statistics, the logged loss sums and ``transform``'s output stay
        float32). ``"auto"``: bf16 on CUDA devices with native bf16 (compute
        capability 8.0+), else float32. bf16 changes masks by up to about 1e-2.
    compile : bool or dict, default=False
        ``torch.compile`` the training forward (mask net and head); a dict is
        passed to ``torch.compile`` as keyword arguments, e.g.
        ``{"mode": "reduce-overhead"}`` for CUDA graphs. It pays on GPUs for
        long fits; the first epoch pays the compilation.
    distributed : {False, True, "auto"}, default=False
        Data-parallel training (torch DistributedDataParallel) with the other
        processes of an initialised ``torch.distributed`` process group, each
        calling ``fit`` on the same data (a launcher such as ``torchrun``; see
        :mod:`sklearn_cim.distributed`, whose
        :func:`~sklearn_cim.distributed.fit_distributed` spawns the processes
        itself). ``True``: the group must exist; ``"auto"``: when a group of
        more than one process exists; ``False``: always train alone.
        ``batch_size`` is then per process and triplets are mined in each
        process's batch.
    random_state : int, RandomState instance or None, default=None
        Seeds network initialisation, batch order and random mining. On CPU,
        equal seeds give bitwise-equal transforms at the same torch thread
        count. In a data-parallel fit, rank 0's seed is used by all.
    verbose : int, default=0
        0 silent; 1 one progress bar for the whole fit (batches of every
        epoch, rate, ETA and the last epoch's loss terms); 2 skorch's table of
        one line per epoch and a bar per epoch.
    callbacks : list of skorch callbacks or None, default=None
    checkpoint : str, path-like or None, default=None
        A folder: ``fit`` writes the model's state there at the end of every
        epoch (weights, optimizer state, history), and a ``fit`` of the same
        estimator on the same data that was killed (pre-emption, out of
        memory, ``kill -9``) resumes from the last one: run it again and the
        fitted model equals the one an uninterrupted fit reaches, bitwise on
        CPU. Each fit has its own sub-folder, named by a fingerprint of the
        parameters and the training data (read once more to hash it), so one
        folder serves a whole search. A finished fit's last checkpoint stays:
        running the same fit again returns it without training; delete the
        folder to train anew. Not with ``warm_start`` continuations or
        ``partial_fit``.
    warm_start : bool, default=False
        If True, ``fit`` on a fitted transformer continues training from its
        weights (same image shape; labels among ``classes_``).

    Attributes
    ----------
    net_ : CIMNet
        The fitted skorch net; ``net_.module_.mask_net`` is the transformation
        network.
    classes_ : ndarray of shape (n_classes,)
    image_shape_ : tuple of int
        ``(C, H, W)``.
    n_features_in_ : int
        ``C * H * W``.
    feature_names_in_ : ndarray of str
        Only when X had string column names.
    input_range_ : (float, float)
        Value range of the training data's units: (0, 255) for integer pixels,
        else ``data_range`` (or (0, 1) for ``data_range=None``).
    device_ : str
        Device the model lives on (``"cpu"`` after loading a CUDA model on a
        machine without CUDA).
    group_aware_ : bool
        Whether the fit trained the group-aware objective. A ``warm_start`` fit
        or ``partial_fit`` continues the same objective: one without groups on
        a group-aware model (or with groups on a model fitted without) raises a
        ``ValueError`` naming ``groups=``.
    mask_weight_, invariance_weight_, map_weight_ : float
        The weights the last fit trained with (``"auto"`` resolved).
    hard_mask_ : bool
        Whether the fit trained, and ``transform`` applies, a hard mask.
    mask_threshold_ : float or None
        The transform-time cut of a soft mask (None: no cut).
        These five are decided by each ``fit`` and read by ``transform``;
        ``set_params`` after a fit changes the next fit, not ``transform``.
    gate_mask_ : bool
        Whether the sparsity term waits for the head (see above): True for
        fits since 0.2; False for models fitted before, which a
        ``warm_start`` fit or ``partial_fit`` continues without it.
    groups_ : ndarray of shape (n_samples,) or None
        The inferred groups of the last fit's training images
        (``infer_groups``); None when groups were given or not used.
    group_labels_ : ndarray of object or None
        The group labels given to the first fit, in the order of their codes;
        later warm fits and ``partial_fit`` calls code their groups the same
        way (new labels are appended). None when no groups were given.
    held_out_ : ndarray of bool of shape (n_samples,) or None
        The training images the last group-aware ``fit`` held back from the
        mask network for the removal check (a ``warm_start`` fit on as many
        images holds back the same ones); None when the mask trained on every
        image (the paper's objective, ``partial_fit``, or too few images).
    removal_check_ : Bunch or None
        After a group-aware ``fit`` (groups given or inferred; not after
        ``partial_fit``), what psi(x) still carries of the nuisance and what a
        downstream model on it is estimated to score once the nuisance no longer
        agrees with the label, measured on the 20% of the training images (at
        most 1,024) that ``fit`` holds back from the mask network (see
        :ref:`removal-check`): ``balanced_accuracy`` and
        ``balanced_accuracy_cnn`` (estimated accuracy of a linear model and of
        a CNN on psi(x)), ``balanced_accuracy_x`` and ``balanced_accuracy_cnn_x``
        (the same on x), their ``_se`` (standard errors of the psi - x
        differences); ``retained`` and ``retained_local`` (the share of the
        nuisance a linear and a local probe read in x that they still read in
        psi(x); NaN when x shows none); ``erased_share`` (held-out images of
        which the mask keeps almost nothing) with their brightness;
        ``worst_third`` (the third of the images by brightness where psi(x)
        loses most); ``n_images``, ``seconds``. ``fit`` warns
        (:class:`~sklearn_cim.RemovalWarning`) when psi(x) is not estimated to
        make a linear model, or a CNN, more accurate than x by more than one
        standard error, when ``retained`` is above 0.5, when more than 5% of the
        held-out images are erased, when a brightness third loses 20 points,
        and when the check cannot tell. None for the paper's objective. Usable
        in a search through :func:`sklearn_cim.metrics.removal_score`.
    fallback_ : bool
        True when a fit on inferred groups (``infer_groups``) was estimated by
        the removal check to make a linear model less accurate than on x (the
        bias proxy could not be trusted): ``transform`` then returns X
        unchanged and :meth:`masks` all ones, and ``fit`` says so with a
        :class:`~sklearn_cim.RemovalWarning`. Never set for groups given.
    history_ : skorch History
        Per-epoch ``train_loss``, ``train_ce``, ``train_triplet`` (and
        ``train_mask`` with a mask weight, ``train_invariance`` with groups,
        and ``train_kl`` for the ``"vib"`` head), all unweighted except
        ``train_loss``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cim import CIMTransformer
    >>> rng = np.random.RandomState(0)
    >>> X = rng.rand(40, 3, 8, 8).astype(np.float32)
    >>> y = np.repeat([0, 1], 20)
    >>> cim = CIMTransformer(distance="l2", max_epochs=1, batch_size=16,
    ...                      device="cpu", random_state=0).fit(X, y)
    >>> cim.transform(X).shape
    (40, 3, 8, 8)
    >>> bool(((cim.masks(X) >= 0) & (cim.masks(X) <= 1)).all())
    True
    """

    # Under metadata routing, fit asks for groups unless told otherwise
    # (set_fit_request(groups=False)): they are what the group-aware objective
    # trains on, and a search routing them to its splitter alone would train the
    # paper's objective without a word.
    __metadata_request__fit = {"groups": True}

    _parameter_constraints = {
        "image_shape": [tuple, list, None],
        "distance": [StrOptions(set(DISTANCES)), callable],
        "pretrained": ["boolean"],
        "classifier_weight": [non_negative()],
        "triplet_weight": [non_negative()],
        "margin": [non_negative()],
        "mining": [StrOptions(set(MININGS))],
        "pair_transform": ["boolean"],
        "mask_weight": [non_negative(), StrOptions({"auto"})],
        "map_weight": [non_negative()],
        "hard_mask": ["boolean", StrOptions({"auto"})],
        "mask_threshold": [Interval(Real, 0, 1, closed="both"), StrOptions({"auto"}), None],
        "group_weighting": [StrOptions(set(GROUP_WEIGHTINGS))],
        "group_triplets": ["boolean"],
        "invariance_weight": [non_negative(), StrOptions({"auto"})],
        "infer_groups": ["boolean", StrOptions(set(INFER_GROUPS))],
        "per_channel_mask": ["boolean"],
        "tn_width": [positive_int()],
        "tn_depth": [positive_int(0)],
        "head": [StrOptions(set(HEADS))],
        "head_width": [positive_int()],
        "head_beta": [non_negative()],
        "data_range": [tuple, list, None],
        "precision": [StrOptions(set(PRECISIONS))],
        "compile": ["boolean", dict],
        # a triplet needs two samples in the batch
        **training_constraints(min_batch_size=2),
    }

    def __init__(
        self,
        *,
        image_shape=None,
        distance="lpips-alex",
        pretrained=True,
        classifier_weight=1.0,
        triplet_weight=1.0,
        margin=0.1,
        mining="random",
        pair_transform=False,
        mask_weight="auto",
        map_weight=0.0,
        hard_mask="auto",
        mask_threshold="auto",
        group_weighting="balanced",
        group_triplets=True,
        invariance_weight="auto",
        infer_groups=False,
        per_channel_mask=False,
        tn_width=16,
        tn_depth=2,
        head="cnn",
        head_width=32,
        head_beta=1e-3,
        data_range=(0.0, 1.0),
        max_epochs=10,
        batch_size=32,
        lr=1e-3,
        device="auto",
        precision="auto",
        compile=False,
        distributed=False,
        random_state=None,
        verbose=0,
        callbacks=None,
        warm_start=False,
        checkpoint=None,
    ):
        self.image_shape = image_shape
        self.distance = distance
        self.pretrained = pretrained
        self.classifier_weight = classifier_weight
        self.triplet_weight = triplet_weight
        self.margin = margin
        self.mining = mining
        self.pair_transform = pair_transform
        self.mask_weight = mask_weight
        self.map_weight = map_weight
        self.hard_mask = hard_mask
        self.mask_threshold = mask_threshold
        self.group_weighting = group_weighting
        self.group_triplets = group_triplets
        self.invariance_weight = invariance_weight
        self.infer_groups = infer_groups
        self.per_channel_mask = per_channel_mask
        self.tn_width = tn_width
        self.tn_depth = tn_depth
        self.head = head
        self.head_width = head_width
        self.head_beta = head_beta
        self.data_range = data_range
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.device = device
        self.precision = precision
        self.compile = compile
        self.distributed = distributed
        self.random_state = random_state
        self.verbose = verbose
        self.callbacks = callbacks
        self.warm_start = warm_start
        self.checkpoint = checkpoint

    # -- public API -----------------------------------------------------------
    def fit(self, X, y, groups=None):
        """Train the transformation network on labelled images.

        With ``warm_start=True`` and a fitted model, training continues from the
        fitted weights for ``max_epochs`` more epochs.

        Parameters
        ----------
        X : array-like of shape (n_samples, C*H*W) or (n_samples, C, H, W)
            Float images in ``data_range`` (default [0, 1]) or uint8 in [0, 255].
        y : array-like of shape (n_samples,)
            Class labels (any type scikit-learn accepts, strings included).
        groups : array-like of shape (n_samples,) or None, default=None
            The nuisance attribute of each training image (a background
            colour, a site, a scanner) or a full group id, any hashable labels.
            Given, ``fit`` trains the group-aware objective (see the class
            docstring) on 80% of the images and checks the result on the
            others (``removal_check_``); None trains the paper's objective (or the group-aware
            one on inferred groups, with ``infer_groups``). In a ``Pipeline``
            or a search, route it with ``set_fit_request(groups=True)`` under
            ``sklearn.set_config(enable_metadata_routing=True)``, or pass
            ``cim__groups=`` to ``Pipeline.fit``. Not used by ``transform``.
            A ``warm_start`` continuation takes groups if and only if the
            fit it continues did (``group_aware_``).

        Returns
        -------
        self : CIMTransformer
        """
        return self._fit_images(X, y, warm=self._continues(), groups=groups)

    def partial_fit(self, X, y, classes=None, groups=None):
        """Train one epoch on (X, y), continuing from the current weights.

        Parameters
        ----------
        X, y : as in :meth:`fit`
        classes : array-like or None
            All labels, needed on the first call when y does not hold them all.
        groups : array-like of shape (n_samples,) or None
            As in :meth:`fit`, for this call's images. Labels keep the codes
            of the first call (``group_labels_``), so a later call may hold a
            single group. Every call takes groups if the first did, and none
            if it did not (``group_aware_``): the objective stays the one the
            first call trained.

        Returns
        -------
        self : CIMTransformer
        """
        return self._fit_images(X, y, warm=hasattr(self, "net_"), epochs=1,
                                classes=classes, groups=groups)

    def transform(self, X):
        """Return psi(X) = m * X in X's layout (2-D in, 2-D out) and units.

        Parameters
        ----------
        X : array-like of shape (n_samples, C*H*W) or (n_samples, C, H, W)

        Returns
        -------
        psi : ndarray of the same shape as X
            float32 (float64 if X is float64), in X's units (0-255 for uint8).
        """
        return self._apply(X, "psi")

    def masks(self, X):
        """Return the masks m in [0, 1].

        Returns
        -------
        m : ndarray
            ``(n_samples, Cm, H, W)`` for 4-D X, else ``(n_samples, Cm*H*W)``;
            ``Cm`` is 1, or C with ``per_channel_mask=True``.
        """
        return self._apply(X, "mask")

    def fit_transform(self, X, y=None, **fit_params):
        """Fit to (X, y), then return psi(X) (see :meth:`transform`).

        ``y`` is required, as in :meth:`fit`: a ``ValueError`` says so without it.
        """
        require_y(self, y, "fit_transform")
        return super().fit_transform(X, y, **fit_params)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags

    # -- internals ------------------------------------------------------------
    _saved_tuple_attributes = ("image_shape_", "input_range_")

    def _fitted_metadata(self):
        labels = getattr(self, "group_labels_", None)
        if labels is not None:
            labels = labels.tolist()
            try:  # labels of types JSON cannot hold are not saved
                json.dumps(labels)
            except TypeError:
                labels = None
        check = getattr(self, "removal_check_", None)
        held = getattr(self, "held_out_", None)
        return dict(super()._fitted_metadata(),
                    held_out_=None if held is None else dict(
                        rows=np.flatnonzero(held).tolist(), n=len(held)),
                    group_aware_=bool(getattr(self, "group_aware_", False)),
                    gate_mask_=bool(getattr(self, "gate_mask_", False)),
                    **{name + "_": getattr(self, name + "_") for name in AUTO_DECIDED},
                    group_labels_=labels,
                    removal_check_=None if check is None else dict(check),
                    fallback_=bool(getattr(self, "fallback_", False)))

    def __setstate__(self, state):
        # parameters and attributes since removed (see the changelog)
        for name in ("adversary_weight", "n_groups_"):
            state.pop(name, None)
        if "hard_mask" not in state:
            # pickled before hard masks and the invariance term: keep the
            # objective and the transform-time cut it was fitted with
            state["hard_mask"] = False
            state.setdefault("invariance_weight", 0.0)
            aware = state.get("group_aware_", False)
            if state.get("mask_threshold") == "auto":
                state["mask_threshold"] = 0.2 if aware else None
            if state.get("mask_weight") == "auto":
                state["mask_weight"] = 1.0 if aware else 0.0
        if "map_weight" not in state:
            # pickled before the nuisance map: its objective (and a refit's) had none
            state["map_weight"] = 0.0
        if "net_" in state:  # fitted before the gate, the hold-out, the check's new figures
            state.setdefault("map_weight_", 0.0)
            state.setdefault("gate_mask_", False)  # continued without the gate
            state.setdefault("held_out_", None)
            state["removal_check_"] = complete_check(state.get("removal_check_"))
        if "net_" in state and "hard_mask_" not in state:
            # fitted before the fit's decisions were kept: they were read from the
            # parameters as pickled
            state.setdefault("group_aware_", False)
            params = {name: state[name] for name in AUTO_DECIDED}
            state.update({name + "_": value for name, value
                          in resolve_auto(params, state["group_aware_"]).items()})
        super().__setstate__(state)

    def _restore_metadata(self, meta):
        super()._restore_metadata(meta)
        self.group_aware_ = bool(meta.get("group_aware_", False))
        self.gate_mask_ = bool(meta.get("gate_mask_", False))  # saved before the gate: none
        # saved before the fit's decisions were: from the parameters, as then;
        # saved before the nuisance map: trained without it
        params = self.get_params(deep=False)
        if "map_weight_" not in meta:
            params["map_weight"] = 0.0
        decided = resolve_auto(params, self.group_aware_)
        for name in AUTO_DECIDED:
            setattr(self, name + "_", meta.get(name + "_", decided[name]))
        labels = meta.get("group_labels_")
        self.group_labels_ = None if labels is None else np.asarray(labels, dtype=object)
        self.groups_ = None  # the training images' inferred groups are not saved
        check = meta.get("removal_check_")
        self.removal_check_ = complete_check(check)
        held = meta.get("held_out_")
        self.held_out_ = None
        if held is not None:
            self.held_out_ = np.zeros(held["n"], dtype=bool)
            self.held_out_[held["rows"]] = True
        self.fallback_ = bool(meta.get("fallback_", False))

    def _needs_unit_range(self):
        return not (callable(self.distance) or self.distance == "l2")

    def _check_image_shape_for_distance(self, shape):
        lpips = isinstance(self.distance, str) and self.distance in LPIPS_TRUNKS
        if self.triplet_weight > 0 and lpips and shape[0] not in (1, 3):
            c, h, w = shape
            if w in (1, 3):  # rows of channels-last images, read channels first
                fix = (f"image_shape is channels first: for {w}-channel {c}x{h} images write "
                       f"image_shape=({w}, {c}, {h}), and if the rows were flattened from "
                       f"channels-last images (n, {c}, {h}, {w}), reorder them: "
                       f"X.reshape(-1, {c}, {h}, {w}).transpose(0, 3, 1, 2).reshape(len(X), "
                       "-1); or pass the images themselves, 4-D")
            else:
                fix = ("for images of other channel counts use distance='ssim' or 'l2', or "
                       "set triplet_weight=0")
            raise ValueError(
                f"LPIPS compares grayscale or RGB images, but the images are read as "
                f"{shape} (channels first: {c} channels of {h}x{w}); {fix}.")

    def _fit_images(self, X, y, *, warm, epochs=None, classes=None, groups=None):
        with self._all_or_nothing():
            kept, unchecked = self._fit_checked(X, y, warm=warm, epochs=epochs,
                                                classes=classes, groups=groups)
        # after the fitted state is set: a warning turned into an error does not
        # undo a finished fit
        self._warn_if_not_removed(kept, unchecked)
        if kept is not None and kept < _COLLAPSE_KEPT:
            warn(
                f"The mask keeps {kept:.1%} of the pixels of the training images "
                f"({self._mask_description()}): psi(x) is (nearly) all zero and a "
                "downstream model will predict one class. The mask penalty won before the "
                "classifier head learned the classes; try a lower mask_weight, map_weight or "
                "lr, or a larger batch_size.", ConvergenceWarning)
        return self

    def _check_param_combinations(self):
        if self.classifier_weight == 0 and self.triplet_weight == 0:
            raise ValueError(
                "classifier_weight and triplet_weight are both 0: nothing would "
                "train the mask. Set at least one of them > 0."
            )

    def _fit_checked(self, X, y, *, warm, epochs, classes, groups):
        self._check_params()
        X, y, shape, _ = validate_images(self, X, y, image_shape=self.image_shape,
                                         reset=not warm)
        data_range = check_data_range(self.data_range)
        input_range = input_range_of(X, data_range)
        if data_range is None and X.dtype.kind == "f" and self._needs_unit_range():
            raise ValueError(
                f"distance={self.distance!r} needs images in a known range; set "
                "data_range=(low, high) for float X (data_range=None is only for "
                "distance='l2' or a callable)."
            )
        self._check_image_shape_for_distance(shape)
        min_per_class = 2 if self.triplet_weight > 0 else 1
        self.classes_, y_enc = encode_labels(
            y, classes=self._known_classes(warm, classes), min_per_class=min_per_class)
        if not warm:
            self.image_shape_ = tuple(int(s) for s in shape)
            # the sparsity term waits for the head; a continuation trains as its fit
            self.gate_mask_ = GATE_MASK
        self.input_range_ = input_range
        # the one place a fit is decided group-aware: group codes, or None
        group_codes = self._training_groups(X, y_enc, groups, input_range, warm)
        if warm and self.group_aware_ != (group_codes is not None):
            self._refuse_objective_change()
        self.group_aware_ = group_codes is not None
        # what "auto" means for this fit, kept: training and transform read these
        for name, value in resolve_auto(self.get_params(deep=False),
                                        self.group_aware_).items():
            setattr(self, name + "_", value)
        self.removal_check_ = None
        self.fallback_ = False
        held = unchecked = None
        if self.group_aware_ and epochs is None:  # fit, not partial_fit (called in loops)
            held, unchecked = self._held_out(y_enc, group_codes, warm, len(X))
        else:  # the paper's objective, partial_fit: the mask trains on every image
            self.held_out_ = None
        rows = None if held is None else np.flatnonzero(~held)
        self._train(X, y_enc, group_codes, warm=warm, epochs=epochs, rows=rows)
        if epochs is not None:
            return None, None
        if held is not None:
            check = self._check_removal(X, shape, input_range, y_enc, group_codes, held)
            self.removal_check_ = check
            # inferred groups that make psi(x) worse than x: transform leaves x as is
            self.fallback_ = self.groups_ is not None and worse_than_x(check)
        return self._share_kept(X, shape, input_range), unchecked

    def _held_out(self, y_enc, group_codes, warm, n):
        """The training images held back from the mask network for the removal
        check (a boolean mask, kept in ``held_out_``: a warm fit of the same
        number of images holds back the same ones), or None and why none can
        be (the fit then trains on every image, unchecked)."""
        previous = getattr(self, "held_out_", None) if warm else None
        if warm and previous is None:
            self.held_out_ = None
            return None, ("this fit continues a mask that has trained on every training "
                          "image (after partial_fit, a fit that could hold none back, or a "
                          "model of an earlier version), so none is out of sample")
        if previous is not None and len(previous) == n:
            held = previous
        else:
            held = held_out_rows(y_enc, group_codes, self._shared_seed())
        if not held.any():
            self.held_out_ = None
            return None, ("no image could be held back from the mask network: that needs a "
                          "class with at least three training images in its most frequent "
                          "group, or three outside it")
        self.held_out_ = held
        return held, None

    def _check_removal(self, X, shape, input_range, y_enc, group_codes, held):
        """The removal check (:mod:`sklearn_cim._removal`) on the held-out
        training images and up to ``_REMOVAL_TRAIN_ROWS`` of the others; in a
        data-parallel fit rank 0 measures it for every process."""
        seed = self._shared_seed()
        group = world(self.distributed)
        check = None
        if group is None or group[0] == 0:
            rows = check_rows(held, y_enc, _REMOVAL_TRAIN_ROWS)
            psi, x, kept = self._check_images(X, rows, shape, input_range)
            check = removal_check(psi, x, y_enc[rows], group_codes[rows], held[rows], kept=kept,
                                  random_state=seed, device=self.device_,
                                  epochs=self.max_epochs)
        if group is not None:
            check = broadcast_object(check, resolve_device(local_device(self.device)))
        return check

    def _check_images(self, X, rows, shape, input_range, chunk=256):
        """psi(x) and x in [0, 1] of ``rows`` of X, pooled for the probes a chunk
        at a time (one pass of the mask net), and each image's share of kept
        mask values (None for a soft mask without a cut: it keeps every pixel,
        however dim)."""
        low, high = input_range
        images = (-1,) + tuple(shape)
        psi, x, kept = [], [], []
        for start in range(0, len(rows), chunk):
            raw = X[rows[start:start + chunk]]
            unit = ((np.asarray(raw, dtype=np.float32) - low) / (high - low)).reshape(images)
            mask = self._apply_validated(raw, shape, input_range, "mask")
            psi.append(pooled(mask * unit, PROBE_SIDE))
            x.append(pooled(unit, PROBE_SIDE))
            kept.append((mask > 0).reshape(len(raw), -1).mean(1))
        soft = not self.hard_mask_ and self.mask_threshold_ is None
        return (torch.cat(psi).numpy(), torch.cat(x).numpy(),
                None if soft else np.concatenate(kept))

    def _warn_if_not_removed(self, kept, unchecked=None):
        """RemovalWarnings after a group-aware fit (:func:`removal_warnings`),
        that it fell back, or that it could not be checked (``unchecked``: why);
        ``kept`` is :meth:`_share_kept`."""
        if unchecked is not None:
            warn(
                f"The removal check did not run: {unchecked}. The mask trained on every "
                "image and nothing says whether psi(x) still carries the nuisance; measure "
                "the downstream model on held-out images whose nuisance disagrees with the "
                "label before relying on this transform.", RemovalWarning)
            return
        check = getattr(self, "removal_check_", None)
        if check is None:
            return
        if self.fallback_:
            warn(
                f"The mask trained on inferred groups (groups_) is estimated to make a linear "
                f"model less accurate than on x once the nuisance no longer agrees with the "
                f"label ({check.balanced_accuracy:.3f} vs {check.balanced_accuracy_x:.3f}: "
                "removal_check_.balanced_accuracy against the inferred groups), so the bias "
                "proxy cannot be trusted here. Falling back: transform returns X unchanged "
                "(fallback_=True). Pass the true groups to fit if you know them.",
                RemovalWarning)
            return
        source = "inferred groups (groups_)" if self.groups_ is not None else "the groups given"
        everything = bool(self.hard_mask_ and kept is not None and kept >= 1.0)
        for message in removal_warnings(check, source=source, kept_everything=everything):
            warn(message, RemovalWarning)

    def _share_kept(self, X, shape, input_range):
        """Share of the mask values that are kept (> 0: a hard mask's ones, or a
        soft mask above ``mask_threshold``) on up to ``_COLLAPSE_CHECK_ROWS``
        training images spread over X, or None for a soft mask without a cut
        (it still carries the image, however dim). Near 0, psi(x) is all but
        zero: the mask penalty won before the head learned the classes."""
        if not self.hard_mask_ and self.mask_threshold_ is None:
            return None
        rows = X[::max(1, len(X) // _COLLAPSE_CHECK_ROWS)][:_COLLAPSE_CHECK_ROWS]
        return float(np.mean(self._apply_validated(rows, shape, input_range, "kept")))

    def _training_groups(self, X, y_enc, groups, input_range, warm):
        """Integer group codes for the objective: the given groups, inferred
        ones (kept in ``groups_``), or None for the paper's objective.

        Given labels are coded as in the first fit (``group_labels_``), so a
        warm fit or a ``partial_fit`` batch may hold a single group."""
        self.groups_ = None
        known = getattr(self, "group_labels_", None) if warm else None
        if groups is not None:
            labels, codes = check_groups(
                groups, len(X), labels=None if known is None else known.tolist(),
                allow_single=warm)
            if not warm:  # a warm batch may hold a single class per group
                check_groups_vary_within_classes(groups, codes, y_enc)
            self.group_labels_ = np.asarray(labels, dtype=object)
            return codes
        if not warm:
            self.group_labels_ = None
        if not self.infer_groups:
            if not warm:
                unused = [f"{name}={getattr(self, name)!r}" for name, default
                          in GROUP_ONLY.items() if getattr(self, name) != default]
                unused = (f" Without groups these settings do nothing: {', '.join(unused)}."
                          if unused else "")
                warn(
                    "fit got no groups, so it trains the paper's objective, which did not "
                    "remove a nuisance in our measurements (see the docs' Results). To remove "
                    "one, pass each training image's nuisance attribute as groups (a "
                    "background, site or scanner; in a Pipeline cim__groups=g, or groups=g "
                    "under metadata routing), or set infer_groups=True to infer it."
                    + unused, PaperObjectiveWarning)
            return None
        strategy = "local" if self.infer_groups is True else self.infer_groups
        low, high = input_range
        unit = (np.asarray(X, dtype=np.float32) - low) / (high - low)
        seed = self._shared_seed()  # in a data-parallel fit, the same groups everywhere
        self.groups_ = infer_groups(unit.reshape((-1,) + tuple(self.image_shape_)), y_enc,
                                    strategy, seed, device=resolve_device(self.device))
        if np.unique(self.groups_).size < 2:
            warn(
                "infer_groups found a single group (the bias proxy is right on every "
                "training image), so the group-aware objective has nothing to balance. "
                "Pass the true groups to fit if you know them.", RuntimeWarning)
        return self.groups_

    def _refuse_objective_change(self):
        if self.group_aware_:
            raise ValueError(
                "This CIMTransformer was fitted with groups (group_aware_=True); continuing "
                "it (warm_start=True or partial_fit) without groups would train the paper's "
                "objective on it and change its mask. Pass the images' groups again "
                "(fit(X, y, groups=g) / partial_fit(X, y, groups=g)), or fit anew with "
                "warm_start=False.")
        raise ValueError(
            "This CIMTransformer was fitted without groups (group_aware_=False: the paper's "
            "objective); continuing it (warm_start=True or partial_fit) with groups would "
            "change its objective and its mask. Continue without groups, or fit anew with "
            "groups and warm_start=False.")

    def _objective(self):
        """The loss's settings: the parameters, with what the fit decided for
        those that are "auto" (``mask_weight_``, ``hard_mask_``, ...)."""
        params = {"gate_mask": getattr(self, "gate_mask_", False),
                  **self.get_params(deep=False),
                  **{name: getattr(self, name + "_") for name in AUTO_DECIDED}}
        return CIMObjective(**{f.name: params[f.name] for f in fields(CIMObjective)})

    def _mask_description(self):
        if self.hard_mask_:
            return "hard mask"
        return f"soft mask cut at mask_threshold={self.mask_threshold_}"

    def _net_spec(self):
        return CIMNet, dict(
            module=CIMModule,
            module__image_shape=self.image_shape_,
            module__n_classes=len(self.classes_),
            module__tn_width=self.tn_width,
            module__tn_depth=self.tn_depth,
            module__per_channel_mask=bool(self.per_channel_mask),
            module__head=self.head,
            module__head_width=self.head_width,
            objective=self._objective(),
        )

    def _data_layout(self):
        return self.image_shape_, self.input_range_

    def _fast_path(self, device):
        if isinstance(self.compile, dict):
            options = dict(self.compile)
        else:
            options = {} if self.compile else None
        # channels_last pays on CUDA and on CPU (1.6x faster mask net on 2 cores)
        return dict(precision=resolve_precision(self.precision, device),
                    channels_last=True, compile_options=options)

    def _apply(self, X, what):
        check_is_fitted(self)
        X, _, shape, layout = validate_images(self, X, reset=False)
        input_range = input_range_of(X, check_data_range(self.data_range))
        out = self._apply_validated(X, shape, input_range, what)
        if out is None:  # no rows
            out = np.empty((0,) + tuple(shape), np.float32)
        dtype = X.dtype if X.dtype in (np.float32, np.float64) else np.float32
        return layout.restore(out.astype(dtype, copy=False))

    def _apply_validated(self, X, shape, input_range, what):
        """psi(X) ("psi"), the masks ("mask") or each row's share of kept mask
        values ("kept", reduced on the device) of validated 2-D X, float32."""
        net = self.net_
        module = net.module_
        module.eval()
        c, h, w = shape
        cuda = torch.device(self.device_).type == "cuda"
        budget = _TRANSFORM_BUDGET_CUDA if cuda else _TRANSFORM_BUDGET
        chunk = max(1, budget // (h * w * self.tn_width))
        low, high = input_range
        precision = resolve_precision(self.precision, self.device_)

        threshold = self.mask_threshold_  # as the fit decided, whatever set_params said since
        hard = self.hard_mask_
        identity = getattr(self, "fallback_", False)

        def mask(u):
            if identity:  # inferred groups that could not be trusted: psi(x) = x
                return torch.ones_like(u[:, :module.mask_net.out.out_channels])
            m = module.mask_net(u).float()
            if hard:  # each pixel kept whole or dropped, as in training
                return (m >= HARD_MASK_CUT).float()
            if threshold is not None:  # dimmed pixels go to exactly 0
                m = m * (m >= threshold)
            return m

        def psi(u):
            # The product with X in float32: only the mask carries bf16 rounding.
            return low + (high - low) * (mask(u) * u)

        def kept(u):
            return (mask(u) > 0).float().flatten(1).mean(1)

        fn = {"psi": psi, "mask": mask, "kept": kept}[what]
        return batched_apply(fn, X, input_range=input_range, image_shape=shape,
                             device=self.device_, chunk=chunk,
                             channels_last=net.channels_last, precision=precision)
