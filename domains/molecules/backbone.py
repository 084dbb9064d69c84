"""The molecules domain's denoising network: EDM's E(n)-equivariant GNN (EGNN) on flat PyG batches.

State convention (shared with :mod:`.e3nn_backbone`): a flat node tensor ``x_t`` [n_nodes, 3 + F] holding
positions (zero centre of mass per molecule) ⊕ scaled atom features (EDM: one-hot × 0.25, charge × 0.1),
a PyG ``batch`` index [n_nodes] and a time ``t`` [B] in the units of the network's ``schedule``, which the
network reads only as the noise-level feature τ(t) of :func:`time_feature`. The network is called
``net(x_t, t, batch=batch, context=None, num_graphs=None, edge_index=None)`` and returns an ε-prediction of the
same shape whose position part is zero-CoM per molecule and E(3)-equivariant, and whose feature part is
E(3)-invariant.

Architecture (Satorras et al., ICML 2021; as configured by Hoogeboom et al., ICML 2022, ``egnn_new.py``):

    h⁰ = W_in [h, τ(t), c],   e⁰_ij = ‖x_i − x_j‖² (at the network input)
    for each block b:   e_ij = [‖x_i − x_j‖², e⁰_ij]   (x at the block input)
        repeat inv_sublayers times (GCL):
            m_ij = φ_e(h_i, h_j, e_ij),   m_ij ← m_ij · σ(w·m_ij)              (attention gate)
            h_i  ← h_i + φ_h(h_i, Σ_{j≠i} m_ij / Z)
        x_i ← x_i + Σ_{j≠i} (x_i − x_j)/(‖x_i − x_j‖ + c_norm) · tanh(φ_x(h_i, h_j, e_ij)) · r / Z
    ε_x = x_final − x − mean,   ε_h = (W_out h)[:, :F]

with τ(t) the noise-level time feature (:func:`time_feature`, where EDM feeds t/T), r = coords_range / n_layers
per block, Z = normalization_factor and messages over all ordered atom pairs within each molecule (fully
connected, no self loops). The first layer of φ_e and φ_x is evaluated per atom, not per pair
(:func:`pair_linear`): the same function with about 17× fewer multiply-adds on QM9.
"""
from __future__ import annotations

import itertools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sciddpm.network_time import refuse_raw_time_config, require_schedule
from sciddpm.schedules import NoiseSchedule

N_DIMS = 3
#: τ = (c_noise − lo)/(hi − lo) maps ς = σ/α ∈ [1e-5, 1e5] (c_noise = ¼ ln ς ∈ [¼ ln 1e-5, ¼ ln 1e5]) onto [0, 1].
TIME_FEATURE_RANGE: tuple[float, float] = (0.25 * math.log(1e-5), 0.25 * math.log(1e5))


# ==================================================================================================
# Shared helpers (also used by e3nn_backbone)
# ==================================================================================================
def node_counts(batch: Tensor, num_graphs: int) -> Tensor:
    """Atoms per molecule, long [B] (an index_add of ones: unlike ``bincount`` it never waits for the GPU)."""
    return torch.zeros(num_graphs, dtype=torch.long, device=batch.device).index_add_(0, batch, torch.ones_like(batch))


def fully_connected_edges(batch: Tensor, num_graphs: int) -> tuple[Tensor, Tensor]:
    """All ordered pairs (i, j), i ≠ j, of atoms in the same molecule: (row = i receiver, col = j sender).

    Vectorised: molecule g with n_g atoms owns n_g(n_g − 1) pairs; pair k of it is
    i = k // (n_g − 1), j' = k mod (n_g − 1), j = j' + [j' ≥ i], in the molecule's (stable) node order.
    ``batch`` need not be sorted. Nothing is cached, so any batch works. The number of pairs depends on the
    data, so on a GPU this waits for it once: the molecules domain builds the pairs in its collate (on the CPU)
    and in ``sample_space`` (once per sampling run; the pairs travel with the space) and passes them as ``edge_index``.
    """
    counts = node_counts(batch, num_graphs)
    order = torch.argsort(batch, stable=True)  # node ids grouped by molecule
    start = torch.cumsum(counts, 0) - counts  # first sorted position of each molecule
    n_pairs = counts * (counts - 1)
    graph = torch.repeat_interleave(torch.arange(num_graphs, device=batch.device), n_pairs)
    k = torch.arange(graph.numel(), device=batch.device) - (torch.cumsum(n_pairs, 0) - n_pairs)[graph]
    m = (counts[graph] - 1).clamp(min=1)
    i = torch.div(k, m, rounding_mode="floor")
    j = k - i * m
    j = j + (j >= i).long()
    return order[start[graph] + i], order[start[graph] + j]


