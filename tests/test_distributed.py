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
from sklearn_cim._batching import IndexBatches, TrainingSet
from sklearn_cim.distributed import _shareable, _unshare, fit_distributed, world

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
        data = TrainingSet(X, y, image_shape=(1, 1, 1), input_range=(0.0, 1.0), rank=rank,
                           world_size=size)
        data.generator.manual_seed(0)  # every rank draws the same permutation
        it = IndexBatches(data, batch_size=batch)
        batches = [targets.classes.tolist() for _, targets in it]
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
    kw = dict(image_shape=(3, 2, 2), input_range=(0.0, 255.0))

    def batches(source, **extra):
        data = TrainingSet(source, y, **kw)
        data.generator.manual_seed(1)
        return list(IndexBatches(data, batch_size=8, **extra))

    ref = batches(torch.from_numpy(X))
    for source in (X, X.astype(">f8"), X.astype(np.int64)):
        got = batches(source, prefetch=prefetch)
        assert len(got) == len(ref) == 5
        for (xa, ya), (xb, yb) in zip(ref, got):
            assert xb.dtype == torch.float32 and xb.shape == xa.shape
            torch.testing.assert_close(xb, xa, rtol=0, atol=0)
            assert torch.equal(ya.classes, yb.classes) and ya.groups is yb.groups is None


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
    with pytest.raises(ValueError, match="'distributed' parameter of CIMTransformer must be"):
        CIMTransformer(**tiny, distributed="yes").fit(X, y)
    assert world("auto") is None and world(False) is None


def test_fit_distributed_checks_its_arguments(tiny):
    from sklearn.linear_model import LogisticRegression

    X, y = _bars(n=32, side=8)
    with pytest.raises(ValueError, match="nprocs must be a positive integer"):
        fit_distributed(CIMTransformer(**tiny), X, y, nprocs=0)
    with pytest.raises(TypeError, match="not LogisticRegression"):
        fit_distributed(LogisticRegression(), X.reshape(32, -1), y, nprocs=2)
    with pytest.raises(ValueError, match="backend must be"):
        fit_distributed(CIMTransformer(**tiny), X, y, nprocs=2, backend="mpi")


def test_memmaps_reach_the_processes_by_file_with_the_right_rows(tmp_path):
    """A memmap (or a contiguous slice of one, whose ``offset`` attribute is its
    parent's) is reopened from its file at its own first row."""
    data = np.arange(5000 * 7, dtype=np.float32).reshape(5000, 7)
    path = tmp_path / "x.f4"
    data.tofile(path)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    offset_mm = np.memmap(path, dtype=np.float32, mode="r", shape=(4000, 7), offset=7 * 4 * 1000)
    for source, expected in [(mm, data), (mm[1234:], data[1234:]), (mm[10:20], data[10:20]),
                             (offset_mm, data[1000:]), (offset_mm[5:], data[1005:])]:
        item = _shareable(source)
        assert item[0] == "memmap"
        np.testing.assert_array_equal(_unshare(item), expected)
    assert _shareable(mm[::2])[0] == "tensor"  # not contiguous: through shared memory
    cow = np.memmap(path, dtype=np.float32, mode="c", shape=data.shape)
    assert _shareable(cow)[0] == "tensor"  # copy-on-write changes live in this process only
    np.testing.assert_array_equal(_unshare(_shareable(data[3:])), data[3:])


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
    assert not hasattr(ddp.net_, "step_modules_")  # the DDP wrapper lived for the fit only
    plain = CIMTransformer(**params, distributed=False).fit(X, y)
    assert plain.net_.world is None
    np.testing.assert_array_equal(ddp.transform(X), plain.transform(X))
    assert ddp.history_[:, "train_loss"] == plain.history_[:, "train_loss"]
    # what DDP froze (a head nothing trains) is thawed; what the user froze stays
    no_head = CIMTransformer(**params, classifier_weight=0.0, distributed=True).fit(X, y)
    assert all(p.requires_grad for p in no_head.net_.module_.parameters())
    first = next(no_head.net_.module_.mask_net.parameters())
    first.requires_grad_(False)
    before = first.detach().clone()
    no_head.set_params(warm_start=True).fit(X, y)
    assert not first.requires_grad and torch.equal(first, before)
    assert all(p.requires_grad for p in no_head.net_.module_.head.parameters())
    # "auto" trains alone in a group of one process
    assert CIMTransformer(**params, distributed="auto").fit(X, y).net_.world is None
    pickle.loads(pickle.dumps(ddp))  # nothing of the process group is pickled


