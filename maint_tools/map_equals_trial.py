"""The package's nuisance map trains what the trial measured, bit for bit.

The localisation trial (``benchmarks/nuisance_map_trial.py`` at commit
f503985, when the map was the trial's own code patched into the package) was
measured on the 64 px photos and the digits splits; the package took its
settings (``map_weight=3``). This script fits the group CIM twice per case,
in separate processes: with ``map_weight=3`` (the package's map), and with
``map_weight=0, mask_weight=0`` under the old trial's patch (map weight
3, cut 0.25, window auto, gated, probe 30 epochs at lr 0.01), and compares
the transforms. Cases: the digits corner split at 16 px (a 1 px window) and a
48 px toy split (a 5 px window). CPU; about a minute. Needs the git history.

    python maint_tools/map_equals_trial.py

Prints one line per case and exits 1 when a pair differs.
"""

import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIAL_COMMIT = "f503985"

FIT = r'''
import sys, warnings
import numpy as np
warnings.simplefilter("ignore")
arm, case, out = sys.argv[1:4]
from sklearn_cim import CIMTransformer
kw = dict(max_epochs=2, pretrained=False, random_state=0, device="cpu")
if case == "digits16":
    from sklearn_cim.datasets import make_colored_digits
    d = make_colored_digits(nuisance="corner", image_size=16, random_state=10)
    X, y, g = d.X_train[:600], d.y_train[:600], d.nuisance_train[:600]
else:
    rng = np.random.RandomState(0)
    n, side = 120, 48
    y = np.arange(n) % 3
    g = np.where(rng.rand(n) < 0.8, y, rng.randint(0, 3, n))
    X = rng.rand(n, 3, side, side).astype(np.float32) * 0.2
    X[:, :, :6, :6] = np.eye(3, dtype=np.float32)[g][:, :, None, None]
    for i in range(n):
        X[i, :, 10 + 8 * y[i]:16 + 8 * y[i], 10:40] = 1.0
    kw["distance"] = "lpips-squeeze"
if arm == "trial":
    import old_trial
    old_trial.patch(3.0, 0.25, "auto", gate=True, probe_epochs=30, probe_lr=1e-2)
    kw.update(map_weight=0.0, mask_weight=0.0)
else:
    kw.update(map_weight=3.0)
np.save(out, CIMTransformer(**kw).fit(X, y, groups=g).transform(X))
'''


def main():
    with tempfile.TemporaryDirectory() as tmp:
        trial = subprocess.run(
            ["git", "show", f"{TRIAL_COMMIT}:benchmarks/nuisance_map_trial.py"],
            cwd=ROOT, check=True, capture_output=True, text=True).stdout
        with open(os.path.join(tmp, "old_trial.py"), "w") as f:
            f.write(trial)
        script = os.path.join(tmp, "fit.py")
        with open(script, "w") as f:
            f.write(FIT)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, ROOT]),
                   OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        failed = False
        for case in ("digits16", "toy48"):
            outs = {}
            for arm in ("package", "trial"):
                outs[arm] = os.path.join(tmp, f"{case}-{arm}.npy")
                subprocess.run([sys.executable, script, arm, case, outs[arm]], env=env,
                               check=True)
            a, b = np.load(outs["package"]), np.load(outs["trial"])
            same = np.array_equal(a, b)
            failed |= not same
            print(f"{case}: transforms bitwise equal: {same} (max |difference| "
                  f"{np.abs(a - b).max():.3g})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
