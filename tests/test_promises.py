"""One promise per public parameter: each test fails if its parameter were
ignored or inverted inside ``fit`` (a measurable effect, not only acceptance).

``PROMISES`` maps every parameter of :class:`CIMTransformer` and
:class:`VIBClassifier` to the test that pins it, here or in another module;
``test_every_parameter_has_a_promise`` keeps the map complete. The mutation
check (``maint_tools/mutation_check.py``) breaks the product on purpose and
runs these tests to show they notice.
"""

import importlib

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from sklearn_cim import CIMTransformer, VIBClassifier
from sklearn_cim._vib import VIBModule

PROMISES = {
    "CIMTransformer": {
        "image_shape": "test_promises::test_image_shape_sets_the_layout_of_rows",
        "distance": "test_promises::test_distance_is_what_the_triplet_term_measures",
        "pretrained": "test_distances::test_pretrained_unavailable_error_names_cache_and_fix",
        "classifier_weight": "test_promises::test_loss_weights_enter_the_trained_loss",
        "triplet_weight": "test_promises::test_loss_weights_enter_the_trained_loss",
        "margin": "test_promises::test_margin_shifts_the_triplet_loss",
        "mining": "test_promises::test_hard_mining_draws_harder_triplets_than_random",
        "pair_transform": "test_promises::test_pair_transform_chooses_what_psi_is_compared_with",
        "mask_weight": "test_promises::test_mask_weight_lowers_the_mask",
        "map_weight": "test_nuisance_map::test_the_map_term_lowers_the_mask_on_the_patch_only",
        "hard_mask": (
            "test_groups::test_hard_masks_keep_or_drop_whole_pixels_in_training_and_transform"),
        "mask_threshold": "test_groups::test_mask_threshold_zeroes_dimmed_pixels",
        "group_weighting": "test_promises::test_group_weighting_none_is_the_unweighted_head",
        "group_triplets": "test_groups::test_group_triplets_contrast_across_groups",
        "invariance_weight": "test_groups::test_invariance_weight_enters_the_loss",
        "infer_groups": "test_groups::test_inferred_groups_are_kept_and_follow_the_simple_feature",
        "per_channel_mask": "test_cim::test_rgb_rows_and_per_channel_masks",
        "tn_width": "test_promises::test_network_sizes_follow_their_parameters",
        "tn_depth": "test_promises::test_network_sizes_follow_their_parameters",
        "head": "test_cim::test_joint_cim_vib_head_trains_and_records_kl",
        "head_width": "test_promises::test_network_sizes_follow_their_parameters",
        "head_beta": "test_promises::test_loss_weights_enter_the_trained_loss",
        "data_range": "test_validation::test_data_range_other_than_unit",
        "max_epochs": "test_promises::test_batches_and_epochs_follow_their_parameters",
        "batch_size": "test_promises::test_batches_and_epochs_follow_their_parameters",
        "lr": "test_promises::test_lr_scales_the_first_step",
        "device": "test_faults::test_continuing_moves_the_model_to_the_current_device",
        "precision": "test_fast_path::test_bf16_transform_is_close_to_float32",
        "compile": "test_fast_path::test_compiled_forward_gives_the_same_model_and_pickles",
        "distributed": "test_distributed::test_ddp_path_with_one_process_equals_plain_training",
        "random_state": "test_cim::test_random_state_gives_bitwise_equal_transforms",
        "verbose": "test_cim::test_verbose_levels",
        "callbacks": "test_cim::test_user_callbacks_are_called",
        "warm_start": "test_promises::test_a_warm_fit_continues_the_fit_before",
        "checkpoint": (
            "test_checkpoint::test_a_fit_killed_at_a_random_step_resumes_to_the_uninterrupted_model"),
    },
    "VIBClassifier": {
        "beta": "test_vib::test_kl_shrinks_as_beta_grows",
        "latent_dim": "test_promises::test_vib_sizes_follow_their_parameters",
        "hidden_layer_sizes": "test_promises::test_vib_sizes_follow_their_parameters",
        "image_shape": "test_promises::test_vib_sizes_follow_their_parameters",
        "conv_width": "test_promises::test_vib_sizes_follow_their_parameters",
        "n_train_samples": "test_promises::test_n_train_samples_draws_that_many_codes",
        "n_test_samples": "test_vib::test_test_time_draws_are_averaged",
        "max_epochs": "test_promises::test_batches_and_epochs_follow_their_parameters",
        "batch_size": "test_promises::test_batches_and_epochs_follow_their_parameters",
        "lr": "test_promises::test_lr_scales_the_first_step",
        "device": "test_faults::test_continuing_moves_the_model_to_the_current_device",
        "distributed": "test_distributed::test_two_launched_processes_train_one_model",
        "random_state": "test_vib::test_predict_proba_reproducible",
        "verbose": "test_faults::test_continuing_follows_callbacks_and_verbose",
        "callbacks": "test_faults::test_continuing_follows_callbacks_and_verbose",
        "warm_start": "test_promises::test_a_warm_fit_continues_the_fit_before",
        "checkpoint": (
            "test_checkpoint::test_a_finished_checkpoint_returns_the_fit_without_training"),
    },
}


