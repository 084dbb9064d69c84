"""EDM on QM9: train through the engine for a wall budget, sample with several samplers, EDM's metrics.

    python benchmarks/qm9_edm.py [--minutes 4] [--n 200] [--full]                 # small CPU config, all here
    python benchmarks/qm9_edm.py --speed-only --speed-json W/speed.json           # GPU: isolated timings
    python benchmarks/qm9_edm.py --backbone paper --device cuda --minutes 3 --n 1000 --full \
        --speed-json W/speed.json --samples-out W/qm9_samples.npz                 # GPU: train + sample
    python benchmarks/qm9_edm.py --evaluate W/qm9_samples.npz                     # here: RDKit metrics + tables

Training: the molecules domain (EDM's polynomial_2 schedule, 1000 steps, ε-prediction, L2) on the QM9 training
split through ``sciddpm.training.fit`` (Lightning) with ``max_time``; the EGNN is the small CPU config (4 × 64)
or EDM's paper network (``--backbone paper``: 9 × 256, attention, tanh). Sampling: ``--n`` molecules with
DDPM, DPM-Solver++(2M) and DDPM with Analytic-DPM variances (Γ estimated on training batches through the
molecule space) at 50 and 100 steps (+ 1000-step DDPM with ``--full``); EDM's atom / molecule stability,
RDKit validity, uniqueness and novelty (against the training split's SMILES derived with the same bond rules).
The GPU machine has no RDKit, so there the samples are saved (``--samples-out``) and ``--evaluate`` computes
the metrics and writes benchmarks/results/qm9_edm.{json,md} here. ``--speed-only`` times, with nothing else on
the GPU, one training step of EDM's paper network at batch 64 random molecules (fp32 with TF32 off, and bf16
autocast; eager and with the compiled core, ``qm9_train_step.py`` breaks the step down further) and the sampling
of 100 molecules (DDPM 1000 steps and DPM-Solver++ 50 steps), to set beside EDM's own figures. ``--compile``
trains and samples with the compiled EGNN core.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import RESULTS_DIR, machine_description, write_results  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from sciddpm.domains.molecules.adapter import SMALL_EGNN, MoleculesDomain, edm_config  # noqa: E402
from sciddpm.objectives import eps_predictor  # noqa: E402
from sciddpm.samplers import ddpm, dpm_solver_pp_2m, prior_sample, time_grid  # noqa: E402
from sciddpm.schedules import schedule_from_config  # noqa: E402
from sciddpm.training import fit  # noqa: E402
from sciddpm.variances import estimate_gamma, variance_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: EDM's own implementation of this config on an H200 (issue #7, measured by the issue's author).
EDM_REFERENCE = {"train_step_ms_fp32_batch64": 59.0, "sample_100_mols_1000_steps_s": 24.9,
                 "sample_100_mols_1000_steps_tf32_s": 16.7}
BACKBONES = {"small": dict(SMALL_EGNN), "paper": {"type": "egnn_paper"}}


class StepClock(Callback):
    """Wall time between the 10th training batch and the end of training (excludes start-up)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.start_step = 0
        self.end = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[override]
        if trainer.global_step == 10 and self.start is None:
            self.start, self.start_step = time.perf_counter(), trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:  # type: ignore[override]
        self.end = time.perf_counter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def sample(net, domain: MoleculesDomain, schedule, n: int, sampler: str, steps: int, seed: int, device: torch.device,
           gamma=None, bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor, int]:
    """n molecules (flat state on the CPU, batch index, NFE) with the core samplers, on ``device``.
    Sizes and x_T are drawn on the CPU (the same molecules on every device); step noise on ``device``."""
    gen = torch.Generator().manual_seed(seed)
    space = domain.sample_space(n, gen)
    batch = domain.batch_of(space)[0]
    x_t = prior_sample(schedule, space, gen, torch.float32).to(device)
    space = space.to(device)
    step_gen = torch.Generator(device=device).manual_seed(seed)

    def model(x, t, **cond):
        with _autocast(device, bf16):
            return net(x, t, **cond).float()

    eps = eps_predictor(model, schedule, space, "eps", **domain.network_condition(space))  # pairs built once
    grid = time_grid(schedule, steps)
    with torch.no_grad():
        if sampler == "dpm_solver_pp_2m":
            out = dpm_solver_pp_2m(eps, schedule, space, x_t, grid)
        else:
            table = variance_table(schedule, grid, gamma) if gamma is not None else "beta_tilde"
            out = ddpm(eps, schedule, space, x_t, grid, variance=table, generator=step_gen)
    return out.sample.cpu(), batch, out.nfe


