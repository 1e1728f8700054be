"""What a fit decided stays decided: continuations train the fit's objective,
``transform`` reads the fit's decisions, and an out-of-memory retry of a
continuation starts from the state the call found."""

import pickle

import numpy as np
import pytest
import torch

from sklearn_cim import CIMTransformer, PaperObjectiveWarning, VIBClassifier
from sklearn_cim._networks import MaskNet
from sklearn_cim._vib import VIBModule


def _aware(tiny, nuisance_images, **params):
    X, y, groups = nuisance_images
    return CIMTransformer(**{**tiny, **params}).fit(X, y, groups=groups)


@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_a_group_aware_model_is_not_continued_without_groups(nuisance_images, tiny, how):
    X, y, groups = nuisance_images
    cim = _aware(tiny, nuisance_images)
    before, history = cim.transform(X), len(cim.history_)
    with pytest.raises(ValueError, match=r"fitted with groups .*groups=g"):
        if how == "warm_start":
            cim.set_params(warm_start=True).fit(X, y)
        else:
            cim.partial_fit(X, y)
    # nothing changed: the model, its objective, its mask
    assert cim.group_aware_ and cim.hard_mask_ and len(cim.history_) == history
    np.testing.assert_array_equal(cim.transform(X), before)
    # with groups it continues the group-aware objective
    if how == "warm_start":
        cim.fit(X, y, groups=groups)
    else:
        cim.partial_fit(X, y, groups=groups)
    assert cim.group_aware_ and "train_invariance" in cim.history_[-1]
    assert len(np.unique(cim.masks(X))) <= 2  # still a hard mask


def test_a_paper_objective_model_is_not_continued_with_groups(nuisance_images, tiny):
    X, y, groups = nuisance_images
    with pytest.warns(PaperObjectiveWarning):
        cim = CIMTransformer(**tiny).fit(X, y)
    with pytest.raises(ValueError, match="fitted without groups"):
        cim.partial_fit(X, y, groups=groups)
    assert not cim.group_aware_ and not cim.hard_mask_


def test_transform_reads_what_the_fit_decided_not_the_parameters_since(nuisance_images,
                                                                         tiny):
    X, _, _ = nuisance_images
    cim = _aware(tiny, nuisance_images)
    psi, masks = cim.transform(X), cim.masks(X)
    cim.set_params(hard_mask=False, mask_threshold=0.9, mask_weight=0.0, invariance_weight=0.0,
                   map_weight=3.0)
    np.testing.assert_array_equal(cim.transform(X), psi)
    np.testing.assert_array_equal(cim.masks(X), masks)
    decided = (cim.mask_weight_, cim.invariance_weight_, cim.hard_mask_, cim.mask_threshold_,
               cim.map_weight_)
    assert decided == (0.3, 3.0, True, None, 0.0)
    # a pickle keeps the decisions, whatever its parameters say
    loaded = pickle.loads(pickle.dumps(cim))
    np.testing.assert_array_equal(loaded.transform(X), psi)
    # the next fit decides again, from the parameters then
    soft = _aware(tiny, nuisance_images, hard_mask=False)
    assert not soft.hard_mask_ and len(np.unique(soft.masks(X))) > 2


def test_weights_files_keep_the_decisions(nuisance_images, tiny, tmp_path):
    X, _, _ = nuisance_images
    cim = _aware(tiny, nuisance_images, mask_threshold=0.4, hard_mask=False)
    cim.save_params(tmp_path / "w.pt")
    # what the fit decided travels with the weights, not with the parameters
    other = dict(cim.get_params(), mask_threshold=0.9)
    loaded = CIMTransformer(**other).load_params(tmp_path / "w.pt")
    np.testing.assert_array_equal(loaded.transform(X), cim.transform(X))
    assert (loaded.hard_mask_, loaded.mask_threshold_) == (False, 0.4)


