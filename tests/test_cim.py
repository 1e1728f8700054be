"""CIMTransformer: layouts, training signal, determinism, persistence."""

import io
import pickle

import joblib
import numpy as np
import pytest
import torch

import sklearn_cim._cim as cim_module
from sklearn_cim import CIMTransformer
from sklearn_cim._distances import Distance
from sklearn_cim._triplet import mine_triplets, triplet_loss


def test_layouts_masks_and_psi(images, tiny):
    X, y = images
    cim = CIMTransformer(**tiny).fit(X, y)
    psi4, m4 = cim.transform(X), cim.masks(X)
    assert psi4.shape == X.shape and m4.shape == (40, 1, 8, 8)
    assert psi4.dtype == np.float32
    assert ((m4 >= 0) & (m4 <= 1)).all()
    np.testing.assert_allclose(psi4, m4 * X, atol=1e-6)
    X2 = X.reshape(40, -1)
    np.testing.assert_allclose(cim.transform(X2), psi4.reshape(40, -1), atol=1e-6)
    assert cim.masks(X2).shape == (40, 64)
    assert cim.transform(X2.astype(np.float64)).dtype == np.float64
    assert cim.n_features_in_ == 64 and cim.image_shape_ == (1, 8, 8)
    assert cim.device_ == "cpu"


def test_rgb_rows_and_per_channel_masks(tiny):
    rng = np.random.RandomState(1)
    X = rng.rand(32, 3 * 6 * 6).astype(np.float32)
    y = np.repeat(["cat", "dog"], 16)
    with pytest.warns(UserWarning, match="read as square RGB images"):
        cim = CIMTransformer(**tiny, per_channel_mask=True).fit(X, y)
    assert cim.image_shape_ == (3, 6, 6)
    assert list(cim.classes_) == ["cat", "dog"]
    m = cim.masks(X.reshape(32, 3, 6, 6))
    assert m.shape == (32, 3, 6, 6)
    assert not np.allclose(m[:, 0], m[:, 1])  # channels get their own masks


def test_history_records_each_term_per_epoch(images, tiny, gated_mean):
    X, y = images
    cim = CIMTransformer(**{**tiny, "max_epochs": 3, "mask_weight": 0.1}).fit(X, y)
    hist = cim.history_
    assert len(hist) == 3
    for key in ("train_loss", "train_ce", "train_triplet", "train_mask"):
        values = hist[:, key]
        assert len(values) == 3 and all(np.isfinite(values))
    # the mask term is weighted by each batch's gate (head_gate)
    gated = [gated_mean(hist, e, "mask") for e in range(3)]
    assert all(0 <= g <= 1 for g in hist[:, "train_mask_gate"])
    expected = (np.array(hist[:, "train_ce"]) + np.array(hist[:, "train_triplet"])
                + 0.1 * np.array(gated))
    np.testing.assert_allclose(hist[:, "train_loss"], expected, rtol=1e-4)


@pytest.mark.parametrize("distance", ["l2", "ssim", "lpips-alex"])
@pytest.mark.parametrize("mining, pair_transform", [("random", False), ("hard", True)])
def test_triplet_term_is_optimised(images, tiny, distance, mining, pair_transform):
    X, y = images
    params = {**tiny, "distance": distance, "pretrained": False, "classifier_weight": 0.0,
              "max_epochs": 16, "lr": 1e-2, "batch_size": 40, "margin": 0.5,
              "mining": mining, "pair_transform": pair_transform}
    cim = CIMTransformer(**params).fit(X, y)
    losses = np.array(cim.history_[:, "train_triplet"])
    assert losses[-3:].mean() < losses[:3].mean()  # random mining redraws: compare means


def test_classifier_head_learns(images, tiny):
    X, y = images
    cim = CIMTransformer(**{**tiny, "max_epochs": 15, "lr": 1e-2}).fit(X, y)
    ce = cim.history_[:, "train_ce"]
    assert ce[-1] < 0.5 * ce[0]


