"""
Worst-group accuracy on Waterbirds or CelebA
============================================

Two standard subgroup-robustness benchmarks, read from a folder you name
(nothing is downloaded):

* Waterbirds (Sagawa et al., 2020): land / water birds on land / water
  backgrounds; the background is the nuisance. ``--waterbirds ROOT`` with
  ``ROOT/metadata.csv`` (columns ``img_filename, y, split, place``) and the
  images under ``ROOT``.
* CelebA (Liu et al., 2015): predict ``--target`` (default ``Blond_Hair``),
  groups by ``--group-attr`` (default ``Male``). ``--celeba ROOT`` with the
  standard ``list_attr_celeba.txt``, ``list_eval_partition.txt`` and
  ``img_align_celeba/``.

Groups are ``y * 2 + attribute`` (4 groups). We train ``LogisticRegression`` on
the pixels and ``CIMTransformer -> LogisticRegression`` on (a subsample of) the
official training split, and report the accuracy of each group of the test
split and the worst of them::

    python examples/plot_subgroups_waterbirds_celeba.py --waterbirds data/waterbirds
    python examples/plot_subgroups_waterbirds_celeba.py --celeba data/celeba --max-train 5000

Without a root it prints what it needs and exits. Runs on CPU in minutes at the
default 32 px and 4,000 training images (uses CUDA when present).
"""

# %%
# Imports and options
# -------------------
import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError
from sklearn_cim.datasets import load_celeba, load_waterbirds
from sklearn_cim.metrics import group_accuracies, worst_group_accuracy

NEEDS = (
    "This example needs Waterbirds or CelebA on disk; nothing is downloaded. Pass\n"
    "  --waterbirds ROOT  (ROOT/metadata.csv with columns img_filename, y, split, place, "
    "and the images under ROOT), or\n"
    "  --celeba ROOT      (ROOT/list_attr_celeba.txt, ROOT/list_eval_partition.txt and "
    "ROOT/img_align_celeba/)."
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Worst-group accuracy of LR vs CIM -> LR "
                                                 "on Waterbirds or CelebA.")
    root = parser.add_mutually_exclusive_group()
    root.add_argument("--waterbirds", metavar="ROOT", help="Waterbirds folder")
    root.add_argument("--celeba", metavar="ROOT", help="CelebA folder")
    parser.add_argument("--target", default="Blond_Hair", help="CelebA label attribute")
    parser.add_argument("--group-attr", default="Male", help="CelebA group attribute")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--max-train", type=int, default=4000,
                        help="training images (a random subsample; default: %(default)s)")
    parser.add_argument("--max-test", type=int, default=None,
                        help="test images (CelebA: the first ones in file order)")
    parser.add_argument("--epochs", type=int, default=5, help="CIM epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (8 px, one epoch, L2 distance)")
    return parser.parse_args(argv)


# %%
# Data
# ----
# Images come as uint8 (n, 3, size, size); we scale them to [0, 1] floats and
# flatten them to rows for ``LogisticRegression``.
def load(args):
    size = 8 if args.quick else args.size
    if args.waterbirds:
        train = load_waterbirds(args.waterbirds, size=size, splits="train")
        test = load_waterbirds(args.waterbirds, size=size, splits="test")
        names = {0: "landbird, land", 1: "landbird, water", 2: "waterbird, land",
                 3: "waterbird, water"}
    else:
        # CelebA's training split has 162,770 images: read only what we use.
        train = load_celeba(args.celeba, target=args.target, group_attr=args.group_attr,
                            size=size, splits="train", max_samples=4 * args.max_train)
        test = load_celeba(args.celeba, target=args.target, group_attr=args.group_attr,
                           size=size, splits="test", max_samples=args.max_test)
        names = {2 * y + a: f"{args.target}={y}, {args.group_attr}={a}"
                 for y in (0, 1) for a in (0, 1)}
    rng = np.random.RandomState(args.seed)
    keep = rng.permutation(len(train.y))[:args.max_train]
    if args.max_test is not None and args.waterbirds:
        test_keep = rng.permutation(len(test.y))[:args.max_test]
        test = {k: test[k][test_keep] for k in ("X", "y", "groups")}
    prep = lambda X: X.reshape(len(X), -1).astype(np.float32) / 255
    return (prep(train["X"][keep]), train["y"][keep], train["groups"][keep],
            prep(test["X"]), test["y"], test["groups"], (3, size, size), names)


# %%
# Models
# ------
# The CIM needs LPIPS's pretrained ImageNet trunk; offline, ``fit`` raises
# :class:`~sklearn_cim.TrunkWeightsUnavailableError` before training and we use
# a random trunk instead.
def cim_pipeline(args, image_shape):
    if args.quick:
        params = dict(distance="l2", max_epochs=1, batch_size=32, tn_width=4, tn_depth=1,
                      head_width=4)
    else:
        params = dict(max_epochs=args.epochs)
    cim = CIMTransformer(image_shape=image_shape, random_state=args.seed, **params)
    return Pipeline([("cim", cim), ("clf", LogisticRegression(max_iter=1000))])


def main(argv=None):
    args = parse_args(argv)
    if not (args.waterbirds or args.celeba):
        print(NEEDS)
        return None
    X, y, groups, X_test, y_test, groups_test, image_shape, names = load(args)
    print(f"{'Waterbirds' if args.waterbirds else 'CelebA'}: {len(y)} train / {len(y_test)} "
          f"test images {image_shape}; training group sizes "
          f"{dict(zip(*np.unique(groups, return_counts=True)))}")

    lr = LogisticRegression(max_iter=1000).fit(X, y)
    cim = cim_pipeline(args, image_shape)
    try:
        cim.fit(X, y)
    except TrunkWeightsUnavailableError:
        print("LPIPS: pretrained trunk not available (offline?); using pretrained=False")
        cim.set_params(cim__pretrained=False).fit(X, y)

    results = {}
    for name, model in (("LR on pixels", lr), ("CIM -> LR", cim)):
        pred = model.predict(X_test)
        results[name] = dict(group_accuracies(y_test, pred, groups_test),
                             mean=np.mean(pred == y_test),
                             worst=worst_group_accuracy(y_test, pred, groups_test))
    present = sorted(np.unique(groups_test).tolist())
    print("\n| model | " + " | ".join(names[g] for g in present) + " | mean | worst group |")
    print("|---|" + "---|" * (len(present) + 2))
    for name, acc in results.items():
        print(f"| {name} | " + " | ".join(f"{acc[g]:.3f}" for g in present)
              + f" | {acc['mean']:.3f} | {acc['worst']:.3f} |")
    return results


if __name__ == "__main__":
    main()
