"""Molecular property prediction with an E(3)-invariant EGNN: the evaluator φ_c of EDM's conditional experiments
(Hoogeboom et al., ICML 2022, §5.2) and, with ``noise_aware``, the time-dependent predictor g(x_t, t) whose energy
|g(x_t, t) − c|² EEGSDE guides with (Bao et al., ICLR 2023).

    h = EGNN trunk(x, [τ(t)])                       (atom features after the last block, invariant)
    ŷ = W₂ SiLU(W₁ Σ_i ψ(h_i))                      (sum over the molecule's atoms, then an MLP)

with τ(t) the noise-level time feature of :func:`.backbone.time_feature` (noise-aware predictors only). ŷ is the
property normalised as the conditioning is, c̃ = (c − mean)/MAD (:mod:`.conditioning`), and it is trained
with the L1 loss |ŷ − c̃|, whose MAD-scaled value is the MAE in the property's own units.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

from sciddpm.network_time import check_network_schedule, require_schedule
from sciddpm.schedules import NoiseSchedule

from .backbone import EGNNDynamics, check_inputs, fully_connected_edges
from .conditioning import PropertyConditioning


class PropertyPredictor(nn.Module):
    """``predictor(x [n, 3 + F], batch=[n], num_graphs=B, t=None, edge_index=None) -> ŷ [B, k]`` (normalised units).

    ``noise_aware=False``: the evaluator on clean molecules (t is ignored, no schedule needed); ``True``: the EGNN
    also sees τ(t) of t in the units of ``schedule`` (keyword-only, then required) and is meant for noisy x_t.
    """

    def __init__(self, in_node_nf: int = 6, n_properties: int = 1, hidden_nf: int = 128, n_layers: int = 7,
                 noise_aware: bool = False, *, schedule: NoiseSchedule | None = None) -> None:
        super().__init__()
        if n_properties < 1:
            raise ValueError(f"n_properties must be >= 1, got {n_properties}")
        if noise_aware:
            require_schedule(schedule, "PropertyPredictor(noise_aware=True)")
        self._config = dict(in_node_nf=in_node_nf, n_properties=n_properties, hidden_nf=hidden_nf, n_layers=n_layers,
                            noise_aware=noise_aware)
        self.noise_aware = noise_aware
        self.egnn = EGNNDynamics(in_node_nf=in_node_nf, hidden_nf=hidden_nf, n_layers=n_layers,
                                 condition_time=noise_aware, schedule=schedule if noise_aware else None)
        #: The schedule whose noise level a noise-aware predictor reads (None for the clean-data evaluator).
        self.schedule = self.egnn.schedule
        self.atom_mlp = nn.Sequential(nn.Linear(hidden_nf, hidden_nf), nn.SiLU(), nn.Linear(hidden_nf, hidden_nf))
        self.graph_mlp = nn.Sequential(nn.Linear(hidden_nf, hidden_nf), nn.SiLU(), nn.Linear(hidden_nf, n_properties))

    def config(self) -> dict[str, Any]:
        """The constructor's arguments (JSON)."""
        return dict(self._config)

    def forward(self, x: Tensor, batch: Tensor, num_graphs: int | None = None, t: Tensor | float | None = None,
                edge_index: Tensor | None = None) -> Tensor:
        if t is None:
            if self.noise_aware:
                raise ValueError("a noise-aware property predictor needs t (the time of x_t)")
            t = 0.0
        t, n_graphs = check_inputs(x, t, batch, self.egnn.in_node_nf, 0, None, num_graphs, True, edge_index,
                                   self.schedule)
        row, col = fully_connected_edges(batch, n_graphs) if edge_index is None else (edge_index[0], edge_index[1])
        h, _ = self.egnn.trunk(x, self.egnn.time_input(t), batch, row, col, None, n_graphs)
        per_atom = self.atom_mlp(h)
        pooled = torch.zeros((n_graphs, per_atom.shape[1]), dtype=per_atom.dtype, device=x.device)
        return self.graph_mlp(pooled.index_add_(0, batch, per_atom)).to(x.dtype)


