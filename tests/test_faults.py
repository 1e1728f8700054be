"""Faults during training: interruption, out of memory, non-finite loss,
warm starts and partial_fit, for both estimators."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

from sklearn_cim import CIMTransformer, VIBClassifier
from sklearn_cim._networks import MaskNet
from sklearn_cim._vib import VIBModule, VIBNet


def _estimators(tiny, vib_tiny):
    return {"cim": CIMTransformer(**tiny), "vib": VIBClassifier(**vib_tiny)}


def _output(est, X):
    return est.transform(X) if isinstance(est, CIMTransformer) else est.predict_proba(X)


class InterruptAt(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_end(self, net, **kwargs):
        if len(net.history) == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("kind", ["cim", "vib"])
def test_keyboard_interrupt_leaves_a_usable_estimator(images, tiny, kind, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    est = _estimators(tiny, vib_tiny)[kind].set_params(max_epochs=5, callbacks=[InterruptAt(2)])
    with pytest.warns(RuntimeWarning, match="interrupted after 2 of 5 epochs"):
        est.fit(X, y)
    assert len(est.history_) == 2
    out = _output(est, X)
    assert out.shape[0] == 40 and np.isfinite(out).all()


def _oom_when_larger_than(limit):
    def patch(forward):
        def wrapped(self, x, *args, **kwargs):
            if self.training and x.shape[0] > limit:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")
            return forward(self, x, *args, **kwargs)
        return wrapped
    return patch


@pytest.mark.parametrize("kind, module", [("cim", MaskNet), ("vib", VIBModule)])
def test_out_of_memory_halves_the_batch_size(images, tiny, kind, module, monkeypatch, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    monkeypatch.setattr(module, "forward", _oom_when_larger_than(8)(module.forward))
    est = _estimators(tiny, vib_tiny)[kind].set_params(batch_size=32)
    with pytest.warns(RuntimeWarning, match=r"retrying with batch_size=(16|8)\.") as record:
        est.fit(X, y)
    retries = [str(w.message)[-3:-1] for w in record if w.category is RuntimeWarning]
    assert retries == ["16", "=8"]
    assert est.net_.batch_size == 8 and est.batch_size == 32  # the parameter is untouched
    assert len(est.history_) == est.max_epochs
    assert np.isfinite(_output(est, X)).all()


@pytest.mark.parametrize("kind, module", [("cim", MaskNet), ("vib", VIBModule)])
def test_out_of_memory_below_the_floor_is_a_clear_error(images, tiny, kind, module,
                                                        monkeypatch, vib_tiny):
    X, y = images
    monkeypatch.setattr(module, "forward", _oom_when_larger_than(0)(module.forward))
    est = _estimators(tiny, vib_tiny)[kind].set_params(batch_size=32)
    with pytest.warns(RuntimeWarning, match="retrying"):
        with pytest.raises(torch.OutOfMemoryError, match="even with batch_size=8.*device='cpu'"):
            est.fit(X.reshape(40, -1), y)


def test_non_finite_loss_names_the_cause(images, tiny, monkeypatch, vib_tiny):
    X, y = images

    def nan_distance(a, b):
        return (a - b).flatten(1).mean(1) * float("nan")

    with pytest.raises(FloatingPointError, match="Lower lr, check the inputs"):
        CIMTransformer(**{**tiny, "distance": nan_distance}).fit(X, y)

    def nan_terms(self, y_pred, y_true, X):
        mu, _ = y_pred
        return {"ce": (1.0, mu.sum() * float("nan"))}

    monkeypatch.setattr(VIBNet, "loss_terms", nan_terms)
    with pytest.raises(FloatingPointError, match="Lower lr"):
        VIBClassifier(**vib_tiny).fit(X.reshape(40, -1), y)


@pytest.mark.parametrize("kind", ["cim", "vib"])
def test_warm_start_continues_from_the_fitted_weights(images, tiny, kind, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    est = _estimators(tiny, vib_tiny)[kind].set_params(max_epochs=2)
    first = _output(est.fit(X, y), X)
    cold = _output(est.fit(X, y), X)  # warm_start=False: a fresh, identical fit
    np.testing.assert_array_equal(first, cold)
    est.set_params(warm_start=True, max_epochs=3)
    warm = _output(est.fit(X, y), X)
    assert len(est.history_) == 5
    # the warm fit starts from the fitted weights, not from a fresh 3-epoch fit
    fresh = _output(type(est)(**{**est.get_params(), "warm_start": False}).fit(X, y), X)
    assert not np.allclose(warm, first) and not np.allclose(warm, fresh)
    # (that it continues the fit before is pinned by test_promises.py::
    # test_a_warm_fit_continues_the_fit_before)
    with pytest.raises(ValueError, match="not among the classes"):
        est.fit(X, np.where(y == 1, 7, 0))
    with pytest.raises(ValueError, match="features"):
        est.fit(X[:, :10], y)


@pytest.mark.parametrize("kind", ["cim", "vib"])
def test_partial_fit_adds_one_epoch_per_call(images, tiny, kind, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    est = _estimators(tiny, vib_tiny)[kind]
    order = np.random.RandomState(0).permutation(40)
    first, second = order[:20], order[20:]
    est.partial_fit(X[first], np.array(["a", "b"])[y[first]], classes=["a", "b"])
    est.partial_fit(X[second], np.array(["a", "b"])[y[second]])
    assert len(est.history_) == 2
    assert list(est.classes_) == ["a", "b"]
    assert _output(est, X).shape[0] == 40
    with pytest.raises(ValueError, match="not among the classes"):
        est.partial_fit(X[first], np.array(["a", "c"])[y[first]])


def test_failed_fit_keeps_the_previous_model(images, tiny, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    for est in _estimators(tiny, vib_tiny).values():
        before = _output(est.fit(X, y), X)
        with pytest.raises(ValueError, match="1 class"):
            est.fit(X[:, :16], np.zeros(40))
        assert est.n_features_in_ == 64
        np.testing.assert_array_equal(_output(est, X), before)
    from sklearn.exceptions import NotFittedError

    est = CIMTransformer(**tiny)
    with pytest.raises(ValueError):
        est.fit(X, np.zeros(40))
    with pytest.raises(NotFittedError):
        est.transform(X)


def test_warm_start_follows_loss_parameters_but_not_architecture(images, tiny):
    X, y = images
    est = CIMTransformer(**{**tiny, "max_epochs": 2}).fit(X, y)
    assert "train_mask" not in est.history_[-1]
    est.set_params(warm_start=True, mask_weight=1.0, triplet_weight=0.0, max_epochs=1)
    est.fit(X, y)
    assert "train_mask" in est.history_[-1] and "train_triplet" not in est.history_[-1]
    est.set_params(tn_width=8)
    with pytest.raises(ValueError, match=r"cannot change the networks \(tn_width"):
        est.fit(X, y)


def test_partial_fit_rejects_different_classes_later(images, tiny, vib_tiny):
    X, y = images
    est = VIBClassifier(**vib_tiny).partial_fit(X.reshape(40, -1), y, classes=[0, 1])
    with pytest.raises(ValueError, match="differs from the classes_"):
        est.partial_fit(X.reshape(40, -1), y, classes=[0, 1, 2])


def test_vib_integer_images_are_values_not_wrapped_pixels(images, vib_tiny):
    X, _ = images
    rng = np.random.RandomState(0)
    Xi = rng.randint(0, 1000, size=(40, 16)).astype(np.int16)
    y = (Xi.sum(axis=1) > np.median(Xi.sum(axis=1))).astype(int)
    params = dict(vib_tiny, image_shape=(1, 4, 4), conv_width=4)
    from_ints = VIBClassifier(**params).fit(Xi, y).predict_proba(Xi)
    from_floats = VIBClassifier(**params).fit(Xi.astype(np.float32), y).predict_proba(Xi)
    np.testing.assert_allclose(from_ints, from_floats, rtol=1e-5, atol=1e-6)


class CountEpochs(Callback):
    def __init__(self):
        self.epochs = 0

    def on_epoch_end(self, net, **kwargs):
        self.epochs += 1


@pytest.mark.parametrize("kind", ["cim", "vib"])
@pytest.mark.parametrize("how", ["warm_start", "partial_fit"])
def test_continuing_follows_callbacks_and_verbose(images, tiny, kind, how, capsys, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    est = _estimators(tiny, vib_tiny)[kind].set_params(max_epochs=1).fit(X, y)
    assert capsys.readouterr().out == ""

    def go_on():
        est.fit(X, y) if how == "warm_start" else est.partial_fit(X, y)

    est.set_params(warm_start=True, verbose=2)
    go_on()
    printed = capsys.readouterr().out
    assert [line.split()[0] for line in printed.splitlines()[-1:]] == ["2"], printed
    est.set_params(verbose=1)  # one bar for the continuation: epoch 3 of the model
    go_on()
    out, err = capsys.readouterr()
    assert out == "" and "epoch=3" in err
    counter = CountEpochs()
    est.set_params(callbacks=[counter])
    go_on()
    assert counter.epochs == 1
    capsys.readouterr()
    est.set_params(callbacks=None, verbose=0)
    go_on()
    assert counter.epochs == 1 and capsys.readouterr() == ("", "")
    assert len(est.history_) == 5


@pytest.mark.parametrize("kind", ["cim", "vib"])
def test_continuing_moves_the_model_to_the_current_device(images, tiny, vib_tiny, kind,
                                                          monkeypatch):
    # "cpu:0" is a device other than "cpu" to torch (as "cuda" is after a fit on
    # CPU): the net must be moved, and continue as it would have on "cpu"
    import sklearn_cim._estimator as estimator_module

    moves = []

    def spy(net, device):
        moves.append(device)
        return move_net(net, device)

    move_net = estimator_module.move_net
    monkeypatch.setattr(estimator_module, "move_net", spy)
    X, y = images
    X = X.reshape(40, -1)
    ests = [_estimators(tiny, vib_tiny)[kind].fit(X, y) for _ in range(2)]
    assert ests[0].device_ == "cpu"
    ests[0].set_params(warm_start=True).fit(X, y)
    assert moves == []
    ests[1].set_params(warm_start=True, device="cpu:0").fit(X, y)
    assert moves == ["cpu:0"] and ests[1].device_ == "cpu:0"
    np.testing.assert_array_equal(_output(ests[1], X), _output(ests[0], X))


class RaiseAtBatch(Callback):
    def __init__(self, batch):
        self.batch, self.seen = batch, 0

    def on_batch_end(self, net, **kwargs):
        self.seen += 1
        if self.seen == self.batch:
            raise RuntimeError("injected failure")


@pytest.mark.parametrize("kind, module", [("cim", MaskNet), ("vib", VIBModule)])
def test_failed_continuation_leaves_the_previous_model(images, tiny, kind, module,
                                                       monkeypatch, vib_tiny):
    X, y = images
    X = X.reshape(40, -1)
    est, twin = (_estimators(tiny, vib_tiny)[kind].set_params(max_epochs=1).fit(X, y)
                 for _ in range(2))
    before = _output(est, X)
    # the continuation halves the batch size (out of memory), trains a whole
    # epoch (5 batches of 8) and raises in the second batch of the next one
    with monkeypatch.context() as patch:
        patch.setattr(module, "forward", _oom_when_larger_than(8)(module.forward))
        est.set_params(warm_start=True, max_epochs=3, callbacks=[RaiseAtBatch(7)])
        with pytest.warns(RuntimeWarning, match="retrying with batch_size=8"):
            with pytest.raises(RuntimeError, match="injected failure"):
                est.fit(X, y)
    np.testing.assert_array_equal(_output(est, X), before)
    assert len(est.history_) == 1 and est.net_.batch_size == 16
    # weights, Adam's state and the history are the previous ones: continuing
    # now equals continuing a model that never failed
    est.set_params(callbacks=None, max_epochs=2).fit(X, y)
    twin.set_params(warm_start=True, max_epochs=2).fit(X, y)
    assert len(est.history_) == len(twin.history_) == 3
    np.testing.assert_array_equal(_output(est, X), _output(twin, X))
