"""Does the group-aware CIM at its defaults collapse (psi(x) all zero)?

A split the defaults were not tuned on, built like the one that showed the
collapse outside the repo: ``--n-train`` MNIST digits at 32 px (28 px padded
with the background colour) on a background colour from the 10-colour palette
that agrees with the label in ``--p-train`` of the training images. For each
seed it fits ``CIMTransformer`` at its defaults (only ``max_epochs`` and
``pretrained`` set, plus ``--cim``) with the true colour as groups, and prints a
JSON line: the head's cross-entropy per epoch, the share of pixels the hard
mask keeps, whether the collapse warning fired, and the OOD accuracy of a
logistic regression on psi(X) against ERM (LR on pixels) and the oracle (LR
trained and tested without the colour).

    python benchmarks/collapse_seeds.py --mnist ../shared/data/mnist --seeds 0 1 2

``--head-only`` trains only the CIM head's CNN on the pixels for 4 epochs
(batch 32, Adam 1e-3) with the cell-weighted cross-entropy of
``group_weighting="balanced"`` and with every cell drawn equally often
(``"resampled"``), and prints its OOD accuracy after each epoch: how fast the
head can learn the classes under each.
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def pad(X, side):
    """Images padded to ``side`` with their own edge (the background colour)."""
    p = (side - X.shape[-1]) // 2
    q = side - X.shape[-1] - p
    return np.pad(X, ((0, 0), (0, 0), (p, q), (p, q)), mode="edge")


def run_seed(args, seed, emit):
    from sklearn.linear_model import LogisticRegression

    from sklearn_cim import CIMTransformer
    from sklearn_cim.datasets import load_colored_mnist
    sys.path.insert(0, HERE)
    from nuisance_results import check_facts

    d = load_colored_mnist(args.mnist, nuisance="background", p_train=args.p_train,
                           n_train=args.n_train, random_state=seed)
    X, X_ood = pad(d.X_train, args.side), pad(d.X_test_ood, args.side)
    X_clean, X_ood_clean = pad(d.X_train_clean, args.side), pad(d.X_test_clean, args.side)
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731

    def lr_ood(train, test):
        model = LogisticRegression(max_iter=300).fit(flat(train), d.y_train)
        return float(model.score(flat(test), d.y_test))

    params = dict(pretrained=False, max_epochs=args.epochs, random_state=seed,
                  **json.loads(args.cim))
    cim = CIMTransformer(**params)
    t = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cim.fit(X, d.y_train, groups=d.nuisance_train)
    seconds = time.perf_counter() - t
    masks = cim.masks(X_ood)[:, 0]
    # digit pixels: the clean images are g + (1 - g) * 0.5 (grey background 0.5)
    obj = flat(X_ood_clean.mean(1) > 0.75)
    per_image = (flat(masks) * obj).sum(1) / np.maximum(obj.sum(1), 1)
    line = dict(
        seed=seed, gate=not args.no_gate, side=args.side, n_train=args.n_train,
        p_train=args.p_train,
        cim=params, ce=[round(float(c), 3) for c in cim.history_[:, "train_ce"]],
        kept=round(float(masks.mean()), 4),
        object_kept_share=round(float(np.mean(per_image >= 0.5)), 3),
        collapse_warning=any("keeps" in str(w.message) and "all zero" in str(w.message)
                             for w in caught),
        cim_lr_ood=lr_ood(cim.transform(X), cim.transform(X_ood)),
        erm_lr_ood=lr_ood(X, X_ood), oracle_lr_ood=lr_ood(X_clean, X_ood_clean),
        **check_facts(cim, caught, seconds))
    line["gap_closed"] = round((line["cim_lr_ood"] - line["erm_lr_ood"])
                               / (line["oracle_lr_ood"] - line["erm_lr_ood"]), 3)
    emit(line)


def head_only(args, seed):
    import torch
    import torch.nn.functional as F

    from sklearn_cim._groups import cell_weights
    from sklearn_cim._networks import ConvClassifier
    from sklearn_cim.datasets import load_colored_mnist

    d = load_colored_mnist(args.mnist, nuisance="background", p_train=args.p_train,
                           n_train=args.n_train, random_state=seed)
    X, X_ood = torch.tensor(pad(d.X_train, args.side)), torch.tensor(pad(d.X_test_ood, args.side))
    y, y_ood = torch.tensor(d.y_train), torch.tensor(d.y_test)
    g = torch.tensor(d.nuisance_train)
    w = cell_weights(y, g, 10)[y * 10 + g]
    for mode in ("balanced", "resampled"):
        torch.manual_seed(seed)
        net = ConvClassifier(3, 10, 32)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        gen = torch.Generator().manual_seed(seed)
        accuracy = []
        for _ in range(4):
            order = (torch.multinomial(w, len(y), replacement=True, generator=gen)
                     if mode == "resampled" else torch.randperm(len(y), generator=gen))
            for start in range(0, len(y), 32):
                i = order[start:start + 32]
                loss = F.cross_entropy(net(X[i]), y[i], reduction="none")
                loss = (loss * w[i]).mean() if mode == "balanced" else loss.mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            with torch.no_grad():
                accuracy.append(round(float((net(X_ood).argmax(1) == y_ood).float().mean()), 3))
        print(json.dumps(dict(seed=seed, head_only=mode, ood_per_epoch=accuracy)), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist", required=True, help="directory with the MNIST idx files")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-train", type=int, default=3000)
    p.add_argument("--p-train", type=float, default=0.97)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--cim", default="{}", help="extra CIMTransformer parameters, JSON")
    p.add_argument("--no-gate", action="store_true",
                   help="the mask-side terms do not wait for the head, as in 0.1 "
                        "(sklearn_cim._cim.GATE_MASK)")
    p.add_argument("--head-only", action="store_true",
                   help="only the head's CNN on the pixels, balanced vs resampled")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", help="append the JSON lines to this file")
    args = p.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.no_gate:
        import sklearn_cim._cim
        sklearn_cim._cim.GATE_MASK = False

    def emit(line):
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")

    for seed in args.seeds:
        if args.head_only:
            head_only(args, seed)
        else:
            run_seed(args, seed, emit)


if __name__ == "__main__":
    main()
