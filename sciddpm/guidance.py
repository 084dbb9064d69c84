"""Steering a diffusion model: guidance as ε-predictor wrappers, plus start-state helpers.

Every wrapper maps ε-predictors to an ε-predictor, so it works with every sampler and every space. In score
terms s = −ε/σ_t, so adding a score term δ(x) to s subtracts σ_t δ(x) from ε:

- classifier guidance (Dhariwal & Nichol 2021): s̃ = s + λ ∇log p_t(c | x)  ⇒  ε̃ = ε − λ σ_t ∇log p_t(c | x);
- classifier-free guidance (Ho & Salimans 2021): s̃ = s(x|∅) + λ (s(x|c) − s(x|∅)), linear, so the same in ε;
- energy guidance (e.g. Lu et al. 2023's view): s̃ = s − λ ∇E_t(x, c)  ⇒  ε̃ = ε + λ σ_t ∇E_t;
- SDEdit (Meng et al. 2022): start at t₀ < T from x_{t₀} = α_{t₀} x_ref + σ_{t₀} z;
- inpainting by replacement (Song et al. 2021, App. I; Lugmayr et al. 2022 for RePaint's resampling).

``DiffusionModel.sample(..., guidance=...)`` takes *guidance hooks*: callables ``hook(eps_fn, context) -> eps_fn``
with a :class:`GuidanceContext` (the network, schedule, parameterisation and the sampling space with its
conditions). :class:`ClassifierFree`, :class:`ClassifierGuidance` and :class:`EnergyGuidance` are such hooks, so
every domain is guided from outside its network, with the conditions its own sampling space carries.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from .objectives import EpsFn, eps_predictor, forward_noise, sample_times
from .samplers import SamplerOutput, ancestral_step, check_grid
from .schedules import NoiseSchedule
from .spaces import Space
LogProbFn = Callable[[Tensor, Tensor], Tensor]


def _sigma(schedule: NoiseSchedule, space: Space, t: Tensor, like: Tensor) -> Tensor:
    return space.broadcast(schedule.sigma(torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(space.batch_size))).to(like.dtype)


def grad_of(fn: LogProbFn, x: Tensor, t: Tensor) -> Tensor:
    """∇_x Σ_b fn(x, t)_b for a per-sample scalar function (samples independent ⇒ per-sample gradients)."""
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        value = fn(x_in, t)
        if value.dim() != 1:
            raise ValueError(f"guidance function must return one value per sample, got shape {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise ValueError("guidance function returned NaN or inf")
        (grad,) = torch.autograd.grad(value.sum(), x_in)
    return grad.detach()


def classifier_guidance(eps_fn: EpsFn, log_prob_fn: LogProbFn, schedule: NoiseSchedule, space: Space,
                        scale: float = 1.0) -> EpsFn:
    """ε̃(x, t) = ε(x, t) − λ σ_t P ∇_x log p_t(c | x) with P the space's projection (Dhariwal & Nichol 2021, Alg. 1).

    ``log_prob_fn(x, t)`` returns log p_t(c | x_t) per sample [B] for the wanted c (a noise-aware classifier, or
    ``gaussian_log_likelihood`` of a regressor for a continuous target). ``eps_fn`` may be conditional or not.
    """

    def guided(x: Tensor, t: Tensor) -> Tensor:
        eps = eps_fn(x, t)
        if scale == 0:
            return eps
        grad = space.project(grad_of(log_prob_fn, x, t))
        return eps - scale * _sigma(schedule, space, t, eps) * grad.to(eps.dtype)

    return guided


def gaussian_log_likelihood(regressor: Callable[[Tensor, Tensor], Tensor], target: Tensor, width: float) -> LogProbFn:
    """log p_t(y = target | x) = −‖f(x, t) − target‖² / (2 w²) for a noise-aware regressor f (a Gaussian likelihood
    with a chosen width w, for guidance towards a continuous property)."""
    if width <= 0:
        raise ValueError("width must be > 0")

    def log_prob(x: Tensor, t: Tensor) -> Tensor:
        pred = regressor(x, t)
        return -((pred - target) ** 2).reshape(pred.shape[0], -1).sum(1) / (2 * width**2)

    return log_prob


def classifier_free_guidance(paired_eps_fn: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                             scale: float = 1.0) -> EpsFn:
    """ε̃ = ε(x|∅) + λ (ε(x|c) − ε(x|∅)) (Ho & Salimans 2021); λ = 1 is the conditional model, λ = 0 the
    unconditional one. ``paired_eps_fn(x, t)`` returns (ε(x|c), ε(x|∅)) — built by ``batched_pair`` from one
    doubled network call for dense and padded layouts."""

    def guided(x: Tensor, t: Tensor) -> Tensor:
        eps_c, eps_u = paired_eps_fn(x, t)
        return eps_u + scale * (eps_c - eps_u)

    return guided


def batched_pair(model: Callable[..., Tensor], condition: dict, null_condition: dict,
                 to_eps: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """(ε(x|c), ε(x|∅)) from ONE call of ``model`` on the batch doubled along axis 0 (dense/padded layouts).

    ``condition`` and ``null_condition`` hold tensors with a leading batch axis (e.g. {"y": labels} and
    {"y": null-token labels}); they are concatenated the same way. ``to_eps(out, x, t)`` converts the model's
    prediction to ε (identity when the model predicts ε).
    """
    keys = set(condition) | set(null_condition)
    if set(condition) != set(null_condition):
        raise ValueError(f"condition and null_condition must have the same keys, got {sorted(condition)} and {sorted(null_condition)}")

    def pair(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        b = x.shape[0]
        x2 = torch.cat([x, x], 0)
        t2 = torch.cat([t, t], 0)
        cond2 = {k: torch.cat([condition[k], null_condition[k]], 0) for k in keys}
        out = model(x2, t2, **cond2)
        if to_eps is not None:
            out = to_eps(out, x2, t2)
        return out[:b], out[b:]

    return pair


def energy_guidance(eps_fn: EpsFn, energy_fn: LogProbFn, schedule: NoiseSchedule, space: Space,
                    scale: float = 1.0) -> EpsFn:
    """ε̃(x, t) = ε(x, t) + λ σ_t P ∇_x E_t(x): the score of q_t(x) e^{−λ E_t(x)} for any differentiable
    per-sample energy ``energy_fn(x, t)`` [B] (domain knowledge as an energy)."""

    def guided(x: Tensor, t: Tensor) -> Tensor:
        eps = eps_fn(x, t)
        grad = space.project(grad_of(energy_fn, x, t))
        return eps + scale * _sigma(schedule, space, t, eps) * grad.to(eps.dtype)

    return guided


def sdedit_start(x_ref: Tensor, schedule: NoiseSchedule, space: Space, t0: float,
                 generator: torch.Generator | None = None) -> Tensor:
    """SDEdit's start state x_{t₀} = α_{t₀} x_ref + σ_{t₀} z (Meng et al. 2022); run any sampler on
    ``time_grid(schedule, K, t_start=t0)`` from it."""
    space.check(x_ref, name="reference")
    t = torch.tensor(float(t0), dtype=torch.float64)
    schedule.check_time(t)
    return forward_noise(schedule, space, x_ref, t, generator=generator)[0]


def replacement_inpainting(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, known: Tensor, mask: Tensor,
                           generator: torch.Generator | None = None) -> EpsFn:
    """Inpainting by replacement as an ε wrapper: before each evaluation the known part (``mask`` True) of x_t
    is replaced by a fresh draw of q(x_t | known) = N(α_t known, σ_t² I), so the unknown part is denoised
    conditioned on it (Song et al. 2021, App. I). Apply ``paste_known`` to the final sample."""
    space.check(known, name="known")
    if mask.shape != known.shape:
        raise ValueError(f"mask has shape {tuple(mask.shape)} but known has shape {tuple(known.shape)}")
    mask = mask.to(torch.bool)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        noised, _ = forward_noise(schedule, space, known.to(x.dtype), t, generator=generator)
        return eps_fn(space.project(torch.where(mask, noised, x)), t)

    return guided


def paste_known(x: Tensor, known: Tensor, mask: Tensor) -> Tensor:
    """The final inpainted sample: known entries from ``known``, the rest from ``x``."""
    return torch.where(mask.to(torch.bool), known.to(x.dtype), x)


def repaint(eps_fn: EpsFn, schedule: NoiseSchedule, space: Space, x: Tensor, grid: Tensor, known: Tensor,
            mask: Tensor, *, resample: int = 5, generator: torch.Generator | None = None) -> SamplerOutput:
    """RePaint (Lugmayr et al. 2022): ancestral steps with the known part replaced by q(x_s | known) after each
    step, and each step repeated ``resample`` times by re-noising x_s back to x_t with q(x_t | x_s) =
    N(α_{t|s} x_s, β_{t|s} I) (jump length 1). NFE = K · resample."""
    if resample < 1:
        raise ValueError("resample must be >= 1")
    check_grid(schedule, grid)
    mask = mask.to(torch.bool)
    nfe = 0
    for i in range(grid.numel() - 1):
        t, s = grid[i], grid[i + 1]
        for r in range(resample):
            eps = eps_fn(x, t.reshape(1).expand(space.batch_size))
            x = ancestral_step(eps, schedule, space, x, t, s, schedule.posterior_variance(s, t), generator=generator)
            nfe += 1
            known_s, _ = forward_noise(schedule, space, known.to(x.dtype), s, generator=generator)
            x = space.project(torch.where(mask, known_s, x))
            if r < resample - 1:
                x = space.project(schedule.skip_alpha(s, t).to(x.dtype) * x
                                  + schedule.skip_beta(s, t).sqrt().to(x.dtype) * space.noise(generator, x.dtype))
    return SamplerOutput(paste_known(x, known, mask), nfe)


def noisy_classifier_loss(classifier: Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule, space: Space,
                          x0: Tensor, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Training loss of a noise-aware classifier for classifier guidance (Dhariwal & Nichol 2021, §4.1):

        L = E_{t ~ U} E_{ε ~ space.noise()} [ −log softmax(f(x_t, t))_c ],   x_t = P(α_t x₀ + σ_t ε),

    the cross-entropy of ``classifier(x_t, t)`` (logits [B, C]) against ``labels`` [B], with t drawn by
    ``sciddpm.objectives.sample_times`` (uniform over 1..N for a discrete schedule, U[t_min, t_max] otherwise)
    and x_t ~ q(x_t | x₀) through the space (so any space works: padding, zero-CoM, torus wrapping). Returns the
    batch mean (fp32). ``generator`` may live on the space's device: the times are then drawn on the CPU from a
    seed taken from it (``sample_times`` draws on the CPU), the noise from it on its device.
    """
    space.check(x0, name="x0")
    if not torch.isfinite(x0).all():
        raise ValueError("x0 contains NaN or inf")
    labels = torch.as_tensor(labels, device=x0.device).long().reshape(-1)
    if labels.numel() != space.batch_size:
        raise ValueError(f"labels must hold {space.batch_size} entries (one per sample), got {labels.numel()}")
    time_gen = generator
    if generator is not None and generator.device.type != "cpu":
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        time_gen = torch.Generator().manual_seed(seed)
    t, _ = sample_times(schedule, space.batch_size, generator=time_gen, device=space.device)
    x_t, _ = forward_noise(schedule, space, space.project(x0), t, generator=generator)
    logits = classifier(x_t, t)
    if logits.dim() != 2 or logits.shape[0] != space.batch_size:
        raise ValueError(f"classifier must return logits [{space.batch_size}, C], got {tuple(logits.shape)}")
    if (labels < 0).any() or (labels >= logits.shape[1]).any():
        raise ValueError(f"labels must lie in 0..{logits.shape[1] - 1}")
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def classifier_log_prob(classifier: Callable[[Tensor, Tensor], Tensor], labels: Tensor) -> LogProbFn:
    """log p_t(c_b | x_b) = log softmax(f(x, t))_{b, c_b} per sample [B] for a noise-aware classifier f returning
    logits [B, C] (Dhariwal & Nichol 2021, Alg. 1/2): the ``log_prob_fn`` of ``classifier_guidance``, whose
    ∇_x is the guidance direction. Computed in fp32 (log-softmax of the logits cast to float32)."""
    labels = torch.as_tensor(labels).long().reshape(-1)

    def log_prob(x: Tensor, t: Tensor) -> Tensor:
        logits = classifier(x, t)
        if logits.dim() != 2 or logits.shape[0] != labels.numel():
            raise ValueError(f"classifier must return logits [{labels.numel()}, C], got {tuple(logits.shape)}")
        y = labels.to(logits.device)
        return torch.log_softmax(logits.float(), dim=-1).gather(1, y[:, None])[:, 0]

    return log_prob


