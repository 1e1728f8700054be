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
* ERM CNN, group-balanced CNN, GroupDRO CNN: the CIM head's architecture
  (``ConvClassifier``) trained on raw pixels with plain, cell-balanced, or
  GroupDRO cross-entropy (Sagawa et al. 2020: online exponential weights over
  the (class, nuisance) cells, step ``DRO_STEP``); what a user would do instead;
* group CIM -> CNN: the same CNN (plain cross-entropy) on psi(X);
* group CIM -> LR (batch 32): the group CIM at ``batch_size=32`` (four times
  the optimizer steps; the recipe that collapsed before);
* oracle: ``LogisticRegression`` trained and tested without the nuisance;
  oracle CNN: the ERM CNN, trained and tested without it (the CNN rows' gap
  is measured from ERM CNN to oracle CNN);

and prints JSON lines (in-distribution, OOD and worst-group OOD accuracy, groups
being class x whether the nuisance agrees with the label; for the CIM rows also
the removal check ``removal_check_`` and the mean mask on object and nuisance
pixels of the OOD images) and a
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
import warnings

import numpy as np
import torch
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from sklearn_cim import CIMTransformer, TrunkWeightsUnavailableError, VIBClassifier
from sklearn_cim._networks import ConvClassifier
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


#: The CNN baselines: epochs, batch size, Adam lr, and GroupDRO's step size.
CNN_EPOCHS = 30
CNN_BATCH = 128
CNN_LR = 1e-3
DRO_STEP = 0.01


def cells_of(y, groups):
    return np.unique(np.stack([y, groups], 1), axis=0, return_inverse=True)[1].reshape(-1)


def train_cnn(X, y, seed, *, cells=None, weighting="none", epochs=CNN_EPOCHS):
    """The CIM head's architecture on images ``(n, C, H, W)`` in [0, 1]:
    ``weighting`` "none" (ERM), "balanced" (every cell of ``cells`` weighs the
    same) or "dro" (GroupDRO over ``cells``). Returns a predict function."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    classes = np.unique(y)
    net = ConvClassifier(X.shape[1], len(classes), 32)
    opt = torch.optim.Adam(net.parameters(), CNN_LR)
    Xt = torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))
    yt = torch.from_numpy(np.searchsorted(classes, y))
    if weighting != "none":
        ct = torch.from_numpy(cells)
        n_cells = int(ct.max()) + 1
        counts = torch.bincount(ct, minlength=n_cells).float()
        weight = (len(ct) / (n_cells * counts))[ct]
        q = torch.full((n_cells,), 1.0 / n_cells)
    for _ in range(epochs):
        order = torch.randperm(len(Xt), generator=gen)
        for i in range(0, len(Xt), CNN_BATCH):
            b = order[i:i + CNN_BATCH]
            per = torch.nn.functional.cross_entropy(net(Xt[b]), yt[b], reduction="none")
            if weighting == "balanced":
                loss = (per * weight[b]).mean()
            elif weighting == "dro":
                cb = ct[b]
                sums = torch.zeros(n_cells).index_add(0, cb, per)
                n_b = torch.bincount(cb, minlength=n_cells).float()
                present = n_b > 0
                cell_loss = sums / n_b.clamp_min(1)
                with torch.no_grad():
                    q[present] *= torch.exp(DRO_STEP * cell_loss[present])
                    q /= q.sum()
                loss = (q[present] * cell_loss[present]).sum() / q[present].sum()
            else:
                loss = per.mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()

    def predict(Z):
        with torch.no_grad():
            out = [net(torch.from_numpy(np.ascontiguousarray(Z[i:i + 512], dtype=np.float32)))
                   for i in range(0, len(Z), 512)]
        return classes[torch.cat(out).argmax(1).numpy()]
    return predict


def nuisance_pixels(data, X, X_clean):
    """Boolean ``(n, H, W)`` maps of object and nuisance pixels of images X."""
    if data.nuisance == "background":  # the clean background is mid-grey
        grey = 2 * X_clean[:, 0] - 1
        return grey > 0.5, grey < 0.05
    return X_clean[:, 0] > 0.5, np.abs(X - X_clean).max(1) > 0


MODELS = ("ERM", "group-balanced LR", "JTT (LR)", "ERM CNN", "group-balanced CNN",
          "GroupDRO CNN", "CIM -> LR", "group CIM -> LR", "group CIM -> CNN",
          "group CIM -> LR (batch 32)", "inferred-group CIM -> LR",
          "inferred-group CIM -> CNN", "VIB", "CIM -> VIB", "group CIM -> VIB", "CIM+VIB joint",
          "oracle", "oracle CNN")


def object_kept(masks, obj, share=0.5):
    """The share of test images of which the mask keeps at least ``share`` of the
    object's pixels (``masks`` (n, H, W), ``obj`` (n, H, W) bool)."""
    kept = (masks * obj).reshape(len(obj), -1).sum(1) / np.maximum(
        obj.reshape(len(obj), -1).sum(1), 1)
    return float(np.mean(kept >= share))


