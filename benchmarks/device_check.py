"""GPU device check: the CUDA code paths of CIMTransformer and VIBClassifier.

Run on a machine with a GPU (CI has none)::

    python benchmarks/device_check.py --out results.jsonl

Prints (and appends to ``--out``) one JSON line per check:

* ``cim_fit``: ``device="auto"`` picks CUDA; fit + transform on coloured digits,
  accuracy of CIM -> LogisticRegression in distribution and OOD;
* ``cim_cuda_to_cpu``: a CUDA-fitted pickle loads in a process that sees no GPU
  and gives the same transform (max abs difference);
* ``cim_gpu_repeat``: two fits with the same ``random_state`` on CUDA (max abs
  difference of their transforms: cuDNN need not be bitwise deterministic);
* ``cim_fit_throughput``: samples/s of ``fit`` (one timed epoch after a warm-up
  epoch) and of ``transform`` at 32/64/128/224 px, batch 256;
* ``vib_*``: the same for VIBClassifier;
* ``*_params_cuda_to_cpu``: ``save_params`` on CUDA (safetensors), ``load_params``
  in a process that sees no GPU, same outputs;
* ``*_warm_start_cuda``, ``*_partial_fit_cuda``: continued training on CUDA.

``--only-scaling`` runs the scaling-out checks instead:

* ``cuda_streamed_vs_resident``: fit from a uint8 ``np.memmap`` with the
  training set copied to the GPU (the default when it fits) and streamed batch
  by batch (forced); samples/s of each and their last losses;
* ``ddp_nccl``: ``fit_distributed`` with one process per visible GPU (nccl;
  with one GPU, a group of one, which still runs the DDP path): device, steps
  per epoch, losses.
"""

import argparse
import json
import os
import pickle
import subprocess
import sys
import time

import numpy as np
import torch
from _jsonl import emit
from sklearn.linear_model import LogisticRegression

import sklearn_cim
from sklearn_cim import CIMTransformer
from sklearn_cim.datasets import make_colored_digits


def coloured_digits(seed=0):
    d = make_colored_digits(random_state=seed)
    return d.X_train, d.y_train, d.X_test_id, d.X_test_ood, d.y_test


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


CPU_LOAD_PARAMS = r"""
import json, sys, numpy as np, torch
import sklearn_cim
assert not torch.cuda.is_available()
est = getattr(sklearn_cim, sys.argv[1])(**json.loads(sys.argv[2])).load_params(sys.argv[3])
X = np.load(sys.argv[4])
np.save(sys.argv[5], est.transform(X))
print(est.device_)
"""


def params_cuda_to_cpu(est, X, tmp, name):
    path, xin, xout = (os.path.join(tmp, f"{name}.{ext}")
                       for ext in ("safetensors", "px.npy", "pout.npy"))
    est.save_params(path)
    np.save(xin, X)
    params = {k: v for k, v in est.get_params().items()
              if isinstance(v, (int, float, str, bool, tuple, type(None)))}
    params["device"] = "auto"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", CPU_LOAD_PARAMS, type(est).__name__,
                           json.dumps(params), path, xin, xout], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode:
        return {"ok": False, "stderr": proc.stderr[-2000:]}
    return {"ok": True, "device_after_load": proc.stdout.strip().splitlines()[-1],
            "file_bytes": os.path.getsize(path),
            "max_abs_diff_vs_cuda": float(np.abs(np.load(xout) - est.transform(X)).max())}


def continued_training(make, X, y):
    est = make().fit(X, y)
    before = est.transform(X)
    est.set_params(warm_start=True, max_epochs=2).fit(X, y)
    warm = {"history_len": len(est.history_), "changed": bool(
        np.abs(est.transform(X) - before).max() > 0), "device_": est.device_}
    est = make()
    half = len(y) // 2
    est.partial_fit(X[:half], y[:half], classes=np.unique(y))
    est.partial_fit(X[half:], y[half:])
    part = {"history_len": len(est.history_), "device_": est.device_,
            "finite": bool(np.isfinite(est.transform(X)).all())}
    return warm, part


CPU_LOAD = r"""
import pickle, sys, numpy as np, torch
assert not torch.cuda.is_available()
est = pickle.load(open(sys.argv[1], "rb"))
X = np.load(sys.argv[2])
np.save(sys.argv[3], est.transform(X))
if hasattr(est, "predict_proba"):
    np.save(sys.argv[3] + ".proba.npy", est.predict_proba(X))
print(est.device_)
"""


