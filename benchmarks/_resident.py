"""The benchmarks' device-resident training loop (the whole training set as tensors on the device, random batches).

On a GPU this avoids the engine's DataLoader/Lightning overhead for minute-long budgets; the engine itself
(``sciddpm.training.fit``) is what users run. One loop serves the diffusion models, the SR3 model and the
noise-aware classifier: the caller's ``loss_fn(net, *batch)`` is the only thing that differs.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Callable, Sequence

import torch
from torch import Tensor, nn


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast around network forward passes on CUDA; a no-op on the CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_resident(net: nn.Module, loss_fn: Callable[..., Tensor], data: Sequence[Tensor], *, lr: float,
                   seconds: float, batch_size: int, warmup: int, max_steps: int = 0, weight_decay: float = 0.0,
                   ema: nn.Module | bool | None = True, ema_decay: float = 0.999, anneal: bool = False,
                   grad_clip: float = 1.0, generator: torch.Generator | None = None, label: str = "train",
                   log_every: int = 500) -> tuple[nn.Module, dict]:
    """AdamW on ``loss_fn(net, *[d[idx] for d in data])`` for random index batches, until ``seconds`` or
    ``max_steps`` (0 = no cap): lr × min(1, (n + 1)/warmup) (× (1 − elapsed/seconds) with ``anneal``, ADM's
    classifier recipe), gradient-norm clip, and the engine's EMA θ̄ ← d θ̄ + (1 − d) θ with
    d = min(ema_decay, (1 + n)/(10 + n)), updated in one fused call. ``ema``: a module to update in place, True for
    a fresh copy of ``net``, False/None for none. Returns (the EMA, or ``net``, in eval mode; {steps, seconds,
    final_loss (mean of the last ``log_every`` steps), loss_curve [(step, loss)]})."""
    device = data[0].device
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, fused=device.type == "cuda")
    ema_net = copy.deepcopy(net).requires_grad_(False).eval() if ema is True else (ema or None)
    params = list(net.parameters())
    ema_params = list(ema_net.parameters()) if ema_net is not None else []
    net.train()
    step, running, since, curve = 0, torch.zeros((), device=device), 0, []
    final = float("nan")
    sync(device)
    start = time.perf_counter()
    while (max_steps == 0 or step < max_steps) and time.perf_counter() - start < seconds:
        scale = min(1.0, (step + 1) / max(1, warmup))
        if anneal:
            scale *= max(0.0, 1.0 - (time.perf_counter() - start) / seconds)
        for group in opt.param_groups:
            group["lr"] = lr * scale
        idx = torch.randint(0, len(data[0]), (batch_size,), device=device, generator=generator)
        loss = loss_fn(net, *[d[idx] for d in data])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if ema_net is not None:
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, [p.detach() for p in params],
                                     1.0 - min(ema_decay, (1 + step) / (10 + step)))
        running += loss.detach()
        since += 1
        step += 1
        if step % log_every == 0:
            final = float(running) / since
            curve.append((step, final))
            print(f"  [{label}] step {step}, {time.perf_counter() - start:.0f} s, loss {final:.4f}", flush=True)
            running, since = torch.zeros((), device=device), 0
    sync(device)
    elapsed = time.perf_counter() - start
    if since:
        final = float(running) / since
        curve.append((step, final))
    if ema_net is not None:
        for e, b in zip(ema_net.buffers(), net.buffers()):
            e.copy_(b)
    out = ema_net if ema_net is not None else net
    return out.eval(), {"steps": step, "seconds": round(elapsed, 1), "final_loss": final, "loss_curve": curve}
