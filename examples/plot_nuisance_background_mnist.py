"""
Background-colour nuisance on MNIST
===================================

White MNIST digits on a coloured background. In training (and in the
in-distribution test split) the colour agrees with the label with probability
``p_train = 0.95``; in the out-of-distribution (OOD) split it is drawn at
random. A classifier that leans on the colour does well in distribution and
badly OOD. We compare, on the same splits:

* ERM: ``LogisticRegression`` on the raw pixels;
* CIM -> LR: ``Pipeline([("cim", CIMTransformer(...)), ("clf", LogisticRegression())])``;
* oracle: ``LogisticRegression`` trained and tested on the same digits on a
  plain grey background (no nuisance).

``--root`` names a directory with the standard MNIST idx files
(``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``, and
optionally the ``train-*`` pair); with only the t10k pair, its 10,000 images are
split 8,000 / 2,000 and ``--n-train`` of the 8,000 are used for training.
Without ``--root`` the example says so and uses scikit-learn's ``load_digits``
(:func:`~sklearn_cim.datasets.make_colored_digits`) instead::

    python examples/plot_nuisance_background_mnist.py --root ../shared/data/mnist
    python examples/plot_nuisance_background_mnist.py

Runs on CPU in a few minutes (uses CUDA when present).
"""

# %%
# Imports and options
# -------------------
import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError
from sklearn_cim.datasets import agreement_groups, load_colored_mnist, make_colored_digits
from sklearn_cim.metrics import worst_group_accuracy


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="ERM vs CIM -> LR vs oracle under a "
                                                 "background-colour nuisance on MNIST.")
    parser.add_argument("--root", default=None,
                        help="directory with the MNIST idx files (default: none, use "
                             "load_digits instead)")
    parser.add_argument("--n-train", type=int, default=4000,
                        help="training images taken from MNIST (default: %(default)s)")
    parser.add_argument("--p-train", type=float, default=0.95,
                        help="P(colour agrees with label) in training (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=5, help="CIM epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="save the mask figure here (default: show it)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (200 training images, 8 px without --root, one "
                             "epoch, L2 distance)")
    return parser.parse_args(argv)


# %%
# Data
# ----
# ``groups_test_ood`` is ``label * 10 + colour``: 100 (digit, colour) cells, too
# many to measure on a few hundred test images. ``agreement_groups`` makes 20:
# digit x (colour agrees with the label or not); the worst-group accuracy is the
# accuracy on the hardest of them.
def load_data(args):
    if args.root is None:
        print("no --root given: using make_colored_digits (scikit-learn's load_digits at "
              "32 px) instead of MNIST")
        data = make_colored_digits(p_train=args.p_train, image_size=8 if args.quick else 32,
                                   random_state=args.seed)
    else:
        data = load_colored_mnist(args.root, p_train=args.p_train,
                                  n_train=200 if args.quick else args.n_train,
                                  random_state=args.seed)
    if args.quick:  # a small subset, for the tests
        for key in ("X_train", "y_train", "groups_train", "X_train_clean"):
            data[key] = data[key][:200]
        for key in ("X_test_id", "groups_test_id", "X_test_ood", "groups_test_ood",
                    "y_test", "X_test_clean"):
            data[key] = data[key][:100]
    return data


# %%
# The CIM settings
# ----------------
# The default distance is LPIPS on an ImageNet AlexNet trunk. Its weights come
# from torchvision's cache; offline, ``fit`` raises
# :class:`~sklearn_cim.TrunkWeightsUnavailableError` before training, and we
# fall back to a randomly initialised trunk.
def cim_params(args, image_shape):
    if args.quick:
        return dict(image_shape=image_shape, distance="l2", max_epochs=1, batch_size=64,
                    tn_width=4, tn_depth=1, head_width=4, random_state=args.seed)
    return dict(image_shape=image_shape, max_epochs=args.epochs,
                random_state=args.seed)


def fit_with_lpips_fallback(pipe, X, y):
    try:
        return pipe.fit(X, y)
    except TrunkWeightsUnavailableError:
        print("LPIPS: pretrained ImageNet trunk not available (offline?); "
              "using pretrained=False (a random trunk)")
        return pipe.set_params(cim__pretrained=False).fit(X, y)


# %%
# Fit and score
# -------------
def main(argv=None):
    args = parse_args(argv)
    data = load_data(args)
    flat = lambda a: a.reshape(len(a), -1)
    X_train, y, y_test = flat(data.X_train), data.y_train, data.y_test
    groups = agreement_groups(y_test, data.groups_test_ood)
    print(f"{len(y)} train / {len(y_test)} test images of shape {data.X_train.shape[1:]}, "
          f"p_train={args.p_train}")

    erm = LogisticRegression(max_iter=1000)
    pipe = Pipeline([("cim", CIMTransformer(**cim_params(args, data.X_train.shape[1:]))),
                     ("clf", LogisticRegression(max_iter=1000))])
    rows = []
    for name, model in (("ERM (LR on pixels)", erm), ("CIM -> LR", pipe)):
        start = time.perf_counter()
        if model is pipe:
            fit_with_lpips_fallback(pipe, X_train, y)
        else:
            model.fit(X_train, y)
        seconds = time.perf_counter() - start
        ood = model.predict(flat(data.X_test_ood))
        rows.append((name, model.score(flat(data.X_test_id), y_test), np.mean(ood == y_test),
                     worst_group_accuracy(y_test, ood, groups), seconds))

    start = time.perf_counter()
    oracle = LogisticRegression(max_iter=1000).fit(flat(data.X_train_clean), y)
    seconds = time.perf_counter() - start
    clean = oracle.predict(flat(data.X_test_clean))
    acc = np.mean(clean == y_test)
    rows.append(("oracle (no nuisance)", acc, acc,
                 worst_group_accuracy(y_test, clean, groups), seconds))

    print("\n| model | in-distribution acc | OOD acc | OOD worst-group acc | fit s |")
    print("|---|---|---|---|---|")
    for name, id_acc, ood_acc, worst, seconds in rows:
        print(f"| {name} | {id_acc:.3f} | {ood_acc:.3f} | {worst:.3f} | {seconds:.1f} |")

    # What the CIM keeps. Rows: OOD test images x, their masks m (white keeps)
    # and psi(x) = m * x.
    try:
        import matplotlib.pyplot as plt

        from sklearn_cim.plotting import plot_masks
    except ImportError:
        print('no figure: pip install "sklearn-cim[plot]"')
        return rows
    fig = plot_masks(pipe, flat(data.X_test_ood[:8]))
    fig.suptitle("CIM on OOD test images")
    if args.out:
        fig.savefig(args.out, dpi=100, bbox_inches="tight")
        plt.close(fig)
        print(f"mask figure: {args.out}")
    else:
        plt.show()
    return rows


if __name__ == "__main__":
    main()
