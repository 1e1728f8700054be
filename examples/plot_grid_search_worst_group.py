"""
Tuning CIM for the worst group with GridSearchCV
================================================

Average accuracy rewards a model for leaning on a nuisance that agrees with the
label most of the time. To tune for robustness we score each candidate by its
worst-group accuracy instead, with
:func:`~sklearn_cim.metrics.make_worst_group_scorer`, which receives the group
of each validation sample through scikit-learn's metadata routing::

    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(pipe, grid, scoring=make_worst_group_scorer())
        search.fit(X, y, groups=groups)

Data: coloured digits (:func:`~sklearn_cim.datasets.make_colored_digits`),
colour agreeing with the label with probability 0.95 in training. With ten
classes and ten colours most (class, colour) cells of the training set hold no
or one image, so for validation we group the images in two: those whose colour
agrees with the label and those whose colour conflicts with it. The worst group
is then almost always the conflicting one. We search ``cim__triplet_weight`` x
``cim__margin`` and report the chosen model on the out-of-distribution test set
(random colours), with its worst group among digit x (colour agrees or not)::

    python examples/plot_grid_search_worst_group.py
    python examples/plot_grid_search_worst_group.py --epochs 5 --cv 3

The default (4 candidates x 2 folds + the refit, 3 epochs each) runs on CPU in a
few minutes (uses CUDA when present).
"""

# %%
# Imports and options
# -------------------
import argparse

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError
from sklearn_cim.datasets import agreement_groups, make_colored_digits
from sklearn_cim.metrics import make_worst_group_scorer, worst_group_accuracy


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="GridSearchCV of CIM -> LR scored by "
                                                 "worst-group accuracy.")
    parser.add_argument("--triplet-weights", default="0,1",
                        help="comma-separated cim__triplet_weight values (default: %(default)s)")
    parser.add_argument("--margins", default="0.05,0.2",
                        help="comma-separated cim__margin values (default: %(default)s)")
    parser.add_argument("--cv", type=int, default=2, help="folds (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3,
                        help="CIM epochs per fit (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="save the heat map of CV scores here (default: show it)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (8 px, a subset, one epoch, L2 distance)")
    return parser.parse_args(argv)


# %%
# Pipeline and grid
# -----------------
# The CIM's default distance is LPIPS on an ImageNet trunk. A failed fit inside
# GridSearchCV would only become a NaN score, so we check once, on 4 images,
# whether the pretrained trunk can be obtained, and otherwise use a random one.
# (Two images of each of two classes: the triplet loss needs a same-class
# positive for every anchor, which the first 8 images need not have.)
def pretrained_trunk_available(X, y, image_shape):
    probe = np.concatenate([np.flatnonzero(y == c)[:2] for c in np.unique(y)[:2]])
    try:
        CIMTransformer(image_shape=image_shape, max_epochs=1, batch_size=8,
                       random_state=0).fit(X[probe], y[probe])
    except TrunkWeightsUnavailableError:
        return False
    return True


def make_pipeline(args, image_shape, pretrained):
    if args.quick:
        params = dict(distance="l2", max_epochs=1, batch_size=64, tn_width=4, tn_depth=1,
                      head_width=4)
    else:
        params = dict(max_epochs=args.epochs, pretrained=pretrained)
    # Under metadata routing, CIMTransformer.fit must say whether it takes the
    # groups: here it does, and trains the group-aware objective on
    # (digit, colour conflicts) cells; set_fit_request(groups=False) would train
    # the paper's objective and leave the groups to the CV scorer alone.
    cim = CIMTransformer(image_shape=image_shape, random_state=args.seed, **params)
    return Pipeline([
        ("cim", cim.set_fit_request(groups=True)),
        ("clf", LogisticRegression(max_iter=1000)),
    ])


# %%
# Search
# ------
def main(argv=None):
    args = parse_args(argv)
    data = make_colored_digits(image_size=8 if args.quick else 32, random_state=args.seed)
    flat = lambda a: a.reshape(len(a), -1)
    n_train, n_test = (200, 100) if args.quick else (None, None)
    X, y = flat(data.X_train[:n_train]), data.y_train[:n_train]
    # groups_train is label * 10 + colour; the colour "agrees" when it is the label's.
    conflicts = (data.groups_train[:n_train] % 10 != y).astype(int)
    print(f"{len(y)} training images, {conflicts.sum()} with a conflicting colour")
    image_shape = data.X_train.shape[1:]

    pretrained = args.quick or pretrained_trunk_available(X, y, image_shape)
    if not pretrained:
        print("LPIPS: pretrained trunk not available (offline?); using pretrained=False")
    grid = {"cim__triplet_weight": [float(v) for v in args.triplet_weights.split(",")],
            "cim__margin": [float(v) for v in args.margins.split(",")]}
    # Enable routing only here, so that nothing else in the process changes.
    with sklearn.config_context(enable_metadata_routing=True):
        search = GridSearchCV(
            make_pipeline(args, image_shape, pretrained), grid,
            scoring={"worst_group": make_worst_group_scorer(), "accuracy": "accuracy"},
            refit="worst_group",
            cv=StratifiedKFold(args.cv, shuffle=True, random_state=args.seed),
        )
        search.fit(X, y, groups=conflicts)

    res = search.cv_results_
    print("\n| cim__triplet_weight | cim__margin | CV worst-group acc | CV accuracy |")
    print("|---|---|---|---|")
    for params, worst, acc in zip(res["params"], res["mean_test_worst_group"],
                                  res["mean_test_accuracy"]):
        print(f"| {params['cim__triplet_weight']:g} | {params['cim__margin']:g} | "
              f"{worst:.3f} | {acc:.3f} |")
    print(f"best by worst-group accuracy: {search.best_params_}")

    best = search.best_estimator_
    y_test = data.y_test[:n_test]
    ood = best.predict(flat(data.X_test_ood[:n_test]))
    groups = agreement_groups(y_test, data.groups_test_ood[:n_test])
    print(f"chosen model, OOD test: accuracy {np.mean(ood == y_test):.3f}, worst (digit, "
          f"colour agrees) group {worst_group_accuracy(y_test, ood, groups):.3f}")

    # CV worst-group accuracy over the grid, as a heat map.
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print('no figure: pip install "sklearn-cim[plot]"')
        return search
    weights, margins = grid["cim__triplet_weight"], grid["cim__margin"]
    scores = np.full((len(weights), len(margins)), np.nan)
    for params, worst in zip(res["params"], res["mean_test_worst_group"]):
        scores[weights.index(params["cim__triplet_weight"]),
               margins.index(params["cim__margin"])] = worst
    fig, ax = plt.subplots(figsize=(4, 3.2))
    image = ax.imshow(scores, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(margins)), margins)
    ax.set_yticks(range(len(weights)), weights)
    ax.set_xlabel("cim__margin")
    ax.set_ylabel("cim__triplet_weight")
    fig.colorbar(image, label="CV worst-group accuracy")
    fig.tight_layout()
    if args.out:
        fig.savefig(args.out, dpi=100)
        plt.close(fig)
        print(f"figure: {args.out}")
    else:
        plt.show()
    return search


if __name__ == "__main__":
    main()
