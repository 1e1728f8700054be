"""The fast paths give the same results as the straightforward ones.

bf16 autocast, channels_last, the compiled training forward, the once-per-epoch
loss read, chunked transform with out-of-memory halving and optimizer-free
pickles. Speed itself is measured in benchmarks/bench_fit.py, never here.
"""

import pickle

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback

import sklearn_cim._devices as devices
from sklearn_cim import CIMTransformer, VIBClassifier


def _rgb(n=48, side=8, seed=0):
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 3
    X = rng.rand(n, 3, side, side).astype(np.float32) * 0.6
    X[:, y % 3] += 0.3 * (y[:, None, None] > 0)  # a class signal in one channel
    return X.clip(0, 1), y


def test_bf16_transform_is_close_to_float32(tiny):
    X, y = _rgb()
    cim = CIMTransformer(**tiny, precision="float32").fit(X, y)
    psi32, m32 = cim.transform(X), cim.masks(X)
    cim.set_params(precision="bfloat16")
    psi16, m16 = cim.transform(X), cim.masks(X)
    assert psi16.dtype == np.float32
    assert not np.array_equal(m16, m32)  # autocast really ran
    np.testing.assert_allclose(m16, m32, atol=2e-2)
    np.testing.assert_allclose(psi16, psi32, atol=2e-2)
    # psi is the bf16 mask times X in float32
    np.testing.assert_allclose(psi16, m16 * X, atol=1e-6)


@pytest.mark.parametrize("distance", ["l2", "lpips-alex"])
def test_bf16_training_step_matches_float32(distance):
    X, y = _rgb(side=8)
    params = dict(distance=distance, pretrained=False, max_epochs=1, batch_size=48,
                  tn_width=4, tn_depth=1, head_width=4, device="cpu", random_state=0)
    runs = {p: CIMTransformer(**params, precision=p).fit(X, y)
            for p in ("float32", "bfloat16")}
    h32, h16 = (runs[p].history_[-1] for p in ("float32", "bfloat16"))
    for key in ("train_loss", "train_ce", "train_triplet"):
        assert h16[key] == pytest.approx(h32[key], rel=3e-2, abs=3e-3), key
    np.testing.assert_allclose(runs["bfloat16"].transform(X), runs["float32"].transform(X),
                               atol=3e-2)


def test_auto_precision_is_float32_on_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda **kwargs: True)
    assert devices.resolve_precision("auto", "cpu") == "float32"
    assert devices.resolve_precision("auto", "cuda") == "bfloat16"
    assert devices.resolve_precision("float32", "cuda") == "float32"


def test_auto_precision_is_float32_on_a_gpu_without_bf16(monkeypatch):
    # resolve_precision only inspects the device type: a "cuda" string is enough
    asked = []

    def no_bf16(including_emulation=True):
        asked.append(including_emulation)
        return False

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", no_bf16)
    assert devices.resolve_precision("auto", "cuda") == "float32"
    assert devices.resolve_precision("auto", "cuda:1") == "float32"
    assert asked and not any(asked)  # emulated bf16 (pre-Ampere) does not count
    assert devices.resolve_precision("bfloat16", "cuda") == "bfloat16"  # as asked


