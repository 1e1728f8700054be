"""A trial, not part of the package: a nuisance map for the group CIM's mask.

Before training the mask, a small fully convolutional probe learns to read
each training image's group at every pixel, every group weighing the same.
Its window is ``--map-window`` pixels square: 1 (two 1x1 convs: the pixel's
colour), 3 (one 3x3 conv), 5 (two), or ``auto`` (1 below 24 px, 3 below 48,
5 from 48 px: about a stroke's width). Its map, ``(log p(true group |
window) + log G) / log G`` clipped to [0, 1] (0: the window says nothing
about the group; 1: it names it), cut at ``--map-cut`` and rescaled to
[0, 1], is where the nuisance is readable; the mask then pays ``--map-weight
* mean(m * map)`` on top of the objective (``--map-gate``: weighted in each
batch by ``head_gate``, so it waits for the head as the sparsity term does).
``--fill V`` makes psi(x) = m * x + (1 - m) * V: removed pixels grey instead
of black. Trained by patching ``sklearn_cim`` in this process only.

Measured on the own-images benchmark's tuning seeds (2026-12-07; rows in
``benchmarks/results/2026-12-07-cpu-localisation-tuning.jsonl``, the Results
page's "Localising the nuisance")::

    python benchmarks/nuisance_map_trial.py --map-weight 3 --map-cut 0.25 -- \\
        --mnist ../shared/data/mnist --seed 10 --cim '{"mask_weight": 0.0}' \\
        --models "group CIM -> LR" "group CIM -> CNN" --out OUT.jsonl

Everything after ``--`` goes to ``benchmarks/own_images_64px.py``; each row it
writes to ``--out`` gets a ``trial`` field with the map's settings. For
``benchmarks/nuisance_results.py``, patch in a process of its own::

    cd benchmarks && python -c "import sys, nuisance_map_trial as t; \\
        t.patch(3.0, 0.25, 'auto', gate=True, probe_epochs=30, probe_lr=1e-2); \\
        import nuisance_results; nuisance_results.main(sys.argv[1:])" \\
        --seeds 10 --image-size 16 --epochs 30 --group-cim '{"mask_weight": 0.0}'
"""

import argparse
import json
import math
import os
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))


def probe_net(channels, n_groups, width, window):
    """Fully convolutional: each output pixel sees a ``window`` x ``window``
    square of the input (1, 3 or 5)."""
    first = 3 if window > 1 else 1
    extra = [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()] if window == 5 else []
    return nn.Sequential(nn.Conv2d(channels, width, first, padding=first // 2), nn.ReLU(),
                         *extra, nn.Conv2d(width, width, 1), nn.ReLU(),
                         nn.Conv2d(width, n_groups, 1))


def window_for(side, window):
    """``"auto"``: the window grows with the image, 1 px at 16, 3 at 32, 5 at 64
    (a stroke is about as many pixels wide)."""
    if window != "auto":
        return int(window)
    return 1 if side < 24 else 3 if side < 48 else 5


def train_probe(images, groups, seed, *, window, width=16, epochs=10, lr=3e-3, batch=64):
    """The per-pixel group probe on the training images, each group weighing
    the same; frozen, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    n_groups = int(groups.max()) + 1
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = probe_net(images.shape[1], n_groups, width, window).to(images.device)
    counts = torch.bincount(groups, minlength=n_groups).float()
    weights = (len(groups) / (n_groups * counts.clamp_min(1)))[groups]
    opt = torch.optim.Adam(probe.parameters(), lr)
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(images), batch):
            rows = order[start:start + batch]
            logits = probe(images[rows])
            target = groups[rows][:, None, None].expand(-1, *logits.shape[-2:])
            ce = F.cross_entropy(logits, target, reduction="none").mean((1, 2))
            loss = (ce * weights[rows]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe.eval().requires_grad_(False)


def nuisance_map(probe, x, groups, cut):
    """Per pixel, how far the probe's window names the image's group, in [0, 1]."""
    with torch.no_grad():
        logp = probe(x.float()).log_softmax(1)
        n_groups = logp.shape[1]
        true = logp.gather(1, groups[:, None, None, None].expand(-1, 1, *logp.shape[-2:]))[:, 0]
        info = ((true + math.log(n_groups)) / math.log(n_groups)).clamp(0, 1)
        return ((info - cut) / (1 - cut)).clamp(0, 1)


def patch(weight, cut, window, gate=False, probe_epochs=10, probe_lr=3e-3):
    """Train the probe at the start of every group-aware CIM fit in this
    process and add the map term to its loss (with ``gate``, weighted in each
    batch by ``head_gate``, as the sparsity term is; a CNN head)."""
    from sklearn_cim._objective import CIMNet, head_gate
    begin, terms_of = CIMNet.on_train_begin, CIMNet.loss_terms

    def on_train_begin(self, net, X=None, y=None, **kwargs):
        begin(self, net, X=X, y=y, **kwargs)
        self.trial_probe_ = None
        if X.groups is not None and weight > 0:
            images = X.images(torch.arange(len(X)))
            # a tuple: skorch allows modules only in its registries
            side = window_for(images.shape[-1], window)
            self.trial_probe_ = (train_probe(images, X.groups, self.seed, window=side,
                                             epochs=probe_epochs, lr=probe_lr),)

    def loss_terms(self, y_pred, targets, X):
        terms = terms_of(self, y_pred, targets, X)
        groups = targets[1]
        if getattr(self, "trial_probe_", None) is not None and groups is not None:
            where = nuisance_map(self.trial_probe_[0], X, groups, cut)
            scale = (head_gate(y_pred[2], targets[0], self.row_weights(targets[0], groups))
                     if gate else 1.0)
            terms["nuisance_map"] = (weight * scale,
                                     (y_pred[0].float().mean(1) * where).mean())
        return terms

    CIMNet.on_train_begin, CIMNet.loss_terms = on_train_begin, loss_terms
    CIMNet.fit_scoped = CIMNet.fit_scoped + ("trial_probe_",)


def patch_fill(value):
    """psi(x) = m * x + (1 - m) * ``value`` (in [0, 1] units) instead of
    m * x, in training, in ``transform`` and in the removal check: removed
    pixels become a neutral grey rather than black, so that an object's dark
    edge stays visible without a halo of its surroundings."""
    import numpy as np

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
    p.add_argument("--map-window", choices=["1", "3", "5", "auto"], default="5")
    p.add_argument("--map-gate", action="store_true",
                   help="the map term waits for the head, as the sparsity term does")
    p.add_argument("--fill", type=float, default=None,
                   help="removed pixels become this grey (in [0, 1]) instead of 0")
    p.add_argument("--probe-epochs", type=int, default=10)
    p.add_argument("--probe-lr", type=float, default=3e-3)
    args = p.parse_args(argv[:split])
    rest = argv[split + 1:]
    sys.path.insert(0, HERE)
    import own_images_64px
    bench = own_images_64px.parse(rest)
    if bench.seed is None:
        raise SystemExit("give one --seed after --: the trial runs in this process")
    patch(args.map_weight, args.map_cut, args.map_window, args.map_gate,
          args.probe_epochs, args.probe_lr)
    if args.fill is not None:
        patch_fill(args.fill)
    handle, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(handle)
    out, bench.out = bench.out, path
    try:
        own_images_64px.run_seed(bench)
        window = args.map_window if args.map_window == "auto" else int(args.map_window)
        trial = dict(map_weight=args.map_weight, map_cut=args.map_cut,
                     map_window=window, map_gate=args.map_gate,
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
