"""Torch modules: the transformation network (mask net), the classifier heads,
the VIB encoder-decoder and the CIM module that joins a mask net and a head.

Image modules take ``(N, C, H, W)`` in [0, 1] and work for any image size
(1x1 included): pooling skips sides of length 1 and decoder stages are resized
to their skip connection.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# sigma = softplus(raw - SIGMA_SHIFT): the encoder starts nearly deterministic
# (sigma ~ 0.007), as in Alemi et al.
SIGMA_SHIFT = 5.0
# Floor under sigma inside log(sigma) only, so that the KL stays finite (and
# beta=0 gives no 0 * inf) if sigma underflows to 0 in float32.
_MIN_SIGMA = 1e-30
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


class LocalCueClassifier(nn.Module):
    """A classifier that sees only 3x3 neighbourhoods: a 3x3 and a 1x1 conv,
    then the maximum and the mean of each feature over the image, and a
    linear layer. It reads colour, texture and small marks wherever they are,
    but not the shape of an object larger than its window: the bias proxy of
    ``infer_groups="local"``."""

    def __init__(self, in_channels, n_classes, width=16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 1), nn.ReLU(inplace=True))
        self.linear = nn.Linear(2 * width, n_classes)

    def forward(self, x):
        h = self.features(x)
        return self.linear(torch.cat([h.amax((2, 3)), h.mean((2, 3))], dim=1))


class NuisanceAdversary(nn.Module):
    """The group adversary of versions before 0.2 (a linear model on psi(x)
    behind a gradient reversal; removed: it lowered OOD accuracy). Kept so
    that pickles holding one still load; nothing trains or calls it."""

    def __init__(self, n_features, n_groups):
        super().__init__()
        self.linear = nn.Linear(n_features, n_groups)


def gaussian_kl(mu, sigma):
    """KL(N(mu, diag sigma^2) || N(0, I)): sum over latent dims, batch mean."""
    log_var = 2.0 * torch.log(sigma.clamp_min(_MIN_SIGMA))
    return 0.5 * (mu.square() + sigma.square() - 1.0 - log_var).sum(-1).mean()


class VIBModule(nn.Module):
    """Stochastic encoder p(z|x) and linear decoder q(y|z).

    ``forward(x)`` returns ``(mu, sigma)`` of p(z|x); ``decode(z)`` returns
    class logits. Inputs are flat features ``(N, F)`` for ``in_shape=(F,)``
    (MLP encoder) or images ``(N, C, H, W)`` for ``in_shape=(C, H, W)``
    (:class:`ConvEncoder`, then the MLP layers on its flattened output).
    """

    def __init__(self, in_shape, n_classes, latent_dim=256,
                 hidden_layer_sizes=(1024, 1024), conv_width=32):
        super().__init__()
        in_shape = tuple(in_shape)
        if len(in_shape) == 3:
            conv = ConvEncoder(in_shape[0], conv_width)
            mlp = MLPEncoder(conv.out_features, hidden_layer_sizes)
            self.encoder = nn.Sequential(conv, mlp)
        else:
            mlp = MLPEncoder(in_shape[0], hidden_layer_sizes)
            self.encoder = mlp
        self.stats = nn.Linear(mlp.out_features, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, n_classes)

    def forward(self, x):
        mu, raw = self.stats(self.encoder(x)).chunk(2, dim=-1)
        return mu, F.softplus(raw - SIGMA_SHIFT)

    def decode(self, z):
        return self.decoder(z)

    def sample_logits(self, mu, sigma, generator, n_samples=1):
        """Logits ``(n_samples, N, n_classes)`` of reparameterised draws
        ``z = mu + sigma * eps``, ``eps`` from ``generator``."""
        eps = torch.randn((n_samples,) + tuple(mu.shape), generator=generator,
                          device=mu.device, dtype=mu.dtype)
        return self.decode(mu + sigma * eps)


#: A hard mask keeps a pixel where the mask net's output is at least this.
HARD_MASK_CUT = 0.5


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, mask):
        return (mask >= HARD_MASK_CUT).to(mask.dtype)

    @staticmethod
    def backward(ctx, grad):
        return grad


def hard_mask(mask):
    """``1[mask >= 0.5]``; its gradient flows to ``mask`` as if it were the
    identity (a straight-through estimator, Bengio et al. 2013)."""
    return _StraightThrough.apply(mask)


class CIMModule(nn.Module):
    """Mask net and auxiliary head: ``x -> (m, psi(x), head(psi(x)))``.

    ``head="cnn"``: a :class:`ConvClassifier` giving logits. ``head="vib"``: a
    :class:`VIBModule` on images (its conv encoder, latent size
    ``2 * head_width``) giving ``(mu, sigma)`` of p(z|psi(x)). With ``hard``
    set True (by the objective, before training), psi(x) keeps each pixel
    whole or drops it (:func:`hard_mask` of the mask net's output ``m``, which
    is what is returned as the mask).
    """

    #: psi(x) from the hard mask; modules pickled before it existed read False
    hard = False

    def __init__(self, image_shape, n_classes, tn_width=16, tn_depth=2,
                 per_channel_mask=False, head="cnn", head_width=32):
        super().__init__()
        in_channels = image_shape[0]
        self.mask_net = MaskNet(in_channels, tn_width, tn_depth, per_channel_mask)
        if head == "vib":
            self.head = VIBModule(image_shape, n_classes, latent_dim=2 * head_width,
                                  hidden_layer_sizes=(), conv_width=head_width)
        else:
            self.head = ConvClassifier(in_channels, n_classes, head_width)

    def forward(self, x):
        mask = self.mask_net(x)
        psi = (hard_mask(mask) if self.hard else mask) * x
        return mask, psi, self.head(psi)

    def masked(self, x):
        """psi(x) alone (as in :meth:`forward`)."""
        mask = self.mask_net(x)
        return (hard_mask(mask) if self.hard else mask) * x
