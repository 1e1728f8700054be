"""``python -m sklearn_cim demo``: CIM against a colour nuisance, in one table.

On :func:`sklearn_cim.datasets.make_colored_digits` (``load_digits`` at 16 px,
a nuisance that agrees with the label with probability 0.95 in training and in
the in-distribution test split, and is drawn at random in the out-of-distribution
split) the demo fits

* ERM: ``LogisticRegression`` on the raw pixels;
* group CIM -> LR: ``CIMTransformer`` fitted with the training images' nuisance
  (background or patch colour) as ``groups`` (this package's group-aware
  extension), then ``LogisticRegression``;
* inferred-group CIM -> LR: the same without the nuisance labels
  (``infer_groups=True``: groups from an early-stopped local bias proxy, a
  small CNN of 3x3 filters);
* CIM -> LR: the paper's objective (no groups), then ``LogisticRegression``;
* VIB: ``VIBClassifier`` on the raw pixels;
* group CIM -> VIB: the group CIM, then ``VIBClassifier``;
* oracle: ``LogisticRegression`` trained and tested without the nuisance,

prints their in-distribution, out-of-distribution (OOD) and worst-group OOD
accuracies and fit times as a markdown table, and saves a figure of the CIM's
masks on 8 OOD test images (the group CIM's). The three CIMs share
:data:`DEMO_CIM_PARAMS` and differ only in the groups they get; the two group
CIM rows share one fitted ``CIMTransformer`` (its fit time is counted in both
rows). VIB: :data:`DEMO_VIB_PARAMS`. On 2 CPU cores the demo takes about seven
minutes (443 s on 2026-12-06, another single-threaded job sharing the cores);
``--quick`` is a seconds-long check. Every CIM and VIB fit shows one progress
bar (``verbose=1``, on stderr: batches done, rate, time left, the last
epoch's loss terms) and each CIM a line with its fit time when it is done.
"""

import argparse
import importlib.util
import os
import time
import warnings

import numpy as np
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

DESCRIPTION = ("CIM against a colour nuisance on coloured digits: ERM, group-aware CIM "
               "(true and inferred groups), the paper's CIM, VIB, group CIM -> VIB and an "
               "oracle, in one table, and a figure of the group-aware CIM's masks.")

#: Settings of the demo's three ``CIMTransformer`` (the paper's objective, true
#: and inferred groups; ``image_shape``, ``device`` and ``random_state`` are
#: added from the command line): the estimator's defaults (batch_size=32) with
#: 30 epochs, about 1,200 optimizer steps on the 1,257 training images: the recipe
#: of the results grid (``benchmarks/run_nuisance_results.py``), which ran it on
#: these images at this size over 5 seeds and 3 nuisances.
DEMO_CIM_PARAMS = dict(
    distance="lpips-alex",
    pretrained=True,
    max_epochs=30,
)

#: Side of the demo's images: ``load_digits`` is 8 x 8, so 16 px loses nothing
#: and costs the mask net a quarter of 32 px (LPIPS-alex upsamples to its 32 px
#: minimum itself).
DEMO_IMAGE_SIZE = 16

#: Settings of the demo's ``VIBClassifier`` (on pixels and after the CIM).
DEMO_VIB_PARAMS = dict(
    max_epochs=15,
)

# --quick: a tiny run for the tests (seconds on a CPU); numbers mean nothing.
_QUICK_DATA = dict(image_size=8, n_train=150, n_test=100)
_QUICK_CIM_PARAMS = dict(distance="l2", max_epochs=1, batch_size=32, tn_width=4, tn_depth=1,
                         head_width=4)
_QUICK_VIB_PARAMS = dict(max_epochs=1, batch_size=32, latent_dim=4, hidden_layer_sizes=(16,),
                         conv_width=4, n_test_samples=2)

_TRAIN_KEYS = ("X_train", "y_train", "nuisance_train", "groups_train", "X_train_clean")
_TEST_KEYS = ("X_test_id", "groups_test_id", "X_test_ood", "groups_test_ood", "y_test",
              "X_test_clean")