def test_channels_last_gives_the_same_model(tiny, monkeypatch):
    X, y = _rgb()
    cl = CIMTransformer(**{**tiny, "max_epochs": 2}).fit(X, y)
    fast_path = CIMTransformer._fast_path
    monkeypatch.setattr(CIMTransformer, "_fast_path",
                        lambda self, device: {**fast_path(self, device),
                                              "channels_last": False})
    plain = CIMTransformer(**{**tiny, "max_epochs": 2}).fit(X, y)
    assert not plain.net_.channels_last
    assert cl.net_.channels_last
    conv = next(m for m in cl.net_.module_.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_allclose(cl.history_[:, "train_loss"], plain.history_[:, "train_loss"],
                               rtol=1e-4)
    np.testing.assert_allclose(cl.transform(X), plain.transform(X), atol=1e-4)


class _RecordCompiled(Callback):
    """Records, per batch, whether the compiled wrapper exists (picklable)."""

    def __init__(self):
        self.used = []

    def on_batch_end(self, net, **kwargs):
        module = getattr(net, "step_modules_", {}).get("train")
        self.used.append(module is not None and module is not net.module_)


def test_compiled_forward_gives_the_same_model_and_pickles(tiny):
    X, y = _rgb()
    plain = CIMTransformer(**{**tiny, "max_epochs": 2}).fit(X, y)
    spy = _RecordCompiled()
    comp = CIMTransformer(**{**tiny, "max_epochs": 2, "callbacks": [spy]},
                          compile={"backend": "eager"}).fit(X, y)
    assert spy.used and all(spy.used)  # the compiled wrapper trained the model
    assert not hasattr(comp.net_, "step_modules_")  # and lived for that fit only
    np.testing.assert_allclose(comp.history_[:, "train_loss"], plain.history_[:, "train_loss"],
                               rtol=1e-5)
    np.testing.assert_allclose(comp.transform(X), plain.transform(X), atol=1e-5)
    back = pickle.loads(pickle.dumps(comp))
    np.testing.assert_array_equal(back.transform(X), comp.transform(X))
    # saved weights carry no compile prefixes
    assert not any("_orig_mod" in k for k in comp.net_.module_.state_dict())


def _count_host_reads(monkeypatch):
    """Count tensor -> Python reads (each is a host synchronisation on CUDA)."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            counts["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("estimator", ["cim", "vib"])
def test_host_reads_per_batch_are_the_loss_and_its_terms(estimator, monkeypatch):
    """skorch reads each batch's loss (one host synchronisation on CUDA); the
    loss terms are read after it, one each, and nothing else per batch."""
    X, y = _rgb(n=96)
    reads = {}
    for batch_size in (48, 8):  # 2 and 12 batches per epoch
        if estimator == "cim":
            est = CIMTransformer(distance="lpips-alex", pretrained=False, mining="hard",
                                 image_shape=(3, 8, 8), max_epochs=2, batch_size=batch_size,
                                 tn_width=4, tn_depth=1,
                                 head_width=4, device="cpu", random_state=0)
        else:
            est = VIBClassifier(latent_dim=4, hidden_layer_sizes=(8,), max_epochs=2,
                                batch_size=batch_size, device="cpu", random_state=0)
        counts = _count_host_reads(monkeypatch)
        est.fit(X.reshape(len(X), -1), y)
        monkeypatch.undo()
        reads[batch_size] = counts["n"]
        batches = est.history_[-1, "batches"]
        assert len(batches) == 96 // batch_size
        assert all(np.isfinite(b["train_loss"]) for b in batches)
        sizes = np.array([b["train_batch_size"] for b in batches])
        losses = np.array([b["train_loss"] for b in batches])
        assert est.history_[-1, "train_loss"] == pytest.approx(
            (sizes * losses).sum() / sizes.sum(), rel=1e-6)
    terms = [k for k in est.history_[-1, "batches", 0] if k not in ("train_loss",
                                                                     "train_batch_size")]
    extra_batches = 2 * (96 // 8 - 96 // 48)  # two epochs
    assert reads[8] - reads[48] == extra_batches * (1 + len(terms)), (reads, terms)


def test_transform_halves_its_chunk_on_out_of_memory(tiny, monkeypatch):
    X, y = _rgb(n=30)
    cim = CIMTransformer(**tiny).fit(X, y)
    expected = cim.transform(X)
    mask_net = cim.net_.module_.mask_net
    forward = mask_net.forward
    seen = []

    def limited(x):
        seen.append(len(x))
        if len(x) > 4:
            raise torch.OutOfMemoryError("simulated")
        return forward(x)

    monkeypatch.setattr(mask_net, "forward", limited)
    np.testing.assert_allclose(cim.transform(X), expected, atol=1e-6)
    assert max(n for n in seen if n <= 4) == 4 and seen[0] == 30


@pytest.mark.parametrize("make", [
    lambda: CIMTransformer(distance="l2", image_shape=(3, 8, 8), max_epochs=2, batch_size=16,
                           tn_width=4, tn_depth=1, head_width=4, device="cpu", random_state=0),
    lambda: VIBClassifier(latent_dim=8, hidden_layer_sizes=(64,), max_epochs=2,
                          batch_size=16, device="cpu", random_state=0),
], ids=["cim", "vib"])
def test_pickles_keep_the_optimizer_state_and_continue_exactly(make):
    X, y = _rgb()
    X = X.reshape(len(X), -1)
    model = make().fit(X, y)
    back = pickle.loads(pickle.dumps(model))
    assert len(back.net_.optimizer_.state) > 0  # Adam moments came back
    out = "transform" if hasattr(model, "transform") else "predict_proba"
    np.testing.assert_array_equal(getattr(back, out)(X), getattr(model, out)(X))
    # continuing after unpickling equals continuing in memory
    model.set_params(warm_start=True).fit(X, y)
    back.set_params(warm_start=True).fit(X, y)
    assert len(back.history_) == 4
    np.testing.assert_array_equal(getattr(back, out)(X), getattr(model, out)(X))


@pytest.mark.parametrize("params, match", [
    ({"precision": "fp16"}, r"'precision' parameter of CIMTransformer must be a str among"),
    ({"compile": "yes"}, r"'compile' parameter of CIMTransformer must be .*bool.*dict"),
])
def test_fast_path_parameters_are_checked(tiny, params, match):
    X, y = _rgb()
    with pytest.raises((ValueError, TypeError), match=match):
        CIMTransformer(**tiny, **params).fit(X, y)


def test_bf16_loss_terms_are_logged_as_floats(tiny):
    dtypes = set()

    class Spy(Callback):
        def on_batch_end(self, net, **kwargs):
            dtypes.update(v.dtype for v in net.batch_terms_.values())

    X, y = _rgb(n=96)
    params = {**tiny, "distance": "ssim", "head": "vib", "mask_weight": 0.1,
              "batch_size": 8, "precision": "bfloat16", "callbacks": [Spy()]}
    cim = CIMTransformer(**params).fit(X, y)
    assert torch.bfloat16 in dtypes  # the terms were computed under bf16 autocast
    # each batch's terms are read once as Python floats, their epoch means in float64
    batch = cim.history_[-1, "batches", 0]
    assert all(type(batch["train_" + k]) is float for k in ("ce", "kl", "triplet", "mask"))
    sizes = np.asarray(cim.history_[-1, "batches", :, "train_batch_size"], float)
    ce = np.asarray(cim.history_[-1, "batches", :, "train_ce"])
    assert cim.history_[-1, "train_ce"] == float(sizes @ ce / sizes.sum())


def test_ssim_ignores_autocast():
    from sklearn_cim._distances import SSIMDistance

    rng = np.random.RandomState(0)
    a = torch.full((4, 3, 16, 16), 0.7)
    b = a.clone()
    b[:, :, 4:8, 4:8] += 0.1 * torch.from_numpy(rng.rand(4, 3, 4, 4)).float()
    d = SSIMDistance()
    plain = d(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = d(a, b)
    assert cast.dtype == torch.float32
    torch.testing.assert_close(cast, plain)


def test_compile_accepts_numpy_bools(tiny):
    X, y = _rgb()
    for flag, compiled in ((np.False_, None), (np.True_, {})):
        cim = CIMTransformer(**tiny, compile=flag)
        assert cim._fast_path("cpu")["compile_options"] == compiled


def test_bf16_hard_mining_mines_in_float32(monkeypatch):
    """Hard mining under bf16 autocast picks the negatives float32 distances pick,
    on near-duplicates (RMS 0.01-0.03 apart) that bf16 Gram products confuse."""
    import sklearn_cim._objective as objective_module
    from sklearn_cim._distances import L2Distance
    from sklearn_cim._triplet import mine_triplets

    rng = np.random.RandomState(0)
    base = rng.rand(8, 1, 8, 8)
    dups = [np.clip(base + s * rng.randn(*base.shape), 0, 1) for s in (0.01, 0.02, 0.03)]
    X = np.concatenate([base] + dups).astype(np.float32)
    y = np.repeat([0, 1], [8, 24])
    seen, mined = [], []
    pairwise = L2Distance.pairwise

    def spy_pairwise(self, e):  # the embedding hard mining measures
        seen.append(e[0].detach().clone())
        return pairwise(self, e)

    def spy_mine(y, mining, **kwargs):  # the triplets training uses
        mined.append((y, mine_triplets(y, mining, **kwargs)))
        return mined[-1][1]

    monkeypatch.setattr(L2Distance, "pairwise", spy_pairwise)
    monkeypatch.setattr(objective_module, "mine_triplets", spy_mine)
    CIMTransformer(distance="l2", mining="hard", precision="bfloat16", max_epochs=1,
                   batch_size=len(X), tn_width=4, tn_depth=1, head_width=4,
                   device="cpu", random_state=0).fit(X, y)
    assert len(seen) == len(mined) == 1
    (y_batch, (_, neg, _)), = mined
    reference = pairwise(L2Distance(), [seen[0].float()])  # float32, no autocast
    _, neg32, _ = mine_triplets(y_batch, "hard", pairwise=reference)
    changed = (neg != neg32).float().mean().item()
    assert changed == 0, f"bf16 changed the nearest negative of {changed:.1%} of rows"
