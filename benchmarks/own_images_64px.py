"""Your own images at 64 px: MNIST digits pasted on crops of the photos that ship
with scikit-learn (``load_sample_images``), the photo agreeing with the digit.

The benchmark of the "Your own images" page. Ten scenes are 96 x 96 regions of
the two sample photos (five each); every image is a random 64 x 64 crop of its
scene with an MNIST digit (from the t10k file, upscaled to 44 px) pasted white, with a
dark rim, on it. In training the scene agrees with the digit in ``P_TRAIN`` of the images; in
the test split (OOD) it is drawn at random; the oracle trains on random scenes.
Rows: ERM (LR on pixels), ERM CNN, oracle CNN, group-balanced LR, group-balanced
CNN and GroupDRO CNN (a user's alternatives, with the same groups), group CIM ->
LR, group CIM -> CNN (groups: the scene of each training image), inferred-group
CIM -> LR and -> CNN, oracle (LR), with OOD and worst-group accuracy, the fit's wall time and the
process's peak resident memory after it; for the CIM rows, the removal check and
its warnings, and the share of test images whose digit the mask keeps (half of
its pixels or more), over all of them and over the brightest and the darkest
quarter of the scenes.
One process per seed (``--jobs`` at a time), JSON lines to ``--out``::

    python benchmarks/own_images_64px.py --mnist ../shared/data/mnist --jobs 1 \\
        --cim '{"invariance_weight": 1.0}' \\
        --out benchmarks/results/2026-12-06-cpu-own-images-64px.jsonl
    python benchmarks/own_images_64px.py \\
        --summarise benchmarks/results/2026-12-06-cpu-own-images-64px.jsonl

``--nuisance mark`` runs the second split: the scene is drawn at random and a
6 x 6 square of one of ten colours, at a random place clear of the digit,
agrees with the digit instead (groups: its colour). One file per split:
``--summarise`` reads one split's rows.

``--cim`` sets CIMTransformer parameters over :data:`CIM` (JSON); ``--models``
keeps only the named CNN and CIM rows (tuning runs: ``--models "group CIM -> LR"``);
``--figures DIR`` saves x, m and psi(x) of 12 test images per CIM fit (the six
on the brightest scenes first).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIDE, SCENE, DIGIT = 64, 96, 44
N_SCENES = 10
P_TRAIN = 0.95
#: Side of the ``--nuisance mark`` square.
MARK = 6
#: The splits: the scene agrees with the digit, or a small coloured mark at a
#: random place off the digit does (on a scene drawn at random).
NUISANCES = ("scene", "mark")
#: The group CIM: the estimator's defaults but these (offline: random LPIPS trunk).
CIM = dict(max_epochs=15, pretrained=False)


def scenes():
    """Ten 96 x 96 RGB regions (uint8): five spread over each sample photo."""
    from sklearn.datasets import load_sample_images
    out = []
    for photo in load_sample_images().images:  # (427, 640, 3) each
        h, w = photo.shape[:2]
        tops = [h // 8, h // 8, h - SCENE - h // 8, h - SCENE - h // 8, (h - SCENE) // 2]
        lefts = [w // 8, w - SCENE - w // 8, w // 8, w - SCENE - w // 8, (w - SCENE) // 2]
        out += [photo[t:t + SCENE, left:left + SCENE] for t, left in zip(tops, lefts)]
    return np.stack(out)


def digits(mnist, n, rng):
    """``n`` MNIST digits of the t10k file as 44 x 44 floats in [0, 1], and labels."""
    from PIL import Image

    from sklearn_cim.datasets._idx import _mnist_files, read_idx
    found, _ = _mnist_files(mnist)
    images = read_idx(found["t10k-images-idx3-ubyte"])
    labels = read_idx(found["t10k-labels-idx1-ubyte"])
    rows = rng.choice(len(images), n, replace=False)
    big = np.stack([np.asarray(Image.fromarray(images[i]).resize((DIGIT, DIGIT),
                                                                 Image.BILINEAR))
                    for i in rows]).astype(np.float32) / 255
    return big, labels[rows].astype(np.int64)


def compose(ink, scene_ids, all_scenes, rng):
    """(n, 3, 64, 64) float32 images in [0, 1]: a random crop of each scene, the
    digit's ink pasted white with a dark rim in the middle."""
    from scipy.ndimage import maximum_filter
    n = len(ink)
    out = np.empty((n, 3, SIDE, SIDE), np.float32)
    off = (SIDE - DIGIT) // 2
    for i in range(n):
        t, l_ = rng.randint(0, SCENE - SIDE + 1, size=2)
        bg = all_scenes[scene_ids[i], t:t + SIDE, l_:l_ + SIDE].astype(np.float32) / 255
        img = bg.transpose(2, 0, 1).copy()
        a = ink[i][None]
        rim = maximum_filter(ink[i], size=5)[None]  # a dark rim: visible on sky and on shade
        region = img[:, off:off + DIGIT, off:off + DIGIT] * (1 - rim)
        img[:, off:off + DIGIT, off:off + DIGIT] = region * (1 - a) + a
        out[i] = img
    return out