def gamma_table(net, domain: MoleculesDomain, schedule, train_set, device: torch.device, batches: int = 4,
                batch_size: int = 64):
    """Analytic-DPM's Γ_t = E‖ε̂(x_t, t)‖²/d on a few training batches, through the molecule space."""
    def data():
        gen = torch.Generator().manual_seed(123)
        for _ in range(batches):
            idx = torch.randperm(len(train_set), generator=gen)[:batch_size].tolist()
            b = domain.collate([train_set[i] for i in idx]).to(device)
            space = domain.space_for(b)
            yield domain.state_from(b), space, eps_predictor(net, schedule, space, "eps", **domain.network_condition(space))

    n = schedule.num_steps
    times = torch.unique(torch.cat([torch.linspace(1, n, 30).round(), torch.logspace(0, math.log10(n), 15).round()]))
    return estimate_gamma(None, schedule, data(), times.double(), generator=torch.Generator(device=device).manual_seed(7))


def speed_rows(domain: MoleculesDomain, data: Path, device: torch.device, steps: int = 40, ddpm_steps: int = 1000,
               dpm_steps: int = 50, compile_core: bool = True) -> list[dict]:
    """Median time of one training step of EDM's 9 × 256 EGNN on 64 random real molecules (the engine's step of
    ``qm9_train_step.TrainStep``: loss, backward, clip, fused AdamW, EMA), fp32 (TF32 off) and bf16 autocast, eager
    and with the compiled core; and the time to sample 100 molecules, nothing else running."""
    from benchmarks.qm9_train_step import measure, real_batches

    schedule = schedule_from_config(edm_config().schedule)
    batches = [b.to(device) for b in real_batches(domain, data)]
    atoms = "/".join(str(b.num_nodes) for b in batches)
    rows = []
    torch.backends.cuda.matmul.allow_tf32 = False
    for compiled in ((False, True) if compile_core else (False,)):
        for bf16 in (False, True):
            try:
                r = measure(domain, batches, device, "", True, True, compiled, bf16, steps)
            except Exception as err:  # a compiler failure is a result to report, not a reason to lose the rest
                if not compiled:
                    raise
                rows.append({"what": "training step, compiled core", "value": f"failed: {type(err).__name__}",
                             "unit": str(err).splitlines()[0][:160] if str(err) else "", "edm_reference": None})
                print(rows[-1], flush=True)
                compile_core = False
                break
            rows.append({"what": f"training step, EGNN 9x256, batch 64 random real molecules (flat, {atoms} atoms), "
                                 f"{r['precision']}{', compiled' if compiled else ''}",
                         "value": r["ms_per_step"], "unit": f"ms (median of {steps})",
                         "molecules_per_s": r["molecules_per_s"],
                         "edm_reference": EDM_REFERENCE["train_step_ms_fp32_batch64"]})
    net = domain.build_backbone({"type": "egnn_paper"}, schedule).to(device).eval()
    nets = {False: net}
    if compile_core:
        nets[True] = copy.deepcopy(net)
        nets[True].compile_core()
    runs = [("ddpm", ddpm_steps, False, False, False), ("ddpm", ddpm_steps, False, True, False),
            ("ddpm", ddpm_steps, True, False, False), ("dpm_solver_pp_2m", dpm_steps, False, True, False),
            ("dpm_solver_pp_2m", dpm_steps, True, False, False)]
    if compile_core:
        runs += [("ddpm", ddpm_steps, False, True, True), ("dpm_solver_pp_2m", dpm_steps, False, True, True),
                 ("dpm_solver_pp_2m", dpm_steps, True, False, True)]
    for sampler, k, bf16, tf32, compiled in runs:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        sample(nets[compiled], domain, schedule, 100, sampler, 3, 0, device, bf16=bf16)  # warm-up (and compile)
        _sync(device)
        t0 = time.perf_counter()
        sample(nets[compiled], domain, schedule, 100, sampler, k, 0, device, bf16=bf16)
        _sync(device)
        label = ("bf16" if bf16 else ("fp32+tf32" if tf32 else "fp32")) + (", compiled" if compiled else "")
        rows.append({"what": f"sample 100 molecules, {sampler} {k} steps, EGNN 9x256, {label}",
                     "value": round(time.perf_counter() - t0, 2), "unit": "s",
                     "edm_reference": EDM_REFERENCE["sample_100_mols_1000_steps_tf32_s" if tf32 else
                                                    "sample_100_mols_1000_steps_s"] if sampler == "ddpm" else None})
        print(rows[-1], flush=True)
    torch.backends.cuda.matmul.allow_tf32 = False
    return rows


