"""One-pass point networks on the PDR backbone: PDR's refinement network and the deterministic (PCN-style) baseline.

Both are ``y = x_in + f(x_in, t*, partial)`` with f the same ``PointDiffusionNet`` evaluated at one fixed noise
level t* (the schedule's first step: a clean-data noise level) and trained by minimising the Chamfer distance to
the complete shape (CD-L1, PCN's training loss; Lyu et al. 2022 train their refinement network with Chamfer too):

* **refinement** (PDR's Refinement Network, Lyu et al. 2022 §3.3): x_in = the coarse diffusion model's few-step
  completion; f predicts a per-point correction. Trained on the coarse model's own K-step outputs of the training
  partials, so it learns to undo that sampler's errors.
* **direct regression** (the "is the diffusion worth it?" baseline, PCN-style, Yuan et al. 2018): x_in = one fixed
  template cloud (a seeded standard normal, the same for every shape), so y is a deterministic function of the
  partial alone.

The training loop is a few lines of Adam with fixed step budgets (the engine's Lightning module trains diffusion
losses, not a set loss).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from sciddpm.schedules import NoiseSchedule

from .backbone import PointDiffusionNet
from .metrics import nearest_distances


def chamfer_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """Mean over the batch of CD-L1 = ½(mean d(p, G) + mean d(g, P)) (differentiable)."""
    return 0.5 * (nearest_distances(pred, gt).mean() + nearest_distances(gt, pred).mean())


class OnePassNet(nn.Module):
    """y = x_in + f(x_in, t*, partial), f a ``PointDiffusionNet`` at the fixed time t* = the schedule's first step
    (``template`` points, if given: x_in is that fixed cloud broadcast over the batch)."""

    def __init__(self, schedule: NoiseSchedule, backbone: dict[str, Any] | None = None,
                 template_points: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.net = PointDiffusionNet(**dict(backbone or {}), schedule=schedule)
        self.t_fixed = float(schedule.t_min if schedule.num_steps is None else 1)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("template", 0.5 * torch.randn(template_points, 3, generator=gen) if template_points
                             else torch.zeros(0, 3))

    def forward(self, partial: Tensor, x_in: Tensor | None = None) -> Tensor:
        """The completion [B, N, 3] of ``partial`` [B, M, 3] from ``x_in`` (default the template)."""
        if x_in is None:
            if not len(self.template):
                raise ValueError("OnePassNet: no template; give x_in (the coarse completion)")
            x_in = self.template.expand(partial.shape[0], -1, -1)
        t = torch.full((x_in.shape[0],), self.t_fixed, dtype=torch.float64, device=x_in.device)
        return x_in + self.net(x_in, t, partial)


def train_one_pass(net: OnePassNet, batches: Callable[[torch.Generator], tuple[Tensor, Tensor, Tensor | None]],
                   steps: int, lr: float = 1e-3, seed: int = 0, log: Callable[[int, float], None] | None = None) -> list[float]:
    """Adam on ``chamfer_loss`` for ``steps`` steps with a cosine-decayed learning rate; ``batches(gen)`` returns
    (partial, complete, x_in or None). Returns the loss per step."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=0.1 * lr)
    losses = []
    net.train()
    for step in range(steps):
        partial, complete, x_in = batches(gen)
        loss = chamfer_loss(net(partial, x_in), complete)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None:
            log(step, losses[-1])
    net.eval()
    return losses
