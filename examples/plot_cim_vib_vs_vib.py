"""
VIB, CIM -> VIB and joint CIM+VIB
=================================

The variational information bottleneck (VIB) compresses its input to a
Gaussian code; on its own it keeps whatever predicts the label in training,
a colour nuisance included. CIM first masks the image. On coloured digits
(:func:`~sklearn_cim.datasets.make_colored_digits`, colour agrees with the
label with probability 0.95 in training, random out of distribution) we
compare three ways of putting them together:

* ``VIBClassifier`` on the pixels;
* two-stage ``Pipeline([("cim", CIMTransformer()), ("clf", VIBClassifier())])``:
  the mask is learnt with the CIM's CNN head, then a VIB is trained on psi(x);
* joint ``Pipeline([("cim", CIMTransformer(head="vib")), ("clf", VIBClassifier())])``:
  the mask is learnt together with a VIB head (CIM+VIB), then a VIB is trained
  on psi(x) as above.

::

    python examples/plot_cim_vib_vs_vib.py
    python examples/plot_cim_vib_vs_vib.py --beta 1e-2 --nuisance corner

Runs on CPU in a few minutes (uses CUDA when present).
"""

# %%
# Imports and options
# -------------------
import argparse
import time

import numpy as np
from sklearn.pipeline import Pipeline

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError, VIBClassifier
from sklearn_cim.datasets import agreement_groups, make_colored_digits
from sklearn_cim.metrics import worst_group_accuracy


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="VIB vs CIM -> VIB vs joint CIM+VIB on "
                                                 "coloured digits.")
    parser.add_argument("--nuisance", choices=("background", "corner"), default="background")
    parser.add_argument("--beta", type=float, default=1e-3,
                        help="VIB beta, also the joint head's head_beta (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=10,
                        help="epochs of each CIM and each VIB (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None,
                        help="save the joint model's loss curves here (default: show them)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (8 px, a subset, L2 distance, small nets, one CIM "
                             "epoch, 10 VIB epochs at lr=1e-2)")
    return parser.parse_args(argv)


# %%
# Models
# ------
# ``head_beta`` weights the KL term of the joint model's VIB head. The CIM's
# default distance is LPIPS on an ImageNet trunk; offline, ``fit`` raises
# :class:`~sklearn_cim.TrunkWeightsUnavailableError` and we use a random trunk.
def models(args, image_shape):
    common = dict(random_state=args.seed)
    if args.quick:  # a tiny VIB learns the digits in 40 steps only at a larger lr
        cim_kw = dict(distance="l2", max_epochs=1, batch_size=64, tn_width=4, tn_depth=1,
                      head_width=4)
        vib_kw = dict(max_epochs=10, lr=1e-2, batch_size=64, latent_dim=4,
                      hidden_layer_sizes=(16,), conv_width=4, n_test_samples=2)
    else:
        cim_kw = vib_kw = dict(max_epochs=args.epochs)

    def vib():
        return VIBClassifier(image_shape=image_shape, beta=args.beta, **vib_kw, **common)

    def cim(**kw):
        return CIMTransformer(image_shape=image_shape, **cim_kw, **kw, **common)

    return {
        "VIB (pixels)": vib(),
        "CIM -> VIB (two-stage)": Pipeline([("cim", cim()), ("clf", vib())]),
        "CIM+VIB (joint) -> VIB": Pipeline([("cim", cim(head="vib", head_beta=args.beta)),
                                            ("clf", vib())]),
    }


def fit(model, X, y):
    try:
        return model.fit(X, y)
    except TrunkWeightsUnavailableError:
        print("LPIPS: pretrained trunk not available (offline?); using pretrained=False")
        return model.set_params(cim__pretrained=False).fit(X, y)


# %%
# Fit and score
# -------------
def main(argv=None):
    args = parse_args(argv)
    data = make_colored_digits(nuisance=args.nuisance, image_size=8 if args.quick else 32,
                               random_state=args.seed)
    flat = lambda a: a.reshape(len(a), -1)
    n_train, n_test = (200, 100) if args.quick else (None, None)
    X, y = flat(data.X_train[:n_train]), data.y_train[:n_train]
    X_id, X_ood = flat(data.X_test_id[:n_test]), flat(data.X_test_ood[:n_test])
    y_test = data.y_test[:n_test]
    # worst group over digit x (colour agrees with the label or not)
    groups = agreement_groups(y_test, data.groups_test_ood[:n_test])
    print(f"{len(y)} train / {len(y_test)} test images of shape {data.X_train.shape[1:]}, "
          f"nuisance={args.nuisance!r}, beta={args.beta}")

    fitted = {}
    print("\n| model | in-distribution acc | OOD acc | OOD worst-group acc | fit s |")
    print("|---|---|---|---|---|")
    for name, model in models(args, data.X_train.shape[1:]).items():
        start = time.perf_counter()
        fitted[name] = fit(model, X, y)
        seconds = time.perf_counter() - start
        ood = model.predict(X_ood)
        print(f"| {name} | {model.score(X_id, y_test):.3f} | {np.mean(ood == y_test):.3f} | "
              f"{worst_group_accuracy(y_test, ood, groups):.3f} | {seconds:.1f} |", flush=True)

    # The joint model's loss terms per epoch: cross-entropy, KL (rate) and
    # triplet loss of its VIB head on psi(x).
    joint = fitted["CIM+VIB (joint) -> VIB"].named_steps["cim"]
    print("joint CIM+VIB, last epoch:",
          {k: round(float(joint.history_[-1, k]), 4)
           for k in ("train_loss", "train_ce", "train_kl", "train_triplet")})
    try:
        import matplotlib.pyplot as plt

        from sklearn_cim.plotting import plot_history
    except ImportError:
        print('no figure: pip install "sklearn-cim[plot]"')
        return fitted
    fig = plot_history(joint)
    if args.out:
        fig.savefig(args.out, dpi=100)
        plt.close(fig)
        print(f"figure: {args.out}")
    else:
        plt.show()
    return fitted


if __name__ == "__main__":
    main()
