"""
Random versus reversed colour shift
===================================

Models are trained on coloured digits whose colour agrees with the label with
probability ``p_train = 0.95``, then tested on two out-of-distribution (OOD)
test sets made from the same test digits:

* ``shift="random"``: the colour is drawn uniformly from the ten colours, so it
  still agrees with the label one time in ten;
* ``shift="reversed"``: the colour is never the label's, so a model that reads
  the colour is always misled.

:func:`~sklearn_cim.datasets.make_colored_digits` with the same
``random_state`` gives the same training and in-distribution data for both
shifts; only the OOD draws differ. We compare ERM (``LogisticRegression`` on the
pixels), CIM -> LR and the oracle (no nuisance)::

    python examples/plot_color_shift_ood.py
    python examples/plot_color_shift_ood.py --nuisance corner

Runs on CPU in a few minutes (uses CUDA when present).
"""

# %%
# Imports and options
# -------------------
import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError
from sklearn_cim.datasets import agreement_groups, make_colored_digits
from sklearn_cim.metrics import worst_group_accuracy

SHIFTS = ("random", "reversed")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="OOD accuracy under a random and a "
                                                 "reversed colour shift.")
    parser.add_argument("--nuisance", choices=("background", "corner"), default="background")
    parser.add_argument("--p-train", type=float, default=0.95)
    parser.add_argument("--epochs", type=int, default=10, help="CIM epochs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the figure here (default: show it)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (8 px, a subset, one epoch, L2 distance)")
    return parser.parse_args(argv)


# %%
# Data: one training set, two OOD test sets
# -----------------------------------------
def load_data(args):
    size = 8 if args.quick else 32
    data = {shift: make_colored_digits(nuisance=args.nuisance, p_train=args.p_train,
                                       shift=shift, image_size=size, random_state=args.seed)
            for shift in SHIFTS}
    a, b = data["random"], data["reversed"]
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.X_test_id, b.X_test_id)
    if args.quick:  # a small subset, for the tests
        n_train, n_test = 200, 100
        for d in data.values():
            for key in ("X_train", "y_train", "X_train_clean"):
                d[key] = d[key][:n_train]
            for key in ("X_test_id", "X_test_ood", "groups_test_ood", "y_test",
                        "X_test_clean"):
                d[key] = d[key][:n_test]
    return data


def cim_params(args, image_shape):
    if args.quick:
        return dict(image_shape=image_shape, distance="l2", max_epochs=1, batch_size=64,
                    tn_width=4, tn_depth=1, head_width=4, random_state=args.seed)
    return dict(image_shape=image_shape, max_epochs=args.epochs,
                random_state=args.seed)


# %%
# Fit once, score on both shifts
# ------------------------------
# The CIM needs LPIPS's pretrained ImageNet trunk; offline, ``fit`` raises
# :class:`~sklearn_cim.TrunkWeightsUnavailableError` before training and we use
# a random trunk instead.
def main(argv=None):
    args = parse_args(argv)
    data = load_data(args)
    train = data["random"]
    flat = lambda a: a.reshape(len(a), -1)
    X, y, y_test = flat(train.X_train), train.y_train, train.y_test
    for shift, d in data.items():
        agree = np.mean(d.groups_test_ood % 10 == y_test)
        print(f"OOD shift={shift!r}: colour agrees with the label for {agree:.1%} of images")

    erm = LogisticRegression(max_iter=1000).fit(X, y)
    cim = Pipeline([("cim", CIMTransformer(**cim_params(args, train.X_train.shape[1:]))),
                    ("clf", LogisticRegression(max_iter=1000))])
    try:
        cim.fit(X, y)
    except TrunkWeightsUnavailableError:
        print("LPIPS: pretrained trunk not available (offline?); using pretrained=False")
        cim.set_params(cim__pretrained=False).fit(X, y)
    oracle = LogisticRegression(max_iter=1000).fit(flat(train.X_train_clean), y)

    # The oracle sees the same test digits without colour: its "OOD" images are
    # the clean ones, grouped as the coloured ones are.
    models = {"ERM (LR on pixels)": (erm, "X_test_ood"), "CIM -> LR": (cim, "X_test_ood"),
              "oracle (no nuisance)": (oracle, "X_test_clean")}
    results = {}
    for name, (model, ood_key) in models.items():
        in_dist = train.X_test_clean if model is oracle else train.X_test_id
        scores = {"in-distribution": model.score(flat(in_dist), y_test)}
        for shift, d in data.items():
            pred = model.predict(flat(d[ood_key]))
            scores[f"OOD {shift}"] = np.mean(pred == y_test)
            groups = agreement_groups(y_test, d.groups_test_ood)
            scores[f"worst-group {shift}"] = worst_group_accuracy(y_test, pred, groups)
        results[name] = scores

    columns = list(results["CIM -> LR"])
    print("\n| model | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for name, scores in results.items():
        print(f"| {name} | " + " | ".join(f"{scores[c]:.3f}" for c in columns) + " |")

    # Accuracy in distribution and under each shift, as bars.
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print('no figure: pip install "sklearn-cim[plot]"')
        return results
    bars = ["in-distribution", "OOD random", "OOD reversed"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    width = 0.8 / len(results)
    for i, (name, scores) in enumerate(results.items()):
        ax.bar(np.arange(len(bars)) + i * width, [scores[b] for b in bars], width, label=name)
    ax.set_xticks(np.arange(len(bars)) + width * (len(results) - 1) / 2, bars)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    fig.tight_layout()
    if args.out:
        fig.savefig(args.out, dpi=100)
        plt.close(fig)
        print(f"figure: {args.out}")
    else:
        plt.show()
    return results


if __name__ == "__main__":
    main()
