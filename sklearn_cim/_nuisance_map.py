"""The nuisance map: where in each training image its group can be read.

Before the mask trains, a small fully convolutional probe learns to name each
training image's group at every pixel from a window about a stroke wide
(:func:`window_for`), every group weighing the same. Its map
(:func:`nuisance_map`) is, per pixel, how far that window names the image's
own group: 0 where it says nothing (chance), 1 where it is certain. The
group-aware objective's map term, ``map_weight * mean(m * map)``, makes the
mask pay for keeping those pixels (a background colour, a patch, a mark)
and nothing for keeping the others, where a uniform sparsity term
(``mask_weight * mean(m)``) pays for every pixel kept, the object's too.

Measured on the 64 px photo scenes, the digits and MNIST splits (the docs'
Results, "Localising the nuisance"); the trial that chose its settings is
``benchmarks/nuisance_map_trial.py``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ._seeding import seeded_global_rng

#: Training images :func:`map_coverage` reads.
COVERAGE_ROWS = 256

#: Map values below this (a window that names its group little better than
#: chance) count 0; the rest is rescaled to [0, 1].
MAP_CUT = 0.25
#: The probe's training: epochs over the training images, Adam's lr, batch size
#: and channel width. 30 epochs at 0.01: at 10 epochs (lr 3e-3) it had not
#: learned a 16 px corner patch (map 0.00 on it; 0.73 after 30).
PROBE_EPOCHS = 30
PROBE_LR = 1e-2
PROBE_BATCH = 64
PROBE_WIDTH = 16


def window_for(side):
    """The probe's window (pixels square) for images ``side`` px wide: 1 below
    24 px, 3 below 48, 5 from 48, about a stroke's width. A wider window
    reads the background's colour through a thin stroke's pixels and the map
    flags the object (at 16 px, 5 px windows: 0.83 on the ink)."""
    return 1 if side < 24 else 3 if side < 48 else 5


def probe_net(channels, n_groups, width, window):
    """Fully convolutional: each output pixel sees a ``window`` x ``window``
    square of the input (1, 3 or 5)."""
    first = 3 if window > 1 else 1
    extra = [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()] if window == 5 else []
    return nn.Sequential(nn.Conv2d(channels, width, first, padding=first // 2), nn.ReLU(),
                         *extra, nn.Conv2d(width, width, 1), nn.ReLU(),
                         nn.Conv2d(width, n_groups, 1))


def train_probe(images, n, groups, seed, *, device, epochs=None, lr=None):
    """The per-pixel group probe, trained on the ``n`` images that
    ``images(rows)`` returns (unit-range ``(B, C, H, W)`` on ``device``, a batch
    at a time), each group weighing the same; frozen, in eval mode, float32.

    Its initialisation and batch order are drawn from ``seed`` alone: the same
    probe in every process of a data-parallel fit (up to the device's
    nondeterminism) and when a fit is resumed. ``epochs`` and ``lr``: None
    reads :data:`PROBE_EPOCHS` and :data:`PROBE_LR`."""
    epochs = PROBE_EPOCHS if epochs is None else epochs
    lr = PROBE_LR if lr is None else lr
    groups = torch.as_tensor(groups, device=device)
    first = images(torch.arange(min(n, PROBE_BATCH)))
    n_groups = int(groups.max()) + 1
    window = window_for(first.shape[-1])
    with seeded_global_rng(seed, device):
        probe = probe_net(first.shape[1], n_groups, PROBE_WIDTH, window).to(device)
    counts = torch.bincount(groups, minlength=n_groups).float()
    weights = (n / (n_groups * counts.clamp_min(1)))[groups]
    order_generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(probe.parameters(), lr)
    with torch.autocast(device_type=torch.device(device).type, enabled=False):
        for _ in range(epochs):
            order = torch.randperm(n, generator=order_generator)
            order_on_device = order.to(groups.device)  # one copy an epoch, not one a batch
            for start in range(0, n, PROBE_BATCH):
                rows = order[start:start + PROBE_BATCH]
                logits = probe(images(rows).float())
                on_device = order_on_device[start:start + PROBE_BATCH]
                target = groups[on_device][:, None, None].expand(-1, *logits.shape[-2:])
                ce = F.cross_entropy(logits, target, reduction="none").mean((1, 2))
                loss = (ce * weights[on_device]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return probe.eval().requires_grad_(False)


def nuisance_map(probe, x, groups, cut=None):
    """Per pixel of the images ``x``, how far the probe's window names each
    image's group (``groups``), ``(B, H, W)`` in [0, 1]: ``(log p(group |
    window) + log G) / log G`` (0 at chance, 1 when certain) clipped to [0, 1],
    values under ``cut`` (None: :data:`MAP_CUT`) set to 0 and the rest
    rescaled to [0, 1]. No gradient."""
    cut = MAP_CUT if cut is None else cut
    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        logp = probe(x.float()).log_softmax(1)
        n_groups = logp.shape[1]
        true = logp.gather(1, groups[:, None, None, None].expand(-1, 1, *logp.shape[-2:]))[:, 0]
        info = ((true + math.log(n_groups)) / math.log(n_groups)).clamp(0, 1)
        return ((info - cut) / (1 - cut)).clamp(0, 1)


def map_coverage(probe, images, n, groups):
    """The share of pixels the map marks (> 0) on up to :data:`COVERAGE_ROWS`
    of the ``n`` training images ``images(rows)`` (spread over the set), their
    groups ``groups``. 0: the probe reads the group nowhere, and the map term
    costs nothing."""
    rows = torch.arange(0, n, max(1, n // COVERAGE_ROWS))[:COVERAGE_ROWS]
    groups = torch.as_tensor(groups)
    marked = nuisance_map(probe, images(rows), groups[rows.to(groups.device)]) > 0
    return float(marked.float().mean())
