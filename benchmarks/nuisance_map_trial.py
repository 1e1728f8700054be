"""The trial that chose the nuisance map's settings (now in the package:
``CIMTransformer(map_weight=3)``, :mod:`sklearn_cim._nuisance_map`).

Before training the mask, a small fully convolutional probe learns to read
each training image's group at every pixel, every group weighing the same;
the mask pays ``map_weight * mean(m * map)`` where it reads it. This script
runs a benchmark with the map's settings changed in this process only:
``--map-weight`` (the weight of every group-aware fit given groups and
``map_weight=0``), ``--map-cut``
(``MAP_CUT``), ``--map-window`` 1, 3, 5 or ``auto`` (the package's
``window_for``: 1 px below 24 px, 3 below 48, 5 from 48), ``--probe-epochs``
and ``--probe-lr``; ``--fill V`` makes psi(x) = m * x + (1 - m) * V (removed
pixels grey instead of black). The package's settings, with
``map_weight=3``, are this script's defaults; with them it trains exactly
what the package trains (the same transforms, bitwise, on CPU).

Measured on the own-images benchmark's tuning seeds (2026-12-07/08; rows in
``benchmarks/results/2026-12-07-cpu-localisation-tuning.jsonl``, the Results
page's "Localising the nuisance")::

    python benchmarks/nuisance_map_trial.py --map-window 3 -- \\
        --mnist ../shared/data/mnist --seed 10 \\
        --models "group CIM -> LR" "group CIM -> CNN" --out OUT.jsonl

Everything after ``--`` goes to ``benchmarks/own_images_64px.py``; each row it
writes to ``--out`` gets a ``trial`` field with the map's settings. For
``benchmarks/nuisance_results.py``, patch in a process of its own::

    cd benchmarks && python -c "import sys, nuisance_map_trial as t; \\
        t.patch(3.0, 0.25, 'auto', probe_epochs=30, probe_lr=1e-2); \\
        import nuisance_results; nuisance_results.main(sys.argv[1:])" \\
        --seeds 10 --image-size 16 --epochs 30

Its earlier forms (a 5 px window at every size, a map term that did not wait
for the head, a probe of 10 epochs at lr 3e-3) are this file at commit
f503985 (``--map-window 5``, no ``--map-gate``, ``--probe-epochs 10
--probe-lr 3e-3``), where the map was the trial's own.
"""

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def patch(weight, cut, window, gate=True, probe_epochs=30, probe_lr=1e-2):
    """Set the package's map settings in this process: ``weight`` for every
    fit with groups (given or inferred) whose ``map_weight`` is 0, the cut,
    the window (``"auto"`` or a size), the probe's epochs and lr. The map term
    always waits for the head (``gate``: only True; the ungated form is at
    commit f503985)."""
    if not gate:
        raise ValueError("the ungated map term is the trial at commit f503985")
    from sklearn_cim import _cim, _nuisance_map
    resolve = _cim.resolve_auto

    def resolve_auto(params, aware):
        if aware and params["map_weight"] == 0:
            params = {**params, "map_weight": float(weight)}
        return resolve(params, aware)

    _cim.resolve_auto = resolve_auto
    _nuisance_map.MAP_CUT = float(cut)
    _nuisance_map.PROBE_EPOCHS = int(probe_epochs)
    _nuisance_map.PROBE_LR = float(probe_lr)
    if window != "auto":
        _nuisance_map.window_for = lambda side: int(window)


def patch_fill(value):
    """psi(x) = m * x + (1 - m) * ``value`` (in [0, 1] units) instead of
    m * x, in training, in ``transform`` and in the removal check: removed
    pixels become a neutral grey rather than black, so that an object's dark
    edge stays visible without a halo of its surroundings."""
    import numpy as np
    import torch

    from sklearn_cim import _cim
    from sklearn_cim._networks import CIMModule, hard_mask
    from sklearn_cim._probes import pooled

    def masked(self, x):
        mask = self.mask_net(x)
        m = hard_mask(mask) if self.hard else mask
        return m * x + (1 - m) * value

    def forward(self, x):
        mask = self.mask_net(x)
        m = hard_mask(mask) if self.hard else mask
        psi = m * x + (1 - m) * value
        return mask, psi, self.head(psi)

    apply = _cim.CIMTransformer._apply_validated

    def apply_validated(self, X, shape, input_range, what):
        if what != "psi" or getattr(self, "fallback_", False):
            return apply(self, X, shape, input_range, what)
        low, high = input_range
        out = apply(self, X, shape, input_range, "psi")
        if out is None:
            return None
        mask = apply(self, X, shape, input_range, "mask").reshape(len(X), -1, *shape[1:])
        fill = ((1 - mask) * value * (high - low)).astype(np.float32)
        return (out.reshape(len(X), *shape) + fill).reshape(out.shape)

    def check_images(self, X, rows, shape, input_range, chunk=256):
        low, high = input_range
        images = (-1,) + tuple(shape)
        psi, x, kept = [], [], []
        for start in range(0, len(rows), chunk):
            raw = X[rows[start:start + chunk]]
            unit = ((np.asarray(raw, dtype=np.float32) - low) / (high - low)).reshape(images)
            mask = apply(self, raw, shape, input_range, "mask")
            psi.append(pooled(mask * unit + (1 - mask) * value, _cim.PROBE_SIDE))
            x.append(pooled(unit, _cim.PROBE_SIDE))
            kept.append((mask > 0).reshape(len(raw), -1).mean(1))
        soft = not self.hard_mask_ and self.mask_threshold_ is None
        return (torch.cat(psi).numpy(), torch.cat(x).numpy(),
                None if soft else np.concatenate(kept))

    CIMModule.masked, CIMModule.forward = masked, forward
    _cim.CIMTransformer._apply_validated = apply_validated
    _cim.CIMTransformer._check_images = check_images


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--map-weight", type=float, default=3.0)
    p.add_argument("--map-cut", type=float, default=0.25)
    p.add_argument("--map-window", choices=["1", "3", "5", "auto"], default="auto")
    p.add_argument("--map-gate", action="store_true",
                   help="kept for the documented commands: the map term always waits for "
                        "the head (the ungated form: commit f503985)")
    p.add_argument("--fill", type=float, default=None,
                   help="removed pixels become this grey (in [0, 1]) instead of 0")
    p.add_argument("--probe-epochs", type=int, default=30)
    p.add_argument("--probe-lr", type=float, default=1e-2)
    args = p.parse_args(argv[:split])
    rest = argv[split + 1:]
    sys.path.insert(0, HERE)
    import own_images_64px
    bench = own_images_64px.parse(rest)
    if bench.seed is None:
        raise SystemExit("give one --seed after --: the trial runs in this process")
    patch(args.map_weight, args.map_cut, args.map_window, True, args.probe_epochs,
          args.probe_lr)
    if args.fill is not None:
        patch_fill(args.fill)
    handle, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(handle)
    out, bench.out = bench.out, path
    try:
        own_images_64px.run_seed(bench)
        window = args.map_window if args.map_window == "auto" else int(args.map_window)
        trial = dict(map_weight=args.map_weight, map_cut=args.map_cut,
                     map_window=window, map_gate=True,
                     probe_epochs=args.probe_epochs, probe_lr=args.probe_lr,
                     fill=args.fill)
        with open(bench.out) as f, open(out, "a") as g:
            for line in f:
                g.write(json.dumps({**json.loads(line), "trial": trial}) + "\n")
    finally:
        if os.path.exists(bench.out):
            os.remove(bench.out)


if __name__ == "__main__":
    main()
