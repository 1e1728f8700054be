"""Mutation check: break the product on purpose and check that the tests notice.

Each mutant below is a deliberate bug (one or more exact text replacements in
``sklearn_cim/``) with the tests that should catch it. For each mutant the
check copies ``sklearn_cim/``, ``tests/`` and ``pyproject.toml`` to a
temporary folder, applies the replacements there (the working tree is never
touched), and runs the named tests against the copy, in a process forked from
this one (which imports torch and the other dependencies once; POSIX only);
Python processes the tests start import the copy too (``PYTHONPATH``). A
mutant is *killed* when pytest reports a failing test (exit status 1); it
*survives* when the tests pass. Anything else (a replacement text not found
exactly once, a collection error) is an *error*: fix the mutant's text after a
refactor.

Run from the repository root (``.ci/run`` does, after the test suite has
passed on the unmutated code, which every kill relies on)::

    python maint_tools/mutation_check.py            # all mutants, 2 at a time
    python maint_tools/mutation_check.py --list     # what would run
    python maint_tools/mutation_check.py triplet-swapped hard-mining-ignored

Exit status 0 when every mutant is killed, 1 otherwise.
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Before torch is imported: two mutants share the two cores, and idle OpenMP
# threads must not spin.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    what: str
    file: str  # under sklearn_cim/
    edits: tuple  # ((old, new), ...): each old text must occur exactly once
    tests: tuple  # pytest node ids (relative to tests/) that must fail


def _m(name, area, what, file, edits, *tests):
    return Mutant(name, area, what, file, tuple(edits), tuple(tests))


MUTANTS = [
    # -- the objective ---------------------------------------------------------------
    _m("triplet-swapped", "objective",
       "positives and negatives swapped: training pulls psi towards the other class",
       "_objective.py",
       [("d_pos = metric.between(anchor, metric.take(pairs, pos))",
         "d_pos = metric.between(anchor, metric.take(pairs, neg))"),
        ("d_neg = metric.between(anchor, metric.take(pairs, neg))",
         "d_neg = metric.between(anchor, metric.take(pairs, pos))")],
       "test_promises.py::test_triplet_term_pulls_psi_towards_its_class"),
    _m("margin-sign", "objective", "the margin subtracted instead of added",
       "_triplet.py",
       [("torch.relu(d_pos - d_neg + margin)", "torch.relu(d_pos - d_neg - margin)")],
       "test_promises.py::test_margin_shifts_the_triplet_loss"),
    _m("classifier-weight-ignored", "objective", "classifier_weight not applied to the CE",
       "_objective.py",
       [('terms["ce"] = (obj.classifier_weight,', 'terms["ce"] = (1.0,')],
       "test_promises.py::test_loss_weights_enter_the_trained_loss"),
    _m("triplet-weight-ignored", "objective", "triplet_weight not applied",
       "_objective.py",
       [('terms["triplet"] = (obj.triplet_weight,', 'terms["triplet"] = (1.0,')],
       "test_promises.py::test_loss_weights_enter_the_trained_loss"),
    _m("ce-at-weight-zero", "objective",
       "classifier_weight=0 still trains the head on the CE",
       "_objective.py",
       [('        if obj.classifier_weight > 0:\n            terms["ce"] = (obj.classifier_weight,',
         '        if True:\n            terms["ce"] = (1.0,')],
       "test_promises.py::test_classifier_weight_zero_leaves_the_head_untrained"),
    _m("head-kl-weight", "objective", "the vib head's KL weighted by head_beta alone",
       "_objective.py",
       [("(obj.classifier_weight * obj.head_beta, gaussian_kl", "(obj.head_beta, gaussian_kl")],
       "test_promises.py::test_loss_weights_enter_the_trained_loss"),
    _m("distance-ignored", "objective", "the triplet term always measures l2",
       "_objective.py",
       [("metric = make_distance(distance, pretrained).to(device)",
         "metric = make_distance('l2', False).to(device)")],
       "test_promises.py::test_distance_is_what_the_triplet_term_measures"),
    # -- mining --------------------------------------------------------------------------
    _m("hard-mining-ignored", "mining", "fit always mines at random, whatever mining says",
       "_objective.py",
       [("y, obj.mining, generator=self.generator, pairwise=pairwise)",
         'y, "random", generator=self.generator, pairwise=pairwise)')],
       "test_promises.py::test_hard_mining_draws_harder_triplets_than_random"),
    _m("hard-mining-nearest-positive", "mining",
       "hard mining takes the nearest positive and the farthest negative",
       "_triplet.py",
       [("pos_scores, neg_scores = pairwise, -pairwise",
         "pos_scores, neg_scores = -pairwise, pairwise")],
       "test_promises.py::test_hard_mining_draws_harder_triplets_than_random"),
    _m("pair-transform-ignored", "mining", "pair_transform ignored inside fit",
       "_objective.py",
       [("pairs = [e.detach() for e in anchor] if obj.pair_transform else originals",
         "pairs = originals"),
        ("need_originals = not obj.pair_transform or", "need_originals = True or")],
       "test_promises.py::test_pair_transform_chooses_what_psi_is_compared_with"),
    _m("pair-transform-not-detached", "mining",
       "pair_transform lets the gradient flow through the pairs",
       "_objective.py",
       [("pairs = [e.detach() for e in anchor] if", "pairs = list(anchor) if")],
       "test_promises.py::test_pair_transform_chooses_what_psi_is_compared_with"),
    # -- masks and groups --------------------------------------------------------------
    _m("mask-penalty-detached", "masks", "the mask_weight penalty has no gradient",
       "_objective.py",
       [('terms["mask"] = (obj.mask_weight * gate, mask.mean())',
         'terms["mask"] = (obj.mask_weight * gate, mask.mean().detach())')],
       "test_promises.py::test_mask_weight_lowers_the_mask"),
    _m("mask-threshold-ignored", "masks", "transform never cuts dimmed pixels",
       "_cim.py",
       [("m = m * (m >= threshold)", "m = m")],
       "test_groups.py::test_mask_threshold_zeroes_dimmed_pixels"),
    _m("psi-is-x", "masks", "transform returns the input unmasked",
       "_cim.py",
       [("def psi(u):\n", "def psi(u):\n            return u\n")],
       "test_cim.py::test_layouts_masks_and_psi"),
    _m("groups-ignored", "groups", "fit drops the groups: the paper's objective only",
       "_cim.py",
       [("return self._fit_images(X, y, warm=self._continues(), groups=groups)",
         "return self._fit_images(X, y, warm=self._continues(), groups=None)")],
       "test_effect.py::test_group_cim_dims_the_nuisance_and_makes_a_linear_model_robust"),
    _m("group-weighting-ignored", "groups", "the head's CE is never balanced over the cells",
       "_objective.py",
       [("if groups is None or weights is None:", "if True:")],
       "test_groups.py::test_balanced_cross_entropy_uses_the_cell_weights",
       "test_promises.py::test_group_weighting_none_is_the_unweighted_head"),
    _m("cell-weight-index-groups-only", "groups",
       "each sample weighted by its group's row of the cell table, not its (class, group) cell",
       "_objective.py",
       [("weights[y * self.n_cell_groups_ + groups]", "weights[groups]")],
       "test_groups.py::test_balanced_cross_entropy_uses_the_cell_weights"),
    _m("group-positives-same-group", "groups",
       "bias-contrastive positives drawn from the anchor's own group",
       "_groups.py",
       [("return self._draw(self.by_class, y.long(), groups.long(), u)",
         "return self._draw(self.by_group, groups.long(), y.long(), u)")],
       "test_groups.py::test_group_triplets_contrast_across_groups"),
    _m("invariance-weight-ignored", "groups", "the invariance term never weighted",
       "_objective.py",
       [('terms["invariance"] = (obj.invariance_weight,',
         'terms["invariance"] = (0.0,')],
       "test_groups.py::test_invariance_weight_enters_the_loss"),
    _m("invariance-halves-equal", "groups",
       "the invariance term's two halves are one (a biased squared norm)",
       "_objective.py",
       [("first, second = member * half[:, None], member * (~half)[:, None]",
         "first, second = member, member")],
       "test_groups.py::test_group_mean_gap_by_hand"),
    _m("hard-mask-only-at-transform", "groups",
       "training uses the soft mask although the transform cuts it",
       "_objective.py",
       [("self.module_.hard = bool(self.objective.hard_mask)", "self.module_.hard = False")],
       "test_groups.py::test_hard_masks_keep_or_drop_whole_pixels_in_training_and_transform"),
    _m("hard-mask-soft-at-transform", "groups", "transform returns the soft mask of a hard fit",
       "_cim.py",
       [("return (m >= HARD_MASK_CUT).float()", "return m")],
       "test_groups.py::test_hard_masks_keep_or_drop_whole_pixels_in_training_and_transform"),
    _m("local-proxy-is-linear", "groups", "infer_groups=True uses the linear proxy",
       "_groups.py",
       [('if strategy == "local":', 'if False:')],
       "test_groups.py::test_local_proxy_follows_a_small_patch_where_the_linear_one_follows_the_object"),
    _m("removal-check-reads-x-twice", "removal check", "the check probes x in place of psi(x)",
       "_removal.py",
       [('images = {"psi": pooled(psi, PROBE_SIDE), "x": pooled(x, PROBE_SIDE)}',
         'images = {"psi": pooled(x, PROBE_SIDE), "x": pooled(x, PROBE_SIDE)}')],
       "test_removal.py::test_a_mark_at_a_random_place_is_seen"),
    _m("removal-check-scores-training-images", "removal check",
       "the probes scored on the mask network's own training images",
       "_removal.py",
       [("    test = np.flatnonzero(held)\n    train = np.setdiff1d(check_rows(held, y), test)\n",
         "    train = np.flatnonzero(held)\n    test = np.setdiff1d(check_rows(held, y), train)\n")],
       "test_removal.py::test_the_check_reads_the_held_out_images"),
    _m("removal-check-cnn-probe-linear", "removal check",
       "the CNN estimate made by a linear probe (blind to a mark only a CNN follows)",
       "_removal.py",
       [('("cnn", "balanced_accuracy_cnn")):', '("linear", "balanced_accuracy_cnn")):')],
       "test_removal.py::test_a_mark_at_a_random_place_is_seen"),
    _m("removal-check-pooled-small", "removal check",
       "the convolutional probes read images pooled to 8 px (a small mark averaged away)",
       "_removal.py",
       [("PROBE_SIDE = 32\n", "PROBE_SIDE = 8\n")],
       "test_removal.py::test_a_small_corner_mark_is_seen_at_its_true_size"),
    _m("erased-images-unwarned", "removal check",
       "objects erased in a share of the images pass without a word",
       "_removal.py",
       [("    if check.erased_share > WARN_ERASED:", "    if False:")],
       "test_removal.py::test_objects_erased_in_some_images_are_warned_about"),
    _m("mask-trains-on-the-checks-images", "removal check",
       "the mask network trains on the images held back for the check",
       "_cim.py",
       [("rows = None if held is None else np.flatnonzero(~held)", "rows = None")],
       "test_removal.py::test_a_fit_holds_the_checks_images_back_from_the_mask_network"),
    _m("held-out-rows-read-in-training", "removal check",
       "the training set's batches read the first rows of X, not its own (held-out ones too)",
       "_batching.py",
       [("        if self.rows is not None:\n            rows = self.rows[rows]\n", "")],
       "test_removal.py::test_a_fit_holds_the_checks_images_back_from_the_mask_network"),
    _m("fallback-ignored-by-transform", "removal check",
       "a fallen-back fit still transforms with its mask",
       "_cim.py",
       [('identity = getattr(self, "fallback_", False)', "identity = False")],
       "test_removal.py::test_untrusted_inferred_groups_fall_back_to_the_identity"),
    _m("unseen-nuisance-silent", "removal check",
       "a check that cannot see the nuisance in x (retained NaN) says nothing",
       "_removal.py",
       [("    if not (np.isfinite(check.retained) or np.isfinite(check.retained_local)):",
         "    if False:")],
       "test_removal.py::test_a_nuisance_no_probe_can_see_is_said"),
    _m("kept-every-pixel-silent", "removal check",
       "a hard mask that kept every pixel (psi(x) = x) passes as a removal",
       "_cim.py",
       [("kept is not None and kept >= 1.0)", "kept is not None and kept > 1.0)")],
       "test_removal.py::test_a_hard_mask_that_kept_every_pixel_says_nothing_was_removed"),
    # -- VIB ---------------------------------------------------------------------------
    _m("vib-beta-ignored", "vib", "VIBClassifier's KL never weighted by beta",
       "_vib.py",
       [('"kl": (self.beta, gaussian_kl(mu, sigma))', '"kl": (0.0, gaussian_kl(mu, sigma))')],
       "test_vib.py::test_kl_shrinks_as_beta_grows"),
    _m("vib-one-training-draw", "vib", "n_train_samples ignored (one draw)",
       "_vib.py",
       [("self.module_.sample_logits(mu, sigma, self.generator, self.n_train_samples)",
         "self.module_.sample_logits(mu, sigma, self.generator, 1)")],
       "test_promises.py::test_n_train_samples_draws_that_many_codes"),
    _m("vib-predict-no-noise", "vib", "predict_proba's draws forget sigma (n_test_samples moot)",
       "_vib.py",
       [("module.decode(mu.unsqueeze(0) + sigma.unsqueeze(0) * eps)",
         "module.decode(mu.unsqueeze(0) + 0 * eps)")],
       "test_vib.py::test_test_time_draws_are_averaged"),
    # -- warm starts and persistence ---------------------------------------------------
    _m("warm-restarts", "warm start",
       "every warm fit / partial_fit restarts from fresh weights",
       "_estimator.py",
       [("epochs=epochs, initialize=not warm,", "epochs=epochs, initialize=True,")],
       "test_promises.py::test_a_warm_fit_continues_the_fit_before"),
    _m("epoch-reseed-dropped", "checkpoints",
       "the batch order not reseeded per epoch: its stream runs on from the fit's start",
       "_net.py",
       [("        self.training_set_.generator.manual_seed(self.seed + 16 * (epoch - 1))\n",
         "")],
       "test_checkpoint.py::test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one",
       "test_checkpoint.py::test_a_fit_killed_at_a_random_step_resumes_to_the_uninterrupted_model"),
    _m("epoch-seed-constant", "checkpoints",
       "every epoch's batch order seeded the same (resumes exactly, trains on one order)",
       "_net.py",
       [("manual_seed(self.seed + 16 * (epoch - 1))", "manual_seed(self.seed)")],
       "test_checkpoint.py::test_every_epoch_draws_its_own_batch_order"),
    _m("checkpoint-key-without-callbacks", "checkpoints",
       "callbacks left out of the checkpoint key (a scheduled fit's slot serves a plain fit)",
       "_checkpoint.py",
       [('params["callbacks"] = describe(list(estimator.callbacks or []), "callback")',
         'params["callbacks"] = []')],
       "test_checkpoint_key.py::test_callbacks_are_keyed"),
    _m("continuation-changes-objective", "warm start",
       "a group-aware model continued without groups trains the paper's objective",
       "_cim.py",
       [("if warm and self.group_aware_ != (group_codes is not None):", "if False:")],
       "test_continuations.py::test_a_group_aware_model_is_not_continued_without_groups"),
    _m("transform-reads-live-parameters", "warm start",
       "transform reads hard_mask from the parameters (set_params after fit changes it)",
       "_cim.py",
       [("        hard = self.hard_mask_\n",
         '        hard = resolve_auto(self.get_params(), self.group_aware_)["hard_mask"]\n')],
       "test_continuations.py::test_transform_reads_what_the_fit_decided_not_the_parameters_since"),
    _m("oom-retry-keeps-the-half-epoch", "warm start",
       "an out-of-memory retry of a continuation starts from the half-trained epoch",
       "_net.py",
       [("                before.restore(net)\n", "                pass\n")],
       "test_continuations.py::test_an_out_of_memory_retry_of_a_continuation_starts_where_the_call_began"),
    _m("checkpoint-written-in-place", "checkpoints",
       "a checkpoint written straight into its final folder (a kill leaves half of one)",
       "_checkpoint.py",
       [('partial = final + ".partial"', "partial = final")],
       "test_checkpoint.py::test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one"),
    _m("load-params-forgets-metadata", "persistence",
       "load_params does not restore the fitted tuple attributes",
       "_estimator.py",
       [("setattr(self, name, None if meta[name] is None else tuple(meta[name]))", "pass")],
       "test_persistence.py::test_save_and_load_params"),
    _m("lr-ignored", "training", "the optimizer's learning rate fixed at 1e-3",
       "_estimator.py",
       [("            lr=self.lr,\n", "            lr=1e-3,\n")],
       "test_promises.py::test_lr_scales_the_first_step"),
    _m("batch-size-ignored", "training", "a new net trains in batches of 16, whatever batch_size",
       "_estimator.py",
       [("            batch_size=self.batch_size,\n", "            batch_size=16,\n")],
       "test_promises.py::test_batches_and_epochs_follow_their_parameters"),
    _m("tn-width-ignored", "networks", "the mask net is always 4 channels wide",
       "_cim.py",
       [("module__tn_width=self.tn_width,", "module__tn_width=4,")],
       "test_promises.py::test_network_sizes_follow_their_parameters"),
    _m("vib-hidden-layers-ignored", "vib", "VIB's encoder ignores hidden_layer_sizes",
       "_vib.py",
       [("module__hidden_layer_sizes=self._hidden_layer_sizes(),",
         "module__hidden_layer_sizes=(8,),")],
       "test_promises.py::test_vib_sizes_follow_their_parameters"),
    _m("invariance-gated", "groups", "the invariance term waits for the head too",
       "_objective.py",
       [('terms["invariance"] = (obj.invariance_weight,',
         'terms["invariance"] = (obj.invariance_weight * gate,')],
       "test_groups.py::test_invariance_weight_enters_the_loss"),
    _m("gate-ignored", "groups", "the sparsity term never waits for the head",
       "_objective.py",
       [("gate = head_gate(logits, y_true, self.row_weights(y_true, groups))",
         "gate = torch.ones(())")],
       "test_mask_gate.py::test_the_mask_penalty_is_weighted_by_the_gate"),
    _m("gate-from-zero", "groups", "the gate measures accuracy from 0, not from chance",
       "_objective.py",
       [("chance = 1.0 / logits.shape[1]", "chance = 0.0")],
       "test_mask_gate.py::test_head_gate_runs_from_chance_to_full_halfway_to_perfect"),
    _m("map-term-ungated", "nuisance map", "the map term does not wait for the head",
       "_objective.py",
       [('terms["nuisance_map"] = (obj.map_weight * gate,',
         'terms["nuisance_map"] = (obj.map_weight,')],
       "test_nuisance_map.py::test_the_mask_pays_where_the_map_is_and_waits_for_the_head"),
    _m("map-window-fixed", "nuisance map", "the probe reads 5 px windows at every size",
       "_nuisance_map.py",
       [("return 1 if side < 24 else 3 if side < 48 else 5", "return 5")],
       "test_nuisance_map.py::test_window_grows_with_the_image"),
    _m("map-auto-keeps-sparsity", "nuisance map",
       'mask_weight="auto" keeps the uniform sparsity term beside the map',
       "_cim.py",
       [('pick("mask_weight", 0.0 if map_weight > 0 else AUTO_MASK_WEIGHT,',
         'pick("mask_weight", AUTO_MASK_WEIGHT,')],
       "test_nuisance_map.py::test_the_map_replaces_the_auto_sparsity_term"),
    _m("map-without-groups", "nuisance map",
       "map_weight reaches the paper's objective (it has no groups to map)",
       "_cim.py",
       [('map_weight = float(params["map_weight"]) if aware else 0.0',
         'map_weight = float(params["map_weight"])')],
       "test_nuisance_map.py::test_a_fit_trains_the_map_term_when_asked_with_groups"),
    _m("empty-map-silent", "nuisance map", "a map the probe left empty goes unsaid",
       "_objective.py",
       [("X.groups) == 0:", "X.groups) == -1:")],
       "test_nuisance_map.py::test_an_empty_map_is_said"),
    _m("map-uncut", "nuisance map", "the map is not cut: a window near chance still costs",
       "_nuisance_map.py",
       [("return ((info - cut) / (1 - cut)).clamp(0, 1)", "return info")],
       "test_nuisance_map.py::test_map_marks_the_patch_not_the_strokes",
       "test_nuisance_map.py::test_the_mask_pays_where_the_map_is_and_waits_for_the_head"),
    _m("resampling-ignored", "groups",
       'group_weighting="resampled" draws every row once, unweighted',
       "_batching.py",
       [("if weights is not None and n:", "if False:")],
       "test_groups.py::test_resampled_draws_every_cell_as_often"),
    _m("group-weighting-none-still-balances", "groups",
       'group_weighting="none" still balances the cells',
       "_objective.py",
       [('if obj.group_weighting == "balanced":', "if True:")],
       "test_promises.py::test_group_weighting_none_is_the_unweighted_head"),
    # -- data placement and validation -------------------------------------------------
    _m("labels-misaligned", "data placement", "each batch's labels taken in reverse order",
       "_batching.py",
       [("return Targets(self.y[idx], None", "return Targets(self.y[idx.flip(0)], None")],
       "test_cim.py::test_classifier_head_learns"),
    _m("pixels-not-scaled", "data placement", "uint8 pixels not mapped to [0, 1]",
       "_batching.py",
       [("if low != 0.0 or high != 1.0:", "if False:")],
       "test_validation.py::test_uint8_and_float_inputs_agree"),
    _m("image-shape-ignored", "validation", "image_shape ignored: rows always inferred",
       "_cim.py",
       [("validate_images(self, X, y, image_shape=self.image_shape,",
         "validate_images(self, X, y, image_shape=None,")],
       "test_promises.py::test_image_shape_sets_the_layout_of_rows"),
    _m("data-range-unchecked", "validation", "values outside data_range accepted",
       "_validation.py",
       [("if lo < low_x or hi > high_x:", "if False:")],
       "test_bad_input.py", "test_validation.py::test_bad_inputs_get_clear_errors"),
    _m("parameter-table-unchecked", "validation",
       "fit never checks the parameters against _parameter_constraints",
       "_estimator.py",
       [("        validate_params(self)\n", "")],
       "test_bad_input.py::test_bad_input_names_the_fix",
       "test_checkpoint.py::test_checkpoint_slots_are_per_fit_and_refused_for_continuations"),
    _m("lpips-calibration-skipped", "distances", "LPIPS's calibration file never loaded",
       "_distances.py",
       [("    _load_calibration(model, trunk)\n", "")],
       "test_distances.py::test_lpips_loads_the_shipped_calibration"),
    _m("random-state-ignored", "seeding", "random_state ignored (every fit seeded alike)",
       "_estimator.py",
       [("seed = int(check_random_state(self.random_state).randint(",
         "seed = int(check_random_state(0).randint(")],
       "test_cim.py::test_random_state_gives_bitwise_equal_transforms"),
]


def _copy_tree(dest):
    for name in ("sklearn_cim", "tests"):
        shutil.copytree(ROOT / name, dest / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")


def _apply(mutant, dest):
    path = dest / "sklearn_cim" / mutant.file
    text = path.read_text()
    for old, new in mutant.edits:
        count = text.count(old)
        if count != 1:
            raise LookupError(f"{mutant.name}: {old!r} occurs {count} times in "
                              f"sklearn_cim/{mutant.file} (expected once)")
        text = text.replace(old, new)
    path.write_text(text)


def _child(mutant, dest, log):
    """In a forked process: run the mutant's tests on the copy; never returns."""
    rc = 3
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.chdir(dest)
        sys.path.insert(0, str(dest))
        # Python processes the tests start (tests/test_checkpoint.py's fits)
        # import the copy too, not the editable install of the working tree
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [str(dest)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        import pytest

        rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider"]
                         + ["tests/" + t for t in mutant.tests])
        module = sys.modules.get("sklearn_cim")
        if module is None or not module.__file__.startswith(str(dest)):
            print(f"MUTATION-CHECK: the tests imported {module and module.__file__}")
            rc = 3
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(rc))


