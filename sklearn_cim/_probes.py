"""Probes: small classifiers trained on the side of a fit to read what images
carry (the removal check's, :mod:`sklearn_cim._removal`, and the bias proxy of
group inference, :mod:`sklearn_cim._groups`).

One training loop serves them all (:func:`train_probe`): Adam on seeded
batches drawn from rows of an image tensor, optionally with a weight per image;
initial weights come from torch's global RNG seeded under the package's lock
(:func:`seeded_net`), so probes in concurrent threads do not mix their draws.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ._seeding import seeded_global_rng


def pooled(images, max_side):
    """``(n, C, H, W)`` images as a float32 tensor, average-pooled so that their
    longer side is at most ``max_side`` (the aspect kept)."""
    images = torch.as_tensor(np.ascontiguousarray(images), dtype=torch.float32)
    side = max(images.shape[-2:])
    if side > max_side:
        scale = max_side / side
        size = tuple(max(1, round(s * scale)) for s in images.shape[-2:])
        images = F.adaptive_avg_pool2d(images, size)
    return images


def seeded_net(factory, seed):
    """``factory()`` built on the CPU from torch's global RNG seeded by ``seed``,
    under the lock that fits in other threads take for theirs (only the CPU
    generator is seeded, and restored)."""
    with seeded_global_rng(seed, "cpu"):
        return factory()


def train_probe(net, images, labels, rows, *, epochs, batch_size, lr, generator,
                device="cpu", weights=None):
    """Train ``net`` (moved to ``device``) on ``images[rows]`` (a CPU tensor)
    with cross-entropy against ``labels``: ``epochs`` passes in orders drawn
    from ``generator``. With ``weights`` (one per image), each pass draws
    ``len(rows)`` images with replacement in proportion to them instead (a
    weighted loss with weights a hundred times apart makes Adam's steps
    erratic; drawn images weigh the same)."""
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    rows = torch.as_tensor(rows)
    for _ in range(epochs):
        if weights is None:
            order = rows[torch.randperm(len(rows), generator=generator)]
        else:
            order = rows[torch.multinomial(torch.as_tensor(weights, dtype=torch.float32)[rows],
                                           len(rows), replacement=True, generator=generator)]
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(net(images[batch].to(device)), labels[batch].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net


@torch.no_grad()
def predict_rows(net, images, rows, device="cpu", chunk=1024, proba=False):
    """The class ``net`` predicts for ``images[rows]`` (with ``proba``, the
    softmax of its outputs), as a numpy array."""
    net.eval()
    rows = torch.as_tensor(rows)
    out = []
    for s in range(0, len(rows), chunk):
        logits = net(images[rows[s:s + chunk]].to(device)).float()
        out.append((torch.softmax(logits, 1) if proba else logits.argmax(1)).cpu())
    net.train()
    if not out:
        return np.empty((0,), np.int64)
    return torch.cat(out).numpy()
