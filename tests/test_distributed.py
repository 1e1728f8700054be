"""Data-parallel fits (DDP on CPU with gloo) and the epoch split across processes."""

import os
import pickle
import socket
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist

from sklearn_cim import CIMTransformer, VIBClassifier
from sklearn_cim._training import IndexBatches
from sklearn_cim.distributed import fit_distributed, world

# LPIPS with a random trunk: the trunk must be the same in every process.
DDP_CIM = dict(distance="lpips-squeeze", pretrained=False, max_epochs=4, batch_size=16,
               tn_width=4, tn_depth=1, head_width=4, device="cpu", random_state=0)


def _bars(n=64, side=20, seed=0):
    """Two classes: a bright left or right half, on noise."""
    rng = np.random.RandomState(seed)
    y = np.arange(n) % 2
    X = rng.rand(n, 1, side, side).astype(np.float32) * 0.3
    X[y == 0, :, :, : side // 2] += 0.6
    X[y == 1, :, :, side // 2:] += 0.6
    return X, y


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the epoch split ------------------------------------------------------------
@pytest.mark.parametrize("n, size, batch", [(10, 3, 2), (9, 3, 4), (2, 4, 1), (64, 2, 16)])
def test_shards_cover_the_epoch_with_equal_step_counts(n, size, batch):
    X = torch.arange(n, dtype=torch.float32)[:, None]
    y = torch.arange(n)
    seen, steps = [], []
    for rank in range(size):
        g = torch.Generator().manual_seed(0)  # every rank draws the same permutation
        it = IndexBatches(X, y, batch_size=batch, image_shape=(1, 1, 1), units=(0.0, 1.0),
                          shuffle=True, generator=g, rank=rank, world_size=size)
        batches = [yb.tolist() for _, yb in it]
        steps.append(len(batches))
        assert len(batches) == len(it)
        seen += sum(batches, [])
    assert len(set(steps)) == 1  # no process waits for another
    assert sorted(set(seen)) == list(range(n))
    per = -(-n // size)
    assert len(seen) == per * size  # padded by wrapping around, as DistributedSampler


@pytest.mark.parametrize("prefetch", [False, True])
def test_host_batches_equal_device_batches(prefetch):
    """Streaming from a host array (any dtype, a memmap, big-endian) draws
    the same batches as the tensor already on the device."""
    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(37, 12)).astype(np.uint8)
    y = torch.as_tensor(rng.randint(0, 3, 37))
    kw = dict(batch_size=8, image_shape=(3, 2, 2), units=(0.0, 255.0), shuffle=True)
    ref = list(IndexBatches(torch.from_numpy(X), y, generator=torch.Generator().manual_seed(1),
                            **kw))
    for source in (X, X.astype(">f8"), X.astype(np.int64)):
        got = list(IndexBatches(source, y, generator=torch.Generator().manual_seed(1),
                                device="cpu", prefetch=prefetch, **kw))
        assert len(got) == len(ref) == 5
        for (xa, ya), (xb, yb) in zip(ref, got):
            assert xb.dtype == torch.float32 and xb.shape == xa.shape
            torch.testing.assert_close(xb, xa, rtol=0, atol=0)
            assert torch.equal(ya, yb)


def test_memmap_fit_equals_in_memory_fit(tmp_path, tiny):
    """A read-only uint8 memmap trains without a copy and exactly as the array."""
    X, y = _bars(n=48, side=8)
    X8 = (X.clip(0, 1) * 255).astype(np.uint8).reshape(len(X), -1)
    mm = np.memmap(tmp_path / "x.u8", dtype=np.uint8, mode="w+", shape=X8.shape)
    mm[:] = X8
    mm.flush()
    ro = np.memmap(tmp_path / "x.u8", dtype=np.uint8, mode="r", shape=X8.shape)
    tiny.update(max_epochs=2)
    a = CIMTransformer(**tiny).fit(ro, y)
    b = CIMTransformer(**tiny).fit(X8, y)
    np.testing.assert_array_equal(a.transform(ro), b.transform(X8))
    assert a.history_[:, "train_loss"] == b.history_[:, "train_loss"]


def test_fit_does_not_convert_the_training_set(tiny):
    """float64 and uint8 X are batched as given: no whole float copy is made
    (numpy's allocations are traced; a float32 copy would be X.nbytes / 2)."""
    import tracemalloc

    rng = np.random.RandomState(0)
    X = rng.rand(4000, 1, 16, 16)  # float64, 8 MB
    y = np.arange(len(X)) % 2
    tiny.update(batch_size=64)
    CIMTransformer(**tiny).fit(X[:64], y[:64])  # warm up imports and caches
    tracemalloc.start()
    try:
        CIMTransformer(**tiny).fit(X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < X.nbytes / 8, f"fit allocated {peak / 1e6:.1f} MB for {X.nbytes / 1e6} MB X"


# -- the distributed parameter --------------------------------------------------
def test_distributed_true_needs_a_process_group(tiny):
    X, y = _bars(n=32, side=8)
    with pytest.raises(RuntimeError, match="init_process_group"):
        CIMTransformer(**tiny, distributed=True).fit(X, y)
    with pytest.raises(ValueError, match="distributed must be"):
        CIMTransformer(**tiny, distributed="yes").fit(X, y)
    assert world("auto") is None and world(False) is None


def test_fit_distributed_checks_its_arguments(tiny):
    X, y = _bars(n=32, side=8)
    with pytest.raises(ValueError, match="nprocs must be a positive integer"):
        fit_distributed(CIMTransformer(**tiny), X, y, nprocs=0)
    with pytest.raises(ValueError, match="distributed=False"):
        fit_distributed(CIMTransformer(**tiny, distributed=False), X, y, nprocs=2)
    with pytest.raises(ValueError, match="backend must be"):
        fit_distributed(CIMTransformer(**tiny), X, y, nprocs=2, backend="mpi")


@pytest.fixture
def one_process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{_port()}", rank=0,
                            world_size=1, timeout=timedelta(seconds=60))
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_path_with_one_process_equals_plain_training(one_process_group):
    """distributed=True wraps the step in DDP, splits the epoch and all-reduces
    the logged losses; with one process all of that must change nothing."""
    X, y = _bars(n=48)
    params = dict(DDP_CIM, max_epochs=2)
    ddp = CIMTransformer(**params, distributed=True).fit(X, y)
    assert ddp.net_.world == (0, 1)
    assert "step_module" not in vars(ddp.net_)  # the DDP wrapper lived for the fit only
    plain = CIMTransformer(**params, distributed=False).fit(X, y)
    assert plain.net_.world is None
    np.testing.assert_array_equal(ddp.transform(X), plain.transform(X))
    assert ddp.history_[:, "train_loss"] == plain.history_[:, "train_loss"]
    # "auto" trains alone in a group of one process
    assert CIMTransformer(**params).fit(X, y).net_.world is None
    pickle.loads(pickle.dumps(ddp))  # nothing of the process group is pickled


# -- two processes ----------------------------------------------------------------
def _launched_rank(rank, port, out_dir):
    """What a torchrun-launched script does: join the group, fit on the same data."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=120))
    try:
        X, y = _bars()
        cim = CIMTransformer(**dict(DDP_CIM, random_state=None)).fit(X, y)
        vib = VIBClassifier(max_epochs=2, batch_size=16, latent_dim=4, device="cpu",
                            random_state=rank).fit(X.reshape(len(X), -1), y)
    finally:
        dist.destroy_process_group()
    state = {k: v.numpy() for k, v in cim.net_.module_.state_dict().items()}
    vib_state = {k: v.numpy() for k, v in vib.net_.module_.state_dict().items()}
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(dict(state=state, vib_state=vib_state, world=cim.net_.world,
                         history=cim.history_[:, ("train_loss", "train_triplet")],
                         batches=cim.history_[:, "train_batch_count"],
                         psi_shape=cim.transform(X).shape), f)


def test_two_launched_processes_train_one_model(tmp_path):
    """random_state=None on each rank: rank 0's seed is used by both."""
    torch.multiprocessing.start_processes(_launched_rank, args=(_port(), str(tmp_path)),
                                          nprocs=2, join=True, start_method="spawn")
    r0, r1 = (pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in (0, 1))
    assert (r0["world"], r1["world"]) == ((0, 2), (1, 2))
    for key in ("state", "vib_state"):  # gradients averaged: the same weights everywhere
        assert r0[key].keys() == r1[key].keys()
        for name in r0[key]:
            np.testing.assert_array_equal(r0[key][name], r1[key][name], err_msg=name)
    assert r0["history"] == r1["history"]  # losses averaged over both processes
    assert r0["batches"] == [2] * DDP_CIM["max_epochs"]  # 32 samples each, batch 16
    losses = [loss for loss, _ in r0["history"]]
    assert losses[-1] < losses[0]
    assert r0["psi_shape"] == (64, 1, 20, 20)


def test_fit_distributed_returns_a_fitted_estimator():
    X, y = _bars()
    cim = CIMTransformer(**DDP_CIM)
    assert fit_distributed(cim, X, y, nprocs=2, backend="gloo") is cim
    assert cim.net_.world == (0, 2)
    single = CIMTransformer(**DDP_CIM, distributed=False).fit(X, y)
    psi = cim.transform(X)
    assert psi.shape == single.transform(X).shape == X.shape
    assert np.isfinite(psi).all()
    losses = cim.history_[:, "train_loss"]
    assert len(losses) == DDP_CIM["max_epochs"] and losses[-1] < losses[0]
    assert cim.history_[:, "train_batch_count"] == [2] * DDP_CIM["max_epochs"]
    # the fitted estimator continues alone, outside the group
    cim.set_params(warm_start=True, max_epochs=1).fit(X, y)
    assert cim.net_.world is None and len(cim.history_) == DDP_CIM["max_epochs"] + 1


def test_fit_distributed_raises_the_processes_error():
    X, y = _bars()
    X[0, 0, 0, 0] = 2.0  # outside data_range: every process raises in validation
    with pytest.raises(ValueError, match="outside data_range"):
        fit_distributed(CIMTransformer(**DDP_CIM), X, y, nprocs=2, backend="gloo")