@pytest.mark.parametrize("estimator", [CIMTransformer, VIBClassifier])
def test_every_parameter_has_a_promise(estimator):
    promises = PROMISES[estimator.__name__]
    assert set(promises) == set(estimator().get_params())
    for param, where in promises.items():
        module, test = where.split("::")
        assert callable(getattr(importlib.import_module(module), test, None)), (
            f"{estimator.__name__}.{param}: no test {where}")


def _fit_history(est, X, y, **fit_params):
    return est.fit(X, y, **fit_params).history_


# -- the objective -----------------------------------------------------------------

def test_loss_weights_enter_the_trained_loss(images, tiny, gated_mean):
    """The trained (and logged) loss is the weighted sum of the logged terms,
    with each weight where the docstring puts it (the KL of the "vib" head
    weighs classifier_weight * head_beta)."""
    X, y = images
    weights = dict(classifier_weight=0.7, triplet_weight=1.3, mask_weight=0.4, margin=0.5,
                   head="vib", head_beta=0.05)
    h = _fit_history(CIMTransformer(**{**tiny, **weights, "max_epochs": 2}), X, y)
    ce, tri, mask, kl = (np.array(h[:, k]) for k in ("train_ce", "train_triplet",
                                                     "train_mask", "train_kl"))
    assert (tri > 0).all() and (kl > 0).all()  # every term is in play
    # the mask term is weighted by each batch's gate (head_gate)
    gated = np.array([gated_mean(h, e, "mask") for e in range(len(h))])
    expected = 0.7 * ce + 1.3 * tri + 0.4 * gated + 0.7 * 0.05 * kl
    np.testing.assert_allclose(h[:, "train_loss"], expected, rtol=1e-4)


def test_classifier_weight_zero_leaves_the_head_untrained(images, tiny):
    X, y = images

    def head(**params):
        cim = CIMTransformer(**{**tiny, "margin": 0.5, **params}).fit(X, y)
        return list(cim.net_.module_.head.parameters())

    one, three = head(classifier_weight=0.0), head(classifier_weight=0.0, max_epochs=3)
    trained = head(max_epochs=3)
    assert all(torch.equal(p, q) for p, q in zip(one, three))  # never moved
    assert not all(torch.equal(p, q) for p, q in zip(one, trained))


def _triplet_gap(cim, X, y):
    """Mean over anchors of d(psi(x), same class) - d(psi(x), other class), with
    the RMS distance of ``distance="l2"`` to the original images."""
    psi, orig = cim.transform(X).reshape(len(X), -1), X.reshape(len(X), -1)
    d = np.sqrt(((psi[:, None] - orig[None]) ** 2).mean(-1))
    same = (y[:, None] == y[None]) & ~np.eye(len(y), dtype=bool)
    other = y[:, None] != y[None]
    return np.mean([d[i][same[i]].mean() - d[i][other[i]].mean() for i in range(len(y))])