def test_random_state_gives_bitwise_equal_transforms(images, tiny):
    X, y = images
    state = torch.random.get_rng_state()
    a = CIMTransformer(**tiny).fit(X, y).transform(X)
    b = CIMTransformer(**tiny).fit(X, y).transform(X)
    c = CIMTransformer(**{**tiny, "random_state": 1}).fit(X, y).transform(X)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert torch.equal(state, torch.random.get_rng_state())  # fit leaves torch's RNG alone


def test_fits_in_concurrent_threads_equal_sequential_fits(images, tiny):
    """Thread-based parallelism (joblib's threading backend, Dask workers with
    several threads) must not mix the seeded draws of concurrent fits; the
    random LPIPS trunk is drawn from torch's global RNG too."""
    from concurrent.futures import ThreadPoolExecutor

    X, y = images
    X = np.repeat(np.repeat(X, 3, axis=2), 3, axis=3)  # 24 px: LPIPS-squeeze needs 17
    params = dict(tiny, distance="lpips-squeeze", pretrained=False)

    def fit(seed):
        return CIMTransformer(**{**params, "random_state": seed}).fit(X, y).transform(X)

    seeds = list(range(4))
    sequential = [fit(s) for s in seeds]
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = list(pool.map(fit, seeds))
    for seed, a, b in zip(seeds, sequential, threaded):
        np.testing.assert_array_equal(a, b, err_msg=f"random_state={seed}")


def test_layers_frozen_by_hand_stay_frozen_in_a_warm_fit(images, tiny):
    X, y = images
    cim = CIMTransformer(**tiny).fit(X, y)
    head = cim.net_.module_.head
    head.requires_grad_(False)
    before = [p.detach().clone() for p in head.parameters()]
    cim.set_params(warm_start=True, max_epochs=2).fit(X, y)
    assert not any(p.requires_grad for p in head.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters()))


def test_transform_in_chunks_equals_one_pass(images, tiny, monkeypatch):
    X, y = images
    cim = CIMTransformer(**tiny).fit(X, y)
    whole = cim.transform(X)
    monkeypatch.setattr(cim_module, "_TRANSFORM_BUDGET", 7 * 64 * tiny["tn_width"])
    np.testing.assert_array_equal(cim.transform(X), whole)


def test_pandas_in_and_out(images, tiny):
    pd = pytest.importorskip("pandas")
    X, y = images
    df = pd.DataFrame(X.reshape(40, -1), columns=[f"px{i}" for i in range(64)])
    cim = CIMTransformer(**tiny).set_output(transform="pandas").fit(df, y)
    out = cim.transform(df)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(df.columns)
    assert list(cim.get_feature_names_out()) == list(df.columns)


def test_read_only_memmap(images, tiny, tmp_path):
    X, y = images
    path = tmp_path / "X.npy"
    np.save(path, X)
    Xm = np.load(path, mmap_mode="r")
    psi = CIMTransformer(**tiny).fit(Xm, y).transform(Xm)
    assert psi.shape == X.shape


def test_verbose_levels(images, tiny, capsys):
    """0: silent; 1: one bar for the whole fit (3 epochs x 3 batches) ending
    with the loss terms, no per-epoch table; 2: skorch's per-epoch table."""
    X, y = images
    CIMTransformer(**tiny).fit(X, y)
    assert capsys.readouterr() == ("", "")
    CIMTransformer(**{**tiny, "verbose": 1, "max_epochs": 3}).fit(X, y)
    out, err = capsys.readouterr()
    assert out == ""
    assert "9/9" in err and "triplet=" in err and "loss=" in err and "epoch=3" in err
    assert err.count("0/9") == 1  # one bar, not one per epoch
    CIMTransformer(**{**tiny, "verbose": 2}).fit(X, y)
    out = capsys.readouterr().out
    assert "train_triplet" in out and "train_loss" in out


def test_joblib_round_trip_and_no_lpips_in_pickle(images, tiny, tmp_path):
    X, y = images
    X3 = np.repeat(X, 3, axis=1)
    cim = CIMTransformer(**{**tiny, "distance": "lpips-alex", "pretrained": False}).fit(X3, y)
    metric = cim.net_.get_metric()  # built during fit, kept outside the net
    path = tmp_path / "cim.joblib"
    joblib.dump(cim, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.transform(X3), cim.transform(X3))
    assert getattr(loaded.net_, "metric", None) is None
    assert not any(isinstance(v, Distance) for v in vars(loaded.net_).values())
    trunk_bytes = sum(p.numel() * 4 for p in metric.model.parameters())
    assert path.stat().st_size < trunk_bytes / 4


