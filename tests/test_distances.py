"""Distances: agreement with references, pairwise consistency, LPIPS hygiene."""

import warnings

import numpy as np
import pytest
import torch

from sklearn_cim import CIMTransformer
from sklearn_cim._distances import (
    L2Distance,
    LPIPSDistance,
    SSIMDistance,
    TrunkWeightsUnavailableError,
    load_lpips,
    lpips_calibration_file,
    make_distance,
)


def _images(n=6, c=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, size, size, generator=g)


@pytest.mark.parametrize("trunk", ["alex", "squeeze", "vgg"])
def test_lpips_between_matches_lpips_forward(trunk):
    torch.manual_seed(0)
    dist = LPIPSDistance(trunk, pretrained=False)
    a, b = _images(seed=1), _images(seed=2)
    reference = dist.model(a, b, normalize=True).reshape(-1)
    assert torch.allclose(dist(a, b), reference, rtol=1e-4, atol=1e-6)


def test_lpips_pairwise_matches_between():
    torch.manual_seed(0)
    dist = LPIPSDistance("alex", pretrained=False)
    x = _images(n=5, seed=3)
    emb = dist.embed(x)
    full = dist.pairwise(emb)
    rows, cols = torch.meshgrid(torch.arange(5), torch.arange(5), indexing="ij")
    direct = dist.between(dist.take(emb, rows.reshape(-1)), dist.take(emb, cols.reshape(-1)))
    assert torch.allclose(full, direct.reshape(5, 5), atol=1e-5)
    assert torch.allclose(torch.diagonal(full), torch.zeros(5), atol=1e-5)


def test_lpips_grayscale_small_images_are_upsampled():
    torch.manual_seed(0)
    dist = LPIPSDistance("alex", pretrained=False)
    gray = torch.rand(4, 1, 28, 28)
    d = dist(gray, gray.flip(0))
    # Equal to LPIPS on the 3-channel, 32 px version of the same images.
    up = torch.nn.functional.interpolate(gray.expand(-1, 3, -1, -1), size=(32, 32),
                                         mode="bilinear", align_corners=False)
    reference = dist.model(up, up.flip(0), normalize=True).reshape(-1)
    assert d.shape == (4,)
    assert torch.allclose(d, reference, rtol=1e-4, atol=1e-6)


def test_lpips_is_frozen_and_in_eval_mode():
    model = load_lpips("alex", pretrained=False)
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("trunk", ["alex", "squeeze", "vgg"])
def test_lpips_loads_the_shipped_calibration(trunk):
    """The lin layers hold the file shipped with lpips (non-negative weights),
    not a random initialisation of either sign."""
    shipped = torch.load(lpips_calibration_file(trunk), map_location="cpu", weights_only=True)
    model = load_lpips(trunk, pretrained=False)
    state = model.state_dict()
    assert shipped and all(k.startswith("lin") for k in shipped)
    for key, value in shipped.items():
        assert torch.equal(state[key], value), key
        assert (value >= 0).all(), key
    weights = LPIPSDistance(trunk, pretrained=False).weights
    assert len(weights) == len(shipped)
    assert all((w >= 0).all() and (w > 0).any() for w in weights)


@pytest.mark.parametrize("trunk", ["alex", "squeeze", "vgg"])
def test_lpips_distances_between_different_images_are_positive(trunk):
    torch.manual_seed(0)
    dist = LPIPSDistance(trunk, pretrained=False)
    x = _images(n=8, seed=4)
    d = dist.pairwise(dist.embed(x))
    off = d[~torch.eye(8, dtype=torch.bool)]
    assert (off > 0).all()
    assert (dist(x, x.flip(0)) > 0).all()


def test_lpips_calibration_mismatch_raises(monkeypatch, tmp_path):
    import sklearn_cim._distances as distances

    bad = tmp_path / "alex.pth"
    state = torch.load(lpips_calibration_file("alex"), map_location="cpu", weights_only=True)
    torch.save({k.replace("model.1.", "model.0."): v for k, v in state.items()}, bad)
    monkeypatch.setattr(distances, "lpips_calibration_file", lambda trunk: str(bad))
    with pytest.raises(RuntimeError, match="calibration file"):
        load_lpips("alex", pretrained=False)