def check_facts(cim, caught, cim_seconds):
    """What a CIM fit's removal check said: its figures (``removal_check``), the
    RemovalWarnings it gave (``removal_warnings``: the start of each message) and
    the fit's time with and without the check (``cim_fit_s``)."""
    facts = dict(cim_fit_s=round(cim_seconds, 1))
    if cim.removal_check_ is not None:
        facts["removal_check"] = {k: (float(v) if isinstance(v, (int, float, np.number))
                                      else v) for k, v in cim.removal_check_.items()}
    facts["removal_warnings"] = [str(w.message)[:90] for w in caught
                                 if w.category.__name__ == "RemovalWarning"]
    return facts


def run(data, cim_params, vib_params, models, emit, group_params=None, **tags):
    group_params = group_params or {}
    seed = tags.get("seed", 0)
    side = data.X_train.shape[-1]
    X_tr, X_id, X_ood = (flat(data[k]) for k in ("X_train", "X_test_id", "X_test_ood"))
    vib = VIBClassifier(image_shape=(3, side, side), **vib_params)

    def record(name, seconds, predict, Z_id, Z_ood, **facts):
        emit(dict(tags, model=name, fit_s=round(seconds, 1), **scores(predict, Z_id, Z_ood, data),
                  **facts))

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
    images = (-1, 3, side, side)
    cells = cells_of(data.y_train, nuisance_train)
    for name, weighting in (("ERM CNN", "none"), ("group-balanced CNN", "balanced"),
                            ("GroupDRO CNN", "dro")):
        if name in models:
            predict, s = timed(lambda: train_cnn(data.X_train, data.y_train, seed,
                                                 cells=cells, weighting=weighting))
            record(name, s, lambda Z: predict(Z.reshape(images)), X_id, X_ood)
    if "oracle CNN" in models:
        predict, s = timed(lambda: train_cnn(data.X_train_clean, data.y_train, seed))
        clean = flat(data.X_test_clean)
        record("oracle CNN", s, lambda Z: predict(Z.reshape(images)), clean, clean)
    variants = (
        (("CIM -> LR", "CIM -> VIB"), dict(head="cnn"), None),
        (("group CIM -> LR", "group CIM -> VIB", "group CIM -> CNN"),
         dict(head="cnn", **group_params), nuisance_train),
        (("group CIM -> LR (batch 32)",), dict(head="cnn", **{**group_params, "batch_size": 32}),
         nuisance_train),
        (("inferred-group CIM -> LR", "inferred-group CIM -> CNN"),
         dict(head="cnn", infer_groups=True, **group_params), None),
        (("CIM+VIB joint",), dict(head="vib"), None),
    )
    obj, nuis = nuisance_pixels(data, data.X_test_ood, data.X_test_clean)
    for names, extra, groups in variants:
        wanted = [n for n in names if n in models]
        if not wanted:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cim, s_cim = timed(lambda: CIMTransformer(
                image_shape=(3, side, side), **{**cim_params, **extra}).fit(
                X_tr, data.y_train, groups=groups))
        Z_tr, Z_id, Z_ood = (cim.transform(a) for a in (X_tr, X_id, X_ood))
        m = cim.masks(X_ood).reshape(len(X_ood), -1, side, side)[:, 0]
        facts = dict(mask_object=float(m[obj].mean()), mask_nuisance=float(m[nuis].mean()),
                     object_kept=object_kept(m, obj),
                     warnings=sorted({type(w.message).__name__ for w in caught
                                      if w.category.__module__.startswith("sklearn")}))
        facts.update(check_facts(cim, caught, s_cim))
        if cim.groups_ is not None:
            facts["proxy_agreement"] = float(np.mean(cim.groups_ == nuisance_train))
            conflicting = nuisance_train != data.y_train
            facts["proxy_agreement_conflicting"] = float(
                np.mean(cim.groups_[conflicting] == nuisance_train[conflicting]))
        if cim.group_aware_:
            facts["fallback"] = bool(cim.fallback_)
        for name in wanted:
            if name.endswith("CNN"):
                predict, s = timed(lambda: train_cnn(Z_tr.reshape(images), data.y_train, seed))
                record(name, s_cim + s, lambda Z: predict(Z.reshape(images)), Z_id, Z_ood,
                       **facts)
                continue
            down = lr() if "LR" in name else clone(vib)
            m, s = timed(lambda: down.fit(Z_tr, data.y_train))
            record(name, s_cim + s, m.predict, Z_id, Z_ood, **facts)


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


