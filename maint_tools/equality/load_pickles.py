"""Load capture.py's pickles with the code now on sys.path and replay them.

    python load_pickles.py DIR BEFORE.npz

For each DIR/<config>.joblib: load it, call the same methods (transform /
masks / soft masks for CIMTransformer, predict_proba / transform for
VIBClassifier) on the inputs stored in BEFORE.npz (``data/*``), and compare
bitwise with BEFORE.npz's ``<config>/<what>``; the fitted weights too
(``params_flat``). Exceptions are reported per pickle. Exit code 1 if
anything differs or fails.
"""

import os
import sys
import traceback

import numpy as np

import sklearn_cim

print("sklearn_cim from", sklearn_cim.__file__, flush=True)

import joblib  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from capture import CONFIGS, eval_input_name, flat_params, predictions  # noqa: E402
from compare import describe  # noqa: E402

torch.set_num_threads(1)


def main(argv):
    if len(argv) != 2:
        print(__doc__)
        return 2
    folder, ref_path = argv
    ref = np.load(ref_path, allow_pickle=False)
    by_name = {c["name"]: c for c in CONFIGS}
    files = sorted(f for f in os.listdir(folder) if f.endswith(".joblib"))
    n_ok = n_bad = 0
    for f in files:
        name = f[:-len(".joblib")]
        cfg = by_name.get(name)
        if cfg is None:
            print(f"{name}: no such config in capture.py")
            n_bad += 1
            continue
        try:
            est = joblib.load(os.path.join(folder, f))
            X_eval = ref["data/" + eval_input_name(cfg)]
            got = {k: np.asarray(v) for k, v in predictions(est, cfg, X_eval).items()}
            try:
                got["params_flat"] = flat_params(est)
            except Exception as exc:  # noqa: BLE001
                print(f"  {name}: no params_flat ({type(exc).__name__}: {exc})")
            results = []
            for what, value in got.items():
                key = f"{name}/{what}"
                res = (describe(ref[key], value) if key in ref.files
                       else "MISSING in BEFORE.npz")
                results.append((what, res))
            bad = [r for r in results if r[1] != "equal"]
            if bad:
                n_bad += 1
                print(f"{name}: DIFF " + "; ".join(f"{w}: {r}" for w, r in results))
            else:
                n_ok += 1
                print(f"{name}: equal ({', '.join(w for w, _ in results)})")
        except Exception as exc:  # noqa: BLE001 - report and go on
            n_bad += 1
            print(f"{name}: ERROR {type(exc).__name__}: {exc}")
            traceback.print_exc(limit=3, file=sys.stdout)
    print(f"\nSUMMARY: {len(files)} pickles: {n_ok} equal, {n_bad} differ or failed")
    return 1 if n_bad or not files else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