def test_lpips_reference_is_the_calibrated_lpips_forward():
    """The package's distance equals a plain lpips.LPIPS built the documented way
    (default dropout, calibration loaded by lpips), on the same random trunk."""
    import lpips

    torch.manual_seed(0)
    dist = LPIPSDistance("alex", pretrained=False)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval()
    a, b = _images(seed=5), _images(seed=6)
    expected = reference(a, b, normalize=True).reshape(-1)
    assert (expected > 0).all()
    assert torch.allclose(dist(a, b), expected, rtol=1e-4, atol=1e-6)


def test_lpips_stays_out_of_the_optimizer_and_train_mode(images, tiny):
    X, y = images
    X3 = np.repeat(X, 3, axis=1)
    tiny.update(distance="lpips-alex", pretrained=False, max_epochs=2)
    cim = CIMTransformer(**tiny).fit(X3, y)
    net = cim.net_
    optimised = {id(p) for group in net.optimizer_.param_groups for p in group["params"]}
    metric = net.get_metric()
    lpips_params = {id(p) for p in metric.model.parameters()}
    assert optimised and not optimised & lpips_params
    assert not metric.model.training


def test_pretrained_unavailable_error_names_cache_and_fix(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(TrunkWeightsUnavailableError) as info:
        load_lpips("alex", pretrained=True)
    message = str(info.value)
    assert "pretrained=False" in message
    assert "alexnet-" in message and str(tmp_path) in message


def test_no_prints_or_pretrained_warnings_from_lpips(capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_distance("lpips-squeeze", pretrained=False)
    assert capsys.readouterr().out == ""


def test_ssim_matches_scikit_image():
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    a, b = _images(n=3, seed=4), _images(n=3, seed=5)
    b = 0.5 * a + 0.5 * b  # correlated pairs: SSIM well away from 0
    ours = SSIMDistance()(a, b)
    for i in range(3):
        ref = structural_similarity(
            a[i].numpy(), b[i].numpy(), channel_axis=0, data_range=1.0,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert ours[i].item() == pytest.approx(1.0 - ref, abs=1e-5)


def test_ssim_identical_is_zero_and_pairwise_consistent():
    dist = SSIMDistance()
    x = _images(n=4, c=1, size=8, seed=6)  # smaller than the window: upsampled
    assert torch.allclose(dist(x, x), torch.zeros(4), atol=1e-6)
    emb = dist.embed(x)
    full = dist.pairwise(emb)
    assert full.shape == (4, 4)
    assert full[0, 1].item() == pytest.approx(dist(x[:1], x[1:2]).item(), abs=1e-6)


def test_l2_is_rms_difference_and_pairwise_consistent():
    dist = L2Distance()
    a, b = _images(n=4, seed=7), _images(n=4, seed=8)
    expected = ((a - b) ** 2).mean(dim=(1, 2, 3)).sqrt()
    assert torch.allclose(dist(a, b), expected, atol=1e-5)
    full = dist.pairwise(dist.embed(a))
    assert full[1, 2].item() == pytest.approx(dist(a[1:2], a[2:3]).item(), abs=1e-4)


def test_callable_distance_used_and_checked(images, tiny):
    X, y = images
    calls = []

    def l1(a, b):
        calls.append(a.shape)
        return (a - b).abs().flatten(1).mean(1)

    CIMTransformer(**{**tiny, "distance": l1}).fit(X, y)
    assert calls and calls[0][1:] == (1, 8, 8)

    def bad(a, b):
        return (a - b).abs()

    with pytest.raises(ValueError, match=r"shape \(n_samples,\)"):
        CIMTransformer(**{**tiny, "distance": bad}).fit(X, y)


def test_unknown_distance_name():
    with pytest.raises(ValueError, match="choose one of"):
        make_distance("lpips-resnet")
