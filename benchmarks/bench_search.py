"""Wall time of a GridSearchCV run serially and on a Dask cluster through joblib.

One run, one machine, printed as JSON lines:

* ``device``: the machine, library versions and torch's thread count here;
* ``serial``: ``GridSearchCV(n_jobs=1)`` in this process, once with torch's
  default thread count (all cores) and, when that differs from the workers',
  once more with the workers' thread count (``--serial-threads`` sets the list);
* ``dask``: the same search with ``n_jobs=-1`` inside
  ``joblib.parallel_backend("dask")`` on a ``distributed.LocalCluster`` of
  ``--workers`` processes with ``--threads-per-worker`` threads each (the
  workers are started and warmed up first: imports, a tiny fit; the
  ``cluster_start_s`` it took is reported apart);
* ``summary`` per serial run: ``serial_over_dask`` (the speed-up) and whether
  ``cv_results_`` (params, every split's score, mean, std, rank; log loss, so
  the last bits count) equal the Dask search's exactly. Seeded CPU fits are
  bitwise equal only at equal torch thread counts, and Dask's nannies start
  workers with ``OMP_NUM_THREADS=1``: expect equality from the serial run at
  the workers' thread count, and a difference in the last bits from the others.

The pipeline is ``CIMTransformer`` (distance ``l2`` by default; LPIPS trunks
are random, ``pretrained=False``, so nothing is downloaded) and a
``LogisticRegression`` on the transformed images, searched over
``cim__triplet_weight``, on the first ``--n`` 8x8 digits of
``sklearn.datasets.load_digits`` (``--side`` upsamples them).

    python benchmarks/bench_search.py                       # 4 candidates x 3 folds, 600 digits
    python benchmarks/bench_search.py --out results.jsonl   # also append the lines to a file
    python benchmarks/bench_search.py --n 200 --epochs 1 --candidates 2   # a quick check
"""

import argparse
import os
import platform
import time

import joblib
import numpy as np
import sklearn
import torch
from _jsonl import emit
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_info, threadpool_limits

from sklearn_cim import CIMTransformer

WEIGHTS = [0.0, 0.5, 1.0, 2.0, 4.0, 8.0]


