"""Property-conditioned molecule generation on QM9, scored as EDM does (Hoogeboom et al., ICML 2022, §5.2, Table 3).

    python benchmarks/qm9_conditional.py [--property alpha] [--evaluator-minutes 6] [--generator-minutes 12]
        [--guide-minutes 6 --guidance-scales 1,4] [--n 500] [--steps 100] [--backbone small|paper] [--device cuda]

The training split is cut into halves D_a and D_b (``data.train_half``). An E(3)-invariant EGNN property
predictor φ (``property.PropertyPredictor``, EDM's evaluator) is trained on D_a with the L1 loss; a conditional
EDM (context = the property normalised by D_b's mean and MAD) is trained on D_b through the engine. New molecules
are drawn with (N, c) from D_b's joint distribution and φ scores them: the MAE between φ(molecule) and its target
c. EDM's references, all on D_b molecules (``--ref-molecules`` of them):

* U-bound ("Naive"): φ of a molecule against another molecule's property (targets shuffled): no information;
* #Atoms: the median property of D_a molecules with the same atom count: knows only the size;
* L-bound ("QM9"): φ of the real molecule against its own property: the evaluator's own error.

A generator below #Atoms puts the property into the structure beyond the atom count (EDM's reading). EEGSDE rows
(Bao et al., ICLR 2023) add energy guidance to the same conditional model: a noise-aware EGNN g(x_t, t) trained on
noisy D_b molecules, a different network from φ, and ε̃ = ε + s σ_t ∇‖g(x_t, t) − c̃‖². The MAE is
given in EDM's units (Bohr³ for α, meV for orbital energies, Debye for μ, cal/(mol K) for Cv), with EDM's
published values beside it. The generated molecules' stability and validity use EDM's metrics. Results:
``benchmarks/results/qm9_conditional_<property>.{json,md}``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import machine_description, write_results  # noqa: E402
from sciddpm.domains.molecules.adapter import SMALL_EGNN, MoleculesDomain, edm_config  # noqa: E402
from sciddpm.domains.molecules.conditioning import EDM_PROPERTY_NAMES  # noqa: E402
from sciddpm.domains.molecules.property import (PropertyPredictor, predict, property_energy,  # noqa: E402
                                                train_property_predictor)
from sciddpm.guidance import EnergyGuidance, GuidanceContext  # noqa: E402
from sciddpm.training import fit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HARTREE_MEV = 27211.386
#: EDM's reporting unit per property: (name, factor from our field's unit).
UNITS = {"alpha_bohr3": ("Bohr³", 1.0), "gap_hartree": ("meV", HARTREE_MEV), "homo_hartree": ("meV", HARTREE_MEV),
         "lumo_hartree": ("meV", HARTREE_MEV), "mu_debye": ("D", 1.0), "cv_cal_mol_k": ("cal/(mol K)", 1.0)}
#: EDM Table 3 (Hoogeboom et al. 2022): MAE of its evaluator, in the units above.
EDM_TABLE3 = {"alpha_bohr3": {"U-bound": 9.01, "#Atoms": 3.86, "EDM": 2.76, "L-bound": 0.10},
              "gap_hartree": {"U-bound": 1470, "#Atoms": 866, "EDM": 655, "L-bound": 64},
              "mu_debye": {"U-bound": 1.616, "#Atoms": 1.053, "EDM": 1.111, "L-bound": 0.043}}
BACKBONES = {"small": dict(SMALL_EGNN), "paper": {"type": "egnn_paper"}}


def loader(domain: MoleculesDomain, dataset: Any, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=domain.collate,
                      generator=torch.Generator().manual_seed(seed))


def reference_rows(domain_a: MoleculesDomain, domain_b: MoleculesDomain, evaluator: PropertyPredictor,
                   count: int, device: torch.device, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """EDM's U-bound, #Atoms and L-bound absolute errors on ``count`` random D_b molecules (physical units)."""
    train_b = domain_b.train_dataset(domain_b.options)
    pick = torch.randperm(len(train_b), generator=torch.Generator().manual_seed(seed))[:count].tolist()
    subset = Subset(train_b, pick)
    pred, _ = predict(evaluator, domain_a.conditioning, loader(domain_b, subset, 256, False), device)
    table_b = domain_b.conditioning.table[pick]
    sizes, target = table_b[:, 0].long(), table_b[:, 1:]
    shuffled = target[torch.randperm(len(target), generator=torch.Generator().manual_seed(seed + 1))]
    table_a = domain_a.conditioning.table
    by_size = torch.empty_like(target)
    for n in sizes.unique().tolist():
        same = table_a[table_a[:, 0] == n, 1:]
        fallback = table_a[:, 1:]  # a size D_a lacks: the overall median
        by_size[sizes == n] = (same if len(same) else fallback).median(0).values
    errors = {"U-bound": (pred - shuffled).abs(), "#Atoms": (by_size - target).abs(), "L-bound": (pred - target).abs()}
    return errors, {"n_reference": len(pick)}