def test_triplet_term_pulls_psi_towards_its_class(images, tiny):
    """Training on the triplet term alone shrinks the gap d(psi, same class) -
    d(psi, other class); it would grow were positives and negatives swapped.
    Measured on seeds 0-2: -0.311 after 1 epoch, -0.333 to -0.335 after 10."""
    X, y = images
    params = {**tiny, "classifier_weight": 0.0, "margin": 0.5, "lr": 1e-2}
    early = CIMTransformer(**params).fit(X, y)
    late = CIMTransformer(**{**params, "max_epochs": 10}).fit(X, y)
    assert _triplet_gap(late, X, y) < _triplet_gap(early, X, y) - 0.01


def test_margin_shifts_the_triplet_loss(images, tiny):
    """relu(d_pos - d_neg + margin): with l2 distances in [0, 1], margin 1 makes
    every triplet active (loss = 1 + mean(d_pos - d_neg)); margin 0 only the
    violated ones, none on these brightness-separated images."""
    X, y = images
    zero = _fit_history(CIMTransformer(**{**tiny, "margin": 0.0}), X, y)[0, "train_triplet"]
    one = _fit_history(CIMTransformer(**{**tiny, "margin": 1.0}), X, y)[0, "train_triplet"]
    assert zero < 0.05 and 0.5 < one < 1.0


def test_hard_mining_draws_harder_triplets_than_random(images, tiny):
    """The farthest positive and the nearest negative violate the margin more
    than random ones. First-epoch triplet loss, margin 0.5, seeds 0-3: random
    0.185-0.191, hard 0.215-0.226."""
    X, y = images
    params = {**tiny, "margin": 0.5}
    random = _fit_history(CIMTransformer(**params), X, y)[0, "train_triplet"]
    hard = _fit_history(CIMTransformer(**params, mining="hard"), X, y)[0, "train_triplet"]
    assert hard > random + 0.01


def test_pair_transform_chooses_what_psi_is_compared_with(images, tiny):
    """A spy distance sees the pairs: rows of the training set as they are, or,
    with pair_transform=True, passed through the mask (dimmed, no gradient)."""
    X, y = images
    rows = torch.as_tensor(X.reshape(40, -1))
    for pair_transform in (False, True):
        pairs, with_gradient = [], []

        def spy(a, b):
            if a.requires_grad:  # psi(x) against its positives / negatives
                pairs.append(b.detach().reshape(len(b), -1))
                with_gradient.append(b.requires_grad)
            return (a - b).pow(2).flatten(1).mean(1).sqrt()

        CIMTransformer(**{**tiny, "distance": spy, "pair_transform": pair_transform}).fit(X, y)
        b = torch.cat(pairs)
        assert not any(with_gradient)
        is_a_row = (b[:, None] - rows[None]).abs().amax(-1).min(dim=1).values < 1e-6
        if pair_transform:
            assert not is_a_row.any()
            # psi = m * x with m in (0, 1): each pair lies below one training row
            below_a_row = (b[:, None] <= rows[None] + 1e-6).all(-1).any(dim=1)
            assert below_a_row.all()
        else:
            assert is_a_row.all()


def test_mask_weight_lowers_the_mask(images, tiny):
    """Mean mask after 5 epochs, seeds 0-2: 0.874-0.904 with mask_weight=0,
    0.811-0.814 with 1 (Adam's steps hardly grow with the weight beyond)."""
    X, y = images
    params = {**tiny, "max_epochs": 5, "lr": 1e-2}
    free = CIMTransformer(**params, mask_weight=0.0).fit(X, y).masks(X).mean()
    sparse = CIMTransformer(**params, mask_weight=1.0).fit(X, y).masks(X).mean()
    assert sparse < free - 0.04