# -- two processes ----------------------------------------------------------------
def _launched_rank(rank, port, out_dir):
    """What a torchrun-launched script does: join the group, fit on the same data."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=120))
    try:
        X, y = _bars()
        cim = CIMTransformer(**dict(DDP_CIM, random_state=None), distributed=True).fit(X, y)
        vib = VIBClassifier(max_epochs=2, batch_size=16, latent_dim=4, device="cpu",
                            random_state=rank, distributed=True).fit(X.reshape(len(X), -1), y)
        # nothing trains the head: DDP must not wait for its gradients
        no_head = CIMTransformer(**dict(DDP_CIM, max_epochs=2, classifier_weight=0.0,
                                        head="vib"), distributed=True).fit(X, y)
    finally:
        dist.destroy_process_group()
    state = {k: v.numpy() for k, v in cim.net_.module_.state_dict().items()}
    vib_state = {k: v.numpy() for k, v in vib.net_.module_.state_dict().items()}
    no_head_state = {k: v.numpy() for k, v in no_head.net_.module_.state_dict().items()}
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(dict(state=state, vib_state=vib_state, no_head_state=no_head_state,
                         world=cim.net_.world,
                         history=cim.history_[:, ("train_loss", "train_triplet")],
                         batches=cim.history_[:, "train_batch_count"],
                         psi_shape=cim.transform(X).shape), f)


def test_two_launched_processes_train_one_model(tmp_path):
    """random_state=None on each rank: rank 0's seed is used by both."""
    torch.multiprocessing.start_processes(_launched_rank, args=(_port(), str(tmp_path)),
                                          nprocs=2, join=True, start_method="spawn")
    r0, r1 = (pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in (0, 1))
    assert (r0["world"], r1["world"]) == ((0, 2), (1, 2))
    for key in ("state", "vib_state", "no_head_state"):  # the same weights everywhere
        assert r0[key].keys() == r1[key].keys()
        for name in r0[key]:
            np.testing.assert_array_equal(r0[key][name], r1[key][name], err_msg=name)
    assert r0["history"] == r1["history"]  # losses averaged over both processes
    assert r0["batches"] == [2] * DDP_CIM["max_epochs"]  # 32 samples each, batch 16
    losses = [loss for loss, _ in r0["history"]]
    assert losses[-1] < losses[0]
    assert r0["psi_shape"] == (64, 1, 20, 20)


def test_fit_distributed_returns_a_fitted_estimator(capfd):
    X, y = _bars()
    cim = CIMTransformer(**DDP_CIM)
    assert fit_distributed(cim, X, y, nprocs=2, backend="gloo") is cim
    assert cim.net_.world == (0, 2)
    # the parameters are the caller's; Adam's state came back, to continue exactly
    assert cim.get_params()["distributed"] is False
    assert len(cim.net_.optimizer_.state) > 0
    single = CIMTransformer(**DDP_CIM, distributed=False).fit(X, y)
    psi = cim.transform(X)
    assert psi.shape == single.transform(X).shape == X.shape
    assert np.isfinite(psi).all()
    losses = cim.history_[:, "train_loss"]
    assert len(losses) == DDP_CIM["max_epochs"] and losses[-1] < losses[0]
    assert cim.history_[:, "train_batch_count"] == [2] * DDP_CIM["max_epochs"]
    # it continues data-parallel (rank 0 alone prints its one bar) ...
    capfd.readouterr()
    fit_distributed(cim.set_params(warm_start=True, max_epochs=1, verbose=1), X, y,
                    nprocs=2, backend="gloo")
    printed = capfd.readouterr()
    bars = [seg for seg in printed.err.split("\n") if type(cim.net_).__name__ + ":" in seg]
    assert len(bars) == 1 and "2/2" in bars[0], printed  # one process, 2 batches of 16 each
    assert printed.out.strip() == "", printed  # no per-epoch table at verbose=1
    assert len(cim.history_) == DDP_CIM["max_epochs"] + 1
    # ... and alone, outside the group
    cim.set_params(verbose=0).fit(X, y)
    assert cim.net_.world is None and len(cim.history_) == DDP_CIM["max_epochs"] + 2


