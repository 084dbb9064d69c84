"""One training step of EDM's 9 × 256 EGNN on 64 real QM9 molecules: time, dispatched operators and host reads.

    python benchmarks/qm9_train_step.py [--device cpu|cuda] [--steps 8] [--compile] [--data PATH]

The step is the engine's, without Lightning around it: the molecule space of the batch, the denoising loss
(EDM's polynomial_2 schedule, ε-prediction, L2), backward, gradient-norm clipping at 1, AdamW (fused on CUDA) and
the EMA update, on batches of 64 random molecules of the QM9 training split (four batches in turn, so the atom
and pair counts change as in training). Variants, all measured in the same run:

* ``concat, pairs per step``: the first edge layer on the concatenation [h_i, h_j, e_ij] and the atom pairs
  rebuilt from the batch index at every step (the textbook EGNN, as EDM computes it), the baseline;
* ``per-atom, pairs per step``: the first edge layer evaluated per atom (``pair_linear``);
* ``per-atom, pairs from collate``: the library's default (pairs built by the data loader on the CPU);
* ``... + compile`` (``--compile``): the default with ``compile_core`` (torch.compile, dynamic shapes).

Each row: median milliseconds per step (after two warm-up steps, and after compilation), molecules per second,
the speed-up over the baseline, and (eager rows) the ATen operators dispatched and the device waits in the
forward and backward (host reads of values, ``_local_scalar_dense``, and operators whose output size depends on
the data, such as ``repeat_interleave``: on a GPU each one waits for every queued kernel). ``host_ms_2_molecules``
is the step on the two smallest training molecules, where the arithmetic is negligible: the host's own time per
step (Python, operator dispatch, autograd), which an eager step on a GPU cannot go below (on that machine's CPU).
It is left out for the compiled core on a CPU, where Inductor emits C++ kernels whose host cost says nothing about
Triton launches on a GPU. fp32 rows
run with TF32 off; on CUDA every variant is also timed under bf16 autocast. Results:
``benchmarks/results/qm9_train_step_<device>.{json,md}``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import copy
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import write_results  # noqa: E402
from sciddpm.domains.molecules.adapter import MoleculesDomain, edm_config  # noqa: E402
from sciddpm.objectives import denoising_loss  # noqa: E402
from sciddpm.schedules import schedule_from_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "qm9" / "qm9.npz"
#: (label, factorized first edge layer, pairs from the collate, compiled core)
VARIANTS = [("concat, pairs per step (baseline)", False, False, False),
            ("per-atom, pairs per step", True, False, False),
            ("per-atom, pairs from collate (default)", True, True, False),
            ("per-atom, pairs from collate + compile", True, True, True)]
#: Operators that wait for a GPU: host reads of a value (bool(), int(), .item()) and outputs whose size
#: depends on the data.
WAITS = ("aten._local_scalar_dense", "aten.repeat_interleave", "aten.nonzero", "aten.bincount", "aten.unique_dim",
         "aten._unique2", "aten.masked_select")


class OpCounter(TorchDispatchMode):
    """Counts the ATen operators dispatched inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def real_batches(domain: MoleculesDomain, data: Path, count: int = 4, size: int = 64, seed: int = 0) -> list[Any]:
    """``count`` PyG batches of ``size`` random molecules of the QM9 training split (with their atom pairs)."""
    train = domain.train_dataset({"path": str(data)})
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    return [domain.collate([train[int(i)] for i in perm[k * size:(k + 1) * size]]) for k in range(count)]


def smallest_batch(domain: MoleculesDomain, data: Path, size: int = 2) -> Any:
    """The ``size`` smallest molecules of the training split: a step on them costs almost no arithmetic, so its time
    is the host's (Python, dispatch, autograd), the floor of an eager GPU step."""
    train = domain.train_dataset({"path": str(data)})
    counts = torch.as_tensor(train.qm9.flat()[2])  # atoms per molecule of the split, in its order
    return domain.collate([train[int(i)] for i in torch.argsort(counts, stable=True)[:size]])


class TrainStep:
    """The engine's training step on one network (see the module docstring), callable on a PyG batch."""

    def __init__(self, domain: MoleculesDomain, net: torch.nn.Module, device: torch.device, bf16: bool,
                 pairs_from_collate: bool) -> None:
        self.domain, self.net, self.device, self.bf16 = domain, net, device, bf16
        self.pairs_from_collate = pairs_from_collate
        self.schedule = schedule_from_config(edm_config().schedule)
        self.ema = copy.deepcopy(net).requires_grad_(False)
        self.params = list(net.parameters())
        self.ema_params = list(self.ema.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=1e-4, fused=device.type == "cuda" or None)

    def loss(self, batch: Any) -> torch.Tensor:
        space, x0 = self.domain.space_for(batch), self.domain.state_from(batch)
        cond = self.domain.network_condition(space)
        if not self.pairs_from_collate:
            cond.pop("edge_index", None)
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                    else contextlib.nullcontext())
        with autocast:
            return denoising_loss(self.net, self.schedule, space, x0, **cond).loss

    def __call__(self, batch: Any) -> None:
        loss = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema_params, [p.detach() for p in self.params], 1e-3)