# ==================================================================================================
# Guidance hooks for DiffusionModel.sample: every domain guided from outside its network
# ==================================================================================================
@dataclass
class GuidanceContext:
    """What a guidance hook may use: the model's raw network ``net(x_t, t, **condition)``, its schedule and
    parameterisation, and the sampling ``space`` with its conditions; ``condition`` / ``null_condition`` are the
    network inputs of the conditional and the unconditional model for that space (``Domain.network_condition``,
    ``Domain.null_condition``; the latter None when the domain has no unconditional mode)."""

    net: Callable[..., Tensor]
    schedule: NoiseSchedule
    space: Space
    parameterization: str
    condition: dict[str, Any]
    null_condition: dict[str, Any] | None


GuidanceHook = Callable[[EpsFn, GuidanceContext], EpsFn]


class ClassifierFree:
    """Classifier-free guidance as a hook: ε̃ = ε(x|∅) + λ (ε(x|c) − ε(x|∅)) (Ho & Salimans 2021).

    It *replaces* the model's ε (the incoming ``eps_fn``) with the guided combination of one doubled network call
    (``batched_pair``), so it comes first in a list of hooks. The combination is taken on the network's outputs:
    every parameterisation's ε is affine in the output with weights that sum to one, so this equals combining ε.
    """

    def __init__(self, scale: float) -> None:
        if not torch.isfinite(torch.tensor(float(scale))):
            raise ValueError(f"guidance scale must be finite, got {scale}")
        self.scale = float(scale)

    def __call__(self, eps_fn: EpsFn, ctx: GuidanceContext) -> EpsFn:
        if ctx.null_condition is None:
            raise ValueError("classifier-free guidance needs a model with an unconditional mode (the domain's "
                             "null_condition); this model has none")
        pair = batched_pair(ctx.net, ctx.condition, ctx.null_condition)
        scale = self.scale

        def guided_net(x: Tensor, t: Tensor, **_: Any) -> Tensor:
            out_c, out_u = pair(x, t)
            return out_u + scale * (out_c - out_u)

        return eps_predictor(guided_net, ctx.schedule, ctx.space, ctx.parameterization)