def time_feature(schedule: NoiseSchedule, t: Tensor, check: bool = True) -> Tensor:
    """The molecule networks' scalar time feature, float64 like t:

        τ(t) = (c_noise(t) − ¼ ln 1e-5) / (¼ ln 1e5 − ¼ ln 1e-5) = (ln max(ς_t, 1e-5) + ln 1e5) / (2 ln 1e5),

    with c_noise(t) = ¼ ln max(ς_t, 1e-5), ς = σ/α (:meth:`NoiseSchedule.c_noise`, EDM's c_noise of Karras et al.
    2022). EDM's EGNN concatenates t/T ∈ [0, 1] to every atom's features (Hoogeboom et al. 2022); we keep that
    architecture (one scalar near [0, 1] per atom) but make it a *fixed* affine map of c_noise rather than t/T or
    c_noise rescaled to each schedule's own range: both of those depend on the schedule (the same noise level
    would enter a network differently under two schedules), while τ depends on the noise level alone, so a network
    sees the same input for the same ς under every schedule. The fixed range ς ∈ [1e-5, 1e5] ↦ [0, 1] starts at
    c_noise's floor (the data end, τ = 0) and is symmetric in ln ς (SNR 1 ↦ ½); it covers every schedule here:
    EDM's polynomial_2 of 1000 steps gives τ = 0.25 at t = 1 and 0.75 at t = 1000, linear 0.30 … 0.72, cosine
    0.28 … 0.93, VP 0.30 … 0.72, VE(0.01, 50) 0.30 … 0.67. ``check=False``: see ``c_noise`` (no device wait).
    """
    lo, hi = TIME_FEATURE_RANGE
    return (schedule.c_noise(t, check=check) - lo) / (hi - lo)


