"""Torch modules: the transformation network (mask net) and classifier heads.

All modules take images ``(N, C, H, W)`` in [0, 1] and work for any image size
(1x1 included): pooling skips sides of length 1 and decoder stages are resized
to their skip connection.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# Output bias of the mask net: sigmoid(2) ~ 0.88, so psi(x) starts close to x.
MASK_INIT_LOGIT = 2.0


def _pool(h):
    kernel = tuple(2 if side > 1 else 1 for side in h.shape[-2:])
    return F.max_pool2d(h, kernel, ceil_mode=True)


class _ConvBlock(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        groups = math.gcd(8, out_channels)
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )


class MaskNet(nn.Module):
    """Transformation network: a small U-Net whose sigmoid output is the mask.

    Parameters
    ----------
    in_channels : int
        Image channels C.
    width : int
        Channels of the first stage; stage ``i`` has ``width * 2**i``.
    depth : int
        Number of down-sampling stages (0 gives a plain conv net).
    per_channel : bool
        One mask per colour channel instead of one broadcast over channels.
    """

    def __init__(self, in_channels, width=16, depth=2, per_channel=False):
        super().__init__()
        chans = [width * 2 ** i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [_ConvBlock(in_channels, chans[0])]
            + [_ConvBlock(chans[i], chans[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [_ConvBlock(chans[i + 1] + chans[i], chans[i]) for i in reversed(range(depth))]
        )
        self.out = nn.Conv2d(chans[0], in_channels if per_channel else 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.constant_(self.out.bias, MASK_INIT_LOGIT)

    def forward(self, x):
        skips = []
        h = x
        for i, block in enumerate(self.down):
            h = block(_pool(h) if i else h)
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(torch.cat([h, skip], dim=1))
        return torch.sigmoid(self.out(h))


class ConvEncoder(nn.Sequential):
    """Two conv stages and a 4x4 adaptive pool, flattened to ``8 * width`` * 2."""

    def __init__(self, in_channels, width=32):
        super().__init__(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            _Pool(),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
        )
        self.out_features = 2 * width * 16


class _Pool(nn.Module):
    def forward(self, h):
        return _pool(h)


class ConvClassifier(nn.Module):
    """Auxiliary classifier head on psi(x): :class:`ConvEncoder` + linear layer."""

    def __init__(self, in_channels, n_classes, width=32):
        super().__init__()
        self.encoder = ConvEncoder(in_channels, width)
        self.linear = nn.Linear(self.encoder.out_features, n_classes)

    def forward(self, x):
        return self.linear(self.encoder(x))


class MLPEncoder(nn.Sequential):
    """Fully connected ReLU layers on flat features ``(N, F)``.

    Unlike the modules above it reads plain feature vectors, not images.
    ``hidden_layer_sizes=()`` gives the identity; ``out_features`` is the width
    of the last layer (``in_features`` when there is none).
    """

    def __init__(self, in_features, hidden_layer_sizes=(1024, 1024)):
        layers = []
        width = in_features
        for size in hidden_layer_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
            width = size
        super().__init__(*layers)
        self.out_features = width


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -grad


def reverse_gradient(x):
    """Identity forward; the gradient flows back negated (Ganin & Lempitsky 2015)."""
    return _ReverseGradient.apply(x)


class NuisanceAdversary(nn.Module):
    """A linear model predicting the group (nuisance) from the flattened psi(x).

    Trained to predict the group while the mask net, through a gradient
    reversal, is trained to defeat it: what a linear model downstream could read
    of the nuisance is what the mask is pushed to remove.
    """

    def __init__(self, n_features, n_groups):
        super().__init__()
        self.linear = nn.Linear(n_features, n_groups)

    def forward(self, psi):
        return self.linear(reverse_gradient(psi).flatten(1))