def cuda_to_cpu(est, X, tmp, name):
    pkl, xin, xout = (os.path.join(tmp, f"{name}.{ext}") for ext in ("pkl", "x.npy", "out.npy"))
    with open(pkl, "wb") as f:
        pickle.dump(est, f)
    np.save(xin, X)
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-c", CPU_LOAD, pkl, xin, xout], env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode:
        return {"ok": False, "stderr": proc.stderr[-2000:]}
    cpu_out = np.load(xout)
    result = {"ok": True, "device_after_load": proc.stdout.strip().splitlines()[-1],
              "pickle_bytes": os.path.getsize(pkl),
              "max_abs_diff_vs_cuda": float(np.abs(cpu_out - est.transform(X)).max())}
    if hasattr(est, "predict_proba"):
        cpu_proba = np.load(xout + ".proba.npy")
        result["predict_proba_max_abs_diff_vs_cuda"] = float(
            np.abs(cpu_proba - est.predict_proba(X)).max())
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--tmp", default="/tmp/sklearn_cim_device_check")
    parser.add_argument("--sizes", default="32,64,128,224")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, tiny data")
    parser.add_argument("--only-persistence", action="store_true",
                        help="run only the save_params / warm start / partial_fit checks")
    parser.add_argument("--only-scaling", action="store_true",
                        help="run only the streaming and DDP (nccl) checks")
    args = parser.parse_args()
    os.makedirs(args.tmp, exist_ok=True)
    emit(args.out, {"check": "versions", **{k: str(v) for k, v in sklearn_cim._show_versions
                                             .versions().items()}})

    X_tr, y_tr, X_id, X_ood, y_te = coloured_digits()
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    params = dict(distance="lpips-alex", pretrained=False, max_epochs=1 if args.quick else 10,
                  batch_size=256, random_state=0)
    if args.only_persistence:
        persistence_checks(args, params, X_tr, y_tr, X_id, flat)
        return
    if args.only_scaling:
        scaling_checks(args, params)
        return
    t0 = time.time()
    cim = CIMTransformer(**params).fit(X_tr, y_tr)
    sync()
    fit_s = time.time() - t0
    clf = LogisticRegression(max_iter=1000).fit(flat(cim.transform(X_tr)), y_tr)
    erm = LogisticRegression(max_iter=1000).fit(flat(X_tr), y_tr)
    emit(args.out, {
        "check": "cim_fit", "device_": cim.device_, "fit_seconds": round(fit_s, 2),
        "history_last": {k: cim.history_[-1, k] for k in ("train_loss", "train_ce",
                                                            "train_triplet")},
        "mask_range": [float(cim.masks(X_id).min()), float(cim.masks(X_id).max())],
        "acc_cim_lr_id": clf.score(flat(cim.transform(X_id)), y_te),
        "acc_cim_lr_ood": clf.score(flat(cim.transform(X_ood)), y_te),
        "acc_erm_id": erm.score(flat(X_id), y_te), "acc_erm_ood": erm.score(flat(X_ood), y_te),
    })
    emit(args.out, {"check": "cim_cuda_to_cpu", **cuda_to_cpu(cim, X_id, args.tmp, "cim")})
    again = CIMTransformer(**params).fit(X_tr, y_tr)
    emit(args.out, {"check": "cim_gpu_repeat", "max_abs_diff": float(
        np.abs(again.transform(X_id) - cim.transform(X_id)).max())})

    rng = np.random.RandomState(0)
    for size in [int(s) for s in args.sizes.split(",")]:
        n = 512 if args.quick else (4096 if size <= 64 else 2048)
        X = (rng.rand(n, 3, size, size) * 255).astype(np.uint8)
        y = rng.randint(0, 10, n)
        est = CIMTransformer(**{**params, "max_epochs": 1}).fit(X[:512], y[:512])  # warm-up
        est = CIMTransformer(**{**params, "max_epochs": 2})
        t0 = time.time()
        est.fit(X, y)
        sync()
        fit_s = time.time() - t0
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        t0 = time.time()
        est.transform(X)
        tr_s = time.time() - t0
        emit(args.out, {"check": "cim_fit_throughput", "px": size, "n": n, "epochs": 2,
                        "fit_samples_per_s": round(2 * n / fit_s, 1),
                        "transform_samples_per_s": round(n / tr_s, 1),
                        "peak_cuda_bytes": peak, "device": est.device_})
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    VIB = getattr(sklearn_cim, "VIBClassifier", None)
    if VIB is not None:
        vib = VIB(random_state=0).fit(flat(X_tr), y_tr)
        p1, p2 = vib.predict_proba(flat(X_id)), vib.predict_proba(flat(X_id))
        emit(args.out, {"check": "vib_fit", "device_": vib.device_,
                        "acc_id": vib.score(flat(X_id), y_te),
                        "acc_ood": vib.score(flat(X_ood), y_te),
                        "predict_proba_repeat_max_diff": float(np.abs(p1 - p2).max()),
                        "history_keys": sorted(k for k in vib.history_[-1] if "train" in k)})
        emit(args.out, {"check": "vib_cuda_to_cpu", **cuda_to_cpu(vib, flat(X_id), args.tmp,
                                                                   "vib")})


