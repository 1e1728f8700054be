"""Distances between images used by the triplet loss.

A distance works in two stages so that each image goes through a perceptual
trunk at most once per training step:

* ``embed(x)``: images ``(N, C, H, W)`` in [0, 1] -> an embedding (a list of
  tensors, each with the sample axis first);
* ``between(ea, eb)``: per-sample distances ``(N,)`` of two aligned embeddings;
* ``pairwise(e)``: the ``(N, N)`` matrix of distances, used by hard mining.

Scale of each distance (what ``margin`` is measured in):

========================  =====================================================
``"lpips-alex|vgg|squeeze"``  LPIPS; 0 for identical images, typically 0.1-0.7
                          between different natural images (higher = more
                          different).
``"ssim"``                ``1 - SSIM`` (Gaussian window 11, sigma 1.5); in
                          [0, 2], 0 for identical images.
``"l2"``                  root-mean-square pixel difference in [0, 1] units
                          (Euclidean distance / sqrt(C*H*W)).
callable                  whatever ``(a, b) -> (N,)`` returns.
========================  =====================================================
"""

import os
import re
import warnings

import torch
import torch.nn.functional as F

LPIPS_TRUNKS = {"lpips-alex": "alex", "lpips-vgg": "vgg", "lpips-squeeze": "squeeze"}
# Smallest image side each trunk accepts (alex: 31 px, rounded up to 32).
LPIPS_MIN_SIDE = {"alex": 32, "vgg": 16, "squeeze": 17}
DISTANCES = tuple(LPIPS_TRUNKS) + ("ssim", "l2")
_SSIM_WINDOW = 11
_PAIRWISE_CHUNK = 4096


def _fit_min_side(x, min_side):
    """Upsample (bilinear) so that both image sides are at least ``min_side``."""
    h, w = x.shape[-2:]
    if h >= min_side and w >= min_side:
        return x
    size = (max(h, min_side), max(w, min_side))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def _take(embedding, index):
    return [e[index] for e in embedding]


class Distance:
    """Base class: a distance defined directly on images.

    Subclasses override :meth:`image_distance`; the generic ``pairwise`` pairs
    every sample with every other one in chunks.
    """

    def to(self, device):
        return self

    def use_channels_last(self):
        """Keep any weights in channels_last memory format (faster on CUDA)."""
        return self

    def embed(self, x):
        return [x]

    def take(self, embedding, index):
        return _take(embedding, index)

    def between(self, ea, eb):
        return self.image_distance(ea[0], eb[0])

    def pairwise(self, e):
        x = e[0]
        n = x.shape[0]
        rows, cols = torch.meshgrid(
            torch.arange(n, device=x.device), torch.arange(n, device=x.device),
            indexing="ij",
        )
        rows, cols = rows.reshape(-1), cols.reshape(-1)
        out = torch.cat([
            self.image_distance(x[rows[s:s + _PAIRWISE_CHUNK]],
                                x[cols[s:s + _PAIRWISE_CHUNK]])
            for s in range(0, n * n, _PAIRWISE_CHUNK)
        ])
        return out.reshape(n, n)

    def __call__(self, a, b):
        """Per-sample distances between two image batches ``(N, C, H, W)``."""
        return self.between(self.embed(a), self.embed(b))


class L2Distance(Distance):
    """Root-mean-square pixel difference."""

    def embed(self, x):
        return [x.reshape(x.shape[0], -1)]

    def between(self, ea, eb):
        return ((ea[0] - eb[0]) ** 2).mean(dim=1).add(1e-12).sqrt()

    def pairwise(self, e):
        x = e[0]
        sq = (x * x).sum(dim=1)
        d2 = (sq[:, None] + sq[None, :] - 2.0 * x @ x.T).clamp_min(0)
        return d2.div(x.shape[1]).add(1e-12).sqrt()