def add_marks(X, ink, colours, rng):
    """``X`` with a ``MARK`` x ``MARK`` square of ``PALETTE[colours[i]]`` on each
    image, at a place drawn uniformly among those clear of the digit's ink and
    rim (in place; returns ``X``)."""
    import torch
    import torch.nn.functional as F

    from sklearn_cim.datasets._nuisance import PALETTE
    # reach[i, r, c]: ink within 2 px (the rim) of the square at (r, c)
    padded = F.pad(torch.from_numpy(_placed(ink))[:, None], (2, 2, 2, 2))
    reach = F.max_pool2d(padded, MARK + 4, stride=1)[:, 0].numpy() > 0
    for i in range(len(X)):
        free = np.argwhere(~reach[i])
        r, c = free[rng.randint(len(free))]
        X[i, :, r:r + MARK, c:c + MARK] = PALETTE[colours[i]][:, None, None]
    return X


def make_data(mnist, n_train, n_test, seed, nuisance="scene"):
    """The split of ``nuisance`` ("scene": the scene agrees with the digit in
    ``P_TRAIN`` of the training images; "mark": a small mark's colour does,
    on scenes drawn at random); the test split and the oracle draw the
    nuisance at random."""
    from sklearn.utils import Bunch
    rng = np.random.RandomState(seed)
    all_scenes = scenes()
    ink, y = digits(mnist, n_train + n_test, rng)
    y_train, y_test = y[:n_train], y[n_train:]
    agree = rng.rand(n_train) < P_TRAIN
    nuis_train = np.where(agree, y_train % N_SCENES, rng.randint(0, N_SCENES, n_train))
    nuis_test = rng.randint(0, N_SCENES, n_test)
    nuis_oracle = rng.randint(0, N_SCENES, n_train)
    if nuisance == "scene":
        s_train, s_test, s_oracle = nuis_train, nuis_test, nuis_oracle
    else:  # scenes at random; the mark carries the nuisance
        s_train, s_test, s_oracle = (rng.randint(0, N_SCENES, n) for n in
                                     (n_train, n_test, n_train))
    X_train = compose(ink[:n_train], s_train, all_scenes, rng)
    X_oracle = compose(ink[:n_train], s_oracle, all_scenes, rng)
    X_test = compose(ink[n_train:], s_test, all_scenes, rng)
    if nuisance == "mark":
        add_marks(X_train, ink[:n_train], nuis_train, rng)
        add_marks(X_oracle, ink[:n_train], nuis_oracle, rng)
        add_marks(X_test, ink[n_train:], nuis_test, rng)
    return Bunch(X_train=X_train, y_train=y_train, nuisance_train=nuis_train,
                 X_oracle=X_oracle, X_test_ood=X_test, y_test=y_test,
                 nuisance_test_ood=nuis_test, ink_test_ood=_placed(ink[n_train:]))


def _placed(ink):
    """The digits' ink where :func:`compose` pastes it, ``(n, 64, 64)``."""
    out = np.zeros((len(ink), SIDE, SIDE), np.float32)
    off = (SIDE - DIGIT) // 2
    out[:, off:off + DIGIT, off:off + DIGIT] = ink
    return out


def kept_by_brightness(masks, obj, X):
    """The share of test images whose digit the mask keeps (half of its pixels
    or more) among the brightest and the darkest quarter of the scenes
    (``object_kept_bright``, ``object_kept_dark``)."""
    from nuisance_results import object_kept
    scene = (X.mean(1) * ~obj).reshape(len(X), -1).sum(1) / (~obj).reshape(len(X), -1).sum(1)
    bright, dark = scene >= np.quantile(scene, 0.75), scene <= np.quantile(scene, 0.25)
    return dict(object_kept_bright=object_kept(masks[bright], obj[bright]),
                object_kept_dark=object_kept(masks[dark], obj[dark]))