def persistence_checks(args, params, X_tr, y_tr, X_id, flat):
    from sklearn_cim import VIBClassifier

    cim = CIMTransformer(**params).fit(X_tr, y_tr)
    emit(args.out, {"check": "cim_params_cuda_to_cpu",
                    **params_cuda_to_cpu(cim, X_id, args.tmp, "cim")})
    vib = VIBClassifier(random_state=0, max_epochs=5).fit(flat(X_tr), y_tr)
    emit(args.out, {"check": "vib_params_cuda_to_cpu",
                    **params_cuda_to_cpu(vib, flat(X_id), args.tmp, "vib")})
    emit(args.out, {"check": "vib_cuda_to_cpu", **cuda_to_cpu(vib, flat(X_id), args.tmp,
                                                               "vib")})
    small = {**params, "max_epochs": 2}
    warm, part = continued_training(lambda: CIMTransformer(**small), X_tr, y_tr)
    emit(args.out, {"check": "cim_warm_start_cuda", **warm})
    emit(args.out, {"check": "cim_partial_fit_cuda", **part})
    warm, part = continued_training(lambda: VIBClassifier(random_state=0, max_epochs=2),
                                    flat(X_tr), y_tr)
    emit(args.out, {"check": "vib_warm_start_cuda", **warm})
    emit(args.out, {"check": "vib_partial_fit_cuda", **part})


def scaling_checks(args, params):
    import sklearn_cim._devices as devices
    from sklearn_cim.distributed import fit_distributed

    rng = np.random.RandomState(0)
    n, side = (1024, 32) if args.quick else (16384, 64)
    path = os.path.join(args.tmp, "train.u8")
    X = np.memmap(path, dtype=np.uint8, mode="w+", shape=(n, 3 * side * side))
    X[:] = rng.randint(0, 256, size=X.shape, dtype=np.uint8)
    X.flush()
    X = np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3 * side * side))
    y = rng.randint(0, 10, n)
    small = {**params, "max_epochs": 2}
    CIMTransformer(**{**small, "max_epochs": 1}).fit(X[:512], y[:512])  # warm-up
    record = {"check": "cuda_streamed_vs_resident", "n": n, "px": side}
    default_fraction = devices.DEVICE_DATA_FRACTION
    for name, fraction in (("resident", default_fraction), ("streamed", 0.0)):
        devices.DEVICE_DATA_FRACTION = fraction
        try:
            t0 = time.time()
            est = CIMTransformer(**small).fit(X, y)
            sync()
            record[name + "_fit_samples_per_s"] = round(2 * n / (time.time() - t0), 1)
            record[name + "_last_loss"] = est.history_[-1, "train_loss"]
        finally:
            devices.DEVICE_DATA_FRACTION = default_fraction
    emit(args.out, record)
    nprocs = max(1, torch.cuda.device_count())
    t0 = time.time()
    est = fit_distributed(CIMTransformer(**small), X, y, nprocs=nprocs)
    emit(args.out, {"check": "ddp_nccl", "nprocs": nprocs, "seconds": round(time.time() - t0, 2),
                    "device_": est.device_, "world": est.net_.world,
                    "steps_per_epoch": est.history_[:, "train_batch_count"],
                    "train_loss": est.history_[:, "train_loss"]})


if __name__ == "__main__":
    main()