def _verdict(mutant, rc, output):
    failed = re.findall(r"^FAILED (\S+)", output, re.M)
    if rc == 1 and failed:
        return "killed", failed[0]
    if rc == 0:
        return "survived", "all of " + ", ".join(mutant.tests) + " passed"
    tail = " | ".join(output.strip().splitlines()[-4:])
    return "error", f"pytest exit {rc}: {tail}"


def run_mutants(mutants, jobs):
    """Run each mutant in a process forked from this one, ``jobs`` at a time.

    This process imports the heavy dependencies (torch, scikit-learn, skorch,
    lpips) once, but never sklearn_cim: each child imports the mutated copy.
    Returns {name: (status, detail, seconds)}.
    """
    import lpips  # noqa: F401
    import pytest  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import skorch  # noqa: F401
    import torch  # noqa: F401

    assert "sklearn_cim" not in sys.modules
    results, running, queue = {}, {}, list(mutants)
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        while queue or running:
            while queue and len(running) < jobs:
                mutant = queue.pop(0)
                dest = Path(tmp) / mutant.name
                _copy_tree(dest)
                try:
                    _apply(mutant, dest)
                except LookupError as exc:
                    results[mutant.name] = ("error", str(exc), 0.0)
                    continue
                log = Path(tmp) / f"{mutant.name}.log"
                pid = os.fork()
                if pid == 0:
                    _child(mutant, dest, log)
                running[pid] = (mutant, log, time.perf_counter())
            if running:
                pid, status = os.wait()
                mutant, log, start = running.pop(pid)
                rc = os.waitstatus_to_exitcode(status)
                status_, detail = _verdict(mutant, rc, log.read_text())
                results[mutant.name] = (status_, detail, time.perf_counter() - start)
                shutil.rmtree(Path(tmp) / mutant.name)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=2, help="mutants run at once (2)")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutants {unknown}; see --list")
    mutants = [known[n] for n in args.names] or MUTANTS
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.area:15s} {m.what}\n{'':48s}tests: {', '.join(m.tests)}")
        return 0
    start = time.perf_counter()
    print(f"mutation check: {len(mutants)} mutants, {args.jobs} at a time", flush=True)
    found = run_mutants(mutants, args.jobs)
    results = [found[m.name] for m in mutants]
    for m, (status, detail, seconds) in zip(mutants, results):
        print(f"{status:8s} {m.name:32s} {seconds:5.1f}s  {detail}")
    bad = [m.name for m, (status, _, _) in zip(mutants, results) if status != "killed"]
    wall = time.perf_counter() - start
    killed = len(mutants) - len(bad)
    print(f"{killed}/{len(mutants)} mutants killed in {wall:.0f} s"
          + (f"; not killed: {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