def _median_ms(step: "TrainStep", batches: list[Any], steps: int, device: torch.device) -> float:
    times = []
    for k in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        step(batches[k % len(batches)])
        _sync(device)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def measure(domain: MoleculesDomain, batches: list[Any], device: torch.device, label: str, factorized: bool,
            from_collate: bool, compiled: bool, bf16: bool, steps: int, tiny: Any = None) -> dict[str, Any]:
    """Median step time of one variant (fresh network, same seed), its operator counts (eager only) and, with
    ``tiny`` (a batch of two small molecules), the host-bound step time on it."""
    torch.manual_seed(0)
    net = domain.build_backbone({"type": "egnn_paper", "factorized_edges": factorized},
                                schedule_from_config(edm_config().schedule)).to(device)
    if compiled:
        net.compile_core()
    step = TrainStep(domain, net, device, bf16, from_collate)
    t0 = time.perf_counter()
    for k in range(2 if not compiled else len(batches) + 1):  # warm-up (compiled: every batch size once)
        step(batches[k % len(batches)])
    _sync(device)
    warm_s = time.perf_counter() - t0
    ms = _median_ms(step, batches, steps, device)
    row: dict[str, Any] = {"variant": label, "precision": "bf16" if bf16 else "fp32", "ms_per_step": round(ms, 2),
                           "molecules_per_s": round(64 / ms * 1000, 1)}
    if tiny is not None and not (compiled and device.type == "cpu"):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny operators: more threads only add their wake-up noise
        for _ in range(3):
            step(tiny)
        row["host_ms_2_molecules"] = round(_median_ms(step, [tiny], max(steps, 20), device), 2)
        torch.set_num_threads(threads)
    elif tiny is not None:  # Inductor's C++ kernels on a CPU say nothing about Triton launches on a GPU
        row["host_ms_2_molecules"] = "—"
    if compiled:
        row.update(ops_fwd_bwd="(compiled)", device_waits_fwd_bwd="(compiled)", warmup_s=round(warm_s, 1))
    else:
        with OpCounter() as ops:
            step.loss(batches[0]).backward()
        step.opt.zero_grad(set_to_none=True)
        row.update(ops_fwd_bwd=sum(ops.counts.values()), device_waits_fwd_bwd=sum(ops.counts[k] for k in WAITS),
                   warmup_s=round(warm_s, 1))
    print(row, flush=True)
    return row


def run(device: torch.device, data: Path, steps: int, compile_rows: bool) -> list[dict[str, Any]]:
    """Every variant (and precision on CUDA), with speed-ups over the fp32 baseline of the same run."""
    domain = MoleculesDomain()
    batches = [b.to(device) for b in real_batches(domain, data)]
    tiny = smallest_batch(domain, data).to(device)
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for bf16 in ((False, True) if device.type == "cuda" else (False,)):
        for label, factorized, from_collate, compiled in VARIANTS:
            if compiled and not compile_rows:
                continue
            try:
                rows.append(measure(domain, batches, device, label, factorized, from_collate, compiled, bf16, steps,
                                    tiny))
            except Exception as err:  # a compiler failure is a result to report, not a reason to lose the rest
                if not compiled:
                    raise
                rows.append({"variant": label, "precision": "bf16" if bf16 else "fp32",
                             "ms_per_step": f"failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"})
                print(rows[-1], flush=True)
    base = rows[0]["ms_per_step"]
    for r in rows:
        r["speedup_vs_baseline"] = round(base / r["ms_per_step"], 2) if isinstance(r["ms_per_step"], float) else "—"
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="qm9.npz (default ../shared/data/qm9/qm9.npz)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per variant (after warm-up)")
    p.add_argument("--compile", action="store_true", help="also time the compiled core (compiles first)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args()
    if not args.data.is_file():
        raise SystemExit(f"{args.data}: no such file (give --data PATH to qm9.npz)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    batches_info = [b.num_nodes for b in real_batches(MoleculesDomain(), args.data)]
    rows = run(device, args.data, args.steps, args.compile)
    notes = (f"One training step (molecule space, denoising loss, backward, clip, AdamW{' fused' if device.type == 'cuda' else ''}, "
             f"EMA) of EDM's 9 × 256 EGNN (attention, tanh) at batch 64, cycling over 4 batches of random QM9 training "
             f"molecules ({', '.join(map(str, batches_info))} atoms), on {device.type}"
             f"{'' if device.type == 'cuda' else f' with {torch.get_num_threads()} threads'}; median of {args.steps} "
             "steps after warm-up. ops_fwd_bwd / device_waits_fwd_bwd: ATen operators dispatched, and those that "
             "wait for a GPU (host reads of values, data-sized outputs), in one forward + backward (eager rows). "
             "host_ms_2_molecules: the same step on the two smallest training molecules (negligible arithmetic: the "
             "host's time per step on one thread, the floor of an eager GPU step on this CPU; not given for the compiled core on a CPU, "
             "whose C++ kernels say nothing about Triton launches on a GPU). On the CPU the optimiser is the foreach "
             "AdamW (a large part of the host time); on CUDA it is the fused one. speedup_vs_baseline: against the first row, "
             "measured in this run. On a GPU the eager step is bound by the host dispatching operators, so the "
             "operator count, not the multiply-adds, sets its time; on a CPU the multiply-adds do.")
    write_results(f"qm9_train_step_{device.type}", rows, title=f"EGNN 9 × 256 training step on QM9 ({device.type})",
                  notes=notes, **({"results_dir": args.results_dir} if args.results_dir else {}))


if __name__ == "__main__":
    main()
