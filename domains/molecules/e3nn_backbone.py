"""An O(3)-equivariant tensor-field network for molecules built from e3nn (Geiger & Smidt 2022).

Same call convention as :class:`.backbone.EGNNDynamics`:
``net(x_t [n, 3+F], t [B], batch=[n], context=[B, c] | None, num_graphs=None, edge_index=None) -> ε̂ [n, 3+F]``.

Each layer is a point convolution over all atom pairs of a molecule (Thomas et al. 2018, e3nn's
``Convolution`` example):

    f_i ← Gate( W_self f_i + (1/k_i) Σ_{j≠i} TP_{w(‖r_ij‖)}(f_j, Y(r̂_ij)) ),   r_ij = x_i − x_j,

with Y the spherical harmonics up to l_max (parity (−1)^l), w(r) = MLP(soft-one-hot radial basis of r)
giving the tensor product's weights per edge, k_i the atom's number of neighbours (or a fixed ``num_neighbors``), and the gated nonlinearity
(Weiler et al. 2018): SiLU on scalars, sigmoid gates on l > 0. Residual connections when irreps agree.
The input irreps are (F + 1 + c)x0e (features, the time feature τ(t) of :func:`.backbone.time_feature`, context);
the last convolution outputs 1x1o (ε for positions, then zero-CoM per molecule) ⊕ Fx0e (ε for features), times a
learnable invariant gain (``output_gain`` at init, so the initial ε̂ is small and the loss starts near 1). All irreps carry parity, so
the network is O(3)-equivariant (rotations and reflections).
"""
from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.math import soft_one_hot_linspace
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn

from sciddpm.network_time import require_schedule
from sciddpm.schedules import NoiseSchedule

from .backbone import N_DIMS, _CheckedCore, node_counts, remove_mean


class PointConvolution(nn.Module):
    """f_i ↦ W_self f_i + norm_i Σ_j TP(f_j, Y(r̂_ij); w = MLP(basis(‖r_ij‖)))."""

    def __init__(self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, irreps_out: o3.Irreps, num_basis: int,
                 radial_neurons: int) -> None:
        super().__init__()
        self.self_interaction = o3.Linear(irreps_in, irreps_out)
        self.tp = o3.FullyConnectedTensorProduct(irreps_in, irreps_sh, irreps_out, shared_weights=False)
        self.radial = FullyConnectedNet([num_basis, radial_neurons, radial_neurons, self.tp.weight_numel],
                                        torch.nn.functional.silu)

    def forward(self, f: Tensor, src: Tensor, dst: Tensor, sh: Tensor, basis: Tensor, norm: Tensor) -> Tensor:
        msg = self.tp(f[src], sh, self.radial(basis))
        agg = torch.zeros((f.shape[0], msg.shape[1]), dtype=msg.dtype, device=msg.device).index_add_(0, dst, msg)
        return self.self_interaction(f) + agg * norm


def _gate(irreps_hidden: o3.Irreps) -> Gate:
    """A Gate whose output is ``irreps_hidden``: SiLU on its 0e scalars, one sigmoid gate per l > 0 irrep."""
    scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l == 0])
    gated = o3.Irreps([(mul, ir) for mul, ir in irreps_hidden if ir.l > 0])
    acts = [torch.nn.functional.silu if ir.p == 1 else torch.tanh for _, ir in scalars]
    gates = o3.Irreps([(gated.num_irreps, "0e")]) if gated.num_irreps else o3.Irreps("")
    return Gate(scalars, acts, gates, [torch.sigmoid] * len(gates), gated)