def test_fit_distributed_raises_the_processes_error(tmp_path):
    X, y = _bars()
    X[0, 0, 0, 0] = 2.0  # outside data_range: every process raises in validation
    mm = np.memmap(tmp_path / "x.f4", dtype=np.float32, mode="w+", shape=X.shape)
    mm[:] = X
    mm.flush()  # passed to the processes by its file name
    with pytest.raises(ValueError, match="outside data_range"):
        fit_distributed(CIMTransformer(**DDP_CIM), mm, y, nprocs=2, backend="gloo")


def _rank_with_other_data(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=120))
    try:
        X, y = _bars(n=32 + 2 * rank)
        CIMTransformer(**DDP_CIM, distributed=True).fit(X, y)
        message = "no error"
    except ValueError as exc:
        message = str(exc)
    finally:
        dist.destroy_process_group()
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(message)


def test_processes_with_different_data_all_raise(tmp_path):
    torch.multiprocessing.start_processes(_rank_with_other_data,
                                          args=(_port(), str(tmp_path)),
                                          nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        assert "hold different data" in (tmp_path / f"rank{rank}.txt").read_text()


@pytest.mark.parametrize("dtype", [np.uint8, np.float64, ">f4", np.int64])
def test_device_copy_in_chunks_equals_the_whole_conversion(dtype):
    """On CUDA a training set that fits is uploaded chunk by chunk (no whole
    converted copy on the host); the result is the whole conversion's."""
    from sklearn_cim._devices import as_device_tensor, to_device_in_chunks

    rng = np.random.RandomState(0)
    X = rng.randint(0, 256, size=(23, 5)).astype(dtype)
    pixels = np.dtype(dtype).kind in "iu"
    whole = as_device_tensor(X, "cpu", pixels=pixels)
    chunked = to_device_in_chunks(X, "cpu", whole.dtype, chunk_bytes=3 * 5 * X.itemsize)
    assert chunked.dtype == whole.dtype
    assert torch.equal(chunked, whole)


# -- checkpoints and groups under data-parallel fits ------------------------------
def _groups(y):
    return (np.arange(len(y)) // 2) % 2  # two groups in each class


def _rank_resuming(rank, port, out_dir, folders):
    """Rank 0 sees a finished checkpoint, rank 1 an empty folder (as on a node
    that does not share rank 0's disk): rank 0 decides for both."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2, timeout=timedelta(seconds=60))
    try:
        X, y = _bars()
        cim = CIMTransformer(**dict(DDP_CIM, max_epochs=2), checkpoint=folders[rank],
                             distributed=True).fit(X, y, groups=_groups(y))
    finally:
        dist.destroy_process_group()
    state = {k: v.numpy() for k, v in cim.net_.module_.state_dict().items()}
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(dict(state=state, durations=cim.history_[:, "dur"]), f)


def test_group_aware_data_parallel_fits_and_rank_0_decides_to_resume(tmp_path):
    X, y = _bars()
    shared, empty = tmp_path / "shared", tmp_path / "empty"
    first = fit_distributed(CIMTransformer(**dict(DDP_CIM, max_epochs=2), checkpoint=shared),
                            X, y, groups=_groups(y), nprocs=2, backend="gloo")
    assert first.group_aware_ and first.hard_mask_ and first.removal_check_ is not None
    assert "train_invariance" in first.history_[-1]
    # the same fit again, rank 1 looking at a folder of its own
    torch.multiprocessing.start_processes(
        _rank_resuming, args=(_port(), str(tmp_path), [str(shared), str(empty)]),
        nprocs=2, join=True, start_method="spawn")
    ranks = [pickle.load(open(tmp_path / f"rank{r}.pkl", "rb")) for r in (0, 1)]
    for rank in ranks:  # both hold rank 0's finished fit, loaded, not trained again
        assert rank["durations"] == first.history_[:, "dur"]
        for name, value in first.net_.module_.state_dict().items():
            np.testing.assert_array_equal(rank["state"][name], value.numpy(), err_msg=name)
    assert not empty.exists()  # only rank 0 reads and writes checkpoints
    with pytest.raises(TypeError, match="takes no groups"):
        fit_distributed(VIBClassifier(max_epochs=1), X.reshape(len(X), -1), y, groups=_groups(y),
                        nprocs=1, backend="gloo")