def test_image_shape_sets_the_layout_of_rows(images, tiny):
    """The same 64-value rows read as 8x8 or as 4x16 images: the mask net (a
    convolution) sees other neighbours, so the masks differ."""
    X, y = images
    flat = X.reshape(40, -1)
    square = CIMTransformer(**tiny, image_shape=(1, 8, 8)).fit(flat, y)
    wide = CIMTransformer(**tiny, image_shape=(4, 16)).fit(flat, y)
    assert square.image_shape_ == (1, 8, 8) and wide.image_shape_ == (1, 4, 16)
    assert square.masks(X).shape == (40, 1, 8, 8)
    assert wide.masks(X.reshape(40, 1, 4, 16)).shape == (40, 1, 4, 16)
    assert not np.allclose(square.masks(flat), wide.masks(flat))


def test_distance_is_what_the_triplet_term_measures(images, tiny):
    X, y = images
    calls = []

    def doubled_l2(a, b):
        calls.append(a.shape)
        return 2 * (a - b).pow(2).flatten(1).mean(1).sqrt()

    params = {**tiny, "margin": 1.0}
    del params["distance"]
    l2 = _fit_history(CIMTransformer(**params, distance="l2"), X, y)[0, "train_triplet"]
    doubled = _fit_history(CIMTransformer(**params, distance=doubled_l2), X, y)[0, "train_triplet"]
    assert calls and calls[0][1:] == (1, 8, 8)
    # margin 1 keeps every triplet active: the loss is margin + mean(d_pos - d_neg)
    np.testing.assert_allclose(doubled - 1.0, 2 * (l2 - 1.0), rtol=0.05)
    ssim = _fit_history(CIMTransformer(**params, distance="ssim"), X, y)[0, "train_triplet"]
    assert abs(ssim - l2) > 0.01


def test_group_weighting_none_is_the_unweighted_head(nuisance_images, tiny, fit_rows):
    """With triplets, the invariance term, the mask penalty and the hard mask
    off, the group-aware fit with group_weighting="none" trains the plain
    cross-entropy: the same model as the paper's objective; "balanced" trains
    another one."""
    X, y, groups = nuisance_images
    params = {**tiny, "triplet_weight": 0.0, "mask_weight": 0.0, "mask_threshold": None,
              "invariance_weight": 0.0, "hard_mask": False, "max_epochs": 2,
              "map_weight": 0.0}
    rows = fit_rows(y, groups, tiny["random_state"])  # a group-aware fit trains on these
    plain = CIMTransformer(**params).fit(X[rows], y[rows])
    none = CIMTransformer(**params, group_weighting="none").fit(X, y, groups=groups)
    balanced = CIMTransformer(**params).fit(X, y, groups=groups)
    np.testing.assert_allclose(none.history_[:, "train_ce"], plain.history_[:, "train_ce"],
                               rtol=1e-6)
    assert not np.allclose(balanced.history_[:, "train_ce"], plain.history_[:, "train_ce"],
                           rtol=1e-3)


# -- sizes, batches, epochs, learning rate -------------------------------------------

def _n_params(module):
    return sum(p.numel() for p in module.parameters())


def test_network_sizes_follow_their_parameters(images, tiny):
    X, y = images

    def sizes(**params):
        module = CIMTransformer(**{**tiny, **params}).fit(X, y).net_.module_
        return _n_params(module.mask_net), _n_params(module.head)

    base = sizes()
    assert sizes(tn_width=8)[0] > base[0] and sizes(tn_width=8)[1] == base[1]
    assert sizes(tn_depth=2)[0] > base[0] and sizes(tn_depth=2)[1] == base[1]
    assert sizes(head_width=8)[1] > base[1] and sizes(head_width=8)[0] == base[0]


def test_vib_sizes_follow_their_parameters(images, vib_tiny):
    X, y = images
    flat = X.reshape(40, -1)

    def fitted(**params):
        return VIBClassifier(**{**vib_tiny, **params}).fit(flat, y)

    base = fitted()
    assert base.transform(flat).shape == (40, 4)
    assert fitted(latent_dim=6).transform(flat).shape == (40, 6)
    deeper = fitted(hidden_layer_sizes=(8, 8))
    assert _n_params(deeper.net_.module_) == _n_params(base.net_.module_) + 8 * 8 + 8
    conv = fitted(image_shape=(1, 8, 8), conv_width=4)
    wider = fitted(image_shape=(1, 8, 8), conv_width=8)
    assert any(isinstance(m, torch.nn.Conv2d) for m in conv.net_.module_.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in base.net_.module_.modules())
    assert _n_params(wider.net_.module_) > _n_params(conv.net_.module_)


