"""
A CNN after the CIM: a moving mark
==================================

A linear model on pixels barely reads a small mark that moves from image to
image; a CNN reads it wherever it is. On coloured digits whose mark
(:func:`~sklearn_cim.datasets.make_colored_digits` with ``nuisance="mark"``: a
small coloured square at a random place off the digit) agrees with the label
with probability 0.95 in training and is random out of distribution (OOD), we
train a small CNN with skorch

* on the pixels (ERM);
* after a group-aware ``CIMTransformer`` fitted with the mark's colour as
  ``groups``, in one ``Pipeline``: the CIM hands the CNN images
  ``(n, C, H, W)`` in X's value range, so no reshaping step is needed
  (for uint8 X, psi(x) is float32 in [0, 255]: add
  ``FunctionTransformer(functools.partial(np.multiply, 1 / 255))`` before a
  network that expects [0, 1]);
* on the digits without the mark (the oracle).

::

    python examples/plot_cim_then_cnn.py

Runs on CPU in a few minutes (uses CUDA when present).
"""

# %%
# Imports and options
# -------------------
import argparse

import numpy as np
import torch
from sklearn.pipeline import Pipeline
from skorch import NeuralNetClassifier
from torch import nn

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError
from sklearn_cim.datasets import agreement_groups, make_colored_digits
from sklearn_cim.metrics import worst_group_accuracy


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="A skorch CNN on the pixels and after a "
                                                 "group-aware CIM, on digits with a moving mark.")
    parser.add_argument("--epochs", type=int, default=30,
                        help="epochs of the CIM and of each CNN (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (16 px, a subset, a one-epoch CIM with L2 distance, "
                             "small CNNs at lr=1e-2)")
    return parser.parse_args(argv)


# %%
# The CNN
# -------
class SmallCNN(nn.Module):
    def __init__(self, in_channels=3, n_classes=10, width=32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(2 * width * 16, n_classes))

    def forward(self, x):
        return self.net(x)


# ``SmallCNN`` returns logits, so the net is trained with cross-entropy on them;
# skorch's default criterion, ``NLLLoss``, expects log-probabilities (it gave NaN
# losses and one constant class here). With ``CrossEntropyLoss`` skorch's
# ``predict_proba`` applies the softmax.
# (The --quick run's tiny net takes larger steps: at lr=1e-3 it stays near chance
# in its 60 steps.)
def cnn(args, width):
    torch.manual_seed(args.seed)
    return NeuralNetClassifier(
        SmallCNN, module__width=width, criterion=nn.CrossEntropyLoss,
        max_epochs=args.epochs, lr=1e-2 if args.quick else 1e-3, batch_size=128,
        optimizer=torch.optim.Adam, train_split=None, verbose=0,
        device="cuda" if torch.cuda.is_available() else "cpu")


def main(argv=None):
    args = parse_args(argv)
    size = 16 if args.quick else 32
    d = make_colored_digits(nuisance="mark", image_size=size, random_state=args.seed)
    if args.quick:
        for key in ("X_train", "y_train", "nuisance_train", "X_train_clean"):
            d[key] = d[key][:200]
    X, y = d.X_train, d.y_train
    width = 4 if args.quick else 32
    cim_params = dict(max_epochs=args.epochs, random_state=args.seed)
    if args.quick:
        cim_params.update(distance="l2", max_epochs=1, tn_width=4, tn_depth=1, head_width=4)

    # %%
    # Fit: the CNN on pixels, and the CIM then the CNN in one pipeline
    # -----------------------------------------------------------------
    erm = cnn(args, width).fit(X, y)
    pipe = Pipeline([("cim", CIMTransformer(**cim_params)), ("cnn", cnn(args, width))])
    try:
        pipe.fit(X, y, cim__groups=d.nuisance_train)
    except TrunkWeightsUnavailableError:
        print("LPIPS: pretrained trunk not available (offline?); using pretrained=False")
        pipe.set_params(cim__pretrained=False).fit(X, y, cim__groups=d.nuisance_train)
    oracle = cnn(args, width).fit(d.X_train_clean, y)

    # %%
    # OOD and worst-group accuracy
    # ----------------------------
    groups = agreement_groups(d.y_test, d.groups_test_ood)
    print("| model | OOD acc | OOD worst-group acc |\n|---|---|---|")
    results = {}
    for name, model, X_test in (("CNN on pixels (ERM)", erm, d.X_test_ood),
                                ("group CIM -> CNN", pipe, d.X_test_ood),
                                ("oracle CNN (no mark)", oracle, d.X_test_clean)):
        pred = model.predict(X_test)
        results[name] = (float(np.mean(pred == d.y_test)),
                         worst_group_accuracy(d.y_test, pred, groups))
        print(f"| {name} | {results[name][0]:.3f} | {results[name][1]:.3f} |")
    check = pipe.named_steps["cim"].removal_check_
    print(f"\nremoval check (training images): estimated accuracy once the mark no longer "
          f"agrees with the label {check.balanced_accuracy:.3f} on psi(x), "
          f"{check.balanced_accuracy_x:.3f} on x")
    return results


if __name__ == "__main__":
    main()
