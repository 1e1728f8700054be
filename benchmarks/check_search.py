"""Choosing settings without a test set: a 3 x 3 GridSearchCV over
``mask_weight`` x ``invariance_weight`` scored by the removal check, against the
OOD accuracy each setting really reaches.

For one split (``make_colored_digits`` or MNIST with a background, corner or
mark nuisance, or the 64 px own-images photos) and one seed, every candidate
``Pipeline(CIMTransformer, LogisticRegression)`` is fitted once on all the
training images (one split: the scorer reads ``removal_check_``, not the
validation images) and scored by ``removal_score`` (the linear estimate) and
``removal_score(metric="balanced_accuracy_cnn")``; the same scorers also
measure, on the OOD test images, the LR's accuracy and that of the benchmark's
CNN trained on psi of the training images. One JSON line per candidate, plus
ERM (LR) and ERM CNN::

    python benchmarks/check_search.py --split digits-background --seed 0 --out S.jsonl
    python benchmarks/check_search.py --summarise S.jsonl

The summary: per split and downstream model, the setting the check picks, its
OOD accuracy, the best OOD accuracy in the grid, and ERM's.
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
MASK_WEIGHTS = (0.1, 0.3, 1.0)
INVARIANCE_WEIGHTS = (1.0, 3.0, 10.0)
EPOCHS = {"digits": 30, "mnist": 15, "photos": 15}


def load(split, seed, mnist):
    sys.path.insert(0, HERE)
    from sklearn.utils import Bunch

    from sklearn_cim.datasets import load_colored_mnist, make_colored_digits
    dataset, nuisance = split.split("-")
    if dataset == "photos":
        from own_images_64px import make_data
        d = make_data(mnist, 1000, 1000, seed)
        return Bunch(X_train=d.X_train, y_train=d.y_train, groups=d.nuisance_train,
                     X_ood=d.X_test_ood, y_ood=d.y_test)
    common = dict(nuisance=nuisance, p_train=0.95, random_state=seed)
    d = (make_colored_digits(image_size=16, **common) if dataset == "digits"
         else load_colored_mnist(mnist, n_train=1500, **common))
    return Bunch(X_train=d.X_train, y_train=d.y_train, groups=d.groups_train % 10,
                 X_ood=d.X_test_ood, y_ood=d.y_test)


def run(args):
    import torch
    from nuisance_results import train_cnn
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline

    from sklearn_cim import CIMTransformer
    from sklearn_cim.metrics import removal_score

    torch.set_num_threads(args.threads)
    d = load(args.split, args.seed, args.mnist)
    n, shape = len(d.y_train), d.X_train.shape[1:]
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    tags = dict(split=args.split, seed=args.seed, n_train=n)

    def emit(row):
        with open(args.out, "a") as f:
            f.write(json.dumps(dict(tags, **row)) + "\n")
        print(json.dumps(row), flush=True)

    erm = LogisticRegression(max_iter=1000).fit(flat(d.X_train), d.y_train)
    emit(dict(model="ERM", ood=float(erm.score(flat(d.X_ood), d.y_ood))))
    cnn = train_cnn(d.X_train, d.y_train, args.seed)
    emit(dict(model="ERM CNN", ood=float(np.mean(cnn(d.X_ood) == d.y_ood))))

    def ood_lr(pipe, X, y):
        return pipe.score(flat(d.X_ood), d.y_ood)

    def ood_cnn(pipe, X, y):
        cim = pipe.named_steps["cim"]
        psi = cim.transform(flat(d.X_train)).reshape((-1,) + shape)
        predict = train_cnn(psi, d.y_train, args.seed)
        return float(np.mean(predict(cim.transform(flat(d.X_ood)).reshape((-1,) + shape))
                             == d.y_ood))

    def check_cnn(pipe, X, y):
        return removal_score(pipe, metric="balanced_accuracy_cnn")

    dataset = args.split.split("-")[0]
    pipe = Pipeline([
        ("cim", CIMTransformer(image_shape=tuple(shape), pretrained=False,
                               max_epochs=EPOCHS[dataset], random_state=args.seed)),
        ("clf", LogisticRegression(max_iter=1000))])
    search = GridSearchCV(
        pipe, {"cim__mask_weight": list(MASK_WEIGHTS),
               "cim__invariance_weight": list(INVARIANCE_WEIGHTS)},
        cv=[(np.arange(n), np.arange(2))], refit=False, error_score="raise",
        scoring={"check_lr": removal_score, "check_cnn": check_cnn, "ood_lr": ood_lr,
                 "ood_cnn": ood_cnn})
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.fit(flat(d.X_train), d.y_train, cim__groups=d.groups)
    res = search.cv_results_
    for i, params in enumerate(res["params"]):
        emit(dict(model="group CIM", params=params,
                  **{k: float(res[f"split0_test_{k}"][i])
                     for k in ("check_lr", "check_cnn", "ood_lr", "ood_cnn")},
                  fit_s=float(res["mean_fit_time"][i])))
    print(f"search wall time {time.perf_counter() - start:.0f} s", flush=True)


def summarise(paths):
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    print("| split | seed | downstream | picked by the check | its OOD | best in the grid "
          "| best's setting | ERM | within 0.02 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for split, seed in dict.fromkeys((r["split"], r["seed"]) for r in rows):
        rs = [r for r in rows if (r["split"], r["seed"]) == (split, seed)]
        cands = [r for r in rs if r["model"] == "group CIM"]
        for model, check, ood, erm_name in (("LR", "check_lr", "ood_lr", "ERM"),
                                            ("CNN", "check_cnn", "ood_cnn", "ERM CNN")):
            if not cands:
                continue
            picked = max(cands, key=lambda r: r[check])
            best = max(cands, key=lambda r: r[ood])
            erm = [r["ood"] for r in rs if r["model"] == erm_name]

            def setting(r):
                p = r["params"]
                return f"{p['cim__mask_weight']:g} / {p['cim__invariance_weight']:g}"
            ok = "yes" if picked[ood] >= best[ood] - 0.02 else "no"
            print(f"| {split} | {seed} | {model} | {setting(picked)} | {picked[ood]:.3f} | "
                  f"{best[ood]:.3f} | {setting(best)} | {erm[0] if erm else float('nan'):.3f} "
                  f"| {ok} |")
    print("\nsettings: mask_weight / invariance_weight")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--split", choices=[f"{d}-{n}" for d in ("digits", "mnist")
                                       for n in ("background", "corner", "mark")]
                   + ["photos-scene"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mnist", default=os.path.join(HERE, "..", "..", "shared", "data", "mnist"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out")
    p.add_argument("--summarise", nargs="+")
    args = p.parse_args(argv)
    if args.summarise:
        return summarise(args.summarise)
    run(args)


if __name__ == "__main__":
    main()