def baselines(model):
    """The models whose OOD accuracies are 0% and 100% of ``model``'s gap:
    the CNN rows' own ERM and oracle, else LogisticRegression's."""
    if model.endswith("CNN"):
        return "ERM CNN", "oracle CNN"
    return "ERM", "oracle"


def summarise_wide(lines, key="ood"):
    """One Markdown table, a row per model and a column per split: mean +- std
    of ``key`` over the seeds and, for OOD, the share of the ERM -> oracle gap
    (:func:`baselines`)."""
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
                low, high = baselines(model)
                erm, oracle = values(low).mean(), values(high).mean()
                cell += f" ({(v.mean() - erm) / (oracle - erm):.0%})"
            cells.append(cell)
        out.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def rank_agreement(lines):
    """Spearman rank correlation, over the CIM fits that carry a removal check,
    between the OOD accuracy of a LogisticRegression on psi(x) and each of the
    check's two readings: ``-retained``
    (less nuisance kept, higher) and ``balanced_accuracy``; over the whole grid
    and within each split. ``retained`` leaves out the runs where it is NaN (a
    nuisance a linear model cannot read in x)."""
    from scipy.stats import spearmanr

    # one row per CIM fit: its LR row (the CNN row shares the fit)
    runs = [r for r in lines if "removal_check" in r and "CNN" not in r["model"]]
    out = ["| runs | n | -retained vs OOD | balanced_accuracy vs OOD |", "|---|---|---|---|"]
    splits = [("all splits", None)] + [
        (f"{d} {n}", (d, n)) for d, n in dict.fromkeys((r["dataset"], r["nuisance"])
                                                       for r in runs)]
    for name, key in splits:
        rs = [r for r in runs if key is None or (r["dataset"], r["nuisance"]) == key]
        ood = np.array([r["ood"] for r in rs])
        retained = np.array([r["removal_check"]["retained"] for r in rs])
        balanced = np.array([r["removal_check"]["balanced_accuracy"] for r in rs])
        ok = np.isfinite(retained)
        cells = []
        for x, y in ((-retained[ok], ood[ok]), (balanced, ood)):
            cells.append(f"{spearmanr(x, y)[0]:.2f} ({len(x)})" if len(x) > 2
                         and np.ptp(x) > 0 else "–")
        out.append(f"| {name} | {len(rs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def seed_report(lines):
    """Per split, for each CIM row: the share of the gap closed by each seed
    (its own ERM and oracle, see :func:`baselines`), the seeds below their ERM,
    the mean mask on nuisance and object pixels, the warnings the fits raised,
    fallbacks, and the inferred proxy's agreement with the nuisance."""
    out = ["| split | model | gap closed per seed | below ERM | mask nuisance / object | "
           "warnings | proxy agreement (all / conflicting) |", "|---|---|---|---|---|---|---|"]
    splits = dict.fromkeys((r["dataset"], r["nuisance"]) for r in lines if "ood" in r)
    for dataset, nuisance in splits:
        rows = [r for r in lines if "ood" in r and (r["dataset"], r["nuisance"]) == (dataset,
                                                                                   nuisance)]
        by = {(r["model"], r["seed"]): r for r in rows}
        for model in dict.fromkeys(r["model"] for r in rows if "CIM" in r["model"]):
            low, high = baselines(model)
            gaps, below = [], []
            fits = [r for r in rows if r["model"] == model]
            for r in sorted(fits, key=lambda r: r["seed"]):
                erm, oracle = by[(low, r["seed"])]["ood"], by[(high, r["seed"])]["ood"]
                gaps.append(f"{(r['ood'] - erm) / (oracle - erm):.0%}")
                if r["ood"] < erm:
                    below.append(str(r["seed"]))
            mask = (f"{np.mean([r['mask_nuisance'] for r in fits]):.3f} / "
                    f"{np.mean([r['mask_object'] for r in fits]):.3f}")
            warned = sorted({w for r in fits for w in r.get("warnings", [])})
            n_warned = sum(bool(r.get("warnings")) for r in fits)
            warn = f"{n_warned} ({', '.join(warned)})" if warned else "0"
            fallbacks = sum(bool(r.get("fallback")) for r in fits)
            if fallbacks:
                warn += f"; {fallbacks} fallback"
            proxy = "–"
            if any("proxy_agreement" in r for r in fits):
                proxy = (f"{np.mean([r['proxy_agreement'] for r in fits]):.3f} / "
                         f"{np.mean([r['proxy_agreement_conflicting'] for r in fits]):.3f}")
            out.append(f"| {dataset} {nuisance} | {model} | {' '.join(gaps)} | "
                       f"{', '.join(below) or 'none'} | {mask} | {warn} | {proxy} |")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", help="directory with MNIST idx files (default: load_digits)")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--image-size", type=int, default=32,
                        help="side of make_colored_digits' images (MNIST stays 28)")
    parser.add_argument("--p-train", type=float, default=0.95)
    parser.add_argument("--nuisances", nargs="+", default=["background", "corner"],
                        choices=["background", "corner", "mark"])
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
    parser.add_argument("--no-holdout", action="store_true",
                        help="group-aware fits train the mask on every image, as 0.1 did "
                             "(no image held back: no removal check); to measure what the "
                             "check's hold-out costs")
    parser.add_argument("--no-gate", action="store_true",
                        help="the mask-side terms do not wait for the head, as in 0.1 "
                             "(sklearn_cim._cim.GATE_MASK); to measure what the gate does")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (e.g. 1 per process when running two)")
    parser.add_argument("--out", help="append the JSON lines to this file")
    parser.add_argument("--summarise", nargs="+", metavar="JSONL",
                        help="only print the table of these JSON-lines files (e.g. from "
                             "several processes, one per split and seed)")
    parser.add_argument("--seeds-report", action="store_true",
                        help="with --summarise: each CIM row's gap closed per seed, seeds "
                             "below ERM, masks, warnings, proxy agreement")
    parser.add_argument("--rank", action="store_true",
                        help="with --summarise: the removal check's rank correlation "
                             "with OOD accuracy over the CIM runs")
    parser.add_argument("--wide", choices=["ood", "worst_group", "id"],
                        help="with --summarise: one table of this metric, a column per split")
    args = parser.parse_args(argv)
    if args.summarise:
        lines = []
        for path in args.summarise:
            with open(path) as f:
                lines += [json.loads(line) for line in f if line.strip()]
        if args.rank:
            print(rank_agreement(lines))
        elif args.seeds_report:
            print(seed_report(lines))
        else:
            print(summarise_wide(lines, args.wide) if args.wide else summarise(lines))
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_holdout:  # a fit that can hold no image back trains on all of them
        import sklearn_cim._cim
        sklearn_cim._cim.held_out_rows = lambda y, groups, seed: np.zeros(len(y), dtype=bool)
    if args.no_gate:
        import sklearn_cim._cim
        sklearn_cim._cim.GATE_MASK = False
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
                data = make_colored_digits(image_size=args.image_size, **common)
            cim_params = dict(pretrained=pretrained, max_epochs=args.epochs,
                              device=args.device, random_state=seed, **args.cim)
            vib_params = dict(max_epochs=args.vib_epochs, device=args.device,
                              random_state=seed)
            tags = dict(nuisance=nuisance, seed=seed, n_train=len(data.y_train),
                        image_size=int(data.X_train.shape[-1]),
                        p_train=args.p_train, cim=args.cim, pretrained=pretrained,
                        dataset="mnist" if args.mnist else "digits")
            if args.no_holdout:
                tags["holdout"] = False
            if args.no_gate:
                tags["gate"] = False
            if args.group_cim:
                tags["group_cim"] = args.group_cim
            if args.group_epochs:
                tags["group_epochs"] = args.group_epochs
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