class E3NNDynamics(_CheckedCore):
    """An e3nn tensor-field ε-network for molecules: ``n_layers`` gated point convolutions, fully connected
    within each molecule, output 1x1o (positions, zero-CoM) ⊕ Fx0e (features). ``schedule`` (keyword-only,
    required): the model's schedule; t enters as the scalar τ(t) of :func:`.backbone.time_feature`."""

    def __init__(self, in_node_nf: int = 6, context_nf: int = 0, irreps_hidden: str = "32x0e + 8x1o + 8x1e",
                 n_layers: int = 3, lmax: int = 2, num_basis: int = 16, max_radius: float = 15.0,
                 radial_neurons: int = 64, num_neighbors: float | None = None, output_gain: float = 0.4,
                 check_inputs: bool = True, *, schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        self.schedule = require_schedule(schedule, type(self).__name__)
        if in_node_nf < 1 or n_layers < 1 or lmax < 1 or num_basis < 2 or context_nf < 0:
            raise ValueError("in_node_nf, n_layers, lmax must be >= 1, num_basis >= 2 and context_nf >= 0")
        if max_radius <= 0 or (num_neighbors is not None and num_neighbors <= 0):
            raise ValueError("max_radius and num_neighbors must be positive")
        self._config = dict(in_node_nf=in_node_nf, context_nf=context_nf, irreps_hidden=str(o3.Irreps(irreps_hidden)),
                            n_layers=n_layers, lmax=lmax, num_basis=num_basis, max_radius=float(max_radius),
                            radial_neurons=radial_neurons,
                            num_neighbors=None if num_neighbors is None else float(num_neighbors),
                            output_gain=float(output_gain),
                            check_inputs=check_inputs)
        self.in_node_nf, self.context_nf = in_node_nf, context_nf
        self.check = check_inputs
        self.num_basis, self.max_radius, self.num_neighbors = num_basis, float(max_radius), num_neighbors
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.spherical_harmonics = o3.SphericalHarmonics(self.irreps_sh, normalize=True, normalization="component")
        irreps = o3.Irreps(f"{in_node_nf + 1 + context_nf}x0e")
        hidden = o3.Irreps(irreps_hidden).simplify()
        self.convs, self.gates, self.residual = nn.ModuleList(), nn.ModuleList(), []
        for _ in range(n_layers - 1):
            gate = _gate(hidden)
            self.residual.append(gate.irreps_out == irreps)
            self.convs.append(PointConvolution(irreps, self.irreps_sh, gate.irreps_in, num_basis, radial_neurons))
            self.gates.append(gate)
            irreps = gate.irreps_out
        self.irreps_out = o3.Irreps(f"1x1o + {in_node_nf}x0e")
        self.out = PointConvolution(irreps, self.irreps_sh, self.irreps_out, num_basis, radial_neurons)
        # A learnable invariant output gain, started small so that the initial ε̂ is near 0 (loss near 1).
        self.output_gain = nn.Parameter(torch.tensor(float(output_gain)))

    def forward(self, x_t: Tensor, t: Tensor | float, batch: Tensor | None = None, context: Tensor | None = None,
                num_graphs: int | None = None, edge_index: Tensor | None = None) -> Tensor:
        """ε̂(x_t, t): the 1o output (minus its per-molecule mean) ⊕ the Fx0e output. ``edge_index`` [2, n_pairs]
        (receiver, sender): every ordered pair of distinct atoms per molecule, built from ``batch`` if omitted. The
        inputs are checked, then the tensor-only :meth:`forward_core` runs (compiled after :meth:`compile_core`)."""
        return self._checked_call(x_t, t, batch, context, num_graphs, edge_index)

    def forward_core(self, x_t: Tensor, tau: Tensor, batch: Tensor, dst: Tensor, src: Tensor,
                     context: Tensor | None, n_graphs: int) -> Tensor:
        """The network on checked inputs (time feature τ(t) float64 [B], pairs dst ← src): tensor operations only,
        no host waits."""
        dtype = self.output_gain.dtype  # the parameters' dtype
        x = x_t[:, :N_DIMS].to(dtype)
        parts = [x_t[:, N_DIMS:].to(dtype), tau.to(dtype)[batch].unsqueeze(1)]
        if self.context_nf:
            parts.append(context.to(dtype)[batch])
        f = torch.cat(parts, dim=1)
        vec = x[dst] - x[src]
        sh = self.spherical_harmonics(vec)
        basis = soft_one_hot_linspace(vec.norm(dim=1), 0.0, self.max_radius, self.num_basis,
                                      basis="smooth_finite", cutoff=True) * math.sqrt(self.num_basis)
        if self.num_neighbors is None:  # mean over neighbours: 1/degree (degree = atoms in the molecule − 1)
            norm = 1.0 / (node_counts(batch, n_graphs) - 1).clamp(min=1)[batch].to(dtype).unsqueeze(1)
        else:
            norm = torch.full((1, 1), 1.0 / math.sqrt(self.num_neighbors), dtype=dtype, device=x.device)
        for conv, gate, residual in zip(self.convs, self.gates, self.residual):
            g = gate(conv(f, src, dst, sh, basis, norm))
            f = g + f if residual else g
        out = self.out(f, src, dst, sh, basis, norm) * self.output_gain
        eps_x = remove_mean(out[:, :N_DIMS], batch, n_graphs)
        return torch.cat([eps_x, out[:, N_DIMS:]], dim=1).to(x_t.dtype)


__all__ = ["E3NNDynamics", "PointConvolution"]