def remove_mean(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """x − (per-molecule mean of x) on every node (EDM's ``remove_mean``)."""
    sums = torch.zeros((num_graphs, x.shape[-1]), dtype=x.dtype, device=x.device).index_add_(0, batch, x)
    counts = node_counts(batch, num_graphs).clamp(min=1).to(x.dtype).unsqueeze(-1)
    return x - (sums / counts)[batch]


def check_inputs(x: Tensor, t: Tensor | float, batch: Tensor | None, in_node_nf: int, context_nf: int,
                 context: Tensor | None, num_graphs: int | None, check_finite: bool = True,
                 edge_index: Tensor | None = None, schedule: NoiseSchedule | None = None) -> tuple[Tensor, int]:
    """Validate a network call; return (t as float64 [B], B). Raises ValueError naming the bad input.

    Shapes are checked on the host. The value checks (finite x_t and t, t in [t_min, t_max] of ``schedule`` if
    given, batch index in [0, B), ``edge_index`` pairs inside one molecule and no self pairs) are reduced on the
    device to one flag, so a GPU call waits once, and only when that flag fails are they redone one by one for
    the message.
    """
    if batch is None:
        raise ValueError("the molecule network needs the PyG batch index: call net(x_t, t, batch=batch)")
    if x.dim() != 2 or x.shape[1] != N_DIMS + in_node_nf:
        raise ValueError(f"x_t has shape {tuple(x.shape)} but the network expects [n_nodes, {N_DIMS + in_node_nf}]"
                         f" (3 positions + {in_node_nf} features)")
    if batch.dim() != 1 or batch.shape[0] != x.shape[0] or batch.dtype != torch.long:
        raise ValueError(f"batch index has shape {tuple(batch.shape)} and dtype {batch.dtype}; expected a long"
                         f" tensor of shape ({x.shape[0]},) matching x_t {tuple(x.shape)}")
    if edge_index is not None and (edge_index.dim() != 2 or edge_index.shape[0] != 2
                                   or edge_index.dtype != torch.long or edge_index.device != batch.device):
        raise ValueError(f"edge_index has shape {tuple(edge_index.shape)}, dtype {edge_index.dtype} on "
                         f"{edge_index.device}; expected a long [2, n_pairs] tensor on {batch.device}")
    t = torch.as_tensor(t, device=x.device).to(torch.float64).reshape(-1)
    if num_graphs is None:
        num_graphs = t.numel() if t.numel() > 1 else (int(batch.max()) + 1 if batch.numel() else 1)
    num_graphs = int(num_graphs)
    if t.numel() == 1:
        t = t.expand(num_graphs)
    if t.numel() != num_graphs:
        raise ValueError(f"t has {t.numel()} entries but the batch has {num_graphs} molecules")
    if context_nf:
        if context is None or tuple(context.shape) != (num_graphs, context_nf):
            got = None if context is None else tuple(context.shape)
            raise ValueError(f"context has shape {got}; expected ({num_graphs}, {context_nf})")
    elif context is not None:
        raise ValueError("context given but the network was built with context_nf=0")
    if check_finite:
        checks = _value_checks(x, t, batch, num_graphs, edge_index, schedule)
        if not bool(torch.stack([ok for ok, _ in checks]).all()):
            raise ValueError(next(message for ok, message in checks if not bool(ok)))
    return t, num_graphs


def _value_checks(x: Tensor, t: Tensor, batch: Tensor, num_graphs: int, edge_index: Tensor | None,
                  schedule: NoiseSchedule | None = None) -> list[tuple[Tensor, str]]:
    """(device flag, message) pairs for :func:`check_inputs`; nothing here waits for the device."""
    checks = [(torch.isfinite(x[:, :N_DIMS]).all(), "x_t positions contain NaN or inf"),
              (torch.isfinite(x[:, N_DIMS:]).all(), "x_t node features contain NaN or inf"),
              (torch.isfinite(t).all(), "t contains NaN or inf")]
    if schedule is not None:
        lo, hi = schedule.t_min, schedule.t_max
        tol = 1e-9 * max(1.0, abs(hi))
        checks.append((((t >= lo - tol) & (t <= hi + tol)).all(), f"t must lie in the schedule's range [{lo}, {hi}]"))
    if batch.numel():
        checks.append((((batch >= 0) & (batch < num_graphs)).all(),
                       f"batch index values must lie in [0, {num_graphs})"))
    if edge_index is not None and edge_index.numel():
        n = batch.shape[0]
        inside = ((edge_index >= 0) & (edge_index < n)).all()
        checks.append((inside, f"edge_index values must lie in [0, {n}) (the atoms of x_t)"))
        counts = node_counts(batch, num_graphs)
        checks.append(((counts * (counts - 1)).sum() == edge_index.shape[1],
                       f"edge_index has {edge_index.shape[1]} pairs; a fully connected batch has sum n(n - 1)"))
        if n:
            row, col = edge_index.clamp(0, n - 1)
            checks.append((((batch[row] == batch[col]) & (row != col)).all() | ~inside,
                           "edge_index pairs two atoms of different molecules, or an atom with itself"))
    return checks


class _Configurable(nn.Module):
    """``config()`` / ``from_config()`` / ``num_parameters()`` for backbones whose __init__ args are JSON."""

    _config: dict[str, Any]

    def config(self) -> dict[str, Any]:
        """The constructor's hyper-parameters (JSON-serialisable)."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any], schedule: NoiseSchedule | None):
        """Rebuild a network from :meth:`config`'s dict for ``schedule`` (a v1 config naming ``time_scale`` or
        ``sin_embedding`` is refused: its weights read raw t)."""
        refuse_raw_time_config(config, cls.__name__)
        return cls(**config, schedule=schedule)

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Number of (trainable) parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class _CheckedCore(_Configurable):
    """A molecule network split in two: ``forward`` checks the call on the host (:func:`check_inputs`, one device
    wait), turns t into the time feature τ(t) (:meth:`time_input`) and builds the atom pairs, then runs the
    tensor-only ``forward_core(x_t, tau, batch, receiver, sender, context, n_graphs)``, which :meth:`compile_core`
    can hand to ``torch.compile`` whole (no host waits inside)."""

    _core: Any = None  # set by compile_core: the compiled type(self).forward_core
    #: The schedule whose noise level the network reads (None only for a network without a time input).
    schedule: NoiseSchedule | None = None

    def time_input(self, t: Tensor) -> Tensor | None:
        """τ(t) = :func:`time_feature` (float64 [B]) for a checked t; None if the network has no time input."""
        return None if self.schedule is None else time_feature(self.schedule, t, check=False)

    def _checked_call(self, x_t: Tensor, t: Tensor | float, batch: Tensor | None, context: Tensor | None,
                      num_graphs: int | None, edge_index: Tensor | None) -> Tensor:
        """Check the inputs, build the pairs when ``edge_index`` is None, run the (compiled) core on τ(t)."""
        t, n_graphs = check_inputs(x_t, t, batch, self.in_node_nf, self.context_nf, context, num_graphs, self.check,
                                   edge_index, self.schedule)
        receiver, sender = (fully_connected_edges(batch, n_graphs) if edge_index is None
                            else (edge_index[0], edge_index[1]))
        core = self._core if self._core is not None else type(self).forward_core
        return core(self, x_t, self.time_input(t), batch, receiver, sender, context, n_graphs)

    def compile_core(self, **options: Any) -> None:
        """Run ``forward_core`` through ``torch.compile(dynamic=True, **options)`` from now on.

        Dynamic shapes: the atom and pair counts change every batch, and one compiled graph serves them all. On a
        GPU (Inductor/Triton) this fuses the element-wise work around the matrix products into a few kernels per
        layer, so a training step launches far fewer kernels. The compiled function is shared by copies of the
        network (``copy.deepcopy``, the EMA), and checkpoints are unchanged. The first call compiles (tens of
        seconds to minutes)."""
        self._core = torch.compile(type(self).forward_core, dynamic=True, **options)


# ==================================================================================================
# EGNN
# ==================================================================================================
def pair_linear(layer: nn.Linear, h: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor,
                factorized: bool = True) -> Tensor:
    """``layer([h_i, h_j, e_ij])`` for every pair (i = row, j = col), the first layer of EGNN's edge MLPs.

    With ``factorized`` it is computed as (h W_iᵀ)[row] + (h W_jᵀ)[col] + e_ij W_eᵀ + b, where
    W = [W_i | W_j | W_e] splits the weight by input block: the same map (a linear layer on a concatenation
    is the sum of its blocks), but the H × H products run once per atom instead of once per pair, which cuts the
    layer's multiply-adds by about the mean number of neighbours (17 on QM9) and never builds the
    [n_pairs, 2H + e] input. ``factorized=False`` builds the concatenation (the textbook form, kept as the
    reference the tests and the speed benchmark compare against). Parameters are the same either way.
    """
    if not factorized:
        return layer(torch.cat([h[row], h[col], edge_attr.to(h.dtype)], dim=1))
    n_h, w = h.shape[1], layer.weight
    per_atom = F.linear(h, torch.cat([w[:, :n_h], w[:, n_h:2 * n_h]], dim=0))  # [n_atoms, 2 out]
    receiver, sender = per_atom.split(w.shape[0], dim=1)
    per_pair = F.linear(edge_attr.to(per_atom.dtype), w[:, 2 * n_h:], layer.bias)
    return per_pair + receiver[row] + sender[col]


def _after_first(mlp: nn.Sequential, x: Tensor) -> Tensor:
    """The layers of ``mlp`` after its first, applied to x (without building a sliced Sequential per call)."""
    for layer in itertools.islice(mlp, 1, None):
        x = layer(x)
    return x


class GCL(nn.Module):
    """Invariant graph convolution: m_ij = φ_e(h_i, h_j, e_ij) (· attention gate), h_i += φ_h(h_i, Σ_j m_ij / Z)."""

    def __init__(self, hidden_nf: int, edge_nf: int, normalization_factor: float, aggregation_method: str,
                 attention: bool) -> None:
        super().__init__()
        self.normalization_factor, self.aggregation_method = normalization_factor, aggregation_method
        self.edge_mlp = nn.Sequential(nn.Linear(2 * hidden_nf + edge_nf, hidden_nf), nn.SiLU(),
                                      nn.Linear(hidden_nf, hidden_nf), nn.SiLU())
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden_nf, hidden_nf), nn.SiLU(), nn.Linear(hidden_nf, hidden_nf))
        self.att_mlp = nn.Sequential(nn.Linear(hidden_nf, 1), nn.Sigmoid()) if attention else None

    def forward(self, h: Tensor, row: Tensor, col: Tensor, edge_attr: Tensor, inv_degree: Tensor | None,
                factorized: bool = True) -> Tensor:
        m = _after_first(self.edge_mlp, pair_linear(self.edge_mlp[0], h, row, col, edge_attr, factorized))
        if self.att_mlp is not None:
            m = m * self.att_mlp(m)
        agg = _aggregate(m, row, h.shape[0], self.normalization_factor, self.aggregation_method, inv_degree)
        return h + self.node_mlp(torch.cat([h, agg.to(h.dtype)], dim=1))


def _aggregate(msg: Tensor, row: Tensor, n: int, normalization_factor: float, method: str,
               inv_degree: Tensor | None) -> Tensor:
    acc = torch.promote_types(msg.dtype, torch.float32)  # sum bf16/fp16 messages in fp32
    out = torch.zeros((n, msg.shape[1]), dtype=acc, device=msg.device).index_add_(0, row, msg.to(acc))
    if method == "sum":  # (EDM's QM9 factor is 1: no division, one kernel fewer forward and backward)
        return out if normalization_factor == 1.0 else out / normalization_factor
    return out * inv_degree.to(out.dtype)  # "mean"


class EquivariantUpdate(nn.Module):
    """x_i += Σ_j (x_i − x_j)/(‖x_i − x_j‖ + c) · tanh(φ_x(h_i, h_j, e_ij)) · r / Z  (computed in float32)."""

    def __init__(self, hidden_nf: int, edge_nf: int, normalization_factor: float, aggregation_method: str,
                 tanh: bool, coords_range: float) -> None:
        super().__init__()
        self.tanh, self.coords_range = tanh, coords_range
        self.normalization_factor, self.aggregation_method = normalization_factor, aggregation_method
        last = nn.Linear(hidden_nf, 1, bias=False)
        nn.init.xavier_uniform_(last.weight, gain=0.001)  # EDM: start near the identity map on x
        self.coord_mlp = nn.Sequential(nn.Linear(2 * hidden_nf + edge_nf, hidden_nf), nn.SiLU(),
                                       nn.Linear(hidden_nf, hidden_nf), nn.SiLU(), last)

    def forward(self, h: Tensor, x: Tensor, row: Tensor, col: Tensor, coord_diff: Tensor, edge_attr: Tensor,
                inv_degree: Tensor | None, factorized: bool = True) -> Tensor:
        phi = _after_first(self.coord_mlp, pair_linear(self.coord_mlp[0], h, row, col, edge_attr, factorized)).float()
        phi = torch.tanh(phi) * self.coords_range if self.tanh else phi
        trans = coord_diff * phi
        return x + _aggregate(trans, row, x.shape[0], self.normalization_factor, self.aggregation_method, inv_degree)


class EquivariantBlock(nn.Module):
    """``inv_sublayers`` GCLs then one equivariant coordinate update, with e_ij = [d²_ij(block input), d²_ij(net input)]."""

    def __init__(self, hidden_nf: int, inv_sublayers: int, attention: bool, tanh: bool, coords_range: float,
                 norm_constant: float, normalization_factor: float, aggregation_method: str) -> None:
        super().__init__()
        self.norm_constant = norm_constant
        self.gcls = nn.ModuleList(GCL(hidden_nf, 2, normalization_factor, aggregation_method, attention)
                                  for _ in range(inv_sublayers))
        self.update = EquivariantUpdate(hidden_nf, 2, normalization_factor, aggregation_method, tanh, coords_range)

    def forward(self, h: Tensor, x: Tensor, row: Tensor, col: Tensor, d2_input: Tensor,
                inv_degree: Tensor | None, factorized: bool = True) -> tuple[Tensor, Tensor]:
        d2, coord_diff = coord2diff(x, row, col, self.norm_constant)
        edge_attr = torch.cat([d2, d2_input], dim=1)
        for gcl in self.gcls:
            h = gcl(h, row, col, edge_attr, inv_degree, factorized)
        return h, self.update(h, x, row, col, coord_diff, edge_attr, inv_degree, factorized)


def coord2diff(x: Tensor, row: Tensor, col: Tensor, norm_constant: float = 1.0) -> tuple[Tensor, Tensor]:
    """(‖x_i − x_j‖² [E, 1], (x_i − x_j)/(‖x_i − x_j‖ + c) [E, 3]) in float32 (autocast-safe)."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(torch.promote_types(x.dtype, torch.float32))
        diff = x[row] - x[col]
        d2 = (diff * diff).sum(1, keepdim=True)
        return d2, diff / (torch.sqrt(d2 + 1e-8) + norm_constant)