def train_edm(cfg) -> tuple[Any, int, float, float]:
    """Train ``cfg`` through the engine in a temporary folder: (module, steps, wall seconds, it/s after 10 steps)."""
    clock = StepClock()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        module = fit(cfg, Path(tmp) / "run", progress=False, callbacks=[clock])
        train_s = time.perf_counter() - t0
    steps = int(module.global_step)
    it_s = (steps - clock.start_step) / (clock.end - clock.start) if clock.start else float("nan")
    print(f"trained {steps} steps in {train_s:.0f} s ({it_s:.2f} it/s)", flush=True)
    return module, steps, train_s, it_s


def train_and_sample(args: argparse.Namespace, device: torch.device) -> dict:
    """Train through the engine, then sample every row; returns {rows: [...], samples: {key: (x, batch)}, info}."""
    cfg = edm_config(data={"path": str(args.data)}, backbone=BACKBONES[args.backbone], batch_size=args.batch_size,
                     lr=args.lr, warmup_steps=100, lr_schedule="constant", max_steps=10**7,
                     max_time=str(args.minutes * 60), checkpoint_every=10**6, log_every=50,
                     accelerator="gpu" if device.type == "cuda" else "cpu", precision=args.precision,
                     num_workers=args.num_workers, seed=args.seed, compile=args.compile)
    module, steps, train_s, it_s = train_edm(cfg)
    model = module.ema_model()
    domain, schedule = model.domain, model.schedule
    net = model.net.to(device).eval()
    if args.compile:
        net.compile_core()  # the EMA network for sampling (the training network's compile is separate)
    train_set = domain.train_dataset(cfg.data)
    t0 = time.perf_counter()
    gamma = gamma_table(net, domain, schedule, train_set, device)
    gamma_s = time.perf_counter() - t0
    runs = [("ddpm", s) for s in (50, 100)] + [("dpm_solver_pp_2m", s) for s in (50, 100)]
    runs += [("ddpm_analytic", s) for s in (50, 100)] + ([("ddpm", 1000)] if args.full else [])
    rows, samples = [], {}
    for sampler, k in runs:
        _sync(device)
        t0 = time.perf_counter()
        x, batch, nfe = sample(net, domain, schedule, args.n, "ddpm" if sampler == "ddpm_analytic" else sampler, k,
                               args.seed, device, gamma if sampler == "ddpm_analytic" else None)
        _sync(device)
        rows.append({"sampler": sampler, "steps": k, "nfe": nfe, "seconds": round(time.perf_counter() - t0, 1)})
        samples[f"{sampler}_{k}"] = (x, batch)
        print(rows[-1], flush=True)
    n_params = sum(p.numel() for p in net.parameters())
    info = {"train_steps": steps, "train_seconds": round(train_s, 1), "train_it_per_s": round(it_s, 3),
            "gamma_seconds": round(gamma_s, 1), "n_parameters": n_params, "backbone": args.backbone,
            "batch_size": args.batch_size, "lr": args.lr, "precision": args.precision, "minutes": args.minutes,
            "compile": args.compile,
            "n": args.n, "n_train": len(train_set), "device": str(device), "machine": machine_description(),
            "command": "python " + " ".join(sys.argv)}
    return {"rows": rows, "samples": samples, "info": info}