class ClassifierGuidance:
    """Classifier guidance as a hook: ε̃ = ε − λ σ_t P ∇_x log p_t(c | x_t) (Dhariwal & Nichol 2021, Alg. 1) with
    a noise-aware ``classifier(x_t, t)`` → logits and the labels the sampling space carries
    (``space.condition[label_key]``), or explicit ``labels``."""

    def __init__(self, classifier: Callable[[Tensor, Tensor], Tensor], scale: float, label_key: str = "y",
                 labels: Tensor | None = None) -> None:
        self.classifier, self.scale, self.label_key, self.labels = classifier, float(scale), label_key, labels

    def __call__(self, eps_fn: EpsFn, ctx: GuidanceContext) -> EpsFn:
        labels = self.labels if self.labels is not None else ctx.space.condition.get(self.label_key)
        if labels is None:
            raise ValueError(f"classifier guidance needs labels: the sampling space has no condition "
                             f"{self.label_key!r} (give labels= or sample with that condition)")
        return classifier_guidance(eps_fn, classifier_log_prob(self.classifier, labels), ctx.schedule, ctx.space,
                                   self.scale)


class EnergyGuidance:
    """Energy guidance as a hook: ε̃ = ε + λ σ_t P ∇_x E_t(x) (the score of q_t e^{−λE_t}; EEGSDE, Bao et al. 2023),
    with the energy built for the sampling space by ``energy_for(ctx) -> E(x, t) [B]`` (so it can read the space's
    conditions and layout, e.g. a molecule's property targets and its graph index)."""

    def __init__(self, energy_for: Callable[[GuidanceContext], LogProbFn], scale: float) -> None:
        self.energy_for, self.scale = energy_for, float(scale)

    def __call__(self, eps_fn: EpsFn, ctx: GuidanceContext) -> EpsFn:
        return energy_guidance(eps_fn, self.energy_for(ctx), ctx.schedule, ctx.space, self.scale)


def apply_guidance(eps_fn: EpsFn, hooks: GuidanceHook | Sequence[GuidanceHook] | None,
                   ctx: GuidanceContext) -> EpsFn:
    """Wrap ``eps_fn`` with one hook or a sequence of hooks, in order (None: unchanged)."""
    if hooks is None:
        return eps_fn
    for hook in ([hooks] if callable(hooks) else list(hooks)):
        eps_fn = hook(eps_fn, ctx)
    return eps_fn