def make_data(n, side):
    X, y = load_digits(return_X_y=True)
    X = (X[:n] / 16).astype(np.float32).reshape(-1, 8, 8)
    if side != 8:
        X = np.kron(X, np.ones((side // 8, side // 8), np.float32))
    return X.reshape(len(X), -1), y[:n]


def make_search(args, n_jobs):
    cim = CIMTransformer(distance=args.distance, pretrained=False, max_epochs=args.epochs,
                         batch_size=args.batch_size, tn_width=args.tn_width, device="cpu",
                         random_state=0)
    pipe = Pipeline([("cim", cim), ("clf", LogisticRegression(max_iter=500))])
    grid = {"cim__triplet_weight": WEIGHTS[:args.candidates]}
    return GridSearchCV(pipe, grid, cv=StratifiedKFold(args.folds), scoring="neg_log_loss",
                        n_jobs=n_jobs, refit=False)


def thread_counts():
    """(torch intra-op threads, BLAS threads) of the calling process."""
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    return torch.get_num_threads(), max(blas, default=1)


def warm_up(distance="l2", side=8):
    """Imports, first kernels and allocations: a tiny fit."""
    X, y = make_data(40, side)
    CIMTransformer(distance=distance, pretrained=False, max_epochs=1, batch_size=16,
                   tn_width=4, device="cpu", random_state=0).fit(X, y).transform(X)
    return thread_counts()


def results(search):
    """cv_results_ without the timing columns, as plain Python values."""
    return {k: np.asarray(v).tolist() for k, v in search.cv_results_.items()
            if not k.endswith("_time")}


def compare(a, b):
    """(exactly equal, largest absolute difference of the score columns)."""
    diff = max(float(np.max(np.abs(np.subtract(a[k], b[k]))))
               for k in a if k.endswith("test_score") and not k.startswith("rank"))
    return a == b, diff


def run_serial(args, X, y, torch_threads, blas_threads):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(torch_threads)
        with threadpool_limits(limits=blas_threads, user_api="blas"):
            start = time.perf_counter()
            search = make_search(args, n_jobs=1).fit(X, y)
            wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    return wall, results(search)


def run_dask(args, X, y):
    from distributed import Client, LocalCluster

    saved_environ = dict(os.environ)  # the nannies write their environment here
    start = time.perf_counter()
    try:
        with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads_per_worker,
                          processes=True, host="127.0.0.1", dashboard_address=None,
                          worker_dashboard_address=None) as cluster, Client(cluster) as client:
            counts = sorted(set(client.run(warm_up, args.distance, args.side).values()))
            started = time.perf_counter() - start
            start = time.perf_counter()
            with joblib.parallel_backend("dask"):
                search = make_search(args, n_jobs=-1).fit(X, y)
            wall = time.perf_counter() - start
    finally:
        os.environ.clear()
        os.environ.update(saved_environ)
    return wall, started, counts, results(search)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=600, help="digits (first n of 1797)")
    parser.add_argument("--side", type=int, default=8, choices=(8, 16, 32, 64),
                        help="image side: the 8x8 digits upsampled")
    parser.add_argument("--candidates", type=int, default=4, choices=range(1, len(WEIGHTS) + 1),
                        help=f"triplet weights searched: the first of {WEIGHTS}")
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tn-width", type=int, default=8)
    parser.add_argument("--distance", default="l2",
                        help="l2, ssim or lpips-* (a random trunk: pretrained=False)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    parser.add_argument("--serial-threads", type=int, nargs="+", default=None,
                        help="torch threads of the serial runs (default: torch's default "
                             "here and the workers' count, if different)")
    parser.add_argument("--out", help="append the JSON lines to this file too")
    args = parser.parse_args(argv)

    import distributed

    header = dict(
        what="device", device=platform.processor() or platform.machine(),
        cpus=os.cpu_count(), torch=torch.__version__, threads=torch.get_num_threads(),
        blas_threads=thread_counts()[1], omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        sklearn=sklearn.__version__, joblib=joblib.__version__,
        distributed=distributed.__version__, date=time.strftime("%Y-%m-%d"))
    emit(args.out, header)

    X, y = make_data(args.n, args.side)
    setting = dict(n=len(X), side=args.side, candidates=args.candidates, folds=args.folds,
                   fits=args.candidates * args.folds, epochs=args.epochs,
                   batch_size=args.batch_size, tn_width=args.tn_width, distance=args.distance)
    own = warm_up(args.distance, args.side)

    dask_s, started, counts, on_dask = run_dask(args, X, y)
    worker_torch = sorted({c[0] for c in counts})
    worker_blas = sorted({c[1] for c in counts})
    emit(args.out, dict(what="dask", **setting, workers=args.workers,
              threads_per_worker=args.threads_per_worker, worker_torch_threads=worker_torch,
              worker_blas_threads=worker_blas, cluster_start_s=round(started, 2),
              wall_s=round(dask_s, 2)))

    for threads in args.serial_threads or sorted({own[0], *worker_torch}, reverse=True):
        # BLAS (LogisticRegression) as on the workers when torch is, else as here
        blas = worker_blas[0] if [threads] == worker_torch and len(worker_blas) == 1 else own[1]
        serial_s, serial = run_serial(args, X, y, threads, blas)
        emit(args.out, dict(what="serial", **setting, torch_threads=threads, blas_threads=blas,
                  wall_s=round(serial_s, 2)))
        equal, diff = compare(serial, on_dask)
        emit(args.out, dict(what="summary", serial_torch_threads=threads,
                  worker_torch_threads=worker_torch,
                  serial_over_dask=round(serial_s / dask_s, 2),
                  cv_results_equal=equal, max_abs_score_diff=diff,
                  mean_test_score=on_dask["mean_test_score"]))


if __name__ == "__main__":
    main()
