"""Alanine-dipeptide torsions across temperatures: diffusion on the torus at unseen temperatures vs MBAR, the
nearest training temperature and the held-out replicas (issue 17).

Data: the parallel-tempering run of Chodera et al. (2006; pymbar's ``parallel-tempering-2dfes`` data), 40
temperatures 273–600 K, 10,000 frames each (``sciddpm.domains.torsions.data.load_pt_archive``).
Settings: **interpolation**: train on every fourth temperature (indices 0, 4, …, 36: 10 of 40), generate at the 30
others; **extrapolation** (DDPM_REMD's test; Wang, Herron & Tiwary, PNAS 2022): train on the top 30 (≥ 334 K),
generate at the 5 lowest (273–296 K). Every method sees only the training temperatures' frames.
Rows at each held-out T, in one run: ``torus`` (``TorsionsDomain``: TorusSpace, VE σ 0.01→2π, noise variance
τ = T/300 K through ``Space.with_temperature``); ``euclidean`` (DDPM_REMD's representation: angles min-max scaled to
[−1, 1) as plain numbers, VP linear 1000-step schedule, same network without periodic features, same temperature
conditioning); ``torus_plain_T`` (torus, unit noise, T only a network input: the ablation of the tempered prior);
``nearest training T`` (that temperature's frames as they are); ``MBAR`` (Shirts & Chodera 2008 reweighting of all
training frames with their potential energies; Kish effective sample size); the held-out replica itself
(reference, with its half-vs-half JS noise floor). Metrics (``sciddpm.domains.torsions.metrics``): JS (nats) of
36 × 36 histograms to the held-out replica, α_L population and ΔG(α_L − C7eq) in kT with bootstrap errors (blocks
of one exchange iteration, 20 frames, for MD frames and MBAR; single samples for the models).
Every model trains through the engine for the same fixed step budget; nothing is tuned on the held-out replicas.

Usage: ``python benchmarks/ala2_temperatures.py [--steps 4000] [--n 10000] [--device cpu] [--smoke]``
(``--smoke``: the committed 4-temperature subset, tiny budgets, a temporary folder; committed results untouched).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks._report import RESULTS_DIR, markdown_table, write_results  # noqa: E402
from sciddpm.domains.torsions.data import Torsions, load_torsions  # noqa: E402
from sciddpm.domains.torsions.metrics import basin_stats, histogram, js_divergence, noise_floor  # noqa: E402
from sciddpm.outputs import atomic_path  # noqa: E402

NAME = "ala2_temperatures"
DATA = REPO.parent / "shared" / "data" / "ala2_pt" / "alanine-dipeptide-pt.tar.gz"
SUBSET = REPO / "tests" / "data" / "ala2_pt_subset.npz"
NET = {"hidden": 128, "blocks": 3, "fourier": 4, "emb": 32}
MODELS: dict[str, dict[str, Any]] = {
    "torus": {"data": {"geometry": "torus", "prior": "thermo"}, "schedule": {}},
    "euclidean": {"data": {"geometry": "euclidean", "prior": "thermo"}, "schedule": {"type": "linear", "num_steps": 1000}},
    "torus_plain_T": {"data": {"geometry": "torus", "prior": "unit"}, "schedule": {}},
}
LABELS = {"torus": "torus diffusion (tempered prior)", "euclidean": "Euclidean scaled angles (DDPM_REMD-style)",
          "torus_plain_T": "torus, T as plain input", "nearest": "nearest training T (data)", "mbar": "MBAR (training T)",
          "reference": "held-out replica (reference)"}


def splits(temps: np.ndarray, smoke: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{setting: (training temperatures, held-out temperatures)} by index into the sorted temperatures."""
    idx = np.arange(len(temps))
    if smoke:  # 4 temperatures: train on the outer two / the top three
        return {"interpolation": (temps[[0, 3]], temps[[1, 2]]), "extrapolation": (temps[1:], temps[:1])}
    return {"interpolation": (temps[idx % 4 == 0], temps[idx % 4 != 0]), "extrapolation": (temps[10:], temps[:5])}