class EGNNDynamics(_CheckedCore):
    """EDM's EGNN ε-network for molecules (``EGNN_dynamics_QM9`` with ``egnn_dynamics`` mode) on flat batches.

    ``net(x_t [n, 3+F], t [B], batch=[n], context=[B, context_nf] | None, num_graphs=None, edge_index=None)
    -> ε̂ [n, 3+F]``.
    EDM's QM9 model: ``EGNNDynamics(6, hidden_nf=256, n_layers=9, attention=True, tanh=True, coords_range=15,
    norm_constant=1, inv_sublayers=1, normalization_factor=1, aggregation_method='sum', schedule=...)``, with the
    time feature τ(t) of :func:`time_feature` in place of EDM's t/T. ``schedule`` (keyword-only) is required when
    ``condition_time`` (the default); it is a plain attribute, not part of ``config()`` or the state dict.
    """

    def __init__(self, in_node_nf: int = 6, context_nf: int = 0, hidden_nf: int = 256, n_layers: int = 9,
                 attention: bool = True, tanh: bool = True, coords_range: float = 15.0, norm_constant: float = 1.0,
                 inv_sublayers: int = 1, normalization_factor: float = 1.0, aggregation_method: str = "sum",
                 condition_time: bool = True, check_inputs: bool = True, factorized_edges: bool = True, *,
                 schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        self.schedule = require_schedule(schedule, type(self).__name__) if condition_time else None
        if aggregation_method not in ("sum", "mean"):
            raise ValueError(f"aggregation_method must be 'sum' or 'mean', got {aggregation_method!r}")
        if in_node_nf < 1 or hidden_nf < 1 or n_layers < 1 or inv_sublayers < 1 or context_nf < 0:
            raise ValueError("in_node_nf, hidden_nf, n_layers, inv_sublayers must be >= 1 and context_nf >= 0")
        self._config = dict(in_node_nf=in_node_nf, context_nf=context_nf, hidden_nf=hidden_nf, n_layers=n_layers,
                            attention=attention, tanh=tanh, coords_range=float(coords_range),
                            norm_constant=float(norm_constant), inv_sublayers=inv_sublayers,
                            normalization_factor=float(normalization_factor),
                            aggregation_method=aggregation_method, condition_time=condition_time,
                            check_inputs=check_inputs, factorized_edges=factorized_edges)
        self.in_node_nf, self.context_nf = in_node_nf, context_nf
        self.condition_time, self.check, self.aggregation_method = condition_time, check_inputs, aggregation_method
        self.factorized_edges = factorized_edges
        nf = in_node_nf + int(condition_time) + context_nf
        self.embedding = nn.Linear(nf, hidden_nf)
        self.embedding_out = nn.Linear(hidden_nf, nf)
        self.blocks = nn.ModuleList(
            EquivariantBlock(hidden_nf, inv_sublayers, attention, tanh, float(coords_range) / n_layers,
                             norm_constant, normalization_factor, aggregation_method) for _ in range(n_layers))

    def forward(self, x_t: Tensor, t: Tensor | float, batch: Tensor | None = None, context: Tensor | None = None,
                num_graphs: int | None = None, edge_index: Tensor | None = None) -> Tensor:
        """ε̂(x_t, t): positions part x_final − x_t minus its per-molecule mean; feature part W_out h (no t, c).

        ``edge_index`` [2, n_pairs] (receiver i, sender j) lists every ordered pair of distinct atoms of each
        molecule (the molecules domain's collate and ``network_condition`` supply it); without it the pairs are
        built here from ``batch``. Inputs are checked (one device wait, see :func:`check_inputs`), then the
        tensor-only :meth:`forward_core` runs, compiled if :meth:`compile_core` was called.
        """
        return self._checked_call(x_t, t, batch, context, num_graphs, edge_index)

    def forward_core(self, x_t: Tensor, tau: Tensor | None, batch: Tensor, row: Tensor, col: Tensor,
                     context: Tensor | None, n_graphs: int) -> Tensor:
        """The network on checked inputs (time feature τ(t) [B] or None, pairs row/col): tensor operations only, no
        host waits, so ``torch.compile`` captures it whole, forward and backward."""
        x = x_t[:, :N_DIMS].to(torch.promote_types(x_t.dtype, torch.float32))
        h, x_cur = self.trunk(x_t, tau, batch, row, col, context, n_graphs)
        eps_h = self.embedding_out(h)[:, : self.in_node_nf]
        eps_x = remove_mean(x_cur - x, batch, n_graphs)
        return torch.cat([eps_x.to(x_t.dtype), eps_h.to(x_t.dtype)], dim=1)

    def trunk(self, x_t: Tensor, tau: Tensor | None, batch: Tensor, row: Tensor, col: Tensor,
              context: Tensor | None, n_graphs: int) -> tuple[Tensor, Tensor]:
        """(h [n, hidden] after the last block: E(3)-invariant atom features, x [n, 3] after the last coordinate
        update: equivariant) on checked inputs, τ = :meth:`time_input` (t); the ε-head and other heads
        (``property.PropertyPredictor``) read it."""
        x = x_t[:, :N_DIMS].to(torch.promote_types(x_t.dtype, torch.float32))
        dtype = self.embedding.weight.dtype
        parts = [x_t[:, N_DIMS:].to(dtype)]
        if self.condition_time:
            parts.append(tau.to(dtype)[batch].unsqueeze(1))
        if self.context_nf:
            parts.append(context.to(dtype)[batch])
        h = self.embedding(torch.cat(parts, dim=1))
        inv_degree = None
        if self.aggregation_method == "mean":
            inv_degree = 1.0 / (node_counts(batch, n_graphs) - 1).clamp(min=1)[batch].float().unsqueeze(1)
        d2_input, _ = coord2diff(x, row, col)
        x_cur = x
        for block in self.blocks:
            h, x_cur = block(h, x_cur, row, col, d2_input, inv_degree, self.factorized_edges)
        return h, x_cur

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._config.items()
                         if k not in ("check_inputs", "factorized_edges"))


def edm_qm9_egnn(schedule: NoiseSchedule, context_nf: int = 0, include_charges: bool = True,
                 **options: Any) -> EGNNDynamics:
    """EDM's QM9 network (9 × 256 EGNN, attention, tanh, coords_range 15, normalization_factor 1, sum) for
    ``schedule``; ``options`` (e.g. ``check_inputs``) go to :class:`EGNNDynamics`."""
    return EGNNDynamics(in_node_nf=5 + int(include_charges), context_nf=context_nf, hidden_nf=256, n_layers=9,
                        attention=True, tanh=True, coords_range=15.0, norm_constant=1.0, inv_sublayers=1,
                        normalization_factor=1.0, aggregation_method="sum", schedule=schedule, **options)


__all__ = ["EGNNDynamics", "GCL", "pair_linear", "EquivariantUpdate", "EquivariantBlock", "coord2diff", "edm_qm9_egnn",
           "fully_connected_edges", "remove_mean", "check_inputs", "node_counts", "time_feature", "TIME_FEATURE_RANGE"]
