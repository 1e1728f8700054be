"""Measured results on the MNIST nuisance splits, and the ablation.

For each nuisance (background colour, corner patch) and seed, on
:func:`sklearn_cim.datasets.load_colored_mnist` (or ``make_colored_digits``
without ``--mnist``), fits

* ERM: ``LogisticRegression`` on pixels;
* group-balanced LR: ``LogisticRegression`` with ``sample_weight`` balancing the
  (class, nuisance) cells (needs the true groups);
* JTT (LR): ``LogisticRegression`` with the training errors of a strongly
  regularised first one (``C=1e-3``) upweighted ``JTT_UPWEIGHT`` times (Liu et
  al. 2021, with a linear first model; no groups needed);
* CIM -> LR: ``Pipeline(CIMTransformer, LogisticRegression)``, the paper's
  objective (no groups);
* group CIM -> LR: ``CIMTransformer`` fitted with the true nuisance as groups;
* inferred-group CIM -> LR: ``CIMTransformer(infer_groups=True)``;
* group CIM -> VIB: the group CIM, then ``VIBClassifier``;
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
    python benchmarks/nuisance_results.py --seeds 0 1 2      # make_colored_digits
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


#: JTT's upweighting of the first model's training errors.
JTT_UPWEIGHT = 20


def balanced_sample_weight(y, groups):
    cells = np.unique(np.stack([y, groups], 1), axis=0, return_inverse=True)[1].reshape(-1)
    counts = np.bincount(cells)
    return len(y) / (len(counts) * counts[cells])


def jtt(X, y):
    first = LogisticRegression(C=1e-3, max_iter=200).fit(X, y)
    weight = np.where(first.predict(X) == y, 1.0, JTT_UPWEIGHT)
    return lr().fit(X, y, sample_weight=weight)


MODELS = ("ERM", "group-balanced LR", "JTT (LR)", "CIM -> LR", "group CIM -> LR",
          "inferred-group CIM -> LR", "VIB", "CIM -> VIB", "group CIM -> VIB",
          "CIM+VIB joint", "oracle")


def run(data, cim_params, vib_params, models, emit, group_params=None, **tags):
    group_params = group_params or {}
    side = data.X_train.shape[-1]
    X_tr, X_id, X_ood = (flat(data[k]) for k in ("X_train", "X_test_id", "X_test_ood"))
    vib = VIBClassifier(image_shape=(3, side, side), **vib_params)

    def record(name, seconds, predict, Z_id, Z_ood):
        emit(dict(tags, model=name, fit_s=round(seconds, 1), **scores(predict, Z_id, Z_ood, data)))

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    nuisance_train = data.groups_train % 10  # the colour index
    if "ERM" in models:
        m, s = timed(lambda: lr().fit(X_tr, data.y_train))
        record("ERM", s, m.predict, X_id, X_ood)
    if "group-balanced LR" in models:
        w = balanced_sample_weight(data.y_train, nuisance_train)
        m, s = timed(lambda: lr().fit(X_tr, data.y_train, sample_weight=w))
        record("group-balanced LR", s, m.predict, X_id, X_ood)
    if "JTT (LR)" in models:
        m, s = timed(lambda: jtt(X_tr, data.y_train))
        record("JTT (LR)", s, m.predict, X_id, X_ood)
    if "oracle" in models:
        m, s = timed(lambda: lr().fit(flat(data.X_train_clean), data.y_train))
        clean = flat(data.X_test_clean)
        record("oracle", s, m.predict, clean, clean)
    if "VIB" in models:
        m, s = timed(lambda: clone(vib).fit(X_tr, data.y_train))
        record("VIB", s, m.predict, X_id, X_ood)
    variants = (
        (("CIM -> LR", "CIM -> VIB"), dict(head="cnn"), None),
        (("group CIM -> LR", "group CIM -> VIB"), dict(head="cnn", **group_params),
         nuisance_train),
        (("inferred-group CIM -> LR",), dict(head="cnn", infer_groups=True, **group_params),
         None),
        (("CIM+VIB joint",), dict(head="vib"), None),
    )
    for names, extra, groups in variants:
        wanted = [n for n in names if n in models]
        if not wanted:
            continue
        cim, s_cim = timed(lambda: CIMTransformer(
            image_shape=(3, side, side), **{**cim_params, **extra}).fit(
            X_tr, data.y_train, groups=groups))
        Z_tr, Z_id, Z_ood = (cim.transform(a) for a in (X_tr, X_id, X_ood))
        if cim.groups_ is not None:
            emit(dict(tags, model=names[0], proxy_agreement=float(
                np.mean(cim.groups_ == nuisance_train))))
        for name in wanted:
            down = lr() if name.endswith("LR") else clone(vib)
            m, s = timed(lambda: down.fit(Z_tr, data.y_train))
            record(name, s_cim + s, m.predict, Z_id, Z_ood)


def summarise(lines):
    """Markdown table: mean +- std per (nuisance, model), and the OOD gap closed."""
    out = []
    for dataset, nuisance in dict.fromkeys((r.get("dataset"), r["nuisance"]) for r in lines):
        rows = [r for r in lines if r["nuisance"] == nuisance and "ood" in r
                and r.get("dataset") == dataset]
        proxy = [r["proxy_agreement"] for r in lines if "proxy_agreement" in r
                 and r["nuisance"] == nuisance and r.get("dataset") == dataset]
        by_model = {}
        for r in rows:
            by_model.setdefault(r["model"], []).append(r)
        erm = np.mean([r["ood"] for r in by_model.get("ERM", [])] or [np.nan])
        oracle = np.mean([r["ood"] for r in by_model.get("oracle", [])] or [np.nan])
        out.append(f"\n{dataset}, {nuisance} (seeds: {len(by_model.get('ERM', []))})\n")
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
        if proxy:
            out.append(f"\ninferred groups agree with the true nuisance on "
                       f"{np.mean(proxy):.1%} of the training images (mean over seeds)")
    return "\n".join(out)


def summarise_wide(lines, key="ood"):
    """One Markdown table, a row per model and a column per split: mean +- std
    of ``key`` over the seeds and, for OOD, the share of the ERM -> oracle gap."""
    splits = list(dict.fromkeys((r.get("dataset"), r["nuisance"]) for r in lines if key in r))
    models = list(dict.fromkeys(r["model"] for r in lines if key in r))
    out = ["| model | " + " | ".join(f"{d} {n}" for d, n in splits) + " |",
           "|---|" + "---|" * len(splits)]
    for model in models:
        cells = []
        for dataset, nuisance in splits:
            def values(name):
                return np.array([r[key] for r in lines if key in r and r["model"] == name
                                 and r.get("dataset") == dataset and r["nuisance"] == nuisance])
            v = values(model)
            if not len(v):
                cells.append("–")
                continue
            cell = f"{v.mean():.3f} ± {v.std():.3f}"
            if key == "ood":
                erm, oracle = values("ERM").mean(), values("oracle").mean()
                cell += f" ({(v.mean() - erm) / (oracle - erm):.0%})"
            cells.append(cell)
        out.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", help="directory with MNIST idx files (default: load_digits)")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--p-train", type=float, default=0.95)
    parser.add_argument("--nuisances", nargs="+", default=["background", "corner"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5, help="CIM epochs (paper objective)")
    parser.add_argument("--group-epochs", type=int, default=None,
                        help="CIM epochs of the group-aware rows (default: --epochs)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--group-cim", type=json.loads, default={},
                        help="extra CIMTransformer parameters of the group-aware rows, as JSON")
    parser.add_argument("--vib-epochs", type=int, default=15)
    parser.add_argument("--ablation", action="store_true")
    parser.add_argument("--cim", type=json.loads, default={},
                        help='extra CIMTransformer parameters as JSON, e.g. \'{"mining": "hard"}\'')
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (e.g. 1 per process when running two)")
    parser.add_argument("--out", help="append the JSON lines to this file")
    parser.add_argument("--summarise", nargs="+", metavar="JSONL",
                        help="only print the table of these JSON-lines files (e.g. from "
                             "several processes, one per split and seed)")
    parser.add_argument("--wide", choices=["ood", "worst_group", "id"],
                        help="with --summarise: one table of this metric, a column per split")
    args = parser.parse_args(argv)
    if args.summarise:
        lines = []
        for path in args.summarise:
            with open(path) as f:
                lines += [json.loads(line) for line in f if line.strip()]
        print(summarise_wide(lines, args.wide) if args.wide else summarise(lines))
        return
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
                # --group-cim may set max_epochs too: it wins
                group_params = {"max_epochs": args.group_epochs or args.epochs,
                                **args.group_cim}
                run(data, cim_params, vib_params, args.models, emit,
                    group_params=group_params, **tags)
    print(summarise(lines))


if __name__ == "__main__":
    main()