def property_energy(predictor: PropertyPredictor, context: Tensor, batch: Tensor, num_graphs: int,
                    edge_index: Tensor | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """EEGSDE's energy for a target property (Bao et al., ICLR 2023, §4.1): E(x_t, c, t) = ‖g(x_t, t) − c̃‖² per
    molecule [B], with g a noise-aware predictor and c̃ the normalised targets ``context`` [B, k]. It is E(3)-invariant
    (g is), so its gradient is equivariant; pass it to ``sciddpm.guidance.energy_guidance`` with the scale s."""
    if not predictor.noise_aware:
        raise ValueError("EEGSDE's energy needs a noise-aware predictor (PropertyPredictor(noise_aware=True))")
    if context.dim() != 2 or context.shape[0] != num_graphs:
        raise ValueError(f"context has shape {tuple(context.shape)}; expected ({num_graphs}, k)")

    def energy(x: Tensor, t: Tensor) -> Tensor:
        out = predictor(x, batch, num_graphs, t=t, edge_index=edge_index)
        return (out - context.to(out.dtype)).square().sum(1)

    return energy


def predict(predictor: PropertyPredictor, conditioning: PropertyConditioning, batches: Iterable[Any],
            device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(predictions, targets) in physical units [M, k] over PyG molecule batches that carry ``context`` (targets)."""
    predictor.eval()
    preds, targets = [], []
    with torch.no_grad():
        for b in batches:
            b = b.to(device)
            out = predictor(b.x, b.batch, int(b.num_graphs), edge_index=getattr(b, "edge_index", None))
            preds.append(conditioning.denormalise(out.cpu()))
            targets.append(conditioning.denormalise(b.context.cpu()))
    return torch.cat(preds), torch.cat(targets)


def train_property_predictor(predictor: PropertyPredictor, loader: Iterable[Any], *, seconds: float,
                             max_steps: int = 0, lr: float = 5e-4, device: torch.device | str = "cpu",
                             schedule: Any = None, space_for: Any = None, log_every: int = 200) -> dict[str, Any]:
    """AdamW (cosine decay over ``max_steps`` when given, else over the time budget) on the L1 loss |ŷ − c̃| over
    PyG batches with ``context``, until ``seconds`` or ``max_steps`` (0: no cap), cycling over ``loader``. A noise-aware predictor is trained on
    x_t = α_t x₀ + σ_t ε (ε drawn through ``space_for(batch)``, the zero-CoM molecule space) at uniform t of
    ``schedule`` (None: the predictor's own; another schedule than the predictor's is refused). Returns {steps,
    seconds, final_loss (mean of the last ``log_every`` steps)}."""
    from sciddpm.objectives import forward_noise, sample_times

    if predictor.noise_aware:
        schedule = predictor.schedule if schedule is None else schedule
        check_network_schedule(predictor, schedule, "train_property_predictor")
        if space_for is None:
            raise ValueError("a noise-aware predictor is trained on noisy states: pass space_for=")
    predictor.to(device).train()
    opt = torch.optim.AdamW(predictor.parameters(), lr=lr, weight_decay=1e-16)
    start, step, running, since, final = time.perf_counter(), 0, 0.0, 0, float("nan")
    while True:
        for b in loader:
            elapsed = time.perf_counter() - start
            if elapsed >= seconds or (max_steps and step >= max_steps):
                if since:
                    final = running / since
                return {"steps": step, "seconds": round(elapsed, 1), "final_loss": final}
            done = step / max_steps if max_steps else elapsed / seconds  # by step when capped: reproducible
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
            b = b.to(device)
            x, t = b.x, None
            if predictor.noise_aware:
                space = space_for(b)
                t, _ = sample_times(schedule, space.batch_size, device=space.device)
                x, _ = forward_noise(schedule, space, space.project(x), t)
            out = predictor(x, b.batch, int(b.num_graphs), t=t, edge_index=getattr(b, "edge_index", None))
            loss = (out - b.context.to(out.dtype)).abs().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(predictor.parameters(), 1.0)
            opt.step()
            running, since, step = running + float(loss.detach()), since + 1, step + 1
            if step % log_every == 0:
                final, running, since = running / since, 0.0, 0
                print(f"  [property] step {step}, {time.perf_counter() - start:.0f} s, L1 {final:.4f}", flush=True)


__all__ = ["PropertyPredictor", "predict", "property_energy", "train_property_predictor"]