def save_figure(cim, X, folder, name):
    """x, m and psi(x) of 12 test images: the 6 on the brightest scenes first,
    then the first 6 others, to ``folder/name.png``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sklearn_cim.plotting import plot_masks
    os.makedirs(folder, exist_ok=True)
    order = np.argsort(-X.mean(axis=(1, 2, 3)))
    rows = np.concatenate([order[:6], np.setdiff1d(np.arange(len(X)), order[:6])[:6]])
    fig = plot_masks(cim, X[rows], n=len(rows))
    fig.suptitle(name)
    fig.savefig(os.path.join(folder, name + ".png"), dpi=80)
    plt.close(fig)


def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_seed(args):
    import torch
    from sklearn.linear_model import LogisticRegression

    from sklearn_cim import CIMTransformer
    from sklearn_cim.datasets import agreement_groups
    from sklearn_cim.metrics import worst_group_accuracy
    sys.path.insert(0, HERE)
    from nuisance_results import (
        balanced_sample_weight,
        cells_of,
        check_facts,
        object_kept,
        train_cnn,
    )

    torch.set_num_threads(args.threads)
    d = make_data(args.mnist, args.n_train, args.n_test, args.seed, args.nuisance)
    groups_ood = agreement_groups(d.y_test, d.nuisance_test_ood, N_SCENES)
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    cim_params = {**CIM, **json.loads(args.cim)}
    tags = dict(nuisance=args.nuisance, seed=args.seed, n_train=args.n_train,
                n_test=args.n_test, side=SIDE,
                threads=args.threads, cim=cim_params,
                **({"mark_side": MARK} if args.nuisance == "mark" else {}))

    def emit(model, predict, X_ood, fit_s, **extra):
        pred = predict(X_ood)
        row = dict(tags, model=model, ood=float(np.mean(pred == d.y_test)),
                   worst_group=float(worst_group_accuracy(d.y_test, pred, groups_ood)),
                   fit_s=round(fit_s, 1), peak_mib=round(peak_mib()), **extra)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    def lr(X, y, sample_weight=None):
        t = time.perf_counter()
        m = LogisticRegression(max_iter=1000).fit(flat(X), y, sample_weight=sample_weight)
        return (lambda Z: m.predict(flat(Z))), time.perf_counter() - t

    predict, s = lr(d.X_train, d.y_train)
    emit("ERM", predict, d.X_test_ood, s)
    want = lambda model: args.models is None or model in args.models  # noqa: E731
    obj = d.ink_test_ood > 0.5  # the digit's pixels in the test images
    if want("ERM CNN"):
        t = time.perf_counter()
        predict = train_cnn(d.X_train, d.y_train, args.seed)
        emit("ERM CNN", predict, d.X_test_ood, time.perf_counter() - t)
    if want("oracle CNN"):
        t = time.perf_counter()
        predict = train_cnn(d.X_oracle, d.y_train, args.seed)
        emit("oracle CNN", predict, d.X_test_ood, time.perf_counter() - t)
    if want("group-balanced LR"):
        predict, s = lr(d.X_train, d.y_train,
                        balanced_sample_weight(d.y_train, d.nuisance_train))
        emit("group-balanced LR", predict, d.X_test_ood, s)
    for name, weighting in (("group-balanced CNN", "balanced"), ("GroupDRO CNN", "dro")):
        if want(name):  # the user's alternatives to a CIM, with the same groups
            t = time.perf_counter()
            predict = train_cnn(d.X_train, d.y_train, args.seed, weighting=weighting,
                                cells=cells_of(d.y_train, d.nuisance_train))
            emit(name, predict, d.X_test_ood, time.perf_counter() - t)
    for prefix, extra, groups in (("group CIM", {}, d.nuisance_train),
                                  ("inferred-group CIM", {"infer_groups": True}, None)):
        if not (want(prefix + " -> LR") or want(prefix + " -> CNN")):
            continue
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cim = CIMTransformer(**{**cim_params, **extra}, random_state=args.seed).fit(
                d.X_train, d.y_train, groups=groups)
        cim_s = time.perf_counter() - t
        psi_train, psi_ood = cim.transform(d.X_train), cim.transform(d.X_test_ood)
        kept = cim.masks(d.X_test_ood)
        facts = dict(check_facts(cim, caught, cim_s), mask_mean=float(kept.mean()),
                     mask_object=float(kept[:, 0][obj].mean()),
                     object_kept=object_kept(kept[:, 0], obj),
                     **kept_by_brightness(kept[:, 0], obj, d.X_test_ood))
        if args.figures:
            save_figure(cim, d.X_test_ood, args.figures,
                        f"{prefix.replace(' ', '-')}-seed{args.seed}")
        if want(prefix + " -> LR"):
            predict, s = lr(psi_train, d.y_train)
            emit(prefix + " -> LR", predict, psi_ood, cim_s + s, **facts)
        if want(prefix + " -> CNN"):
            t = time.perf_counter()
            predict = train_cnn(psi_train, d.y_train, args.seed)
            emit(prefix + " -> CNN", predict, psi_ood, cim_s + time.perf_counter() - t,
                 **facts)
    predict, s = lr(d.X_oracle, d.y_train)
    emit("oracle", predict, d.X_test_ood, s)


def summarise(path):
    """The table of the rows in ``path``: mean ± std over seeds, and the mean of
    the seeds' shares of the ERM -> oracle gap (LR rows against ERM and the
    oracle, CNN rows against ERM CNN and the oracle CNN where the file has them)."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    models = list(dict.fromkeys(r["model"] for r in rows))
    ood = {(r["model"], r["seed"]): r["ood"] for r in rows}
    have_cnn_pair = any(m == "ERM CNN" for m in models) and any(m == "oracle CNN" for m in models)

    def gap(model, seed):
        low, high = (("ERM CNN", "oracle CNN") if "CNN" in model and have_cnn_pair
                     else ("ERM", "oracle"))
        if (low, seed) not in ood or (high, seed) not in ood:
            return np.nan
        return (ood[model, seed] - ood[low, seed]) / (ood[high, seed] - ood[low, seed])

    print("| model | OOD | worst group | gap closed | fit (s) | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for m in models:
        rs = [r for r in rows if r["model"] == m]
        acc = np.array([r["ood"] for r in rs])
        wg = np.array([r["worst_group"] for r in rs])
        share = np.nanmean([gap(m, r["seed"]) for r in rs])
        print(f"| {m} | {acc.mean():.3f} ± {acc.std():.3f} | {wg.mean():.3f} ± {wg.std():.3f} "
              f"| {share:.0%} | {np.mean([r['fit_s'] for r in rs]):.0f} "
              f"| {max(r['peak_mib'] for r in rs)} |")
    print(f"\nseeds {sorted({r['seed'] for r in rows})}; gap closed: the mean of the seeds' "
          "shares, CNN rows against the CNN pair")


def child_command(args, seed):
    """The command line running ``seed`` in its own process, with every setting
    of ``args`` that shapes a run."""
    cmd = [sys.executable, os.path.abspath(__file__), "--mnist", args.mnist, "--out",
           args.out, "--n-train", str(args.n_train), "--n-test", str(args.n_test),
           "--threads", str(args.threads), "--cim", args.cim, "--seed", str(seed),
           "--nuisance", args.nuisance]
    cmd += ["--figures", args.figures] if args.figures else []
    return cmd + (["--models", *args.models] if args.models else [])


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist")
    p.add_argument("--out")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seed", type=int, help="run one seed in this process")
    p.add_argument("--nuisance", choices=NUISANCES, default="scene",
                   help="what agrees with the digit in training (default: the scene)")
    p.add_argument("--n-train", type=int, default=1000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--cim", default="{}", help="JSON: CIMTransformer settings over CIM")
    p.add_argument("--models", nargs="+", help="only these rows (default: all)")
    p.add_argument("--figures", help="a folder for one mask picture per CIM fit")
    p.add_argument("--summarise")
    return p.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    if args.summarise:
        return summarise(args.summarise)
    if args.seed is not None:
        return run_seed(args)
    from concurrent.futures import ThreadPoolExecutor
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(args.threads))
    start = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda s: subprocess.run(child_command(args, s), env=env, check=True),
                      args.seeds))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    summarise(args.out)


if __name__ == "__main__":
    main()
