"""Measured results on the MNIST nuisance splits, and the ablation.

For each nuisance (background colour, corner patch) and seed, on
:func:`sklearn_cim.datasets.load_colored_mnist` (or ``make_colored_digits``
without ``--mnist``), fits

* ERM: ``LogisticRegression`` on pixels;
* CIM -> LR: ``Pipeline(CIMTransformer, LogisticRegression)``;
* VIB: ``VIBClassifier`` on pixels;
* CIM -> VIB: the same fitted CIM, then ``VIBClassifier``;
* CIM+VIB joint: ``CIMTransformer(head="vib")`` (mask trained with a VIB
  head), then ``VIBClassifier``;
* oracle: ``LogisticRegression`` trained and tested without the nuisance;

and prints JSON lines (in-distribution, OOD and worst-group OOD accuracy, groups
being class x whether the nuisance agrees with the label) and a
mean +- std table with the share of the ERM-to-oracle OOD gap that each model
closes. ``--ablation`` fits CIM -> LR variants (mining, pair_transform,
distance, triplet_weight) on one seed.

    python benchmarks/nuisance_results.py --mnist ../shared/data/mnist --seeds 0 1 2
    python benchmarks/nuisance_results.py --mnist ../shared/data/mnist --ablation --seeds 0
"""

import argparse
import json
import time

import numpy as np
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError, VIBClassifier
from sklearn_cim.datasets import agreement_groups, load_colored_mnist, make_colored_digits
from sklearn_cim.metrics import worst_group_accuracy

ABLATION = {
    "base (random mining)": {},
    "mining=hard": {"mining": "hard"},
    "pair_transform=True": {"pair_transform": True},
    "distance=ssim": {"distance": "ssim"},
    "distance=l2": {"distance": "l2"},
    "triplet_weight=0": {"triplet_weight": 0.0},
}


def flat(a):
    return a.reshape(len(a), -1)


def scores(predict, X_id, X_ood, data):
    pred_ood = predict(X_ood)
    return dict(id=float(np.mean(predict(X_id) == data.y_test)),
                ood=float(np.mean(pred_ood == data.y_test)),
                worst_group=float(worst_group_accuracy(data.y_test, pred_ood,
                                                       agreement_groups(data.y_test,
                                                                        data.groups_test_ood))))


def lr():
    return LogisticRegression(max_iter=1000)


def run(data, cim_params, vib_params, models, emit, **tags):
    side = data.X_train.shape[-1]
    X_tr, X_id, X_ood = (flat(data[k]) for k in ("X_train", "X_test_id", "X_test_ood"))
    vib = VIBClassifier(image_shape=(3, side, side), **vib_params)

    def record(name, seconds, predict, Z_id, Z_ood):
        emit(dict(tags, model=name, fit_s=round(seconds, 1), **scores(predict, Z_id, Z_ood, data)))

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    if "ERM" in models:
        m, s = timed(lambda: lr().fit(X_tr, data.y_train))
        record("ERM", s, m.predict, X_id, X_ood)
    if "oracle" in models:
        m, s = timed(lambda: lr().fit(flat(data.X_train_clean), data.y_train))
        clean = flat(data.X_test_clean)
        record("oracle", s, m.predict, clean, clean)
    if "VIB" in models:
        m, s = timed(lambda: clone(vib).fit(X_tr, data.y_train))
        record("VIB", s, m.predict, X_id, X_ood)
    for head, names in (("cnn", ("CIM -> LR", "CIM -> VIB")), ("vib", ("CIM+VIB joint",))):
        wanted = [n for n in names if n in models]
        if not wanted:
            continue
        cim, s_cim = timed(lambda: CIMTransformer(**{**cim_params, "head": head}).fit(
            X_tr, data.y_train))
        Z_tr, Z_id, Z_ood = (cim.transform(a) for a in (X_tr, X_id, X_ood))
        for name in wanted:
            down = lr() if name == "CIM -> LR" else clone(vib)
            m, s = timed(lambda: down.fit(Z_tr, data.y_train))
            record(name, s_cim + s, m.predict, Z_id, Z_ood)


