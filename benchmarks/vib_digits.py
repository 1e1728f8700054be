"""Sanity figures for VIBClassifier on ``load_digits`` (CPU).

Run from the repository root::

    python benchmarks/vib_digits.py

Prints, as markdown:

1. stratified 5-fold CV accuracy (shuffled, ``random_state=0``) on
   ``load_digits`` scaled by 1/16, of ``VIBClassifier()`` with its defaults
   versus ``MLPClassifier(hidden_layer_sizes=(1024, 1024))``, same folds;
2. a beta sweep of ``VIBClassifier`` (defaults otherwise): the final epoch's
   ``train_kl`` (rate, nats) and ``train_ce`` (distortion), means over the
   folds, and CV accuracy, on the same folds (``--sweep-folds``, default 5).

Everything is seeded (``random_state=0``); timings depend on the machine.
"""

import argparse
import time
import warnings

import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.neural_network import MLPClassifier

from sklearn_cim import VIBClassifier


def cv(estimator, X, y, folds):
    splitter = StratifiedKFold(folds, shuffle=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = cross_validate(estimator, X, y, cv=splitter, return_estimator=True)
    return res["test_score"], res["estimator"], res["fit_time"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--sweep-folds", type=int, default=5)
    parser.add_argument("--betas", default="1e-5,1e-4,1e-3,1e-2,1e-1,1,10")
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    print(f"load_digits: {X.shape[0]} samples, {X.shape[1]} features, X/16; torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), scikit-learn "
          f"{sklearn.__version__}, device cpu\n")

    start = time.time()
    print(f"## {args.folds}-fold CV accuracy\n")
    print("| model | mean | std | folds | fit s/fold |")
    print("|---|---|---|---|---|")
    models = [
        ("VIBClassifier() (defaults)", VIBClassifier(device="cpu", random_state=0)),
        ("MLPClassifier((1024, 1024))",
         MLPClassifier(hidden_layer_sizes=(1024, 1024), random_state=0)),
    ]
    for name, est in models:
        scores, _, fit_time = cv(est, X, y, args.folds)
        print(f"| {name} | {scores.mean():.4f} | {scores.std():.4f} | "
              f"{' '.join(f'{s:.3f}' for s in scores)} | {fit_time.mean():.1f} |",
              flush=True)

    print(f"\n## beta sweep ({args.sweep_folds}-fold CV, other parameters default)\n")
    print("| beta | final train_kl (nats) | final train_ce | CV accuracy | std |")
    print("|---|---|---|---|---|")
    for beta in [float(b) for b in args.betas.split(",")]:
        scores, ests, _ = cv(VIBClassifier(beta=beta, device="cpu", random_state=0),
                             X, y, args.sweep_folds)
        kl = np.mean([e.history_[-1, "train_kl"] for e in ests])
        ce = np.mean([e.history_[-1, "train_ce"] for e in ests])
        print(f"| {beta:g} | {kl:.2f} | {ce:.4f} | {scores.mean():.4f} | "
              f"{scores.std():.4f} |", flush=True)
    print(f"\ntotal {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
