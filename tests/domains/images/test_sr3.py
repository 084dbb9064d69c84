"""SR3 super-resolution (Saharia et al. 2021) in the images domain, and the PSNR/SSIM metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sciddpm.domains.images.adapter import ImagesDomain
from sciddpm.domains.images.backbone import UNet
from sciddpm.domains.images.metrics import gaussian_window, psnr, ssim
from sciddpm.domains.images.sr3 import (bicubic_upsample, downsample, nearest_upsample, sr3_condition, sr_metrics,
                                        super_resolve)
from sciddpm.export import load
from sciddpm.schedules import LinearSchedule
from sciddpm.training import config_from_dict, fit
from tests.domains.images.common import LINEAR_1000, TINY_UNET

TINY = TINY_UNET



def _images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ------------------------------------------------------------------------------------------------ degradation
def test_downsample_shape_range_and_constants():
    x = _images()
    low = downsample(x)
    assert low.shape == (3, 1, 14, 14) and low.dtype == torch.float32
    assert low.min() >= -1 and low.max() <= 1
    # a normalised interpolation kernel reproduces constants exactly, also after the clamp
    const = torch.full((2, 1, 28, 28), 0.25)
    torch.testing.assert_close(downsample(const), torch.full((2, 1, 14, 14), 0.25))
    assert downsample(x, 4).shape == (3, 1, 7, 7)
    assert sr3_condition(x)["cond_image"].shape == (3, 1, 14, 14)
    # a saturated checkerboard overshoots under bicubic; the clamp keeps it in the data range
    board = (torch.arange(28)[:, None] // 2 + torch.arange(28)[None] // 2) % 2 * 2.0 - 1.0
    assert downsample(board.expand(1, 1, 28, 28).contiguous()).abs().max() <= 1.0


def test_upsamplers():
    low = downsample(_images())
    bic, near = bicubic_upsample(low, 28), nearest_upsample(low, (28, 28))
    assert bic.shape == near.shape == (3, 1, 28, 28) and bic.abs().max() <= 1
    torch.testing.assert_close(near[:, :, ::2, ::2], low)  # pixel replication
    torch.testing.assert_close(near[:, :, 1::2, 1::2], low)


@pytest.mark.parametrize("bad", [torch.zeros(28, 28), torch.zeros(1, 1, 27, 28), torch.zeros(1, 1, 28, 28, dtype=torch.long),
                                 torch.full((1, 1, 28, 28), float("nan"))])
def test_downsample_bad_input(bad):
    with pytest.raises(ValueError):
        downsample(bad)


@pytest.mark.parametrize("factor", [1, 0, 2.0, True])
def test_downsample_bad_factor(factor):
    with pytest.raises(ValueError, match="factor"):
        downsample(_images(), factor)


# ------------------------------------------------------------------------------------------------ network
def test_cond_image_reaches_network():
    torch.manual_seed(0)
    net = UNet(schedule=LINEAR_1000, **{**TINY, "zero_init": False}, cond_channels=1).eval()
    x, t = _images(2), torch.full((2,), 300.0)
    low = downsample(_images(2, seed=1))
    with torch.no_grad():
        a, b = net(x, t, cond_image=low), net(x, t, cond_image=-low)
    assert a.shape == (2, 1, 28, 28) and not torch.allclose(a, b, atol=1e-4)
    # the gradient of the output w.r.t. the LR image is non-zero: the condition is used, not just accepted
    low = low.clone().requires_grad_(True)
    net(x, t, cond_image=low).square().sum().backward()
    assert low.grad is not None and low.grad.abs().sum() > 0


@pytest.mark.parametrize("sampler,steps,nfe", [("ddpm", 3, 3), ("ddim", 2, 2), ("dpm_solver_pp_2m", 3, 3)])
def test_super_resolve_shape_device_nfe(sampler, steps, nfe):
    torch.manual_seed(0)
    net = UNet(schedule=LINEAR_1000, **TINY, cond_channels=1).eval()
    low = downsample(_images(2))
    gen = torch.Generator().manual_seed(0)
    out = super_resolve(net, LinearSchedule(1000), low, sampler=sampler, steps=steps, generator=gen)
    assert out.sample.shape == (2, 1, 28, 28) and out.sample.device == low.device and out.nfe == nfe
    assert torch.isfinite(out.sample).all()
    again = super_resolve(net, LinearSchedule(1000), low, sampler=sampler, steps=steps,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.sample, again.sample)  # seeded: reproducible


def test_super_resolve_bad_input():
    net, sch, low = UNet(schedule=LINEAR_1000, **TINY, cond_channels=1).eval(), LINEAR_1000, downsample(_images(1))
    with pytest.raises(ValueError, match="sampler"):
        super_resolve(net, sch, low, sampler="rk45", steps=2)
    with pytest.raises(ValueError, match="steps"):
        super_resolve(net, sch, low, steps=0)
    with pytest.raises(ValueError, match="low_res"):
        super_resolve(net, sch, low[0], steps=2)


# ------------------------------------------------------------------------------------------------ metrics
def test_psnr_exact_values():
    rng = np.random.default_rng(0)
    ref = rng.integers(10, 240, size=(4, 28, 28)).astype(np.uint8)
    assert psnr(ref, ref, 255) == math.inf
    shifted = ref.astype(np.int64) + 5  # constant offset c: MSE = c², PSNR = 10 log10(255²/25)
    assert psnr(shifted, ref, 255) == pytest.approx(10 * math.log10(255**2 / 25), abs=1e-12)
    # per-image PSNR averaged over images (not the PSNR of the pooled MSE)
    two = np.stack([ref[0].astype(np.int64) + 1, ref[1].astype(np.int64) + 10])
    expected = (10 * math.log10(255**2 / 1) + 10 * math.log10(255**2 / 100)) / 2
    assert psnr(two, ref[:2], 255.0) == pytest.approx(expected, abs=1e-12)
    assert psnr(torch.as_tensor(shifted)[:, None], torch.as_tensor(ref)[:, None], 255) == pytest.approx(
        10 * math.log10(255**2 / 25))


def _ssim_bruteforce(a: np.ndarray, b: np.ndarray, L: float) -> float:
    """SSIM by explicit 11×11 Gaussian-weighted windows at every valid position (Wang et al. 2004, eq. 13)."""
    k = np.arange(11) - 5.0
    w1 = np.exp(-k**2 / (2 * 1.5**2))
    w = np.outer(w1, w1) / np.outer(w1, w1).sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    vals = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_exact_values():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(2, 16, 16)).astype(np.float64)
    assert ssim(a, a, 255) == 1.0
    # constant images a, b: σ = 0, so SSIM = (2ab + C1)/(a² + b² + C1) everywhere
    c1 = (0.01 * 255) ** 2
    x, y = np.full((1, 28, 28), 100.0), np.full((1, 28, 28), 140.0)
    assert ssim(x, y, 255) == pytest.approx((2 * 100 * 140 + c1) / (100**2 + 140**2 + c1), abs=1e-12)
    # against explicit windows (hand-computed statistics, no convolution), per image then averaged
    b = np.clip(a + rng.normal(0, 30, size=a.shape), 0, 255).round()
    expected = np.mean([_ssim_bruteforce(a[i], b[i], 255.0) for i in range(2)])
    assert ssim(a, b, 255) == pytest.approx(expected, abs=1e-12)
    assert ssim(torch.as_tensor(a)[:, None], torch.as_tensor(b)[:, None], 255) == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(gaussian_window().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_ssim_matches_skimage_if_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(2)
    a = rng.integers(0, 256, size=(28, 28)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 20, size=a.shape), 0, 255).round()
    ref = metrics.structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                        data_range=255)
    assert ssim(a, b, 255) == pytest.approx(ref, abs=1e-9)


@pytest.mark.parametrize("fn", [psnr, ssim])
def test_metric_bad_input(fn):
    a = np.zeros((2, 28, 28))
    with pytest.raises(ValueError, match="same shape"):
        fn(a, a[:1], 255)
    with pytest.raises(ValueError, match="data_range"):
        fn(a, a, 0)
    with pytest.raises(ValueError, match="greyscale"):
        fn(np.zeros((2, 3, 28, 28)), np.zeros((2, 3, 28, 28)), 255)
    with pytest.raises(ValueError, match="NaN"):
        fn(np.full((1, 28, 28), np.nan), a[:1], 255)


def test_sr_metrics_bicubic_row():
    high = _images(4)
    low = downsample(high)
    out = sr_metrics(bicubic_upsample(low, 28), high, low)
    assert out["psnr"] == out["bicubic_psnr"] and out["ssim"] == out["bicubic_ssim"]
    perfect = sr_metrics(high, high, low)
    assert perfect["psnr"] == math.inf and perfect["ssim"] == 1.0


# ------------------------------------------------------------------------------------------------ adapter
def test_adapter_option_validation_and_off_by_default():
    assert ImagesDomain({}).build_backbone(TINY, LINEAR_1000).cond_channels == 0
    with pytest.raises(ValueError, match="needs schedule=NoiseSchedule"):
        ImagesDomain({}).build_backbone(TINY)  # no silent default schedule
    with pytest.raises(ValueError, match="time_scale"):
        ImagesDomain({}).build_backbone({**TINY, "time_scale": 1000.0}, LINEAR_1000)
    dom = ImagesDomain({})
    assert dom.network_condition(dom.space_for((_images(2), torch.zeros(2)))) == {}
    for bad in (1, 3, "2", 2.0, True):
        with pytest.raises(ValueError, match="super_resolution"):
            ImagesDomain({"super_resolution": bad})


def test_adapter_end_to_end(tmp_path):
    cfg = config_from_dict({"domain": "images", "data": {"max_train": 32, "n_reference": 20, "super_resolution": 2},
                            "backbone": TINY, "batch_size": 8, "max_steps": 2, "checkpoint_every": 100,
                            "log_every": 1, "accelerator": "cpu", "lr": 1e-3})
    module = fit(cfg, tmp_path / "run", progress=False)
    assert module.global_step == 2 and module.net.cond_channels == 1
    dom = module.domain
    batch = dom.collate([dom.train_dataset(dom.options)[i] for i in range(4)])
    cond = dom.network_condition(dom.space_for(batch))
    torch.testing.assert_close(cond["cond_image"], downsample(batch[0]))
    model = load(tmp_path / "run" / "export")
    out = model.sample(5, sampler="dpm_solver_pp_2m", steps=2, seed=0)
    assert out.sample.shape == (5, 1, 28, 28) and torch.isfinite(out.sample).all()
    high = dom.val_dataset(dom.options).tensors[0][:5]
    torch.testing.assert_close(out.space.condition["reference"], high)  # the first n test images are super-resolved
    torch.testing.assert_close(out.space.condition["cond_image"], downsample(high))
    metrics = model.domain.evaluate(out.sample, out.space)
    for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "fd_classifier"):
        assert np.isfinite(metrics[key])
    assert metrics["bicubic_psnr"] > 15  # bicubic 2× on Fashion-MNIST is a reasonable image
    with pytest.raises(ValueError, match="test images"):
        model.domain.sample_space(10_000)
    # user-given LR inputs: no reference, so no PSNR; a reference of the wrong shape is refused
    own = model.sample(2, sampler="ddim", steps=2, seed=0, conditions={"low_res": downsample(high[:2])})
    assert "psnr" not in model.domain.evaluate(own.sample, own.space)
    with pytest.raises(ValueError, match=r"condition 'low_res' has shape \(2, 1, 28, 28\); expected \(2, 1, 14, 14\)"):
        model.sample(2, conditions={"low_res": high[:2]})


def test_adapter_sr_with_class_guidance():
    dom = ImagesDomain({"super_resolution": 2, "class_conditional": True})
    space = dom.sample_space(3)
    cond = dom.network_condition(space)
    assert set(cond) == {"cond_image", "y"} and cond["cond_image"].shape == (3, 1, 14, 14)
    null = dom.null_condition(space)
    assert (null["y"] == 10).all() and torch.equal(null["cond_image"], cond["cond_image"])  # LR kept in both halves
    assert set(space.condition) == {"cond_image", "y", "reference"}