def summarise(lines):
    """Markdown table: mean +- std per (nuisance, model), and the OOD gap closed."""
    out = []
    for nuisance in dict.fromkeys(r["nuisance"] for r in lines):
        rows = [r for r in lines if r["nuisance"] == nuisance]
        by_model = {}
        for r in rows:
            by_model.setdefault(r["model"], []).append(r)
        erm = np.mean([r["ood"] for r in by_model.get("ERM", [])] or [np.nan])
        oracle = np.mean([r["ood"] for r in by_model.get("oracle", [])] or [np.nan])
        out.append(f"\n{nuisance} (seeds: {len(by_model.get('ERM', []))})\n")
        out.append("| model | in-distribution | OOD | worst-group OOD | OOD gap closed | fit s |")
        out.append("|---|---|---|---|---|---|")
        for model, rs in by_model.items():
            cells = []
            for key in ("id", "ood", "worst_group"):
                v = np.array([r[key] for r in rs])
                cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
            gap = (np.mean([r["ood"] for r in rs]) - erm) / (oracle - erm)
            fit_s = np.mean([r["fit_s"] for r in rs])
            out.append(f"| {model} | {' | '.join(cells)} | {gap:.0%} | {fit_s:.0f} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", help="directory with MNIST idx files (default: load_digits)")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--p-train", type=float, default=0.95)
    parser.add_argument("--nuisances", nargs="+", default=["background", "corner"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5, help="CIM epochs")
    parser.add_argument("--vib-epochs", type=int, default=15)
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--cim", type=json.loads, default={},
                        help='extra CIMTransformer parameters as JSON, e.g. \'{"mining": "hard"}\'')
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (e.g. 1 per process when running two)")
    parser.add_argument("--out", help="append the JSON lines to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Small logistic regressions: multi-threaded BLAS only fights torch for the cores.
    threadpool_limits(1, user_api="blas")

    pretrained = True
    try:
        CIMTransformer(pretrained=True, max_epochs=1, device="cpu").fit(
            np.random.RandomState(0).rand(4, 3, 32, 32), [0, 0, 1, 1])
    except TrunkWeightsUnavailableError:
        print("LPIPS: pretrained trunk unavailable offline; using pretrained=False.")
        pretrained = False

    lines = []

    def emit(line):
        lines.append(line)
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")

    for nuisance in args.nuisances:
        for seed in args.seeds:
            common = dict(nuisance=nuisance, p_train=args.p_train, random_state=seed)
            if args.mnist:
                data = load_colored_mnist(args.mnist, n_train=args.n_train, **common)
            else:
                data = make_colored_digits(**common)
            cim_params = dict(pretrained=pretrained, max_epochs=args.epochs,
                              device=args.device, random_state=seed, **args.cim)
            vib_params = dict(max_epochs=args.vib_epochs, device=args.device,
                              random_state=seed)
            tags = dict(nuisance=nuisance, seed=seed, n_train=len(data.y_train),
                        p_train=args.p_train, cim=args.cim, pretrained=pretrained,
                        dataset="mnist" if args.mnist else "digits")
            if args.ablation:
                run(data, cim_params, vib_params, ("ERM", "oracle"), emit, **tags)
                for name, extra in ABLATION.items():
                    run(data, {**cim_params, **extra}, vib_params, ("CIM -> LR",),
                        lambda line, name=name: emit({**line, "model": f"CIM -> LR, {name}"}),
                        **tags)
            else:
                run(data, cim_params, vib_params,
                    ("ERM", "CIM -> LR", "VIB", "CIM -> VIB", "CIM+VIB joint", "oracle"),
                    emit, **tags)
    print(summarise(lines))


if __name__ == "__main__":
    main()