MODEL_NAMES = ("ERM (LR on pixels)", "group CIM -> LR", "inferred-group CIM -> LR",
               "CIM -> LR (paper objective)", "VIB (pixels)", "group CIM -> VIB",
               "oracle (LR, no nuisance)")


def add_arguments(parser):
    """Add the demo's options to an ``argparse`` parser.

    Examples
    --------
    >>> import argparse
    >>> from sklearn_cim.demo import add_arguments
    >>> parser = add_arguments(argparse.ArgumentParser())
    >>> args = parser.parse_args(["--quick", "--seed", "1"])
    >>> args.quick, args.seed, args.nuisance
    (True, 1, 'background')
    """
    parser.add_argument("--nuisance", choices=("background", "corner", "mark"),
                        default="background",
                        help="coloured background, a coloured corner patch, or a coloured "
                             "mark at a random place off the digit (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the data and of every model (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="max_epochs of every CIM and VIB (default: "
                             f"{DEMO_CIM_PARAMS['max_epochs']} for the CIMs, "
                             f"{DEMO_VIB_PARAMS['max_epochs']} for VIB)")
    parser.add_argument("--out", default="cim_masks.png",
                        help="where to save the mask figure (default: %(default)s)")
    parser.add_argument("--device", default="auto",
                        help='"auto" (CUDA when available), "cpu", "cuda" or "cuda:N" '
                             "(default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny run (small images, a subset, one epoch, L2 distance) "
                             "that only checks the demo runs")
    return parser


def build_parser():
    """The demo's own ``argparse`` parser (``python -m sklearn_cim demo`` uses it too).

    Examples
    --------
    >>> from sklearn_cim.demo import build_parser
    >>> build_parser().parse_args(["--nuisance", "corner"]).nuisance
    'corner'
    """
    return add_arguments(argparse.ArgumentParser(prog="sklearn-cim demo",
                                                 description=DESCRIPTION))


def lpips_fallback(cim_params):
    """Return ``(cim_params, message)``: ``pretrained=False`` when the trunk is not cached.

    Checks the torch hub cache for the ImageNet trunk of an LPIPS distance,
    without downloading anything. When the file is missing, returns a copy of
    the parameters with ``pretrained=False`` and a one-line message; otherwise
    the parameters unchanged and ``None``.

    Examples
    --------
    >>> from sklearn_cim.demo import lpips_fallback
    >>> lpips_fallback({"distance": "l2"})  # no trunk needed
    ({'distance': 'l2'}, None)
    """
    from ._distances import LPIPS_TRUNKS, _trunk_weight_file

    distance = cim_params.get("distance", "lpips-alex")
    if (not cim_params.get("pretrained", True) or not isinstance(distance, str)
            or distance not in LPIPS_TRUNKS):  # a callable need not be hashable
        return cim_params, None
    path = _trunk_weight_file(LPIPS_TRUNKS[distance])
    if os.path.exists(path):
        return cim_params, None
    message = (f"LPIPS: the pretrained ImageNet trunk is not in the torch hub cache ({path}); "
               "continuing with pretrained=False (a random trunk).")
    return dict(cim_params, pretrained=False), message


def _load_data(args):
    from .datasets import make_colored_digits

    size = _QUICK_DATA["image_size"] if args.quick else DEMO_IMAGE_SIZE
    data = make_colored_digits(nuisance=args.nuisance, image_size=size,
                               random_state=args.seed)
    if args.quick:
        for key in _TRAIN_KEYS:
            data[key] = data[key][:_QUICK_DATA["n_train"]]
        for key in _TEST_KEYS:
            data[key] = data[key][:_QUICK_DATA["n_test"]]
    return data


def _flat(X):
    return X.reshape(len(X), -1)


def _timed_fit(model, X, y, **fit_params):
    start = time.perf_counter()
    model.fit(X, y, **fit_params)
    return time.perf_counter() - start


def format_table(rows):
    """Markdown table of the demo's results (a list of dicts, one per model).

    Examples
    --------
    >>> from sklearn_cim.demo import format_table
    >>> print(format_table([{"model": "ERM", "id_acc": 0.95, "ood_acc": 0.5,
    ...                      "ood_worst_group_acc": 0.1, "fit_s": 1.23}]))
    | model | in-distribution acc | OOD acc | OOD worst-group acc | fit s |
    |---|---|---|---|---|
    | ERM | 0.950 | 0.500 | 0.100 | 1.2 |
    """
    lines = ["| model | in-distribution acc | OOD acc | OOD worst-group acc | fit s |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['id_acc']:.3f} | {r['ood_acc']:.3f} | "
                     f"{r['ood_worst_group_acc']:.3f} | {r['fit_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    """Run the demo; print the table; return the rows.

    Parameters
    ----------
    argv : list of str or None, default=None
        The demo's options (see ``python -m sklearn_cim demo --help``); None
        reads ``sys.argv``.

    Returns
    -------
    rows : list of dict
        One dict per model with keys ``model``, ``id_acc``, ``ood_acc``,
        ``ood_worst_group_acc`` and ``fit_s``.

    Examples
    --------
    >>> from sklearn_cim.demo import main
    >>> rows = main(["--quick", "--out", "masks.png"])  # doctest: +SKIP
    """
    args = build_parser().parse_args(argv)
    return run(args)


def run(args):
    """Run the demo for parsed options (see :func:`main`).

    numpy's BLAS runs single-threaded here: the logistic regressions are small
    (about 1,300 x 768), and on a 2-core machine whose cores are busy (torch's
    own thread pool, other processes) a multi-threaded OpenBLAS fit of them took
    about 25 s instead of 1 s. torch's thread count is left as it is.

    Examples
    --------
    >>> from sklearn_cim.demo import build_parser, run
    >>> rows = run(build_parser().parse_args(["--quick"]))  # doctest: +SKIP
    """
    with threadpool_limits(1, user_api="blas"):
        return _run(args)


def _run(args):
    from . import (
        CIMTransformer,
        PaperObjectiveWarning,
        TrunkWeightsUnavailableError,
        VIBClassifier,
    )
    from .datasets import agreement_groups
    from .metrics import worst_group_accuracy

    start = time.perf_counter()
    data = _load_data(args)
    image_shape = data.X_train.shape[1:]
    print(f"make_colored_digits(nuisance={args.nuisance!r}, p_train={data.p_train}, "
          f"shift={data.shift!r}, random_state={args.seed}): {len(data.y_train)} train / "
          f"{len(data.y_test)} test images of shape {image_shape}"
          + (" (--quick subset)" if args.quick else ""), flush=True)

    # verbose=1: one progress bar per fit (on stderr, with its rate and time
    # left), so that minutes of training do not pass in silence
    common = dict(device=args.device, random_state=args.seed, verbose=1)
    cim_params = dict(_QUICK_CIM_PARAMS if args.quick else DEMO_CIM_PARAMS, **common)
    vib_params = dict(_QUICK_VIB_PARAMS if args.quick else DEMO_VIB_PARAMS, **common)
    if args.epochs is not None:
        cim_params["max_epochs"] = vib_params["max_epochs"] = args.epochs
    cim_params, message = lpips_fallback(cim_params)
    if message:
        print(message, flush=True)

    X_train = _flat(data.X_train)
    y, y_test = data.y_train, data.y_test
    tests = {"id": _flat(data.X_test_id), "ood": _flat(data.X_test_ood)}
    # worst group over class x (nuisance agrees with the label or not)
    groups = agreement_groups(y_test, data.groups_test_ood)

    def fit_cim(name, params, **fit_params):
        print(f"{name} ...", flush=True)
        cim = CIMTransformer(image_shape=image_shape, **params)
        try:
            fit_s = _timed_fit(cim, X_train, y, **fit_params)
        except TrunkWeightsUnavailableError:
            # The cached file exists but could not be loaded (e.g. truncated).
            print("LPIPS: the pretrained ImageNet trunk could not be loaded; continuing "
                  "with pretrained=False (a random trunk).", flush=True)
            cim.set_params(pretrained=False)
            fit_s = _timed_fit(cim, X_train, y, **fit_params)
        print(f"  fitted {name.split(' (')[0]} ({fit_s:.1f} s; "
              f"{time.perf_counter() - start:.0f} s since the start)", flush=True)
        return cim, fit_s

    # the training images' nuisance (colour index), the groups a user would know
    nuisance = data.nuisance_train
    print(f"fitting three CIMs of {cim_params['max_epochs']} epochs (true, inferred and no "
          "groups; the longest part, minutes on a CPU; a progress bar each) ...", flush=True)
    group_cim, group_s = fit_cim("group CIM (groups: the training nuisance)", cim_params,
                                 groups=nuisance)
    inferred_cim, inferred_s = fit_cim("inferred-group CIM (infer_groups=True: a bias "
                                       "proxy first, then the CIM)",
                                       dict(cim_params, infer_groups=True))
    with warnings.catch_warnings():  # the paper's objective, on purpose
        warnings.filterwarnings("ignore", category=PaperObjectiveWarning)
        cim, cim_s = fit_cim("CIM (paper objective: no groups)", cim_params)
    print("fitting the models after them, VIB and the baselines ...", flush=True)

    def vib():
        return VIBClassifier(image_shape=image_shape, **vib_params)

    def then_lr(fitted):
        return Pipeline([("cim", FrozenEstimator(fitted)),
                         ("clf", LogisticRegression(max_iter=1000))])

    models = [
        (MODEL_NAMES[0], LogisticRegression(max_iter=1000), 0.0),
        (MODEL_NAMES[1], then_lr(group_cim), group_s),
        (MODEL_NAMES[2], then_lr(inferred_cim), inferred_s),
        (MODEL_NAMES[3], then_lr(cim), cim_s),
        (MODEL_NAMES[4], vib(), 0.0),
        (MODEL_NAMES[5], Pipeline([("cim", FrozenEstimator(group_cim)), ("clf", vib())]),
         group_s),
    ]
    rows = []
    for name, model, shared_s in models:
        fit_s = shared_s + _timed_fit(model, X_train, y)
        pred = {split: model.predict(X) for split, X in tests.items()}
        rows.append(dict(
            model=name, fit_s=fit_s,
            id_acc=float(np.mean(pred["id"] == y_test)),
            ood_acc=float(np.mean(pred["ood"] == y_test)),
            ood_worst_group_acc=worst_group_accuracy(y_test, pred["ood"], groups),
        ))
        print(f"  fitted {name} ({fit_s:.1f} s)", flush=True)

    # The oracle sees the same digits without the nuisance; its worst-group
    # accuracy uses the OOD split's groups (the same images, clean).
    oracle = LogisticRegression(max_iter=1000)
    fit_s = _timed_fit(oracle, _flat(data.X_train_clean), y)
    pred = oracle.predict(_flat(data.X_test_clean))
    acc = float(np.mean(pred == y_test))
    rows.append(dict(model=MODEL_NAMES[6], fit_s=fit_s, id_acc=acc, ood_acc=acc,
                     ood_worst_group_acc=worst_group_accuracy(y_test, pred, groups)))

    print()
    print(format_table(rows))
    print(f"\nCIM: {cim_params}. group CIM: fit with groups=the training nuisance, "
          f"fitted once ({group_s:.1f} s) and shared by both of its rows; inferred-group "
          "CIM: infer_groups=True (the proxy agrees with the true nuisance on "
          f"{np.mean(inferred_cim.groups_ == nuisance):.1%} of the training images); "
          "CIM (paper objective): no groups.")
    print(f"VIB: {vib_params}")
    obj, nuis = nuisance_regions(data.X_test_clean, args.nuisance, data.X_test_ood)
    for name, fitted in (("group CIM", group_cim), ("CIM (paper objective)", cim)):
        m = fitted.masks(data.X_test_ood)[:, 0]
        print(f"mean mask of the {name} on OOD test images: digit pixels {m[obj].mean():.2f}, "
              f"nuisance pixels {m[nuis].mean():.2f}")
    for name, fitted in (("group CIM", group_cim), ("inferred-group CIM", inferred_cim)):
        print(f"removal check of the {name}: "
              f"{describe_removal(fitted)}")
    _save_masks(group_cim, data.X_test_ood[:8], args.out)
    print(f"demo wall time: {time.perf_counter() - start:.0f} s")
    return rows


def describe_removal(cim):
    """One line on a group-aware CIM's ``removal_check_``.

    Examples
    --------
    >>> from sklearn.utils import Bunch
    >>> from sklearn_cim.demo import describe_removal
    >>> check = Bunch(retained=0.04, retained_local=0.3, balanced_accuracy=0.91,
    ...               balanced_accuracy_x=0.62, balanced_accuracy_cnn=0.93,
    ...               balanced_accuracy_cnn_x=0.41, n_images=251)
    >>> print(describe_removal(Bunch(removal_check_=check)))
    on 251 held-out training images: psi(x) keeps 4% of the nuisance a linear model
    reads in x (a local probe: 30%); estimated accuracy once the nuisance no longer
    agrees with the label: a linear model 0.910 on psi(x), 0.620 on x; a CNN 0.930, 0.410
    >>> check.retained = float("nan")
    >>> print(describe_removal(Bunch(removal_check_=check)).split(" (")[0])
    on 251 held-out training images: a linear model does not read the nuisance in x
    """
    check = cim.removal_check_
    kept = ("a linear model does not read the nuisance in x" if np.isnan(check.retained)
            else f"psi(x) keeps {check.retained:.0%} of the nuisance a linear model reads in x")
    local = ("x shows it to no probe" if np.isnan(check.retained_local)
             else f"a local probe: {check.retained_local:.0%}")
    return (f"on {check.n_images} held-out training images: {kept} ({local}); estimated "
            "accuracy once the nuisance no longer agrees with the label: a linear model "
            f"{check.balanced_accuracy:.3f} on psi(x), {check.balanced_accuracy_x:.3f} on x; "
            f"a CNN {check.balanced_accuracy_cnn:.3f}, {check.balanced_accuracy_cnn_x:.3f}")


def nuisance_regions(X_clean, nuisance, X=None):
    """Boolean ``(n, H, W)`` maps of digit pixels and nuisance pixels (background,
    the corner patch, or the mark, which needs the images ``X`` with it) of
    coloured-digit images, from their clean versions.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_cim.demo import nuisance_regions
    >>> X_clean = np.full((1, 3, 10, 10), 0.5)  # the clean mid-grey background
    >>> X_clean[0, :, 4:6, 4:6] = 1.0  # a white digit stroke
    >>> digit, nuisance = nuisance_regions(X_clean, "background")
    >>> int(digit.sum()), int(nuisance.sum())
    (4, 96)
    """
    if nuisance == "mark":
        return X_clean[:, 0] > 0.5, np.abs(np.asarray(X) - X_clean).max(1) > 0
    if nuisance == "corner":
        grey = X_clean[:, 0]
        nuis = np.zeros(grey.shape, dtype=bool)
        side = max(1, grey.shape[-1] // 5)
        nuis[:, :side, :side] = True
    else:  # clean background is mid-grey: clean = g + (1 - g) / 2
        grey = 2 * X_clean[:, 0] - 1
        nuis = grey < 0.05
    return grey > 0.5, nuis


def _have_matplotlib():
    return importlib.util.find_spec("matplotlib") is not None


def _save_masks(cim, X, out):
    if not _have_matplotlib():
        print('matplotlib is not installed: no mask figure (pip install "sklearn-cim[plot]").')
        return
    import matplotlib.pyplot as plt

    from .plotting import plot_masks

    fig = plot_masks(cim, X, n=len(X))
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    print(f"mask figure: {out}")