def save_samples(path: Path, result: dict, speed: list[dict]) -> None:
    """One .npz: per row ``x_<key>`` (float32 [atoms, 9]) and ``batch_<key>``, plus a JSON ``meta`` string."""
    arrays = {}
    for key, (x, batch) in result["samples"].items():
        arrays[f"x_{key}"], arrays[f"batch_{key}"] = x.numpy().astype(np.float32), batch.numpy().astype(np.int32)
    meta = {"rows": result["rows"], "info": result["info"], "speed": speed}
    np.savez_compressed(path, meta=np.array(json.dumps(meta)), **arrays)
    print(f"saved {len(result['samples'])} sample sets to {path}", flush=True)


def training_smiles(data: Path, cache: Path) -> set[str]:
    """EDM-rule SMILES of the training split's molecules (cached): the reference for novelty."""
    from sciddpm.domains.molecules.metrics import smiles_of

    if cache.is_file():
        return set(cache.read_text().splitlines())
    qm9 = MoleculesDomain({"path": str(data)})._split({"path": str(data)}, "train")
    z, pos, n_atoms = qm9.flat()
    smiles = smiles_of(z, pos, n_atoms, n_workers=2)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text("\n".join(sorted(set(smiles))) + "\n")
    return set(smiles)


def evaluate_rows(domain: MoleculesDomain, rows: list[dict], samples: dict, train_smiles: set[str] | None) -> list:
    """EDM metrics for every sampled row (``samples[key] = (x, batch)``)."""
    from sciddpm.domains.molecules.metrics import evaluate_molecules

    out = []
    for row in rows:
        x, batch = samples[f"{row['sampler']}_{row['steps']}"]
        m = evaluate_molecules(domain.decode((x, batch)), train_smiles=train_smiles, n_workers=2)
        out.append({"sampler": row["sampler"], "steps": row["steps"], "nfe": row["nfe"], "n": m["n"],
                    "atom_stability": m["atom_stability"], "mol_stability": m["mol_stability"],
                    "validity": m["validity"], "uniqueness": m["uniqueness"], "novelty": m["novelty"],
                    "validity_determine_bonds": m["validity_determine_bonds"], "seconds": row["seconds"]})
        print(out[-1], flush=True)
    return out


def write_report(rows: list[dict], info: dict, speed: list[dict], extra_note: str = "",
                 results_dir: Path = RESULTS_DIR) -> None:
    gpu = info["device"].startswith("cuda")
    budget = (f"EGNN {info['backbone']} ({info['n_parameters']:,} parameters), trained {info['train_steps']} steps "
              f"({info['minutes']:g} min wall, {info['train_seconds']:.0f} s incl. start-up; {info['train_it_per_s']} "
              f"it/s after 10 warm-up steps) at batch {info['batch_size']}, lr {info['lr']} (constant after 100 warm-up "
              f"steps), EMA 0.999, precision {info['precision']}{', compiled core' if info.get('compile') else ''}, "
              f"on the QM9 training split ({info['n_train']} "
              f"molecules) through the engine (Lightning) on {info['machine']}.")
    notes = (f"{info['n']} molecules per row, sizes from the training-set atom-count histogram. {budget} "
             "EDM (Hoogeboom et al. 2022, Table 1) reaches 98.7% atom / 82.0% molecule stability with this 9 x 256 "
             "EGNN after ~3000 epochs (about 4.7M steps at batch 64); this run is a few epochs, so its numbers are "
             "lower. ddpm = ancestral sampling with β̃; ddpm_analytic = DDPM with Analytic-DPM variances (Bao et al. "
             "2022) from a Monte-Carlo Γ table (4 batches x 64 training molecules, through the zero-CoM ⊕ feature "
             f"space, {info['gamma_seconds']} s); dpm_solver_pp_2m = DPM-Solver++(2M). novelty: unique valid SMILES "
             "absent from the training split's SMILES built with the same bond rules. validity_determine_bonds: "
             "stricter RDKit rdDetermineBonds validity. seconds = sampling wall time of the row"
             + (" on the GPU (the speed table holds timings taken with nothing else on the GPU)." if gpu else ".")
             + extra_note)
    write_results("qm9_edm", rows, title="EDM on QM9" + (" (GPU run)" if gpu else " (small CPU config)"),
                  notes=notes + "\n\n## Speed\n\n" + _speed_table(speed), extra={"speed": speed, "info": info},
                  results_dir=results_dir)


