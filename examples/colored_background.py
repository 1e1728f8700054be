"""
CIM against a coloured-background nuisance
==========================================

Digits are drawn in white on a coloured background. In training (and in the
in-distribution test split) the background colour agrees with the label with
probability ``p_train``; in the out-of-distribution (OOD) split it is random.
A classifier that leans on the colour does well in distribution and badly OOD.

We compare, on the same splits:

* ERM: ``LogisticRegression`` on raw pixels;
* CIM: ``Pipeline([("cim", CIMTransformer()), ("clf", LogisticRegression())])``;
* oracle: ``LogisticRegression`` trained without the nuisance (grey background).

Data: ``sklearn.datasets.load_digits`` (ships with scikit-learn, upsampled to
32 px) by default, or MNIST idx files from a directory you name::

    python examples/colored_background.py
    python examples/colored_background.py --mnist ../shared/data/mnist --n-train 8000 --grid

``--grid`` tunes ``cim__triplet_weight`` and ``cim__margin`` with GridSearchCV.
Runs on CPU in minutes; uses CUDA when present.
"""

import argparse
import gzip
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError

# Ten well-separated background colours, one per class.
PALETTE = np.array([
    [0.90, 0.10, 0.10], [0.10, 0.70, 0.10], [0.10, 0.20, 0.90], [0.90, 0.80, 0.10],
    [0.70, 0.10, 0.80], [0.10, 0.80, 0.80], [0.95, 0.50, 0.10], [0.50, 0.30, 0.10],
    [0.40, 0.40, 0.40], [0.60, 0.90, 0.50],
], dtype=np.float32)


def read_idx(path):
    """Read an idx file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = np.frombuffer(data[4:4 + 4 * ndim], dtype=">u4")
    return np.frombuffer(data[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def load_mnist(root):
    """MNIST test set (or any idx pair named t10k-*) from ``root``: grey in [0, 1]."""
    def find(stem):
        for name in (stem, stem + ".gz"):
            if os.path.exists(os.path.join(root, name)):
                return os.path.join(root, name)
        raise FileNotFoundError(f"{stem}[.gz] not found in {root}")

    X = read_idx(find("t10k-images-idx3-ubyte")).astype(np.float32) / 255
    y = read_idx(find("t10k-labels-idx1-ubyte")).astype(np.int64)
    return X, y


def load_digits_32():
    digits = load_digits()
    X = torch.from_numpy(digits.images.astype(np.float32) / 16)[:, None]
    X = F.interpolate(X, size=(32, 32), mode="bilinear", align_corners=False)
    return X[:, 0].clamp(0, 1).numpy(), digits.target


def colourise(grey, y, p_agree, rng, oracle=False):
    """White digit on a background whose colour agrees with y w.p. p_agree."""
    n = len(y)
    if oracle:
        colours = np.full((n, 3), 0.5, dtype=np.float32)
    else:
        agree = rng.rand(n) < p_agree
        random_colour = rng.randint(0, len(PALETTE), n)
        colours = PALETTE[np.where(agree, y % len(PALETTE), random_colour)]
    g = grey[:, None]
    return (g + (1 - g) * colours[:, :, None, None]).astype(np.float32)


def cim_params(args, pretrained):
    return dict(distance=args.distance, pretrained=pretrained, max_epochs=args.epochs,
                batch_size=args.batch_size, random_state=args.seed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", help="directory with MNIST idx files (default: load_digits)")
    parser.add_argument("--n-train", type=int, default=None, help="training images")
    parser.add_argument("--p-train", type=float, default=0.95)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--distance", default="lpips-alex")
    parser.add_argument("--grid", action="store_true", help="GridSearchCV over loss weights")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.RandomState(args.seed)
    grey, y = load_mnist(args.mnist) if args.mnist else load_digits_32()
    g_train, g_test, y_train, y_test = train_test_split(
        grey, y, train_size=args.n_train or 0.8, stratify=y, random_state=args.seed)
    X_train = colourise(g_train, y_train, args.p_train, rng)
    X_id = colourise(g_test, y_test, args.p_train, rng)
    X_ood = colourise(g_test, y_test, 0.0, rng)
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    print(f"data: {'MNIST ' + args.mnist if args.mnist else 'load_digits (32 px)'}, "
          f"{len(y_train)} train / {len(y_test)} test, images {X_train.shape[1:]}, "
          f"p_train={args.p_train}")

    pretrained = True
    if args.distance.startswith("lpips"):
        try:
            CIMTransformer(distance=args.distance).fit(X_train[:8], np.arange(8) % 2)
        except TrunkWeightsUnavailableError:
            print("LPIPS: pretrained ImageNet trunk not available offline; "
                  "using pretrained=False (random trunk).")
            pretrained = False

    rows = []
    t0 = time.time()
    erm = LogisticRegression(max_iter=1000).fit(flat(X_train), y_train)
    rows.append(("ERM (LR on pixels)", erm, time.time() - t0))

    t0 = time.time()
    pipe = Pipeline([("cim", CIMTransformer(**cim_params(args, pretrained))),
                     ("clf", LogisticRegression(max_iter=1000))])
    if args.grid:
        grid = {"cim__triplet_weight": [0.0, 1.0], "cim__margin": [0.05, 0.2]}
        search = GridSearchCV(pipe, grid, cv=2, n_jobs=1).fit(flat(X_train), y_train)
        print("grid search (cv=2, in-distribution accuracy):")
        for params, score in zip(search.cv_results_["params"],
                                 search.cv_results_["mean_test_score"]):
            print(f"  {params}: {score:.3f}")
        print(f"  best: {search.best_params_}")
        pipe = search.best_estimator_
    else:
        pipe.fit(flat(X_train), y_train)
    rows.append(("CIM -> LR", pipe, time.time() - t0))

    t0 = time.time()
    oracle = LogisticRegression(max_iter=1000).fit(
        flat(colourise(g_train, y_train, 0.0, rng, oracle=True)), y_train)
    X_oracle_test = flat(colourise(g_test, y_test, 0.0, rng, oracle=True))
    oracle_time = time.time() - t0

    print("\n| model | in-distribution acc | OOD acc | fit s |\n|---|---|---|---|")
    for name, model, seconds in rows:
        print(f"| {name} | {model.score(flat(X_id), y_test):.3f} | "
              f"{model.score(flat(X_ood), y_test):.3f} | {seconds:.0f} |")
    acc = oracle.score(X_oracle_test, y_test)
    print(f"| oracle (no nuisance) | {acc:.3f} | {acc:.3f} | {oracle_time:.0f} |")


if __name__ == "__main__":
    main()