def draw(model: Any, n: int, steps: int, seed: int, device: torch.device, scale: float = 0.0,
         guide: PropertyPredictor | None = None) -> tuple[torch.Tensor, Any]:
    """n molecules by ancestral DDPM (β̃, ``steps`` steps) with (N, c) from the model's training half; with
    ``scale`` > 0, EEGSDE: ε̃ = ε + s σ_t ∇E, E = ‖g(x_t, t) − c̃‖² (``guide`` = g). Returns (x on the CPU, space)."""
    hook = None
    if scale:
        def energy_for(ctx: GuidanceContext) -> Any:
            c = ctx.condition
            return property_energy(guide, c["context"], c["batch"], n, c["edge_index"])

        hook = EnergyGuidance(energy_for, scale)
    out = model.to(device).sample(n, sampler="ddpm", steps=steps, seed=seed, guidance=hook)
    return out.sample.cpu(), out.space.to("cpu")


def score(model: Any, evaluator: PropertyPredictor, domain_a: MoleculesDomain, x: torch.Tensor, space: Any,
          device: torch.device) -> tuple[torch.Tensor, int, dict[str, float]]:
    """Absolute errors of φ on the generated molecules (physical units), how many were finite, EDM's quality."""
    batch, n = model.domain.batch_of(space)
    # the targets, re-expressed in the evaluator's (D_a) normalisation
    targets = domain_a.conditioning.normalise(model.domain.conditioning.denormalise(space.condition["context"]))
    samples, kept = _as_batches(x, batch, targets, n)
    pred, target = predict(evaluator, domain_a.conditioning, samples, device)
    try:
        quality = model.domain.evaluate(x, space)
    except ImportError:  # no RDKit on this machine: the MAE needs none
        quality = {}
    return (pred - target).abs(), kept, quality


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--property", default="alpha", help=f"one of {sorted(EDM_PROPERTY_NAMES)} (EDM's names)")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "qm9")
    p.add_argument("--evaluator-minutes", type=float, default=6.0)
    p.add_argument("--generator-minutes", type=float, default=12.0)
    p.add_argument("--guide-minutes", type=float, default=6.0, help="EEGSDE's noise-aware g on D_b (0: no EEGSDE)")
    p.add_argument("--guidance-scales", default="1,4", help="EEGSDE scales s, comma-separated")
    p.add_argument("--evaluator-layers", type=int, default=7)
    p.add_argument("--evaluator-hidden", type=int, default=128)
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="small")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--n", type=int, default=500, help="generated molecules per row")
    p.add_argument("--steps", type=int, default=100, help="DDPM steps")
    p.add_argument("--ref-molecules", type=int, default=5000, help="D_b molecules for the reference rows")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results-dir", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    field = EDM_PROPERTY_NAMES.get(args.property, args.property)
    unit, factor = UNITS.get(field, ("", 1.0))
    base = {"path": str(args.data), "conditioning": [field]}
    domain_a = MoleculesDomain({**base, "train_half": "a"})
    domain_b = MoleculesDomain({**base, "train_half": "b"})
    train_a, train_b = domain_a.train_dataset(domain_a.options), domain_b.train_dataset(domain_b.options)
    size = dict(hidden_nf=args.evaluator_hidden, n_layers=args.evaluator_layers)

    torch.manual_seed(args.seed)
    evaluator = PropertyPredictor(n_properties=1, **size)
    print(f"evaluator on D_a ({len(train_a)} molecules) for {args.evaluator_minutes} min", flush=True)
    ev_log = train_property_predictor(evaluator, loader(domain_a, train_a, 128, True, args.seed),
                                      seconds=60 * args.evaluator_minutes, lr=5e-4, device=device)
    errors, ref_info = reference_rows(domain_a, domain_b, evaluator, args.ref_molecules, device, args.seed)
    print("references (MAE)", {k: round(float(v.mean()), 4) for k, v in errors.items()}, flush=True)

    cfg = edm_config(data=base | {"train_half": "b"}, backbone=BACKBONES[args.backbone], batch_size=args.batch_size,
                     lr=args.lr, warmup_steps=100, lr_schedule="constant", max_steps=10**7,
                     max_time=str(args.generator_minutes * 60), checkpoint_every=10**6, log_every=50,
                     accelerator="gpu" if device.type == "cuda" else "cpu", seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        module = fit(cfg, Path(tmp) / "run", progress=False)
        gen_seconds = time.perf_counter() - t0
    model = module.ema_model().to(device)
    model.net.eval()

    guide, guide_log = None, {}
    scales = [float(v) for v in args.guidance_scales.split(",") if v.strip()] if args.guide_minutes > 0 else []
    if scales:
        torch.manual_seed(args.seed + 1)
        guide = PropertyPredictor(n_properties=1, noise_aware=True, schedule=model.schedule, **size)
        print(f"EEGSDE's g on D_b ({len(train_b)} molecules, noisy) for {args.guide_minutes} min", flush=True)
        guide_log = train_property_predictor(guide, loader(domain_b, train_b, 128, True, args.seed + 1),
                                             seconds=60 * args.guide_minutes, lr=5e-4, device=device,
                                             schedule=model.schedule, space_for=domain_b.space_for)
        guide.eval()

    published = EDM_TABLE3.get(field, {})
    rows, sampling, failed = [], {}, []

    unguided: list[torch.Tensor] = []

    def add(name: str, err: torch.Tensor, edm_key: str, what: str, quality: dict | None = None) -> None:
        err = (err * factor).flatten()
        paired = "—"
        if quality is not None and unguided and len(unguided[0]) == len(err) == args.n:
            diff = err - unguided[0]  # same molecules (draws, noise) as the unguided row: a paired difference
            paired = f"{float(diff.mean()):+.3f} ± {float(diff.std() / len(diff) ** 0.5):.3f}"
        elif quality is not None:
            unguided.append(err)
        rows.append({"row": name, f"MAE ({unit})": round(float(err.mean()), 4),
                     "± SE": round(float(err.std() / len(err) ** 0.5), 4),
                     f"median AE ({unit})": round(float(err.median()), 4), "Δ MAE vs unguided (paired ± SE)": paired,
                     "EDM Table 3 (MAE)": published.get(edm_key, "—"),
                     "atom_stability": round(quality["atom_stability"], 4) if quality else "—",
                     "validity": round(quality["validity"], 4) if quality else "—", "meaning": what})
        print(rows[-1], flush=True)

    add("U-bound", errors["U-bound"], "U-bound", "φ vs a shuffled target (no information)")
    add("#Atoms", errors["#Atoms"], "#Atoms", "median property of D_a molecules of the same size")
    for scale in [0.0] + scales:
        name = "conditional EDM" + (f" + EEGSDE s={scale:g}" if scale else "")
        t0 = time.perf_counter()
        try:
            x, space = draw(model, args.n, args.steps, args.seed, device, scale, guide)
        except ValueError as err:  # e.g. the guidance energy overflowing on diverged states
            rows.append({"row": name, f"MAE ({unit})": f"failed: {err}"})
            failed.append(name)
            continue
        sampling[name] = round(time.perf_counter() - t0, 1)
        err, kept, quality = score(model, evaluator, domain_a, x, space, device)
        add(name, err, "EDM" if not scale else "", f"φ(generated) vs its target, {kept} of {args.n} molecules",
            quality)
    add("L-bound", errors["L-bound"], "L-bound", "φ(real D_b molecule) vs its own property")

    info = {"property": field, "evaluator": evaluator.config() | ev_log, "guide": guide_log,
            "generator_steps": int(module.global_step), "generator_seconds": round(gen_seconds, 1),
            "sampling_seconds": sampling, **ref_info, "n_a": len(train_a), "n_b": len(train_b),
            "machine": machine_description()}
    notes = (f"Property {field} ({unit}). Evaluator φ: EGNN {args.evaluator_layers} × {args.evaluator_hidden}, sum "
             f"readout, L1 on the D_a-normalised property, {ev_log['steps']} steps in {ev_log['seconds']} s on D_a "
             f"({len(train_a)} molecules). Generator: conditional EDM, EGNN {args.backbone} with the property as "
             f"context, {module.global_step} steps ({gen_seconds:.0f} s) at batch {args.batch_size}, lr {args.lr}, on "
             f"D_b ({len(train_b)} molecules); {args.n} molecules per row by DDPM (β̃) with {args.steps} steps, "
             f"(N, c) drawn from D_b, the same draws and noise in every row. EEGSDE (Bao et al., ICLR 2023): "
             f"ε̃ = ε + s σ_t ∇_x ‖g(x_t, t) − c̃‖² with a noise-aware EGNN g of the evaluator's size trained on noisy "
             f"D_b molecules ({guide_log.get('steps', 0)} steps), a different network from φ. References on "
             f"{ref_info['n_reference']} random D_b molecules; atom_stability / validity are EDM's metrics of the "
             "generated molecules. EDM Table 3 is EDM's evaluator on its own 50k/50k halves after ~3000 epochs; the "
             "rows here are minutes of training on this machine, so read them against this run's references: below "
             "#Atoms means the structure carries the property beyond the atom count. ± SE: the standard error of "
             "the MAE over the row's molecules; Δ MAE vs unguided: the mean paired difference of each molecule's "
             "absolute error from the unguided row's (same draws and noise; valid when every molecule is finite), "
             f"with its standard error. Device: {device}."
             + (f" Failed rows ({', '.join(failed)}): the guided sampler stopped when the energy became non-finite, "
                "i.e. the states diverged: the guidance term s σ_t ∇E was too large for this many DDPM steps." if failed
                else ""))
    write_results(f"qm9_conditional_{args.property}", rows, title=f"Conditional EDM on QM9: {field}", notes=notes,
                  extra={"info": info}, **({"results_dir": args.results_dir} if args.results_dir else {}))


def _as_batches(x: torch.Tensor, batch: torch.Tensor, context: torch.Tensor, n: int,
                size: int = 256) -> tuple[list[Any], int]:
    """Generated molecules with finite coordinates as PyG batches, their targets as ``context`` (for
    ``property.predict``), and how many were kept."""
    from torch_geometric.data import Batch, Data

    order = torch.argsort(batch, stable=True)
    counts = torch.bincount(batch, minlength=n).tolist()
    items = [Data(x=xi, context=context[k:k + 1], num_nodes=xi.shape[0])
             for k, xi in enumerate(torch.split(x[order], counts)) if bool(torch.isfinite(xi).all())]
    return [Batch.from_data_list(items[k:k + size]) for k in range(0, len(items), size)], len(items)


if __name__ == "__main__":
    main()
