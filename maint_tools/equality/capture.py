"""Capture the outputs of small, seeded sklearn_cim fits into one npz.

    python capture.py OUT.npz [--pickles DIR] [--only NAME[,NAME...]]

Imports ``sklearn_cim`` from whatever is first on sys.path (set PYTHONPATH to
the tree under test).  Every value is stored as an array under
``<config>/<what>``; the evaluation inputs are stored under ``data/<name>``
so that ``load_pickles.py`` replays exactly the same inputs (and ``compare.py``
also checks that the data makers did not change).

Run with OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1.
"""

import argparse
import os
import sys
import time
import warnings

import numpy as np

import sklearn_cim

print("sklearn_cim from", sklearn_cim.__file__, flush=True)

import joblib  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from sklearn_cim import CIMTransformer, VIBClassifier  # noqa: E402
from sklearn_cim.datasets import make_colored_digits  # noqa: E402

torch.set_num_threads(1)

N_TRAIN = 240  # training images of the image configs
N_EVAL = 64    # images passed to transform / masks


def make_data():
    """All inputs, as numpy arrays (float32 images, int64 labels / groups)."""
    d = {}
    digits = load_digits()
    X8 = (digits.data / 16).astype(np.float32)      # (1797, 64) grey 8x8 in [0, 1]
    y8 = digits.target.astype(np.int64)
    d["digits8_X"], d["digits8_y"] = X8[:N_TRAIN], y8[:N_TRAIN]
    d["digits8_eval"] = X8[1000:1000 + N_EVAL]

    # coloured digits, 3x16x16; p_train=0.8 so that every class holds several groups
    cd = make_colored_digits(nuisance="background", p_train=0.8, image_size=16,
                             random_state=0)
    d["colored16_X"] = cd.X_train[:N_TRAIN]
    d["colored16_y"] = cd.y_train[:N_TRAIN]
    d["colored16_groups"] = cd.nuisance_train[:N_TRAIN]   # the nuisance attribute
    d["colored16_eval"] = np.concatenate([cd.X_test_id[:N_EVAL // 2],
                                          cd.X_test_ood[:N_EVAL // 2]])

    # VIB: flat features of load_digits, scaled
    d["vib_X"], d["vib_y"] = X8[:600], y8[:600]
    d["vib_eval"] = X8[1200:1400]
    return d


# lr=1e-2 and 3 epochs: enough for the hard masks to cut pixels (at lr=1e-3 / 2 epochs
# every hard mask was all ones, so psi(x) = x and e.g. pair_transform changed nothing)
CIM_COMMON = dict(device="cpu", random_state=0, max_epochs=3, batch_size=32, tn_width=8,
                  head_width=8, lr=1e-2)
VIB_COMMON = dict(device="cpu", random_state=0, max_epochs=3, batch_size=64,
                  hidden_layer_sizes=(32,), latent_dim=8, n_test_samples=4)

# est: "cim" / "vib"; data: prefix of make_data keys; groups: pass <data>_groups to fit;
# mode: "fit", "partial_fit2" (two partial_fit calls on the two halves), "fit2"
# (warm_start=True, fit twice on the same data)
CONFIGS = [
    # CIM, paper objective (no groups)
    dict(name="paper_l2", est="cim", data="digits8",
         params=dict(distance="l2", image_shape=(1, 8, 8))),
    dict(name="paper_l2_hard", est="cim", data="digits8",
         params=dict(distance="l2", mining="hard", image_shape=(1, 8, 8))),
    dict(name="paper_lpips_squeeze", est="cim", data="colored16",
         params=dict(distance="lpips-squeeze", pretrained=False)),
    dict(name="paper_vib_head", est="cim", data="colored16",
         params=dict(distance="l2", head="vib")),
    dict(name="paper_lpips_squeeze_hard_pair", est="cim", data="colored16",
         params=dict(distance="lpips-squeeze", pretrained=False, mining="hard",
                     pair_transform=True, max_epochs=1)),
    # CIM, group-aware (groups = the nuisance attribute)
    dict(name="group_ssim", est="cim", data="colored16", groups=True,
         params=dict(distance="ssim")),
    dict(name="group_l2", est="cim", data="colored16", groups=True,
         params=dict(distance="l2")),
    dict(name="group_pair_transform", est="cim", data="colored16", groups=True,
         params=dict(distance="l2", pair_transform=True)),
    dict(name="group_soft_mask", est="cim", data="colored16", groups=True,
         params=dict(distance="l2", hard_mask=False, mask_threshold=0.2)),
    dict(name="group_no_group_triplets", est="cim", data="colored16", groups=True,
         params=dict(distance="l2", group_triplets=False)),
    dict(name="group_weighting_none", est="cim", data="colored16", groups=True,
         params=dict(distance="l2", group_weighting="none")),
    dict(name="group_vib_head_per_channel", est="cim", data="colored16", groups=True,
         params=dict(distance="l2", head="vib", per_channel_mask=True)),
    # CIM, inferred groups
    dict(name="infer_groups", est="cim", data="colored16",
         params=dict(distance="l2", infer_groups=True)),
    # CIM, continued training
    dict(name="group_partial_fit2", est="cim", data="colored16", groups=True,
         mode="partial_fit2", params=dict(distance="l2")),
    dict(name="group_warm_start2", est="cim", data="colored16", groups=True, mode="fit2",
         params=dict(distance="l2", warm_start=True)),
    # VIBClassifier
    dict(name="vib", est="vib", data="vib", params=dict()),
    dict(name="vib_partial_fit2", est="vib", data="vib", mode="partial_fit2", params=dict()),
    dict(name="vib_warm_start2", est="vib", data="vib", mode="fit2",
         params=dict(warm_start=True)),
    dict(name="vib_image", est="vib", data="digits8",
         params=dict(image_shape=(1, 8, 8), conv_width=4)),
]


def build(cfg):
    if cfg["est"] == "cim":
        return CIMTransformer(**{**CIM_COMMON, **cfg["params"]})
    return VIBClassifier(**{**VIB_COMMON, **cfg["params"]})


def train(est, cfg, data):
    X, y = data[cfg["data"] + "_X"], data[cfg["data"] + "_y"]
    g = data[cfg["data"] + "_groups"] if cfg.get("groups") else None
    gkw = {} if cfg["est"] == "vib" else dict(groups=g)
    mode = cfg.get("mode", "fit")
    if mode == "fit":
        est.fit(X, y, **gkw)
    elif mode == "fit2":
        est.fit(X, y, **gkw)
        est.fit(X, y, **gkw)
    elif mode == "partial_fit2":
        half = len(X) // 2
        for sl in (slice(0, half), slice(half, None)):
            kw = {} if g is None else dict(groups=g[sl])
            est.partial_fit(X[sl], y[sl], classes=np.unique(y), **kw)
    else:
        raise ValueError(mode)
    return est


def eval_input_name(cfg):
    return cfg["data"] + "_eval"


def predictions(est, cfg, X_eval):
    """The outputs that a pickle must reproduce: {what: array}."""
    if cfg["est"] == "cim":
        out = {"transform": est.transform(X_eval), "masks": est.masks(X_eval)}
        # the mask net's raw (soft) output, uncut: far more sensitive than a 0/1 mask.
        # Since 0.2 masks() reads the fit's decisions (hard_mask_, mask_threshold_);
        # before, the parameters
        names = ("hard_mask", "mask_threshold")
        decided = hasattr(est, "hard_mask_")
        saved = {k: getattr(est, k + "_") if decided else est.get_params()[k] for k in names}
        if decided:
            est.hard_mask_, est.mask_threshold_ = False, None
        else:
            est.set_params(hard_mask=False, mask_threshold=None)
        try:
            out["soft_masks"] = est.masks(X_eval)
        finally:
            if decided:
                est.hard_mask_, est.mask_threshold_ = saved["hard_mask"], saved["mask_threshold"]
            else:
                est.set_params(**saved)
        return out
    return {"predict_proba": est.predict_proba(X_eval), "transform": est.transform(X_eval)}


def flat_params(est):
    """Every float tensor of the fitted module's state_dict, in order, concatenated."""
    sd = est.net_.module_.state_dict()
    parts = [t.detach().cpu().reshape(-1).float() for t in sd.values()
             if torch.is_floating_point(t)]
    return torch.cat(parts).numpy()


def outputs(est, cfg, X_eval):
    out = {k: np.asarray(v) for k, v in predictions(est, cfg, X_eval).items()}
    hist = est.history_
    keys = sorted({k for epoch in hist for k in epoch if k.startswith("train_")})
    for k in keys:
        out["history_" + k] = np.array([epoch.get(k, np.nan) for epoch in hist],
                                       dtype=np.float64)
    # every batch's loss (finer than the epoch means)
    out["history_batches_train_loss"] = np.array(
        [b["train_loss"] for epoch in hist for b in epoch["batches"]], dtype=np.float64)
    out["n_epochs"] = np.array([len(hist)], dtype=np.float64)
    try:  # internals (net_.module_): a refactor may move them; compare.py then says MISSING
        out["params_flat"] = flat_params(est)
        out["n_params_tensors"] = np.array([len(est.net_.module_.state_dict())], np.float64)
    except Exception as exc:  # noqa: BLE001
        print(f"  {cfg['name']}: no params_flat ({type(exc).__name__}: {exc})", flush=True)
    if cfg["est"] == "cim":
        check = est.removal_check_
        if check is not None:
            for k in sorted(check):
                value = check[k]  # numbers, and the name of the worst brightness third
                out["removal_check_" + k] = (np.array([value]) if isinstance(value, str) else
                                             np.array([float(value)], dtype=np.float64))
        if est.groups_ is not None:
            out["groups_inferred"] = np.asarray(est.groups_, dtype=np.float64)
        out["fallback"] = np.array([float(est.fallback_)])
        out["group_aware"] = np.array([float(est.group_aware_)])
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--pickles")
    ap.add_argument("--only", help="comma-separated config names")
    args = ap.parse_args(argv)
    print("torch", torch.__version__, "threads", torch.get_num_threads(),
          "interop", torch.get_num_interop_threads(),
          "OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS"), flush=True)
    if args.pickles:
        os.makedirs(args.pickles, exist_ok=True)
    configs = CONFIGS
    if args.only:
        names = args.only.split(",")
        configs = [c for c in CONFIGS if c["name"] in names]
    data = make_data()
    result = {"data/" + k: v for k, v in data.items()}
    t_all = time.perf_counter()
    for cfg in configs:
        t0 = time.perf_counter()
        est = build(cfg)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(est, cfg, data)
        for k, v in outputs(est, cfg, data[eval_input_name(cfg)]).items():
            result[f"{cfg['name']}/{k}"] = v
        if args.pickles:
            joblib.dump(est, os.path.join(args.pickles, cfg["name"] + ".joblib"))
        names = sorted({w.category.__name__ for w in caught})
        print(f"{cfg['name']:32s} {time.perf_counter() - t0:6.2f}s  warnings: {names}",
              flush=True)
    np.savez(args.out, **result)
    print(f"{len(result)} arrays -> {args.out}; fits took {time.perf_counter() - t_all:.1f}s")


if __name__ == "__main__":
    sys.exit(main())
