"""scikit-learn's own parallelism on dask.distributed, and what it ships between processes.

``GridSearchCV(n_jobs=-1)`` inside ``joblib.parallel_backend("dask")`` runs each
(candidate, split) fit on a worker of a ``LocalCluster``; estimators travel to
the workers (and back, e.g. from ``cross_validate(return_estimator=True)``) as
pickles, so a fitted model must pickle without live torch state.
"""

import io
import os
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from skorch.callbacks import Callback
from threadpoolctl import threadpool_info, threadpool_limits

from sklearn_cim import CIMTransformer
from sklearn_cim._batching import TrainingSet

CIM_TINY = dict(distance="l2", max_epochs=2, batch_size=32, tn_width=4, tn_depth=1,
                head_width=8, device="cpu", random_state=0)


def _digits(n=200):
    """The first ``n`` 8x8 digits (about 20 per class) as float32 in [0, 1]."""
    X, y = load_digits(return_X_y=True)
    return (X[:n] / 16).astype(np.float32), y[:n]


def _search(n_jobs):
    pipe = Pipeline([("cim", CIMTransformer(**CIM_TINY)),
                     ("clf", LogisticRegression(max_iter=500))])
    # log loss, not accuracy: it moves with the last bit of the features, so a
    # fit that differs anywhere shows up; accuracy on 67 test images would not.
    return GridSearchCV(pipe, {"cim__triplet_weight": [0.0, 1.0]}, cv=StratifiedKFold(3),
                        scoring="neg_log_loss", n_jobs=n_jobs, refit=False)


def _thread_counts():
    """(torch intra-op threads, BLAS threads) of the calling process."""
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return torch.get_num_threads(), max(blas, default=1)


@pytest.fixture
def dask_client():
    distributed = pytest.importorskip("distributed")
    # The nannies run in this process and write their pre-spawn environment
    # (OMP_NUM_THREADS=1, PYTHONHASHSEED, ...) into os.environ; put it back.
    saved_environ = dict(os.environ)
    cluster = client = None
    try:
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, worker_dashboard_address=None)
        client = distributed.Client(cluster)
        yield client
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        os.environ.clear()
        os.environ.update(saved_environ)


def _results(search):
    """cv_results_ without the timing columns, as plain Python values."""
    return {key: np.asarray(value).tolist() for key, value in search.cv_results_.items()
            if not key.endswith("_time")}


def test_grid_search_on_dask_equals_the_serial_search(dask_client):
    X, y = _digits()
    with joblib.parallel_backend("dask"):
        on_dask = _search(n_jobs=-1).fit(X, y)

    # Dask's nannies start each worker with OMP_NUM_THREADS=1 (and 1 BLAS
    # thread), so torch trains there on one thread, while this process uses all
    # cores. CPU convolutions and reductions split work by thread count, and
    # the last bits differ: a serial search on 2 threads gives other log losses
    # (checked on 2 cores). Seeded CPU fits are bitwise equal only at equal
    # thread counts, so the reference runs with the workers' counts.
    counts = set(dask_client.run(_thread_counts).values())
    assert len(counts) == 1, counts
    (torch_threads, blas_threads), = counts
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(torch_threads)
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            serial = _search(n_jobs=1).fit(X, y)
    finally:
        torch.set_num_threads(before)

    expected, got = _results(serial), _results(on_dask)
    assert set(got) == set(expected)
    assert got["params"] == [{"cim__triplet_weight": 0.0}, {"cim__triplet_weight": 1.0}]
    for key in expected:  # params, each split's score, mean, std and rank: exactly
        assert got[key] == expected[key], key
    assert np.isfinite(got["mean_test_score"]).all()


# -- pickles carry no live torch state -------------------------------------------

_LIVE = ("Generator", "OptimizedModule", "torch._dynamo")


class _RecordingUnpickler(pickle.Unpickler):
    """Unpickles and records every class or function the pickle refers to."""

    def __init__(self, data):
        super().__init__(io.BytesIO(data))
        self.globals = set()

    def find_class(self, module, name):
        self.globals.add(f"{module}.{name}")
        return super().find_class(module, name)


def _load(data):
    unpickler = _RecordingUnpickler(data)
    obj = unpickler.load()
    return obj, {g for g in unpickler.globals if any(live in g for live in _LIVE)}


def _live_attributes(net):
    """Attributes of ``net`` holding generators, compiled wrappers or tensors
    (bare or in a dict), outside skorch's modules, criterion and optimizer."""
    live = (torch.Generator, torch._dynamo.eval_frame.OptimizedModule, torch.Tensor,
            TrainingSet)
    return sorted(name for name, value in vars(net).items()
                  if isinstance(value, live)
                  or isinstance(value, dict) and any(isinstance(v, live) for v in value.values()))


class _PickleMidFit(Callback):
    """Pickle the net after its first batch, when all its live state exists."""

    def initialize(self):
        self.blob = self.live = None
        return self

    def on_batch_end(self, net, **kwargs):
        if self.blob is None:
            self.live = _live_attributes(net)
            self.blob = pickle.dumps(net)


def test_pickles_carry_no_generators_or_compiled_wrappers():
    # the check itself sees both kinds of live state
    assert _load(pickle.dumps({"g": torch.Generator().manual_seed(0)}))[1]
    assert _load(pickle.dumps(torch.compile(torch.nn.Linear(2, 2), backend="eager")))[1]

    X, y = _digits(60)
    spy = _PickleMidFit()
    cim = CIMTransformer(**{**CIM_TINY, "max_epochs": 1, "batch_size": 16},
                         compile={"backend": "eager"}, callbacks=[spy]).fit(X, y)
    # during the fit: the training set (and its batch-order generator), the
    # loss generator, the compiled forward and the batch's loss terms
    assert {"training_set_", "loss_generator_", "step_modules_", "batch_terms_"} <= set(spy.live)

    mid_fit, found = _load(spy.blob)
    assert not found and _live_attributes(mid_fit) == []

    back, found = _load(pickle.dumps(cim))
    assert not found and _live_attributes(back.net_) == []
    np.testing.assert_array_equal(back.transform(X), cim.transform(X))
