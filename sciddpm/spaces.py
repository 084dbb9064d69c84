"""State spaces: where a batch of diffusion states lives.

A space is bound to one batch and knows how to draw noise in it, project onto it, broadcast a per-sample
scalar (such as t or σ(t)) to every element, reduce over the elements of each sample, and how many degrees
of freedom d each sample has. Samplers, losses, variance estimators and likelihoods see states only
through these operations, which is what makes the core modality-agnostic.

Layouts: ``DenseSpace`` ([B, ...]), ``MaskedSpace`` (padded sets [B, N_max, F] with a node mask) and
``GraphSpace`` (a flat PyG node tensor [n_nodes, F] with a ``batch`` index). Constraints wrap a set layout:
``ZeroCoMSpace`` (zero centre of mass, d = F(N − 1); Hoogeboom et al. 2022, §3) and ``TorusSpace``
(angles wrapped to (−π, π]). ``ProductSpace`` joins parts along the last axis (positions ⊕ features).

Any space can carry a per-sample noise variance v (``with_noise_variance``; ``with_temperature`` sets v = T and the
``temperature`` condition: thermodynamic maps, Herron et al. 2024): its noise, hence the forward process, the prior
and every stochastic sampler step, is then N(0, v I) per sample.

Noise in set layouts is drawn in flat node order (molecule by molecule, node by node), so a padded batch
and a flat graph batch of the same molecules receive identical noise from the same generator.
"""
from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from types import MappingProxyType
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor


class Space(ABC):
    """A batch of states: noise, projection, per-sample broadcasting and reduction, degrees of freedom."""

    #: Shape of a state tensor in this space.
    shape: torch.Size
    #: Number of samples in the batch.
    batch_size: int
    device: torch.device

    @abstractmethod
    def unit_noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """A standard normal draw in the space (zero on padding, projected onto constraints)."""

    #: Per-sample variance v of the forward process's noise, float64 [B], or None (v = 1): the temperature T of a
    #: thermodynamic map (``with_temperature``). Set only through ``with_noise_variance``.
    noise_variance: Tensor | None = None

    def noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """The forward process's noise: √v · ``unit_noise()`` per sample, N(0, v I) in the space (v = 1 unless
        ``with_noise_variance`` set it). The noising path, the prior and every stochastic sampler draw here, so the
        whole process is that of y = x/√v under unit noise, multiplied back by √v (Herron et al. 2024, §2)."""
        z = self.unit_noise(generator=generator, dtype=dtype)
        return z if self.noise_variance is None else self.noise_std(dtype) * z

    def noise_std(self, dtype: torch.dtype = torch.float64) -> Tensor:
        """√v broadcast against a state (a 0-d one when the space has no noise variance)."""
        if self.noise_variance is None:
            return torch.ones((), dtype=dtype, device=self.device)
        return self.broadcast(self.noise_variance.sqrt()).to(device=self.device, dtype=dtype)

    def with_noise_variance(self, variance: Tensor | float | None) -> "Space":
        """A copy whose forward noise, prior and sampler noise have per-sample variance ``variance`` (one value or
        [B]; None: unit). ValueError if a value is not finite and positive, or the count is not 1 or B."""
        out = copy.copy(self)
        if variance is None:
            out.noise_variance = None
            return out
        v = torch.as_tensor(variance, dtype=torch.float64).reshape(-1)
        if v.numel() == 1:
            v = v.expand(self.batch_size).clone()
        if v.numel() != self.batch_size:
            raise ValueError(f"noise variance holds {v.numel()} values for {self.batch_size} samples")
        if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
            raise ValueError(f"noise variance (temperature) must be finite and > 0, got minimum {float(v.min()):g}")
        out.noise_variance = v.to(self.device)
        return out

    def with_temperature(self, temperature: Tensor | float, prior: bool = True) -> "Space":
        """A thermodynamic-map space (Herron, Mondal, Schneider & Tiwary, PNAS 2024): the network sees
        ``condition['temperature']`` (float64 [B]) and, with ``prior``, the forward process relaxes each sample to
        N(0, T·prior_std² I): x_t = α_t x₀ + σ_t √T ε. ``prior=False`` keeps unit noise (T only as an input).
        ValueError for T ≤ 0, non-finite T or a count other than 1 or B."""
        tempered = self.with_noise_variance(temperature)
        out = tempered.with_condition(temperature=tempered.noise_variance)
        return out if prior else out.with_noise_variance(None)

    @abstractmethod
    def project(self, x: Tensor) -> Tensor:
        """Project a state onto the space (zero padding, remove the centre of mass, wrap angles)."""

    @abstractmethod
    def broadcast(self, per_sample: Tensor) -> Tensor:
        """Reshape a per-sample tensor [B] so that it broadcasts against a state."""

    @abstractmethod
    def sum_per_sample(self, x: Tensor) -> Tensor:
        """Σ over the valid elements of each sample: [B]."""

    @property
    @abstractmethod
    def dof(self) -> Tensor:
        """Degrees of freedom d per sample, float64 [B] (3(N − 1) for N zero-CoM points in 3-D)."""

    @abstractmethod
    def element_owner(self) -> Tensor:
        """For every element of a state, the index of the sample it belongs to (−1 on padding); long, state shape."""

    def project_tangent(self, v: Tensor) -> Tensor:
        """Project a velocity (an ε or a score, not a state) onto the space's tangent directions. Equal to
        ``project`` for linear constraints; the torus overrides it (velocities are not wrapped)."""
        return self.project(v)

    def difference(self, a: Tensor, b: Tensor) -> Tensor:
        """The velocity from state b to state a (for a multistep sampler's difference of two x̂₀ predictions):
        a − b in a linear space; the torus overrides it with the shortest arc wrap(a − b)."""
        return a - b

    def valid_mask(self) -> Tensor:
        """Bool mask of the elements that are not padding (state shape)."""
        return self.element_owner() >= 0

    def check(self, x: Tensor, name: str = "state") -> Tensor:
        """Raise ValueError if x's shape does not match the space; return x."""
        if tuple(x.shape) != tuple(self.shape):
            raise ValueError(f"{name} has shape {tuple(x.shape)} but the space expects {tuple(self.shape)}")
        return x

    #: Per-sample conditions carried with the batch (name → tensor whose leading axis is the batch, or a plain
    #: value shared by the batch): a class label, a low-resolution image, a partial point cloud, a temperature, a
    #: history window. Samplers never read it; the domain turns it into network inputs
    #: (``Domain.network_condition``) and decodes or scores samples with it. Empty by default.
    condition: Mapping[str, Any] = MappingProxyType({})

    def with_condition(self, condition: Mapping[str, Any] | None = None, **more: Any) -> "Space":
        """A copy of this space that also carries ``condition`` (merged over the current one). Tensors must have
        the batch as their leading axis; ValueError naming the key otherwise."""
        merged = {**self.condition, **(condition or {}), **more}
        for key, value in merged.items():
            if isinstance(value, Tensor) and (value.dim() == 0 or value.shape[0] != self.batch_size):
                raise ValueError(f"condition {key!r} has shape {tuple(value.shape)}; its leading axis must be the "
                                 f"batch size {self.batch_size}")
        out = copy.copy(self)
        out.condition = MappingProxyType(merged)
        return out

    def to(self, device: torch.device | str) -> "Space":
        """The same space with its index tensors and condition tensors on ``device`` (states and noise are then
        made there)."""
        moved = self._to(device)
        if self.noise_variance is not None:
            moved.noise_variance = self.noise_variance.to(device)
        if self.condition:
            moved.condition = MappingProxyType({k: v.to(device) if isinstance(v, Tensor) else v
                                                for k, v in self.condition.items()})
        return moved

    @abstractmethod
    def _to(self, device: torch.device | str) -> "Space":
        """``to`` without the condition (each layout rebuilds its index tensors)."""

    def prior(self, prior_std: float, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
        """A draw from the prior at the noise end: x_T ~ N(0, prior_std² I) in the space (the torus overrides
        this with the uniform distribution)."""
        return prior_std * self.noise(generator=generator, dtype=dtype)

    def eps_target(self, x0: Tensor, x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The ε-space regression target of denoising score matching for x_t = project(α x₀ + σ ε): −σ ∇log
        q(x_t | x₀). In a linear space this is ε itself; on the torus it is −σ times the wrapped normal's score."""
        return eps

    def zeros(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """A zero state."""
        return torch.zeros(self.shape, dtype=dtype, device=self.device)

    def mean_square_per_sample(self, x: Tensor) -> Tensor:
        """‖x‖² / d per sample: the per-degree-of-freedom mean square."""
        return self.sum_per_sample(x * x) / self.dof.to(x.dtype)


class SetLayout(Space):
    """A layout whose samples are sets of nodes with F features each (needed by ``ZeroCoMSpace``)."""

    feature_dim: int

    @abstractmethod
    def node_counts(self) -> Tensor:
        """Number of valid nodes per sample, long [B]."""

    @abstractmethod
    def node_sum(self, x: Tensor) -> Tensor:
        """Per-sample sum over valid nodes, [B, F]."""

    @abstractmethod
    def expand_nodes(self, per_sample: Tensor) -> Tensor:
        """Place a per-sample feature vector [B, F] on every valid node (zero on padding)."""

    def node_mean(self, x: Tensor) -> Tensor:
        """Per-sample mean over nodes, [B, F]."""
        return self.node_sum(x) / self.node_counts().clamp(min=1).to(x.dtype).unsqueeze(-1)


# ==================================================================================================
class DenseSpace(SetLayout):
    """Dense states [B, ...]. With shape [B, N, F] the middle axis is also a set of N nodes."""

    def __init__(self, shape: Sequence[int], device: torch.device | str = "cpu") -> None:
        shape = torch.Size(int(s) for s in shape)
        if len(shape) < 2 or any(s < 1 for s in shape):
            raise ValueError(f"dense space shape must be [B, ...] with positive sizes, got {tuple(shape)}")
        self.shape, self.batch_size, self.device = shape, shape[0], torch.device(device)
        self.feature_dim = shape[-1]

    def _to(self, device: torch.device | str) -> "DenseSpace":
        return DenseSpace(self.shape, device=device)

    def unit_noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(self.shape, generator=generator, dtype=dtype, device=self.device)

    def project(self, x: Tensor) -> Tensor:
        return self.check(x)

    def broadcast(self, per_sample: Tensor) -> Tensor:
        return per_sample.reshape((-1,) + (1,) * (len(self.shape) - 1))

    def sum_per_sample(self, x: Tensor) -> Tensor:
        return self.check(x).reshape(self.batch_size, -1).sum(1)

    @property
    def dof(self) -> Tensor:
        return torch.full((self.batch_size,), float(math.prod(self.shape[1:])), dtype=torch.float64, device=self.device)

    def element_owner(self) -> Tensor:
        return self.broadcast(torch.arange(self.batch_size, device=self.device)).expand(self.shape)

    def node_counts(self) -> Tensor:
        if len(self.shape) != 3:
            raise ValueError(f"a set view of a dense space needs shape [B, N, F], got {tuple(self.shape)}")
        return torch.full((self.batch_size,), self.shape[1], dtype=torch.long, device=self.device)

    def node_sum(self, x: Tensor) -> Tensor:
        self.node_counts()
        return self.check(x).sum(dim=1)

    def expand_nodes(self, per_sample: Tensor) -> Tensor:
        return per_sample.unsqueeze(1).expand(self.shape[0], self.shape[1], per_sample.shape[-1])


# ==================================================================================================
class MaskedSpace(SetLayout):
    """Padded sets: states [B, N_max, F] with a boolean node mask [B, N_max]; padding is kept at zero."""

    def __init__(self, mask: Tensor, feature_dim: int) -> None:
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor [B, N_max], got dtype {mask.dtype} shape {tuple(mask.shape)}")
        if feature_dim < 1:
            raise ValueError("feature_dim must be >= 1")
        self.mask, self.feature_dim = mask, int(feature_dim)
        self.batch_size, self.device = mask.shape[0], mask.device
        self.shape = torch.Size((mask.shape[0], mask.shape[1], self.feature_dim))
        self._fmask = mask.unsqueeze(-1)

    def _to(self, device: torch.device | str) -> "MaskedSpace":
        return MaskedSpace(self.mask.to(device), self.feature_dim)

    def unit_noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        flat = torch.randn((int(self.mask.sum()), self.feature_dim), generator=generator, dtype=dtype, device=self.device)
        out = torch.zeros(self.shape, dtype=dtype, device=self.device)
        out[self.mask] = flat  # row-major mask order = flat node order
        return out

    def project(self, x: Tensor) -> Tensor:
        return self.check(x) * self._fmask

    def broadcast(self, per_sample: Tensor) -> Tensor:
        return per_sample.reshape(-1, 1, 1)

    def sum_per_sample(self, x: Tensor) -> Tensor:
        return (self.check(x) * self._fmask).sum(dim=(1, 2))

    @property
    def dof(self) -> Tensor:
        return (self.mask.sum(1) * self.feature_dim).to(torch.float64)

    def element_owner(self) -> Tensor:
        owner = torch.arange(self.batch_size, device=self.device).unsqueeze(1).expand_as(self.mask)
        return torch.where(self.mask, owner, -1).unsqueeze(-1).expand(self.shape)

    def node_counts(self) -> Tensor:
        return self.mask.sum(1)

    def node_sum(self, x: Tensor) -> Tensor:
        return (self.check(x) * self._fmask).sum(1)

    def expand_nodes(self, per_sample: Tensor) -> Tensor:
        return per_sample.unsqueeze(1) * self._fmask.to(per_sample.dtype)


# ==================================================================================================
class GraphSpace(SetLayout):
    """Flat graph batches (PyG): node states [n_nodes, F] with ``batch`` [n_nodes] giving each node's sample, and
    optionally the batch's ``edge_index`` [2, n_edges] (part of the layout, so it travels with the space)."""

    def __init__(self, batch: Tensor, feature_dim: int, num_graphs: int | None = None,
                 edge_index: Tensor | None = None) -> None:
        if edge_index is not None and (edge_index.dim() != 2 or edge_index.shape[0] != 2):
            raise ValueError(f"edge_index must be a long tensor [2, n_edges], got shape {tuple(edge_index.shape)}")
        #: The batch's edges (PyG ``edge_index``, node indices into the flat batch), where the graph has them.
        self.edge_index = edge_index
        if batch.dim() != 1 or batch.dtype != torch.long:
            raise ValueError(f"batch index must be a long tensor [n_nodes], got dtype {batch.dtype} shape {tuple(batch.shape)}")
        if feature_dim < 1:
            raise ValueError("feature_dim must be >= 1")
        self.batch, self.feature_dim, self.device = batch, int(feature_dim), batch.device
        self.batch_size = int(num_graphs) if num_graphs is not None else (int(batch.max()) + 1 if batch.numel() else 0)
        # one read of the device (a GPU batch index is checked without a wait per condition)
        if batch.numel() and not bool(((batch >= 0) & (batch < self.batch_size)).all()):
            if int(batch.min()) < 0:
                raise ValueError("batch index must be non-negative")
            raise ValueError(f"batch index has value {int(batch.max())} but num_graphs is {self.batch_size}")
        self.shape = torch.Size((batch.numel(), self.feature_dim))
        # an index_add of ones, not bincount (which reads the maximum back from a GPU)
        self._counts = torch.zeros(self.batch_size, dtype=torch.long, device=batch.device).index_add_(
            0, batch, torch.ones_like(batch))

    def _to(self, device: torch.device | str) -> "GraphSpace":
        return GraphSpace(self.batch.to(device), self.feature_dim, self.batch_size,
                          None if self.edge_index is None else self.edge_index.to(device))

    def unit_noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.randn(self.shape, generator=generator, dtype=dtype, device=self.device)

    def project(self, x: Tensor) -> Tensor:
        return self.check(x)

    def broadcast(self, per_sample: Tensor) -> Tensor:
        return per_sample.reshape(-1)[self.batch].unsqueeze(-1)

    def sum_per_sample(self, x: Tensor) -> Tensor:
        per_node = self.check(x).sum(-1)
        out = torch.zeros(self.batch_size, dtype=x.dtype, device=x.device)
        return out.index_add_(0, self.batch, per_node)

    @property
    def dof(self) -> Tensor:
        return (self._counts * self.feature_dim).to(torch.float64)

    def element_owner(self) -> Tensor:
        return self.batch.unsqueeze(-1).expand(self.shape)

    def node_counts(self) -> Tensor:
        return self._counts

    def node_sum(self, x: Tensor) -> Tensor:
        out = torch.zeros((self.batch_size, x.shape[-1]), dtype=x.dtype, device=x.device)
        return out.index_add_(0, self.batch, self.check(x))

    def expand_nodes(self, per_sample: Tensor) -> Tensor:
        return per_sample[self.batch]


# ==================================================================================================
class _Constrained(Space):
    """Shared plumbing for a constraint wrapped around a set layout."""

    def __init__(self, base: SetLayout) -> None:
        self.base = base
        self.shape, self.batch_size, self.device = base.shape, base.batch_size, base.device

    def _to(self, device: torch.device | str) -> "_Constrained":
        return type(self)(self.base.to(device))

    def broadcast(self, per_sample: Tensor) -> Tensor:
        return self.base.broadcast(per_sample)

    def sum_per_sample(self, x: Tensor) -> Tensor:
        return self.base.sum_per_sample(x)

    def element_owner(self) -> Tensor:
        return self.base.element_owner()


class ZeroCoMSpace(_Constrained):
    """Points whose per-sample centre of mass is zero: x ← x − mean_nodes(x); d = F(N − 1).

    The translation-invariant subspace of Hoogeboom et al. (2022, §3.2): noise is drawn in the full space
    and projected, which is a standard normal in the (N − 1)F-dimensional subspace.
    """

    def __init__(self, base: SetLayout) -> None:
        if not isinstance(base, SetLayout):
            raise ValueError(f"ZeroCoMSpace needs a set layout (dense [B,N,F], masked or graph), got {type(base).__name__}")
        super().__init__(base)
        if (base.node_counts() < 2).any():
            raise ValueError("ZeroCoMSpace needs at least 2 points per sample (one point has no degrees of freedom)")

    def unit_noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.project(self.base.unit_noise(generator, dtype))

    def project(self, x: Tensor) -> Tensor:
        x = self.base.project(x)
        return x - self.base.expand_nodes(self.base.node_mean(x))

    @property
    def dof(self) -> Tensor:
        return ((self.base.node_counts() - 1) * self.base.feature_dim).to(torch.float64)

    def centre_of_mass(self, x: Tensor) -> Tensor:
        """Per-sample centre of mass, [B, F] (zero for states of this space)."""
        return self.base.node_mean(x)


def wrap_angle(x: Tensor) -> Tensor:
    """Wrap angles to (−π, π]: π − ((π − x) mod 2π)."""
    return math.pi - torch.remainder(math.pi - x, 2 * math.pi)


class TorusSpace(_Constrained):
    """Angles on the torus (S¹)^F, for variance-exploding diffusion (α = 1; Jing et al. 2022, *Torsional
    diffusion*; De Bortoli et al. 2022, *Riemannian score-based generative modelling*): states are wrapped to
    (−π, π] after every step, noise is the base's Gaussian (the wrap makes x_t = wrap(x₀ + σε) a wrapped normal
    around x₀), the prior is uniform, the ε-target is −σ times the wrapped normal's score, velocities are not
    wrapped; d = number of angles."""

    def __init__(self, base: SetLayout | DenseSpace) -> None:
        super().__init__(base)

    def unit_noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return self.base.unit_noise(generator, dtype)

    def project(self, x: Tensor) -> Tensor:
        return self.base.project(wrap_angle(x))

    def project_tangent(self, v: Tensor) -> Tensor:
        return self.base.project(v)

    def difference(self, a: Tensor, b: Tensor) -> Tensor:
        """wrap(a − b): the shortest arc from b to a (two x̂₀ predictions an unwrapped step apart differ by 2π
        after a wrap; DPM-Solver++(2M) would otherwise mix them)."""
        return self.base.project(wrap_angle(a - b))

    def prior(self, prior_std: float, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
        """x_T ~ U((−π, π]^F), the stationary law of Brownian motion on the torus: π − 2π Φ(z) for the base's
        normal draw z (float64; Φ the normal CDF), so padded and flat layouts get the same angles and padding
        stays zero. ``prior_std`` (σ_max) only sets how good the uniform is: the VE marginal at σ_max is within
        TV ``sciddpm.torus.uniform_prior_tv_bound(σ_max, F)`` = F (2q/π + Σ_{n≥2} q^{n²}), q = e^{−σ_max²/2}, of it
        (1.7e-9 per angle at σ_max = 2π). A VP schedule's x_T is a wrapped N(0, σ_T²) instead: torus diffusion is variance exploding."""
        z = self.base.unit_noise(generator, torch.float64)
        return self.project((math.pi - 2 * math.pi * torch.special.ndtr(z)).to(dtype))

    def eps_target(self, x0: Tensor, x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """ε* = −σ ∂ log p_WN(x_t | α x₀, σ²) = Σ_k w_k (d + 2πk)/σ with d = wrap(x_t − α x₀) and
        w_k ∝ N(d + 2πk; 0, σ²) (``sciddpm.torus.wrapped_normal``, truncation error ≤ 1e-12): the denoising
        score-matching target of Jing et al. (2022, eq. 6) in ε units. It is E[ε | x_t, x₀], so it has the
        minimiser of the plain ε-target with less variance; it equals ε where σε does not cross the boundary
        and σ is small."""
        from .torus import wrapped_normal  # torus.py imports this module

        return self.base.project(wrapped_normal(x_t, alpha * x0, sigma)[1].to(x_t.dtype))

    @property
    def dof(self) -> Tensor:
        return self.base.dof


# ==================================================================================================
class ProductSpace(Space):
    """A product of spaces with the same batch layout, joined along the last axis (e.g. positions ⊕ features).

    ``parts`` are spaces whose shapes agree except in the last axis; d is the sum of the parts' d.
    """

    def __init__(self, parts: Sequence[Space]) -> None:
        if len(parts) < 1:
            raise ValueError("ProductSpace needs at least one part")
        lead = tuple(parts[0].shape[:-1])
        for i, p in enumerate(parts):
            if tuple(p.shape[:-1]) != lead:
                raise ValueError(f"ProductSpace part {i} has shape {tuple(p.shape)}; leading axes must be {lead}")
        self.parts = list(parts)
        self.widths = [p.shape[-1] for p in parts]
        self.shape = torch.Size(lead + (sum(self.widths),))
        self.batch_size, self.device = parts[0].batch_size, parts[0].device

    def _to(self, device: torch.device | str) -> "ProductSpace":
        return ProductSpace([p.to(device) for p in self.parts])

    def split(self, x: Tensor) -> list[Tensor]:
        """Split a state into the parts' states."""
        return list(torch.split(self.check(x), self.widths, dim=-1))

    def unit_noise(self, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.cat([p.unit_noise(generator, dtype) for p in self.parts], dim=-1)

    def project(self, x: Tensor) -> Tensor:
        return torch.cat([p.project(xi) for p, xi in zip(self.parts, self.split(x))], dim=-1)

    def project_tangent(self, v: Tensor) -> Tensor:
        return torch.cat([p.project_tangent(vi) for p, vi in zip(self.parts, self.split(v))], dim=-1)

    def difference(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.cat([p.difference(ai, bi) for p, ai, bi in zip(self.parts, self.split(a), self.split(b))], dim=-1)

    def broadcast(self, per_sample: Tensor) -> Tensor:
        return self.parts[0].broadcast(per_sample)

    def element_owner(self) -> Tensor:
        return torch.cat([p.element_owner() for p in self.parts], dim=-1)

    def sum_per_sample(self, x: Tensor) -> Tensor:
        return sum(p.sum_per_sample(xi) for p, xi in zip(self.parts, self.split(x)))

    @property
    def dof(self) -> Tensor:
        return sum(p.dof for p in self.parts)