def test_settings_ignored_without_groups_are_named(images, tiny):
    X, y = images
    with pytest.warns(PaperObjectiveWarning) as record:
        CIMTransformer(**tiny, invariance_weight=1.0, group_triplets=False).fit(X, y)
    message = str(record[0].message)
    assert "do nothing: invariance_weight=1.0, group_triplets=False" in message
    with pytest.warns(PaperObjectiveWarning) as record:
        CIMTransformer(**tiny).fit(X, y)
    assert "do nothing" not in str(record[0].message)


# -- out of memory while continuing ------------------------------------------------
def _oom_once_at_training_call(call):
    """Patch for a module's forward: the ``call``-th training forward (from 1)
    raises an out-of-memory error, once."""
    seen = []

    def patch(forward):
        def wrapped(self, x, *args, **kwargs):
            if self.training:
                seen.append(1)
                if len(seen) == call:
                    raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return forward(self, x, *args, **kwargs)
        return wrapped
    return patch


def _two(kind, tiny, X, y):
    """Two equal fitted estimators (batch 16, one epoch)."""
    make = {"cim": lambda: CIMTransformer(**tiny),
            "vib": lambda: VIBClassifier(hidden_layer_sizes=(8,), latent_dim=4, max_epochs=1,
                                         batch_size=16, device="cpu", random_state=0)}[kind]
    return make().fit(X, y), make().fit(X, y)


def _output(est, X):
    return est.transform(X) if isinstance(est, CIMTransformer) else est.predict_proba(X)


@pytest.mark.parametrize("kind, module", [("cim", MaskNet), ("vib", VIBModule)])
@pytest.mark.parametrize("how", ["partial_fit", "warm_start"])
def test_an_out_of_memory_retry_of_a_continuation_starts_where_the_call_began(
        images, tiny, kind, module, how, monkeypatch):
    """Out of memory in batch 2 of a continuation: the retry (batch halved)
    restarts from the weights, optimizer state and history the call found, so
    the model equals a continuation run with the halved batch from the start,
    and every history row is a whole epoch."""
    X, y = images
    X = X.reshape(len(X), -1)
    est, twin = _two(kind, tiny, X, y)
    epochs = 1 if how == "partial_fit" else 2
    with monkeypatch.context() as patch:
        patch.setattr(module, "forward", _oom_once_at_training_call(2)(module.forward))
        with pytest.warns(RuntimeWarning, match="retrying with batch_size=8"):
            if how == "partial_fit":
                est.partial_fit(X, y)
            else:
                est.set_params(warm_start=True, max_epochs=epochs).fit(X, y)
    twin.net_.batch_size = 8  # as the retry does: the parameter stays 16
    if how == "partial_fit":
        twin.set_params(batch_size=8).partial_fit(X, y)
    else:
        twin.set_params(warm_start=True, max_epochs=epochs, batch_size=8).fit(X, y)
    assert len(est.history_) == len(twin.history_) == 1 + epochs
    assert all("train_loss" in row for row in est.history_)
    assert est.history_[-1, "train_batch_count"] == 5  # 40 images in batches of 8
    np.testing.assert_array_equal(_output(est, X), _output(twin, X))
    for (name, a), b in zip(est.net_.module_.state_dict().items(),
                            twin.net_.module_.state_dict().values()):
        assert torch.equal(a, b), name


def test_an_out_of_memory_retry_keeps_what_the_call_set(images, tiny, monkeypatch):
    """The retry restarts from the net as this call set it up: the learning
    rate set since the fit, not the one in the optimizer state before."""
    X, y = images
    X = X.reshape(len(X), -1)
    est, twin = _two("vib", tiny, X, y)
    with monkeypatch.context() as patch:
        patch.setattr(VIBModule, "forward", _oom_once_at_training_call(2)(VIBModule.forward))
        with pytest.warns(RuntimeWarning, match="retrying with batch_size=8"):
            est.set_params(warm_start=True, max_epochs=1, lr=1e-1).fit(X, y)
    assert est.net_.optimizer_.param_groups[0]["lr"] == 1e-1
    twin.net_.batch_size = 8
    twin.set_params(warm_start=True, max_epochs=1, lr=1e-1, batch_size=8).fit(X, y)
    np.testing.assert_array_equal(_output(est, X), _output(twin, X))