class SSIMDistance(Distance):
    """``1 - SSIM`` with an 11x11 Gaussian window (sigma 1.5), data range 1.

    Follows Wang et al. (2004) as computed by ``skimage.metrics.
    structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``: local statistics with a
    Gaussian window, the SSIM map averaged over the valid region and channels.
    Images smaller than the window are upsampled to 11 px.
    """

    def __init__(self, sigma=1.5, k1=0.01, k2=0.03):
        coords = torch.arange(_SSIM_WINDOW, dtype=torch.float64) - _SSIM_WINDOW // 2
        g = torch.exp(-(coords ** 2) / (2 * sigma ** 2))
        g = (g / g.sum()).float()
        self.window = torch.outer(g, g)[None, None]
        self.c1, self.c2 = k1 ** 2, k2 ** 2

    def to(self, device):
        self.window = self.window.to(device)
        return self

    def embed(self, x):
        return [_fit_min_side(x, _SSIM_WINDOW)]

    def image_distance(self, a, b):
        # float32 without autocast: var = E[x^2] - mu^2 cancels badly in bf16
        with torch.autocast(device_type=a.device.type, enabled=False):
            return self._ssim_distance(a.float(), b.float())

    def _ssim_distance(self, a, b):
        n, c, h, w = a.shape
        win = self.window.to(dtype=a.dtype)
        stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)
        stats = F.conv2d(stacked.reshape(-1, 1, h, w), win).reshape(
            n, 5 * c, h - _SSIM_WINDOW + 1, w - _SSIM_WINDOW + 1)
        mu_a, mu_b, aa, bb, ab = stats.split(c, dim=1)
        var_a = aa - mu_a * mu_a
        var_b = bb - mu_b * mu_b
        cov = ab - mu_a * mu_b
        ssim = ((2 * mu_a * mu_b + self.c1) * (2 * cov + self.c2)) / (
            (mu_a * mu_a + mu_b * mu_b + self.c1) * (var_a + var_b + self.c2)
        )
        return 1.0 - ssim.mean(dim=(1, 2, 3))


class CallableDistance(Distance):
    """Wraps a user function ``(a, b) -> per-sample distances``."""

    def __init__(self, fn):
        self.fn = fn

    def image_distance(self, a, b):
        out = self.fn(a, b)
        if not isinstance(out, torch.Tensor) or out.shape != (a.shape[0],):
            raise ValueError(
                "A callable distance must return a torch tensor of shape (n_samples,) "
                f"(one distance per pair); got {type(out).__name__} of shape "
                f"{tuple(getattr(out, 'shape', ()))}. Reduce over all but the first axis."
            )
        return out


class TrunkWeightsUnavailableError(RuntimeError):
    """The pretrained ImageNet trunk of an LPIPS distance could not be obtained.

    ``CIMTransformer.fit`` raises it (with ``pretrained=True``, the default) when
    torchvision's cache lacks the trunk and it cannot be downloaded; the message
    names the cache file. Catch it to fall back to ``pretrained=False`` or
    another ``distance``.

    Examples
    --------
    >>> from sklearn_cim import TrunkWeightsUnavailableError
    >>> issubclass(TrunkWeightsUnavailableError, RuntimeError)
    True
    """


def _trunk_weight_file(trunk):
    import torchvision.models as tvm

    weights = {
        "alex": tvm.AlexNet_Weights.IMAGENET1K_V1,
        "vgg": tvm.VGG16_Weights.IMAGENET1K_V1,
        "squeeze": tvm.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }[trunk]
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def lpips_calibration_file(trunk):
    """Path of the linear calibration weights (v0.1) shipped with ``lpips``."""
    import lpips

    return os.path.join(os.path.dirname(os.path.abspath(lpips.__file__)), "weights", "v0.1",
                        f"{trunk}.pth")


def _load_calibration(model, trunk):
    """Load the shipped ``lin*`` calibration into ``model`` and check every key
    was used (lpips itself loads it with ``strict=False``, which skips a file
    whose keys do not match the layers without a word)."""
    path = lpips_calibration_file(trunk)
    state = torch.load(path, map_location="cpu", weights_only=True)
    # lin0, lin1, ... (``lins.N`` names the same tensors again)
    lin_keys = {k for k in model.state_dict() if re.match(r"lin\d+\.", k)}
    if set(state) != lin_keys:
        raise RuntimeError(
            f"The LPIPS calibration file {path} holds {sorted(state)}, but the '{trunk}' "
            f"metric's linear layers are {sorted(lin_keys)}; the installed lpips package "
            "does not match the one this code was written for (lpips 0.1.4)."
        )
    model.load_state_dict(state, strict=False)