class CountBatches(Callback):
    def initialize(self):
        self.sizes = []
        return self

    def on_batch_end(self, net, batch=None, training=None, **kwargs):
        if training:
            self.sizes.append(len(batch[0]))


@pytest.mark.parametrize("kind", ["cim", "vib"])
def test_batches_and_epochs_follow_their_parameters(images, tiny, kind, vib_tiny):
    X, y = images
    counter = CountBatches()
    params = dict(max_epochs=3, batch_size=12, callbacks=[counter])
    est = (CIMTransformer(**{**tiny, **params}) if kind == "cim"
           else VIBClassifier(**{**vib_tiny, **params}))
    est.fit(X.reshape(40, -1), y)
    assert len(est.history_) == 3
    assert counter.sizes == [12, 12, 12, 4] * 3


@pytest.mark.parametrize("kind", ["cim", "vib"])
def test_lr_scales_the_first_step(images, tiny, kind, vib_tiny):
    """Adam's first step moves each weight with a gradient by lr: two fits of one
    step from the same start, with lr 1e-4 and 1e-3, differ by at most 9e-4."""
    X, y = images

    def one_step(lr):
        params = dict(lr=lr, max_epochs=1, batch_size=40)
        est = (CIMTransformer(**{**tiny, **params}) if kind == "cim"
               else VIBClassifier(**{**vib_tiny, **params}))
        return list(est.fit(X.reshape(40, -1), y).net_.module_.parameters())

    small, large = one_step(1e-4), one_step(1e-3)
    gap = max((a - b).abs().max().item() for a, b in zip(small, large))
    assert 8e-4 < gap < 1e-3


def test_n_train_samples_draws_that_many_codes(images, monkeypatch, vib_tiny):
    X, y = images
    seen = []
    original = VIBModule.sample_logits

    def spy(self, mu, sigma, generator, n_samples=1):
        out = original(self, mu, sigma, generator, n_samples)
        if torch.is_grad_enabled():
            seen.append(out.shape[0])
        return out

    monkeypatch.setattr(VIBModule, "sample_logits", spy)
    VIBClassifier(**{**vib_tiny, "n_train_samples": 5}).fit(X.reshape(40, -1), y)
    assert seen and set(seen) == {5}


# -- warm starts ----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["cim", "vib"])
def test_a_warm_fit_continues_the_fit_before(images, tiny, kind, vib_tiny):
    """3 epochs, then 3 warm epochs, train like 6 epochs in one fit: the warm fit's
    first-epoch loss is below the last epoch of the fit it continues and close
    to epoch 4 of the single fit, far from a fresh start's first epoch.
    Measured (seeds 0, 1): CIM 0.323 vs 0.328 (fresh 0.676), VIB 0.583 vs
    0.593 (fresh 0.718)."""
    X, y = images
    flat = X.reshape(40, -1)
    params = dict(lr=1e-2, max_epochs=3)
    make = ((lambda **p: CIMTransformer(**{**tiny, "margin": 0.3, **params, **p}))
            if kind == "cim" else (lambda **p: VIBClassifier(**{**vib_tiny, **params, **p})))
    single = make(max_epochs=6).fit(flat, y).history_[:, "train_loss"]
    est = make().fit(flat, y)
    warm = est.set_params(warm_start=True).fit(flat, y).history_[:, "train_loss"]
    assert len(warm) == 6
    np.testing.assert_array_equal(warm[:3], single[:3])
    assert warm[3] < warm[2]
    assert abs(warm[3] - single[3]) < 0.25 * abs(single[0] - single[3])
    # partial_fit continues too
    est = make().fit(flat, y)
    est.partial_fit(flat, y)
    after = est.history_[:, "train_loss"]
    assert after[3] < after[2] and abs(after[3] - single[3]) < 0.25 * abs(single[0] - single[3])