# skorch says it moved the net to the CPU: what this test asks of it
@pytest.mark.filterwarnings("ignore:Setting self.device = cpu:UserWarning")
def test_cuda_fitted_model_loads_on_cpu(images, tiny, monkeypatch):
    """Simulate a model pickled on a CUDA machine and loaded on a CPU-only one."""
    X, y = images
    cim = CIMTransformer(**tiny).fit(X, y)
    expected = cim.transform(X)
    cim.net_.device = "cuda"  # what a CUDA fit records
    buffer = io.BytesIO()
    pickle.dump(cim, buffer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    buffer.seek(0)
    with pytest.warns(UserWarning, match="no CUDA devices"):
        loaded = pickle.load(buffer)
    assert loaded.device_ == "cpu"
    np.testing.assert_array_equal(loaded.transform(X), expected)


def test_random_mining_picks_valid_pairs():
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    g = torch.Generator().manual_seed(0)
    pos, neg, valid = mine_triplets(y, "random", generator=g)
    assert valid.tolist() == [True] * 5 + [False]  # class 2 has no positive
    for i in range(5):
        assert pos[i] != i and y[pos[i]] == y[i] and y[neg[i]] != y[i]


def test_hard_mining_picks_farthest_positive_nearest_negative():
    y = torch.tensor([0, 0, 0, 1, 1])
    d = torch.tensor([
        [0.0, 1.0, 3.0, 2.0, 0.5],
        [1.0, 0.0, 2.0, 0.7, 4.0],
        [3.0, 2.0, 0.0, 5.0, 6.0],
        [2.0, 0.7, 5.0, 0.0, 1.0],
        [0.5, 4.0, 6.0, 1.0, 0.0],
    ])
    pos, neg, valid = mine_triplets(y, "hard", pairwise=d)
    assert pos.tolist() == [2, 2, 0, 4, 3]
    assert neg.tolist() == [4, 3, 3, 1, 0]
    assert valid.all()


def test_triplet_loss_ignores_invalid_anchors_and_keeps_margin():
    d_pos = torch.tensor([0.0, 0.0, 5.0])
    d_neg = torch.tensor([0.0, 1.0, 0.0])
    valid = torch.tensor([True, True, False])
    # Anchor 0: all distances 0 (e.g. every image shrunk to black) still costs the margin.
    assert triplet_loss(d_pos, d_neg, 0.3, valid).item() == pytest.approx(0.15)


def test_joint_cim_vib_head_trains_and_records_kl(images, tiny):
    X, y = images
    params = {**tiny, "head": "vib", "max_epochs": 6, "lr": 1e-2}
    low = CIMTransformer(**params, head_beta=1e-4).fit(X, y)
    high = CIMTransformer(**params, head_beta=1.0).fit(X, y)
    for cim in (low, high):
        kl, ce = cim.history_[:, "train_kl"], cim.history_[:, "train_ce"]
        assert len(kl) == 6 and all(np.isfinite(kl))
        assert ce[-1] < ce[0]
        assert cim.transform(X).shape == X.shape
    # A heavier rate penalty leaves less information in the latent code.
    assert high.history_[-1, "train_kl"] < low.history_[-1, "train_kl"]
    expected = (np.array(high.history_[:, "train_ce"]) + np.array(high.history_[:, "train_triplet"])
                + 1.0 * np.array(high.history_[:, "train_kl"]))
    np.testing.assert_allclose(high.history_[:, "train_loss"], expected, rtol=1e-4)


def test_user_callbacks_are_called(images, tiny):
    from skorch.callbacks import Callback

    class CountEpochs(Callback):
        def initialize(self):
            self.epochs = 0
            return self

        def on_epoch_end(self, net, **kwargs):
            self.epochs += 1

    counter = CountEpochs()
    cim = CIMTransformer(**{**tiny, "max_epochs": 3, "callbacks": [counter]}).fit(*images)
    assert counter.epochs == 3 and len(cim.history_) == 3
