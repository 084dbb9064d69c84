"""SR3 super-resolution for the images domain (Saharia et al. 2021, "Image Super-Resolution via Iterative
Refinement", arXiv:2104.07636).

SR3 trains a conditional DDPM p(y | x) of a high-resolution (HR) image y given its low-resolution (LR) version x.
The denoiser sees the LR image upsampled bicubically to the HR size and concatenated on channels,

    ε̂ = f_θ(cat(y_t, up(x)), t),   L = E_{t, ε} ‖ε − f_θ(cat(√ᾱ_t y₀ + √(1 − ᾱ_t) ε, up(x)), t)‖²

(SR3 §2, eq. 6; here with the project's discrete linear schedule; t enters the UNet through its noise level
c_noise(t) = ¼ ln(σ_t/α_t), in the spirit of SR3's noise-level conditioning). The concatenation is done inside the
UNet (``cond_channels``, see :mod:`sciddpm.domains.images.backbone`); this module supplies the degradation, the
baselines, the conditioning dict for the core's ``eps_predictor`` and a sampling entry point on the core samplers.

Degradation (this project's convention): x = clamp(bicubic_AA(y, 28 → 28/f), −1, 1), i.e.
``torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)`` (a Keys a = −0.5 kernel
widened by f, as PIL's ``Image.resize(BICUBIC)``), then clamped to the data range, since bicubic overshoots.
SR3 itself builds LR inputs with bicubic downsampling too (SR3 §4, "bicubic kernel with anti-aliasing").
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sciddpm.objectives import eps_predictor
from sciddpm.samplers import SamplerOutput, get_sampler, prior_sample, time_grid
from sciddpm.network_time import check_network_schedule
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace

from .data import from_model_range

#: Samplers that ``super_resolve`` accepts.
SR_SAMPLERS = ("ddpm", "ddim", "dpm_solver_pp_2m")


def _check_images(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a float tensor [B, C, H, W], got {shape}")
    if x.shape[0] < 1 or not torch.isfinite(x).all():
        raise ValueError(f"{name} must hold at least one image and only finite values")


def _check_factor(factor: Any) -> int:
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"super-resolution factor must be an int >= 2, got {factor!r}")
    return factor


def downsample(x: Tensor, factor: int = 2) -> Tensor:
    """The LR input of SR3: x_LR = clamp(bicubic_AA(x, (H/f, W/f)), −1, 1).

    Bicubic (Keys 1981, a = −0.5) resize with anti-aliasing (the kernel is stretched by f, as PIL's bicubic
    resize; ``F.interpolate(mode="bicubic", antialias=True)``), clamped to [−1, 1] because the negative kernel
    lobes overshoot. ``x``: float [B, C, H, W] in [−1, 1] with H, W divisible by ``factor`` (28 → 14 for f = 2).
    Computed in float32 on x's device; returns [B, C, H/f, W/f] in x's dtype.
    """
    _check_images(x, "x")
    factor = _check_factor(factor)
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the super-resolution factor {factor}")
    low = F.interpolate(x.float(), size=(h // factor, w // factor), mode="bicubic", antialias=True,
                        align_corners=False)
    return low.clamp(-1.0, 1.0).to(x.dtype)


def bicubic_upsample(low: Tensor, size: tuple[int, int] | int = 28) -> Tensor:
    """The bicubic baseline: clamp(bicubic(x_LR, size), −1, 1) (Keys 1981, a = −0.5, ``align_corners=False``);
    the same interpolation the UNet applies to its conditioning image, clamped to the data range."""
    _check_images(low, "low_res")
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(low.float(), size=size, mode="bicubic", align_corners=False).clamp(-1.0, 1.0).to(low.dtype)


def nearest_upsample(low: Tensor, size: tuple[int, int] | int = 28) -> Tensor:
    """Nearest-neighbour upsampling (pixel replication for integer factors): the crudest baseline and the way the
    LR input is shown in figures."""
    _check_images(low, "low_res")
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(low, size=size, mode="nearest")


def sr3_condition(x_high: Tensor, factor: int = 2) -> dict[str, Tensor]:
    """The SR3 conditioning of an HR batch: {"cond_image": downsample(x_high, factor)} (the UNet upsamples it
    bicubically and concatenates it to x_t); pass it to ``denoising_loss``/``eps_predictor`` as keywords."""
    return {"cond_image": downsample(x_high, factor)}


@torch.no_grad()
def super_resolve(net: Any, schedule: NoiseSchedule, low_res: Tensor, *, sampler: str = "ddpm", steps: int = 100,
                  generator: torch.Generator | None = None, factor: int = 2, parameterization: str = "eps",
                  clip_x0: bool = False, **condition: Any) -> SamplerOutput:
    """Sample HR images y ~ p_θ(y | x_LR) with a core sampler (SR3 §2: the reverse chain of Ho et al. 2020, Alg. 2,
    conditioned on x_LR at every step).

    y_T ~ N(0, I) of shape [B, C, f·h, f·w] on ``low_res.device`` (drawn with ``generator``, which must live on
    that device; None: the global RNG), ε̂(y_t, t) = net(y_t, t, cond_image=x_LR, **condition) through
    ``eps_predictor``, then ``sampler`` ∈ {ddpm (β̃ variance), ddim (η = 0), dpm_solver_pp_2m} on a uniform grid of
    ``steps`` intervals. ``clip_x0`` clamps x̂₀ to [−1, 1] inside ddpm/ddim (Ho et al.'s clipping). Returns the
    ``SamplerOutput`` (sample not clamped; metrics clamp and round to 8 bit) with its number of network calls.
    """
    _check_images(low_res, "low_res")
    check_network_schedule(net, schedule, "super_resolve")
    factor = _check_factor(factor)
    if sampler not in SR_SAMPLERS:
        raise ValueError(f"unknown SR3 sampler {sampler!r}; expected one of {SR_SAMPLERS}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    device = low_res.device
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but low_res is on {device}; create it on the same device")
    b, c, h, w = low_res.shape
    space = DenseSpace((b, c, h * factor, w * factor), device=device)
    x_t = prior_sample(schedule, space, generator, torch.float32)
    eps = eps_predictor(net, schedule, space, parameterization, cond_image=low_res.float(), **condition)
    kwargs: dict[str, Any] = {}
    if sampler in ("ddpm", "ddim"):
        kwargs["generator"] = generator
        if clip_x0:
            kwargs["clip_x0"] = (-1.0, 1.0)
    return get_sampler(sampler)(eps, schedule, space, x_t, time_grid(schedule, steps), **kwargs)


def sr_metrics(samples: Tensor, high: Tensor, low: Tensor) -> dict[str, float]:
    """PSNR/SSIM (8-bit pixels, see ``metrics.psnr``/``metrics.ssim``) of SR ``samples`` vs the HR images, and of
    the bicubic baseline (``bicubic_upsample(low)``) vs the same HR images: keys psnr, ssim, bicubic_psnr,
    bicubic_ssim. All tensors in [−1, 1]; samples are clamped and rounded to 8 bit first."""
    from .metrics import psnr, ssim

    if samples.shape != high.shape:
        raise ValueError(f"samples {tuple(samples.shape)} and HR images {tuple(high.shape)} differ in shape")
    ref = from_model_range(high.cpu())
    out, bic = from_model_range(samples.cpu()), from_model_range(bicubic_upsample(low.cpu().float(), high.shape[-2:]))
    return {"psnr": psnr(out, ref, 255.0), "ssim": ssim(out, ref, 255.0),
            "bicubic_psnr": psnr(bic, ref, 255.0), "bicubic_ssim": ssim(bic, ref, 255.0)}