def train(work: Path, data_path: Path, setting: str, model: str, train_t: np.ndarray, s: dict[str, Any],
          device: str) -> float:
    """Train one model through the engine (fixed step budget, resumable); returns training seconds."""
    from sciddpm.config import load_config
    from sciddpm.training import fit, resume_point

    run = work / f"{setting}_{model}"
    done = run / "train_seconds.txt"
    if done.is_file():
        return float(done.read_text())
    cfg = load_config(None, {"domain": "torsions", "data": {"path": str(data_path), "temperatures": train_t.tolist(),
                                                            "val_fraction": 0.02, **MODELS[model]["data"]},
                             "schedule": MODELS[model]["schedule"], "backbone": dict(s["net"]), "max_steps": s["steps"],
                             "batch_size": s["batch"], "lr": 2e-3, "seed": 0, "ema_decay": 0.999,
                             "checkpoint_every": max(1, s["steps"] // 4), "log_every": max(1, s["steps"] // 50),
                             "accelerator": "gpu" if device.startswith("cuda") else "cpu"})
    start = time.perf_counter()
    fit(cfg, run, resume=resume_point(run), progress=False)
    seconds = time.perf_counter() - start
    done.write_text(f"{seconds:.1f}\n")
    print(f"[train] {setting}/{model}: {s['steps']} steps in {seconds:.0f} s", flush=True)
    return seconds


def generate(work: Path, setting: str, model: str, test_t: np.ndarray, s: dict[str, Any], device: str) -> dict[str, Any]:
    """n samples at every held-out temperature (cached as WORK/SETTING_MODEL/samples.npz: φ, ψ in degrees, T)."""
    from sciddpm.export import load

    cache = work / f"{setting}_{model}" / "samples.npz"
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    m = load(work / f"{setting}_{model}" / "export").to(device)
    phi, psi, temps, seconds = [], [], [], []
    for i, T in enumerate(test_t):
        start = time.perf_counter()
        out = m.sample(s["n"], sampler=s["sampler"], steps=s["sample_steps"], seed=1000 + i,
                       conditions={"temperature": float(T)})
        seconds.append(time.perf_counter() - start)
        f, p, t = m.domain.decode(out.sample.cpu(), out.space.to("cpu"))
        phi.append(f), psi.append(p), temps.append(t)
    result = {"phi": np.concatenate(phi), "psi": np.concatenate(psi), "temperature": np.concatenate(temps),
              "seconds_per_T": np.array(seconds)}
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **result)
    return result


def score(phi: np.ndarray, psi: np.ndarray, ref: Torsions, ref_stats: Any, weights: np.ndarray | None = None,
          block: np.ndarray | None = None, n_boot: int = 300) -> dict[str, float]:
    """JS to the reference histogram, α_L population and ΔG(α_L − C7eq) (kT) with bootstrap errors, |ΔG − ΔG_ref|."""
    st = basin_stats(phi, psi, weights=weights, block=block, n_boot=n_boot)
    js = js_divergence(histogram(phi, psi, weights), histogram(ref.phi, ref.psi))
    ddg = abs(st.dg_alphaL_C7eq - ref_stats.dg_alphaL_C7eq)
    return {"js": js, "p_alphaL": st.population["alphaL"], "p_alphaL_err": st.population_error["alphaL"],
            "dG": st.dg_alphaL_C7eq, "dG_err": st.dg_alphaL_C7eq_error, "abs_ddG": ddg}