def load_lpips(trunk, pretrained):
    """Build a frozen ``lpips.LPIPS`` in eval mode, with its calibration.

    ``pretrained=True`` takes the ImageNet trunk from torchvision's cache
    (downloading it when online); ``pretrained=False`` uses a random trunk. The
    linear calibration layers (non-negative channel weights learned from human
    judgements) ship with the ``lpips`` package and are loaded either way,
    with a check that every weight was taken from the file. The model keeps
    lpips's Dropout layers (their keys are the file's) and stays in eval mode,
    where they do nothing.
    """
    import lpips

    with warnings.catch_warnings():
        # torchvision 0.29 warns about lpips's use of ``pretrained=``.
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*",
                                category=UserWarning)
        try:
            # lpips's own pretrained=True would load the calibration with
            # strict=False; it is loaded and checked below instead.
            model = lpips.LPIPS(net=trunk, pretrained=False, pnet_rand=not pretrained,
                                verbose=False)
        except Exception as exc:  # network, file or hash errors from torch.hub
            if not pretrained:
                raise
            raise TrunkWeightsUnavailableError(
                f"Could not obtain the pretrained ImageNet '{trunk}' trunk that LPIPS "
                f"needs ({type(exc).__name__}: {exc}). Torchvision looks for "
                f"'{_trunk_weight_file(trunk)}' in the torch hub cache "
                f"('{torch.hub.get_dir()}', set by $TORCH_HOME). Copy the file "
                "there from a machine that is online, or pass pretrained=False to "
                "use a randomly initialised trunk (a weaker perceptual metric), or "
                "choose distance='ssim' or 'l2'."
            ) from exc
    _load_calibration(model, trunk)
    model.eval()
    model.requires_grad_(False)
    return model


class LPIPSDistance(Distance):
    """LPIPS (Zhang et al. 2018) computed from per-image trunk features.

    ``between`` equals ``lpips.LPIPS.forward`` on the same pair; because the
    metric is a weighted squared difference of unit-normalised features, the
    pairwise matrix comes from Gram products, without pairing images.
    Grayscale is repeated to 3 channels, [0, 1] is mapped to [-1, 1], and images
    are upsampled to the trunk's minimum side.
    """

    def __init__(self, trunk="alex", pretrained=True):
        self.trunk = trunk
        self.model = load_lpips(trunk, pretrained)
        self.weights = [lin.model[-1].weight.detach().reshape(-1)
                        for lin in self.model.lins]

    def to(self, device):
        self.model.to(device)
        self.weights = [w.to(device) for w in self.weights]
        return self

    def use_channels_last(self):
        self.model.to(memory_format=torch.channels_last)
        return self

    def embed(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise ValueError(
                f"LPIPS compares 1- or 3-channel images, got {x.shape[1]} channels. "
                "Use distance='ssim' or 'l2' for other channel counts."
            )
        x = _fit_min_side(x, LPIPS_MIN_SIDE[self.trunk])
        if self.model.training:  # pinned to eval mode, whoever switched it
            self.model.eval()
        feats = self.model.net(self.model.scaling_layer(2.0 * x - 1.0))
        return [f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10) for f in feats]

    def between(self, ea, eb):
        total = 0.0
        for fa, fb, w in zip(ea, eb, self.weights):
            diff = (fa - fb).pow(2)
            total = total + torch.einsum("nchw,c->n", diff, w.to(diff.dtype)) / (
                diff.shape[2] * diff.shape[3])
        return total

    def pairwise(self, e):
        total = 0.0
        for f, w in zip(e, self.weights):
            n, c, h, wd = f.shape
            w = w.to(f.dtype)
            weighted = f * w[None, :, None, None]
            sq = (weighted * f).sum(dim=(1, 2, 3))
            gram = weighted.reshape(n, -1) @ f.reshape(n, -1).T
            total = total + (sq[:, None] + sq[None, :] - 2.0 * gram) / (h * wd)
        return total


def make_distance(distance, pretrained=True):
    """Return the :class:`Distance` for a name or callable."""
    if callable(distance):
        return CallableDistance(distance)
    if distance in LPIPS_TRUNKS:
        return LPIPSDistance(LPIPS_TRUNKS[distance], pretrained=pretrained)
    if distance == "ssim":
        return SSIMDistance()
    if distance == "l2":
        return L2Distance()
    raise ValueError(
        f"distance={distance!r} is unknown; choose one of {DISTANCES} or pass a "
        "callable (a, b) -> per-sample distances."
    )
