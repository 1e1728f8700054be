"""A trial, not part of the package: a nuisance map for the group CIM's mask.

Before training the mask, a small fully convolutional probe (two 3x3 convs
and two 1x1 convs: a 5x5 window; ``--map-window 3``: one 3x3 conv) learns to
read each training image's group at every pixel, every group weighing the
same. Its map, ``(log p(true group | window) + log G) / log G`` clipped to
[0, 1] (0: the window says nothing about the group; 1: it names it), cut at
``--map-cut`` and rescaled to [0, 1], is where the nuisance is readable; the
mask then pays ``--map-weight * mean(m * map)`` on top of the objective.
Trained by patching ``sklearn_cim._objective.CIMNet`` in this process only.

Measured on the own-images benchmark's tuning seeds (2026-12-07; rows in
``benchmarks/results/2026-12-07-cpu-localisation-tuning.jsonl``, the Results
page's "Localising the nuisance")::

    python benchmarks/nuisance_map_trial.py --map-weight 3 --map-cut 0.25 -- \\
        --mnist ../shared/data/mnist --seed 10 --cim '{"mask_weight": 0.0}' \\
        --models "group CIM -> LR" "group CIM -> CNN" --out OUT.jsonl

Everything after ``--`` goes to ``benchmarks/own_images_64px.py``; each row it
writes to ``--out`` gets a ``trial`` field with the map's settings.
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
    extra = [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()] if window == 5 else []
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), *extra,
                         nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, n_groups, 1))


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


def patch(weight, cut, window, gate=False):
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
            self.trial_probe_ = (train_probe(images, X.groups, self.seed, window=window),)

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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--map-weight", type=float, default=3.0)
    p.add_argument("--map-cut", type=float, default=0.25)
    p.add_argument("--map-window", type=int, choices=[3, 5], default=5)
    p.add_argument("--map-gate", action="store_true",
                   help="the map term waits for the head, as the sparsity term does")
    args = p.parse_args(argv[:split])
    rest = argv[split + 1:]
    sys.path.insert(0, HERE)
    import own_images_64px
    bench = own_images_64px.parse(rest)
    if bench.seed is None:
        raise SystemExit("give one --seed after --: the trial runs in this process")
    patch(args.map_weight, args.map_cut, args.map_window, args.map_gate)
    handle, path = tempfile.mkstemp(suffix=".jsonl")
    os.close(handle)
    out, bench.out = bench.out, path
    try:
        own_images_64px.run_seed(bench)
        trial = dict(map_weight=args.map_weight, map_cut=args.map_cut,
                     map_window=args.map_window, map_gate=args.map_gate)
        with open(bench.out) as f, open(out, "a") as g:
            for line in f:
                g.write(json.dumps({**json.loads(line), "trial": trial}) + "\n")
    finally:
        if os.path.exists(bench.out):
            os.remove(bench.out)


if __name__ == "__main__":
    main()