def evaluate_setting(setting: str, data: Torsions, train_t: np.ndarray, test_t: np.ndarray,
                     samples: dict[str, dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-T rows for every method at every held-out T, plus MBAR's diagnostics."""
    from sciddpm.domains.torsions.mbar import fit_mbar

    train = Torsions(*[np.concatenate([getattr(data.at(t), f) for t in train_t]) for f in ("phi", "psi", "temperature")],
                     np.concatenate([data.at(t).energy for t in train_t]),
                     np.concatenate([data.at(t).block for t in train_t]))
    start = time.perf_counter()
    fit = fit_mbar(train.energy, train.temperature)
    mbar_seconds = time.perf_counter() - start
    order = fit.order
    n_model = max([int(np.isclose(smp["temperature"], test_t[0], atol=1e-3).sum()) for smp in samples.values()] + [1])
    rows: list[dict[str, Any]] = []
    for T in test_t:
        ref = data.at(float(T))
        ref_stats = basin_stats(ref.phi, ref.psi, block=ref.block, n_boot=300)
        floor = noise_floor(ref.phi, ref.psi)
        p_ref = histogram(ref.phi, ref.psi)  # JS of n independent draws from the replica's own histogram to it
        iid = np.random.default_rng(0).multinomial(n_model, p_ref.ravel(), size=20) / n_model
        iid_floor = float(np.mean([js_divergence(q, p_ref) for q in iid]))
        base = {"setting": setting, "T_K": round(float(T), 3)}
        rows.append({**base, "method": "reference", "js": 0.0, "js_floor": floor, "js_iid_floor": iid_floor, "p_alphaL": ref_stats.population["alphaL"],
                     "p_alphaL_err": ref_stats.population_error["alphaL"], "dG": ref_stats.dg_alphaL_C7eq,
                     "dG_err": ref_stats.dg_alphaL_C7eq_error, "abs_ddG": 0.0})
        near_t = float(train_t[np.argmin(np.abs(train_t - T))])
        near = data.at(near_t)
        rows.append({**base, "method": "nearest", "source_T": near_t,
                     **score(near.phi, near.psi, ref, ref_stats, block=near.block)})
        w, ess = fit.weights(float(T))
        rows.append({**base, "method": "mbar", "ess": ess,
                     **score(train.phi[order], train.psi[order], ref, ref_stats, weights=w, block=train.block[order])})
        for model, smp in samples.items():
            keep = np.isclose(smp["temperature"], T, atol=1e-3)
            rows.append({**base, "method": model, **score(smp["phi"][keep], smp["psi"][keep], ref, ref_stats)})
    for r in rows:
        floor = next(x["js_floor"] for x in rows if x["T_K"] == r["T_K"] and x["method"] == "reference")
        r["js_over_floor"] = r["js"] / floor
    return rows, {"mbar_seconds": mbar_seconds, "mbar_f_k": fit.f_k.tolist()}


def summarise(rows: list[dict[str, Any]], costs: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (setting, method): mean JS, JS/floor, how often JS ≤ 2× floor and < nearest-T JS, mean |ΔΔG| and
    how often |ΔΔG| ≤ 0.3 kT, MBAR's effective sample size, cost."""
    out = []
    for setting in dict.fromkeys(r["setting"] for r in rows):
        sr = [r for r in rows if r["setting"] == setting]
        near = {r["T_K"]: r["js"] for r in sr if r["method"] == "nearest"}
        for method in dict.fromkeys(r["method"] for r in sr):
            if method == "reference":
                mr = [r for r in sr if r["method"] == method]
                blank = {"frac_JS_lt_nearest": "", "mean_abs_ddG_kT": "", "frac_ddG_le_0.3kT": "", "frac_ddG_within_2sigma": "",
                         "frac_ddG_le_0.3kT_where_MBAR_is": "", "mean_ESS": "", "train_s": "", "sample_s_per_T": ""}
                out.append({"setting": setting, "method": "noise floor (half vs half of held-out)", "n_T": len(mr),
                            "mean_JS": float(np.mean([r["js_floor"] for r in mr])), "median_JS_over_floor": 1.0,
                            "frac_JS_le_2x_floor": 1.0, **blank})
                iid = [r["js_iid_floor"] / r["js_floor"] for r in mr]
                out.append({"setting": setting, "method": "exact sampler, n iid draws of the held-out histogram",
                            "n_T": len(mr), "mean_JS": float(np.mean([r["js_iid_floor"] for r in mr])),
                            "median_JS_over_floor": float(np.median(iid)),
                            "frac_JS_le_2x_floor": float(np.mean(np.array(iid) <= 2)), **blank})
                continue
            mr = [r for r in sr if r["method"] == method]
            ddg = np.array([r["abs_ddG"] for r in mr])
            out.append({"setting": setting, "method": LABELS.get(method, method), "n_T": len(mr),
                        "mean_JS": float(np.mean([r["js"] for r in mr])),
                        "median_JS_over_floor": float(np.median([r["js_over_floor"] for r in mr])),
                        "frac_JS_le_2x_floor": float(np.mean([r["js_over_floor"] <= 2 for r in mr])),
                        "frac_JS_lt_nearest": "" if method == "nearest" else float(np.mean([r["js"] < near[r["T_K"]] for r in mr])),
                        "mean_abs_ddG_kT": float(np.mean(ddg[np.isfinite(ddg)])) if np.isfinite(ddg).any() else float("nan"),
                        "frac_ddG_le_0.3kT": float(np.mean(ddg <= 0.3)),
                        "frac_ddG_within_2sigma": float(np.mean([_within_2sigma(r, sr) for r in mr])),
                        "frac_ddG_le_0.3kT_where_MBAR_is": _where_mbar_is(sr, mr),
                        "mean_ESS": float(np.mean([r["ess"] for r in mr])) if method == "mbar" else "",
                        "train_s": costs.get(f"{setting}/{method}/train_s", ""),
                        "sample_s_per_T": costs.get(f"{setting}/{method}/sample_s_per_T", "")})
    return out


def _within_2sigma(r: dict[str, Any], setting_rows: list[dict[str, Any]]) -> bool:
    """|ΔG − ΔG_ref| ≤ 2 √(σ² + σ_ref²): consistent with the held-out replica within both bootstrap errors."""
    ref = next(x for x in setting_rows if x["method"] == "reference" and x["T_K"] == r["T_K"])
    sigma = math.hypot(r["dG_err"], ref["dG_err"])
    return bool(np.isfinite(r["abs_ddG"]) and np.isfinite(sigma) and r["abs_ddG"] <= 2 * sigma)


def _where_mbar_is(setting_rows: list[dict[str, Any]], method_rows: list[dict[str, Any]]) -> float | str:
    """Of the temperatures where MBAR's ΔG is within 0.3 kT of the held-out replica's, the fraction where this
    method's is too ("" where MBAR never is)."""
    good = {r["T_K"] for r in setting_rows if r["method"] == "mbar" and r["abs_ddG"] <= 0.3}
    hit = [r["abs_ddG"] <= 0.3 for r in method_rows if r["T_K"] in good]
    return float(np.mean(hit)) if hit else ""


def plot_curves(path: Path, rows: list[dict[str, Any]]) -> None:
    """JS vs T (with the noise floor) and ΔG(α_L − C7eq) vs T (with the held-out replicas' errors), per setting."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig = Figure(figsize=(5.2 * len(settings), 7.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, len(settings), squeeze=False)
    style = {"reference": ("k", "o"), "nearest": ("tab:gray", "s"), "mbar": ("tab:green", "^"), "torus": ("tab:blue", "o"),
             "euclidean": ("tab:red", "x"), "torus_plain_T": ("tab:purple", "d")}
    for c, setting in enumerate(settings):
        sr = [r for r in rows if r["setting"] == setting]
        for method in dict.fromkeys(r["method"] for r in sr):
            mr = [r for r in sr if r["method"] == method]
            T = [r["T_K"] for r in mr]
            color, marker = style.get(method, ("tab:orange", "."))
            if method == "reference":
                axes[0, c].plot(T, [r["js_floor"] for r in mr], "k--", label="noise floor (halves)")
            else:
                axes[0, c].plot(T, [r["js"] for r in mr], marker=marker, color=color, ms=4, lw=1, label=LABELS[method])
            axes[1, c].errorbar(T, [r["dG"] for r in mr], yerr=[r["dG_err"] for r in mr], marker=marker, color=color,
                                ms=4, lw=1, capsize=2, label=LABELS[method])
        axes[0, c].set(title=f"{setting}: JS to held-out replica", ylabel="JS (nats)", yscale="log")
        axes[1, c].set(title="ΔG(α_L − C7eq)", xlabel="T (K)", ylabel="kT")
        axes[0, c].legend(fontsize=6)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.07, top=0.95, hspace=0.3, wspace=0.2)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def plot_panels(path: Path, data: Torsions, samples: dict[tuple[str, str], dict[str, Any]], picks: list[tuple[str, float]]) -> None:
    """Ramachandran free-energy panels: held-out data and each model at a few held-out temperatures."""
    from sciddpm.domains.torsions.plots import free_energy_panels

    rows: dict[str, list] = {"data": []}
    for setting, T in picks:
        ref = data.at(T)
        rows["data"].append((f"{T:.0f} K", ref.phi, ref.psi))
        for (st, model), smp in samples.items():
            if st != setting:
                continue
            keep = np.isclose(smp["temperature"], T, atol=1e-3)
            rows.setdefault(model, [None] * (len(rows["data"]) - 1))
            rows[model].append((f"{T:.0f} K ({setting[:6]}.)", smp["phi"][keep], smp["psi"][keep]))
    for v in rows.values():
        v.extend([None] * (len(picks) - len(v)))
    free_energy_panels(path, rows)


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Budgets: the benchmark's or the smoke run's (seconds)."""
    if args.smoke:
        return {"steps": 30, "batch": 64, "n": 300, "sample_steps": 50, "sampler": args.sampler,
                "net": {"hidden": 16, "blocks": 1, "fourier": 2, "emb": 8}, "models": ["torus", "euclidean"]}
    return {"steps": args.steps, "batch": args.batch, "n": args.n, "sample_steps": args.sample_steps,
            "sampler": args.sampler, "net": dict(NET), "models": args.models}


def run(args: argparse.Namespace, work: Path, results_dir: Path) -> None:
    """Train, generate, score, write the tables and figures."""
    s = settings(args)
    data_path = SUBSET if args.smoke else Path(args.data)
    data = load_torsions(data_path)
    costs: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    diag: dict[str, Any] = {}
    all_samples: dict[tuple[str, str], dict[str, Any]] = {}
    for setting, (train_t, test_t) in splits(data.temperatures, args.smoke).items():
        samples = {}
        for model in s["models"]:
            costs[f"{setting}/{model}/train_s"] = round(train(work, data_path, setting, model, train_t, s, args.device), 1)
            samples[model] = generate(work, setting, model, test_t, s, args.device)
            costs[f"{setting}/{model}/sample_s_per_T"] = round(float(np.mean(samples[model]["seconds_per_T"])), 2)
            all_samples[(setting, model)] = samples[model]
        r, d = evaluate_setting(setting, data, train_t, test_t, samples)
        rows += r
        diag[setting] = {"train_T": train_t.tolist(), "test_T": test_t.tolist(), **d}
    summary = summarise(rows, costs)
    results_dir.mkdir(parents=True, exist_ok=True)
    plot_curves(results_dir / f"{NAME}.png", rows)
    tests = {k: v["test_T"] for k, v in diag.items()}
    picks = [("extrapolation", tests["extrapolation"][0])] + [("interpolation", tests["interpolation"][i])
                                                             for i in np.linspace(0, len(tests["interpolation"]) - 1, 3 if not args.smoke else 2).round().astype(int)]
    plot_panels(results_dir / f"{NAME}_fes.png", data, all_samples, picks)
    per_t = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    notes = notes_text(s, args, diag) + "\n\n## Extrapolation, per temperature\n\n" + markdown_table(
        [_brief(r) for r in rows if r["setting"] == "extrapolation"]) + "\n\n## Interpolation, per temperature\n\n" + \
        markdown_table([_brief(r) for r in rows if r["setting"] == "interpolation"])
    write_results(NAME, summary, title="Alanine dipeptide across temperatures: torus diffusion vs MBAR and held-out replicas",
                  notes=notes, results_dir=results_dir,
                  extra={"per_temperature": per_t, "settings": {k: v for k, v in s.items()}, "diagnostics": diag,
                         "costs": costs, "published": PUBLISHED})


PUBLISHED = {"source": "Wang, Herron & Tiwary, PNAS 119:e2203656119 (2022), DDPM_REMD",
             "note": "reported on Aib9 and an RNA tetranucleotide, not on this alanine-dipeptide data set: no published "
                     "JS or ΔG on these replicas to put beside ours; their representation is reproduced as the "
                     "'euclidean' row instead"}


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {"T_K": r["T_K"], "method": LABELS.get(r["method"], r["method"]), "JS": r["js"], "JS/floor": r["js_over_floor"],
            "p_αL": r["p_alphaL"], "±": r["p_alphaL_err"], "ΔG_αL−C7eq (kT)": r["dG"], "± ": r["dG_err"],
            "abs ΔΔG": r["abs_ddG"], "ESS": r.get("ess", "")}


def notes_text(s: dict[str, Any], args: argparse.Namespace, diag: dict[str, Any]) -> str:
    """The results file's explanation of the setup (filled with the run's own settings)."""
    return f"""
Training: each diffusion model {s['steps']} steps of batch {s['batch']} through the engine (Adam, lr 2e-3, cosine,
EMA 0.999), `TorsionNet` {s['net']}, on 98 % of each training temperature's frames (the last 2 % in time are the
engine's validation split); sampling {s['n']} samples per held-out T with `{s['sampler']}`, {s['sample_steps']}
steps, on `{args.device}`; train_s / sample_s_per_T are wall-clock seconds on this shared CPU (one thread). No GPU
was available: GPU throughput not measured (`tests/test_gpu.py` has the CUDA check).
Metrics: JS in nats between 36 × 36 histograms over (φ, ψ) and the held-out replica's 10,000 frames; the noise
floor is the JS between the replica's first and second 5,000 frames (correlated MD, so it is larger than the
floor of independent samples). Basins: boxes in `sciddpm/domains/torsions/metrics.py` (C7eq/β φ < −100°, P_II,
α_R, α_L: φ ≥ 0 and −100° ≤ ψ < 100°, C7ax). ΔG(α_L − C7eq) = −ln(p_αL/p_C7eq) in kT; errors: bootstrap (300
replicates) over exchange-iteration blocks (20 frames) for MD frames and MBAR (MBAR's f_k held fixed inside the
bootstrap), over single samples for the models. |ΔΔG| is the distance to the held-out replica's ΔG; infinite where
a method put no sample in α_L. MBAR: all frames of the training temperatures, u = β U with the archive's potential
energies (kcal/mol), pymbar 4.0.3 `robust` solver; ESS = Kish (Σw)²/Σw².
Train temperatures: interpolation {diag['interpolation']['train_T']}; extrapolation {diag['extrapolation']['train_T']}.
Published figures: {PUBLISHED['note']}.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--n", type=int, default=10000, help="samples per held-out temperature")
    parser.add_argument("--sample-steps", type=int, default=100)
    parser.add_argument("--sampler", default="euler_maruyama")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default=str(REPO / "runs" / NAME), help="run folders and cached samples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="committed subset, tiny budgets, temporary folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.smoke:
        with tempfile.TemporaryDirectory(prefix="ala2_smoke_") as tmp:
            run(args, Path(tmp) / "work", Path(tmp) / "results")
        return
    if not Path(args.data).exists():
        raise SystemExit(f"ala2_temperatures: data not found: {args.data}")
    run(args, Path(args.work), RESULTS_DIR)


if __name__ == "__main__":
    main()
