"""A checkpointed fit killed with SIGKILL (``kill -9``) mid-epoch (a step of
the first epoch, one of the third) resumes to the model an uninterrupted fit
reaches, bitwise on CPU.

Each fit runs in its own subprocess (one torch thread, as the bitwise promise
is per thread count): one straight through, one killed, one resumed.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sklearn_cim import CIMTransformer, VIBClassifier
from sklearn_cim._checkpoint import fingerprint, latest

CHILD = textwrap.dedent('''
    import os, signal, sys, warnings
    import numpy as np
    from sklearn_cim import CIMTransformer
    from sklearn_cim.datasets import make_colored_digits

    mode, checkpoint, out, kill_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    warnings.simplefilter("ignore")

    if mode == "kill":  # SIGKILL at the end of training step kill_at (from 1), from
        # outside the estimator's settings (a callback would be part of its checkpoint key)
        from sklearn_cim._net import TorchNet
        real_batch_end, seen = TorchNet.on_batch_end, []
        def on_batch_end(self, net, **kwargs):
            real_batch_end(self, net, **kwargs)
            seen.append(1)
            if len(seen) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
        TorchNet.on_batch_end = on_batch_end

    if mode == "kill-while-writing":  # die inside the second checkpoint's write
        import sklearn_cim._checkpoint as ck
        writes = []
        real = ck.os.replace
        def replace(src, dst):
            writes.append(dst)
            if len(writes) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
        ck.os.replace = replace

    d = make_colored_digits(image_size=16, random_state=0)
    X, y, g = d.X_train[:160], d.y_train[:160], d.nuisance_train[:160]
    cim = CIMTransformer(distance="l2", max_epochs=4, batch_size=32, tn_width=8, lr=1e-2,
                         device="cpu", random_state=0,
                         checkpoint=None if checkpoint == "-" else checkpoint)
    cim.fit(X, y, groups=g)
    state = cim.net_.module_.state_dict()
    np.savez(out, psi=cim.transform(X), masks=cim.masks(X),
             **{"w_" + k: v.numpy() for k, v in state.items()})
''')


def _run(tmp_path, mode, checkpoint, out, kill_at=0):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(script), mode, str(checkpoint), str(out),
                           str(kill_at)], env=env, capture_output=True, text=True, timeout=300)


def _assert_bitwise_equal(a, b):
    with np.load(a) as fa, np.load(b) as fb:
        assert sorted(fa.files) == sorted(fb.files)
        for key in fa.files:
            assert np.array_equal(fa[key], fb[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("through")
    out = tmp / "through.npz"
    done = _run(tmp, "through", "-", out)
    assert done.returncode == 0, done.stderr
    return out


# 4 epochs of 5 steps (160 images, batch 32). The step is fixed (it was drawn
# unseeded on each run, so a failure could not be replayed): one in the first
# epoch (no checkpoint yet, the resume starts from scratch) and one inside the
# third (the resume starts from the 2nd epoch's checkpoint).
@pytest.mark.parametrize("step", [3, 13])
def test_a_fit_killed_at_a_random_step_resumes_to_the_uninterrupted_model(
        tmp_path, uninterrupted, step):
    ckpt = tmp_path / "ckpt"
    killed = _run(tmp_path, "kill", ckpt, tmp_path / "never.npz", kill_at=step)
    assert killed.returncode == -9, killed.stderr  # died of SIGKILL, wrote nothing more
    assert not (tmp_path / "never.npz").exists()
    if step <= 5:  # killed in the first epoch (or at its last step, before its end):
        assert not ckpt.exists()  # nothing written yet, the resume starts from scratch
    else:
        (slot,) = ckpt.iterdir()
        assert latest(str(slot)).endswith(f"epoch-{(step - 1) // 5:06d}")
    resumed = _run(tmp_path, "resume", ckpt, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    _assert_bitwise_equal(uninterrupted, tmp_path / "resumed.npz")
    (slot,) = ckpt.iterdir()
    with open(os.path.join(latest(str(slot)), "history.json")) as f:
        assert len(json.load(f)) == 4  # the resumed fit wrote the remaining epochs


def test_a_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, uninterrupted):
    ckpt = tmp_path / "ckpt"
    killed = _run(tmp_path, "kill-while-writing", ckpt, tmp_path / "never.npz")
    assert killed.returncode == -9, killed.stderr
    (slot,) = ckpt.iterdir()
    names = sorted(os.listdir(slot))
    assert names == ["epoch-000001", "epoch-000002.partial"]  # the 2nd never completed
    resumed = _run(tmp_path, "resume", ckpt, tmp_path / "resumed.npz")
    assert resumed.returncode == 0, resumed.stderr
    _assert_bitwise_equal(uninterrupted, tmp_path / "resumed.npz")
    assert sorted(os.listdir(slot)) == ["epoch-000004"]


def test_a_finished_checkpoint_returns_the_fit_without_training(tmp_path):
    rng = np.random.RandomState(0)
    X, y = rng.rand(60, 5), np.repeat([0, 1, 2], 20)
    make = lambda: VIBClassifier(hidden_layer_sizes=(8,), latent_dim=2, max_epochs=3,  # noqa: E731
                                 batch_size=16, device="cpu", random_state=0,
                                 checkpoint=tmp_path)
    first = make().fit(X, y)
    again = make().fit(X, y)
    assert len(again.history_) == 3
    np.testing.assert_array_equal(first.predict_proba(X), again.predict_proba(X))
    assert again.history_[:, "dur"] == first.history_[:, "dur"]  # loaded, not retrained


def test_checkpoint_slots_are_per_fit_and_refused_for_continuations(tmp_path):
    rng = np.random.RandomState(0)
    X, y = rng.rand(60, 5), np.repeat([0, 1, 2], 20)
    clf = VIBClassifier(hidden_layer_sizes=(8,), latent_dim=2, max_epochs=1, batch_size=16,
                        device="cpu", random_state=0)
    base = fingerprint(clf, X, y, None)
    assert fingerprint(clf.set_params(verbose=1, checkpoint=str(tmp_path)), X, y, None) == base
    clf.set_params(verbose=0)
    assert fingerprint(clf.set_params(lr=1e-2), X, y, None) != base
    assert fingerprint(clf.set_params(lr=1e-3), X[::-1], y, None) != base
    assert fingerprint(clf, X, y[::-1], None) != base
    clf.set_params(checkpoint=tmp_path).fit(X, y)
    with pytest.raises(ValueError, match="checkpoint resumes a fit from scratch"):
        clf.partial_fit(X, y)
    with pytest.raises(ValueError, match="Set checkpoint=None"):
        clf.set_params(warm_start=True).fit(X, y)
    cim = CIMTransformer(checkpoint=3)
    with pytest.raises(ValueError, match="'checkpoint' parameter of CIMTransformer"):
        cim.fit(rng.rand(4, 1, 8, 8), [0, 0, 1, 1])


def test_a_continued_fit_draws_what_one_longer_fit_draws():
    """Each epoch's draws depend on the seed and the epoch alone: two epochs, then
    one more (warm_start, or partial_fit), equal three epochs in one fit."""
    rng = np.random.RandomState(0)
    X, y = rng.rand(60, 5), np.repeat([0, 1, 2], 20)
    make = lambda epochs: VIBClassifier(hidden_layer_sizes=(8,), latent_dim=2,  # noqa: E731
                                        max_epochs=epochs, batch_size=16, device="cpu",
                                        random_state=0)
    whole = make(3).fit(X, y)
    warm = make(2).fit(X, y).set_params(warm_start=True, max_epochs=1).fit(X, y)
    partial = make(2).fit(X, y)
    partial.partial_fit(X, y)
    for continued in (warm, partial):
        assert len(continued.history_) == 3
        np.testing.assert_array_equal(continued.predict_proba(X), whole.predict_proba(X))


def test_every_epoch_draws_its_own_batch_order():
    """Seeded by the epoch: epochs differ from each other (a stream seeded the
    same every epoch would also resume exactly, and train on one order)."""
    from skorch.callbacks import Callback

    class FirstBatch(Callback):
        def initialize(self):
            self.seen = []
            return self

        def on_batch_begin(self, net, batch=None, **kwargs):
            if len(net.history[-1]["batches"]) == 1:  # skorch opened the first
                self.seen.append(batch[1].classes.tolist())

    rng = np.random.RandomState(0)
    X, y = rng.rand(60, 5), np.repeat([0, 1, 2], 20)
    spy = FirstBatch()
    VIBClassifier(hidden_layer_sizes=(8,), latent_dim=2, max_epochs=3, batch_size=16,
                  device="cpu", random_state=0, callbacks=[spy]).fit(X, y)
    assert len(spy.seen) == 3 and len({tuple(s) for s in spy.seen}) == 3


def test_an_epoch_written_again_replaces_its_checkpoint(tmp_path):
    """A fit that starts over (an out-of-memory retry halves the batch and trains
    from epoch 1 again) writes over the checkpoints of the attempt it replaces."""
    rng = np.random.RandomState(0)
    X, y = rng.rand(60, 5), np.repeat([0, 1, 2], 20)
    clf = VIBClassifier(hidden_layer_sizes=(8,), latent_dim=2, max_epochs=1, batch_size=16,
                        device="cpu", random_state=0, checkpoint=tmp_path).fit(X, y)
    (slot,) = tmp_path.iterdir()
    net = clf.net_
    (checkpoint,) = [cb for _, cb in net.callbacks_ if hasattr(cb, "slot")]
    checkpoint.on_epoch_end(net)  # epoch 1 again, over the existing epoch-000001
    assert sorted(p.name for p in slot.iterdir()) == ["epoch-000001"]