def _speed_table(speed: list[dict]) -> str:
    if not speed:
        return "No GPU timings in this run."
    lines = ["| what | ours | unit | EDM's implementation (same card) |", "|---|---|---|---|"]
    for r in speed:
        lines.append(f"| {r['what']} | {r['value']} | {r['unit']} | {r.get('edm_reference') or '—'} |")
    return "\n".join(lines) + ("\n\nEDM's figures (issue #7): its own code for this exact config, batch 64 padded "
                               "to the batch's largest molecule, measured on an H200: 59 ms per fp32 training step; "
                               "24.9 s for 100 molecules at 1000 steps (16.7 s with TF32).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=4.0)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "qm9")
    p.add_argument("--full", action="store_true", help="also 1000-step DDPM")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a loaded 2-core box)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="small")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--precision", choices=["32", "bf16"], default="32")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="torch.compile the EGNN core (training and sampling)")
    p.add_argument("--speed-only", action="store_true", help="only the isolated GPU timings, to --speed-json")
    p.add_argument("--speed-json", type=Path, default=None, help="timings file (written by --speed-only, else read)")
    p.add_argument("--samples-out", type=Path, default=None, help="save samples (.npz) instead of evaluating here")
    p.add_argument("--evaluate", type=Path, default=None, help="evaluate a --samples-out file and write results")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    p.add_argument("--speed-steps", type=int, default=40, help="timed training steps per precision (--speed-only)")
    p.add_argument("--smoke", action="store_true", help="with --speed-only: a few steps of each timing (a check)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cache = ROOT / "runs" / f"train_smiles_{args.data.resolve().as_posix().replace('/', '_')}.txt"
    if args.evaluate is not None:
        with np.load(args.evaluate, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            samples = {r["sampler"] + "_" + str(r["steps"]): (torch.from_numpy(z[f"x_{r['sampler']}_{r['steps']}"]),
                                                             torch.from_numpy(z[f"batch_{r['sampler']}_{r['steps']}"]).long())
                       for r in meta["rows"]}
        domain = MoleculesDomain({"path": str(args.data)})
        rows = evaluate_rows(domain, meta["rows"], samples, training_smiles(args.data, cache))
        note = (f" Sampled and trained on the GPU machine ({meta['info']['machine']}); metrics computed with RDKit "
                f"on {machine_description()} from the saved samples (`--evaluate`). GPU command: "
                f"`{meta['info']['command']}`.")
        speed = meta["speed"] or (json.loads(args.speed_json.read_text()) if args.speed_json else [])
        return write_report(rows, meta["info"], speed, note, args.results_dir)
    domain = MoleculesDomain({"path": str(args.data)})
    if args.speed_only:
        quick = {"steps": 2, "ddpm_steps": 4, "dpm_steps": 3} if args.smoke else {"steps": args.speed_steps}
        speed = speed_rows(domain, args.data, device, compile_core=not args.smoke, **quick)
        args.speed_json.write_text(json.dumps(speed, indent=2) + "\n")
        return None
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # training/sampling; the speed rows set their own precision
    speed = json.loads(args.speed_json.read_text()) if args.speed_json and args.speed_json.is_file() else []
    result = train_and_sample(args, device)
    if args.samples_out is not None:
        return save_samples(args.samples_out, result, speed)
    rows = evaluate_rows(domain, result["rows"], result["samples"], training_smiles(args.data, cache))
    return write_report(rows, result["info"], speed, results_dir=args.results_dir)


if __name__ == "__main__":
    main()
