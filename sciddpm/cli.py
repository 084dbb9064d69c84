"""The ``sciddpm`` command.

``sciddpm demo --domain NAME`` is the main job on bundled data: it trains the named domain briefly through the same
engine as ``train``, samples, evaluates and writes the domain's files, a PNG of samples and the loss curve (the core
names no demo domain: ``make demo`` names it); then it runs the core demonstration on a 2-D Gaussian mixture whose
noisy score is known exactly (samplers against exact samples by sliced W₂, probability-flow-ODE and ELBO
likelihoods against the exact log q₀).

``sciddpm train`` trains a domain's model with Lightning (``--config`` YAML/TOML and/or flags; ``--resume``
continues from the newest checkpoint in ``--output``), ``sciddpm sample`` draws samples from an export folder
or a checkpoint into the domain's file format plus a PNG, and ``sciddpm evaluate`` writes the domain's metrics
as JSON (``--condition KEY=VALUE`` per-sample conditions, ``--guidance-scale`` classifier-free guidance). Domains
are found through the ``sciddpm.domains`` entry points or given as ``package.module:Class``; only ``train`` imports
Lightning, so ``sample`` / ``evaluate`` start fast.
Errors print one line ``sciddpm: error: ...`` and exit with status 2, leaving no half-written output.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .cli_values import parse_assignments, parse_value, temperature_grid  # noqa: F401  (re-exported)
from .likelihood import elbo, ode_log_likelihood
from .oracle import GaussianMixture, sliced_wasserstein2
from .outputs import atomic_path
from .samplers import get_sampler, prior_sample, time_grid
from .schedules import LinearSchedule
from .spaces import DenseSpace


def demo_mixture() -> GaussianMixture:
    """The demo's 2-D mixture: three correlated components with unequal weights (a ring-and-bar shape)."""
    return GaussianMixture(
        torch.tensor([0.2, 0.5, 0.3]),
        torch.tensor([[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]]),
        torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.15, 0.0], [0.0, 0.15]]]),
    )


def write_json(path: Path, value: Any) -> None:
    """``value`` as indented JSON at ``path``, atomically; NaN/inf are refused (ValueError), never written."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(value, indent=2, allow_nan=False) + "\n")


def run_domain_demo(domain: str, output: Path, max_steps: int = 500, seed: int = 0, n_samples: int = 200) -> dict:
    """Train ``domain`` briefly on its bundled data, sample with DDPM (100 steps), evaluate, write files + PNGs."""
    from .config import load_config
    from .domain import domain_class
    from .export import load

    steps, n = max_steps, n_samples
    run = output / domain_class(domain).name
    cfg = load_config(None, {"domain": domain, "max_steps": steps, "seed": seed, "checkpoint_every": steps,
                             "log_every": max(1, min(10, steps // 4))})
    from .training import fit

    print(f"[demo] training {domain} for {steps} steps on its bundled data → {run}", flush=True)
    start = time.perf_counter()
    fit(cfg, run, progress=True, overwrite=True)  # the demo's folder is scratch space: a rerun starts over
    train_s = time.perf_counter() - start
    model = load(run / "export")
    out = model.sample(n, sampler="ddpm", steps=100, seed=seed, progress=True)
    metrics = model.domain.evaluate(out.sample, out.space)
    samples_file = run / f"samples{getattr(model.domain, 'sample_suffix', '.csv')}"
    written = [samples_file] + [samples_file.with_suffix(s) for s in model.domain.sample_suffixes or ()
                                if s not in (samples_file.suffix, ".png")]  # every format the domain writes
    for path in written:
        model.domain.write_samples(path, out.sample, out.space)
    model.domain.plot_samples(run / "samples.png", out.sample, out.space)
    report = {"domain": domain, "train_steps": steps, "train_seconds": round(train_s, 1), "sampler": "ddpm",
              "steps": 100, "nfe": out.nfe, "n": n, "metrics": metrics}
    write_json(run / "metrics.json", report)
    print(f"[demo] {domain}: trained in {train_s:.0f} s; metrics of {n} DDPM samples: {json.dumps(metrics)}")
    print(f"[demo] (a {steps}-step CPU demonstration on bundled data: expect low quality; real runs use "
          f"`sciddpm train --domain {domain} --data-path ...` for many more steps)")
    print(f"[demo] wrote {', '.join(map(str, written))}, {run / 'samples.png'}, {run / 'loss.png'}, "
          f"{run / 'metrics.json'}")
    return report


def run_demo(output: Path, n: int = 4000, seed: int = 0) -> dict:
    """Sample the demo mixture with DDPM, DDIM and DPM-Solver++(2M) at 10/20/100 steps and report errors."""
    output.mkdir(parents=True, exist_ok=True)
    mixture, schedule = demo_mixture(), LinearSchedule(1000)
    gen = torch.Generator().manual_seed(seed)
    space = DenseSpace((n, 2))
    exact, _ = mixture.sample(n, gen)
    floor = float(sliced_wasserstein2(exact, mixture.sample(n, gen)[0], generator=torch.Generator().manual_seed(1)))
    x_t = prior_sample(schedule, space, gen, torch.float64)
    rows, shown = [], {}
    for name, grid_kind in (("ddpm", "quadratic"), ("ddim", "quadratic"), ("dpm_solver_pp_2m", "logsnr")):
        for steps in (10, 20, 100):
            start = time.perf_counter()
            out = get_sampler(name)(mixture.eps_fn(schedule), schedule, space, x_t, time_grid(schedule, steps, grid_kind),
                                    **({"generator": gen} if name == "ddpm" else {}))
            sw2 = float(sliced_wasserstein2(out.sample, exact, generator=torch.Generator().manual_seed(1)))
            rows.append({"sampler": name, "steps": steps, "nfe": out.nfe, "sliced_w2": round(sw2, 4),
                         "seconds": round(time.perf_counter() - start, 3)})
            print(f"{name:>18} steps={steps:<4} nfe={out.nfe:<4} sliced-W2 to exact samples = {sw2:.4f}", flush=True)
            if steps == 20:
                shown[name] = out.sample
    x0 = exact[:200]
    small = DenseSpace(x0.shape)
    exact_ll = float(mixture.log_prob(x0).mean())
    ode_ll = float(-ode_log_likelihood(mixture.eps_fn(schedule), schedule, small, x0, trace="exact").nll.mean())
    elbo_ll = float(-elbo(mixture.eps_fn(schedule), schedule, small, x0, time_grid(schedule, 100), variance="beta",
                          generator=gen).nll.mean())
    likelihood = {"exact_log_q0": exact_ll, "pf_ode_exact_trace": ode_ll, "elbo_beta_K100": elbo_ll}
    print(f"log-likelihood (nats, mean of 200): exact {exact_ll:.4f}  PF-ODE {ode_ll:.4f}  ELBO(K=100, β) {elbo_ll:.4f}")
    print(f"noise floor (sliced-W2 between two exact sample sets): {floor:.4f}")
    report = {"problem": "2-D Gaussian mixture, linear schedule N=1000, exact score", "n": n,
              "noise_floor_sliced_w2": floor, "rows": rows, "likelihood": likelihood}
    write_json(output / "demo.json", report)
    _plot(output / "demo.png", exact, shown)
    print(f"wrote {output / 'demo.json'} and {output / 'demo.png'}")
    return report


def _plot(path: Path, exact: torch.Tensor, samples: dict[str, torch.Tensor]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {"exact q0": exact, **{f"{k} (20 steps)": v for k, v in samples.items()}}
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), sharex=True, sharey=True)
    for ax, (title, pts) in zip(axes, panels.items()):
        ax.scatter(pts[:, 0].numpy(), pts[:, 1].numpy(), s=1, alpha=0.4)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=80, format="png")
    finally:
        plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``sciddpm`` command."""
    parser = argparse.ArgumentParser(prog="sciddpm", description="Diffusion probabilistic models for science data.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the main job on bundled data: train a domain briefly, sample, evaluate; "
                                       "then the exact-oracle core demonstration")
    demo.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for the demo's files")
    demo.add_argument("--domain", default=None, help="domain to train first (a name or package.module:Class; "
                                                     "default: none, only the core demonstration)")
    demo.add_argument("--max-steps", type=int, default=500, help="training steps of the domain demo")
    demo.add_argument("--n-samples", type=int, default=200, help="samples drawn and evaluated by the domain demo")
    demo.add_argument("--n", type=int, default=4000, help="number of samples per sampler in the core demo")
    demo.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="train a domain's diffusion model (Lightning)")
    train.add_argument("--domain", help="domain: a registered name (sciddpm.domains entry point, e.g. tabular) or "
                                        "package.module:Class")
    train.add_argument("--config", type=Path, help="YAML or TOML file with TrainConfig fields")
    train.add_argument("--output", type=Path, help="run folder (checkpoints/, logs/, export/, loss.png)")
    train.add_argument("--resume", nargs="?", const="latest", metavar="CKPT",
                       help="continue from CKPT, or from the newest checkpoint in --output")
    train.add_argument("--data-path", help="the domain's data file (sets data.path)")
    for flag, typ in (("max-steps", int), ("max-time", str), ("devices", int), ("num-nodes", int),
                      ("accelerator", str), ("strategy", str), ("batch-size", int), ("lr", float), ("seed", int),
                      ("checkpoint-every", int), ("noise-shards", int), ("precision", str), ("ema-decay", float),
                      ("log-every", int)):
        train.add_argument(f"--{flag}", type=typ, dest=flag.replace("-", "_"))
    train.add_argument("--overwrite", action="store_true",
                       help="start a fresh run in a non-empty --output (removes that folder's earlier run)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="report progress on stderr: a bar on a terminal, a line every 10 s otherwise "
                            "(SCIDDPM_PROGRESS_EVERY seconds; default: on)")

    for name, text in (("sample", "draw samples from an export folder or checkpoint"),
                       ("evaluate", "sample and write the domain's metrics as JSON")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", type=Path, help="export folder (config.json + model.safetensors) or .ckpt file")
        p.add_argument("--sampler", default="ddpm")
        p.add_argument("--steps", type=int, default=100)
        p.add_argument("--grid", default="uniform", choices=("uniform", "quadratic", "logsnr", "karras", "optimised"),
                       help="time grid; optimised: the grid saved by `sciddpm optimise-grid` for this sampler and steps")
        p.add_argument("--n", type=int, default=256)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--variance", default="beta_tilde", choices=("beta_tilde", "beta", "analytic"),
                       help="reverse variance of the ddpm sampler (analytic: Analytic-DPM, needs estimate-variance)")
        p.add_argument("--condition", action="append", default=[], metavar="KEY=VALUE",
                       help="a per-sample condition of the domain (repeatable); VALUE: a number (the same for every "
                            "sample), a comma-separated list, or @file (.npy/.npz/.txt/.csv) for arrays")
        p.add_argument("--temperature", default=None, metavar="LO:HI:STEP",
                       help="sample --n configurations at each temperature of a grid (LO:HI:STEP, inclusive) or "
                            "list (T1,T2,...): the domain's 'temperature' condition (e.g. the ising domain)")
        p.add_argument("--guidance-scale", type=float, default=None, metavar="LAMBDA",
                       help="classifier-free guidance eps(x|0) + LAMBDA (eps(x|c) - eps(x|0)); needs a model with "
                            "an unconditional mode")
        p.add_argument("--sampler-option", action="append", default=[], metavar="KEY=VALUE",
                       help="an option of the sampler (repeatable), e.g. eta=0.5 for ddim")
        p.add_argument("--output", type=Path, required=True,
                       help="samples file in the domain's format (a PNG is written next to it)" if name == "sample"
                       else "metrics JSON file")
    add_optimise_grid_parser(sub)
    det = sub.add_parser("detect", help="score plant readings for attacks with a model whose domain detects them "
                                         "(e.g. timeseries): per-row scores, alarms, top sensors and a PNG")
    det.add_argument("readings", help="CSV of readings, or - to read stdin row by row")
    det.add_argument("--model", type=Path, required=True, help="export folder (config.json + model.safetensors)")
    det.add_argument("--output", type=Path, default=None,
                     help="per-row CSV (default READINGS.scores.csv, or stdout for stdin); a PNG is written next to it")
    det.add_argument("--calibrate", metavar="CSV", default=None,
                     help="first fit the per-sensor statistics and threshold on this attack-free CSV (saved in the export)")
    det.add_argument("--quantile", type=float, default=0.99, help="threshold quantile of the calibration scores")
    for flag, typ in (("samples", int), ("steps", int), ("sampler", str), ("seed", int), ("top-k", int),
                      ("smooth", int)):
        det.add_argument(f"--{flag}", type=typ, dest=flag.replace("-", "_"), default=None)
    comp = sub.add_parser("complete", help="complete a partial point cloud with a model whose domain completes "
                                             "them (e.g. pointclouds): PLY with per-point uncertainty + PNG")
    comp.add_argument("partial", help="partial cloud: .ply, .xyz or .npy")
    comp.add_argument("--model", type=Path, required=True, help="export folder (config.json + model.safetensors)")
    comp.add_argument("--output", type=Path, required=True, help="completed cloud (.ply or .npy); a PNG beside it")
    comp.add_argument("--samples", type=int, default=8, help="completions drawn (their spread is the uncertainty)")
    comp.add_argument("--steps", type=int, default=50)
    comp.add_argument("--sampler", default="ddim")
    comp.add_argument("--seed", type=int, default=0)
    comp.add_argument("--reference", default=None, help="the complete cloud, if known: metrics and a third PNG row")
    est = sub.add_parser("estimate-variance", help="estimate Analytic-DPM's Gamma table on training data and save it "
                                                   "in the export")
    est.add_argument("model", type=Path, help="export folder (config.json + model.safetensors)")
    est.add_argument("--batches", type=int, default=8, help="training batches to average over")
    est.add_argument("--batch-size", type=int, default=64)
    est.add_argument("--num-times", type=int, default=100, help="times at which Gamma is estimated")
    est.add_argument("--seed", type=int, default=0)
    return parser


def add_optimise_grid_parser(sub: Any) -> None:
    """``sciddpm optimise-grid``: the arguments of ``run_optimise_grid``."""
    opt = sub.add_parser("optimise-grid", help="optimise a sampler's time grid for a step budget on this model and "
                                               "save it in the export (used by --grid optimised)")
    opt.add_argument("model", type=Path, help="export folder (config.json + model.safetensors)")
    opt.add_argument("--sampler", required=True, help="ddim, heun, dpm_solver_pp_2m, dpm_solver_pp_3m, unipc (pathwise "
                                                       "error against the exact ODE) or ddpm (Analytic-DPM trajectory)")
    opt.add_argument("--steps", type=int, required=True, action="append", help="step budget K (repeatable)")
    opt.add_argument("--n", type=int, default=256, help="prior draws the ODE grid is optimised on")
    opt.add_argument("--sweeps", type=int, default=4, help="coordinate-descent sweeps")
    opt.add_argument("--seed", type=int, default=1234, help="seed of the optimisation draws (use another for sampling)")


def run_optimise_grid(args: argparse.Namespace) -> None:
    """``sciddpm optimise-grid``: ``DiffusionModel.optimise_grid`` for each --steps, saved as variance.grid.*."""
    from .export import load, save_variances

    model = load(args.model)
    grids = {}
    for steps in args.steps:
        key, result = model.optimise_grid(args.sampler, steps, n=args.n, seed=args.seed, sweeps=args.sweeps)
        grids[key] = result.grid
        detail = (f"pathwise error {result.error:.4g} (best built-in grid, {result.start_kind}: "
                  f"{result.start_error:.4g}; {result.runs} sampler runs)" if result.runs else "Analytic-DPM trajectory")
        print(f"{args.sampler}, {steps} steps: {detail}")
    save_variances(args.model, {**model.variances, **grids})
    print(f"saved {', '.join(sorted(grids))} in {args.model / 'model.safetensors'}")


def run_estimate_variance(args: argparse.Namespace) -> None:
    """``sciddpm estimate-variance``: Γ_t over training batches, saved as ``variance.gamma*`` in the export."""
    from .export import load, save_variances

    if args.batches < 1 or args.batch_size < 1 or args.num_times < 2:
        raise ValueError("--batches and --batch-size must be >= 1 and --num-times >= 2")
    model = load(args.model)
    table = model.estimate_gamma(args.batches, args.batch_size, args.num_times, args.seed, progress=True)
    save_variances(args.model, {**model.variances, **table.state_dict()})  # keeps saved grids
    worst = float((table.stderr / (1 - table.gamma).abs().clamp_min(1e-12)).max())
    print(f"estimated Gamma at {len(table.t)} times from {args.batches}x{args.batch_size} training samples; "
          f"saved in {args.model / 'model.safetensors'} (max relative SE of 1 - Gamma: {worst:.3g})")


_TRAIN_FLAGS = ("max_steps", "max_time", "devices", "num_nodes", "accelerator", "strategy", "batch_size", "lr",
                "seed", "checkpoint_every", "noise_shards", "precision", "ema_decay", "log_every")


def run_detect(args: argparse.Namespace) -> None:
    """``sciddpm detect``: load the export and hand the readings to its domain's ``detect`` (the core names no
    domain: a domain without a detection mode is a one-line error)."""
    from .export import load

    model = load(args.model)
    detect = getattr(model.domain, "detect", None)
    if not callable(detect):
        raise ValueError(f"domain {model.domain.name!r} of {args.model} has no attack-detection mode (detect)")
    output = args.output or (Path("-") if args.readings == "-" else Path(args.readings).with_suffix(".scores.csv"))
    export = args.model if args.model.is_dir() else args.model.parent
    overrides = {k: getattr(args, k) for k in ("samples", "steps", "sampler", "seed", "top_k", "smooth")}
    summary = detect(model, export, args.readings, output, calibrate=args.calibrate, quantile=args.quantile,
                     overrides=overrides)
    print(json.dumps(summary), file=sys.stderr)



def run_complete(args: argparse.Namespace) -> None:
    """``sciddpm complete``: load the export and hand the partial cloud to its domain's ``complete`` (the core names
    no domain: a domain without a completion mode is a one-line error)."""
    from .export import load

    model = load(args.model)
    complete = getattr(model.domain, "complete", None)
    if not callable(complete):
        raise ValueError(f"domain {model.domain.name!r} of {args.model} has no completion mode (complete)")
    summary = complete(model, args.partial, args.output, samples=args.samples, steps=args.steps, sampler=args.sampler,
                       seed=args.seed, reference=args.reference)
    print(json.dumps(summary), file=sys.stderr)


def run_train(args: argparse.Namespace) -> None:
    """``sciddpm train``: config file + flags, or the run folder's saved config on ``--resume``."""
    from .config import config_from_dict, load_config, read_config_file
    from .runs import resume_command
    from .training import TrainingInterrupted, fit, latest_checkpoint

    overrides = {k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None}
    if args.domain:
        overrides["domain"] = args.domain
    resume = None
    if args.resume:
        if args.output is None:
            raise ValueError("--resume needs --output (the run folder to continue)")
        saved = args.output / "config.json"
        if not saved.is_file():
            raise ValueError(f"cannot resume: {saved} not found")
        values = read_config_file(saved)
        values.update(overrides)
        # a --config given with --resume must match the run's (fit lists the differences that may not change)
        cfg = load_config(args.config, overrides) if args.config else config_from_dict(values, str(saved))
        resume = latest_checkpoint(args.output) if args.resume == "latest" else Path(args.resume)
        if not resume.is_file():
            raise ValueError(f"checkpoint not found: {resume}")
    else:
        cfg = load_config(args.config, overrides)
    if args.data_path is not None:
        cfg.data = {**cfg.data, "path": args.data_path}
    from .domain import domain_class

    domain_class(cfg.domain)  # a misspelt domain fails before anything is written
    output = args.output or Path("runs") / cfg.domain
    progress = True if args.progress is None else args.progress
    try:  # a run folder is only ever removed by the user: an interrupt keeps everything written so far
        fit(cfg, output, resume=resume, progress=progress, overwrite=args.overwrite)
    except TrainingInterrupted as stop:
        if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
            print(f"sciddpm: training stopped by {signal.Signals(stop.signum).name} at step {stop.step}; checkpoint "
                  f"{stop.checkpoint} kept; continue with: {resume_command(output)}", file=sys.stderr, flush=True)
        raise SystemExit(128 + stop.signum) from None  # 130 (SIGINT) / 143 (SIGTERM), as a shell reports them
    if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0":
        print(f"trained {cfg.domain}: wrote {output / 'export'} and {output / 'loss.png'}")


def run_sample(args: argparse.Namespace, evaluate: bool = False) -> None:
    """``sciddpm sample`` / ``sciddpm evaluate``: samples in the domain's format + PNG, or metrics JSON."""
    from .export import load
    from .outputs import check_output

    conditions = parse_assignments(args.condition, "--condition", arrays=True)
    options = parse_assignments(args.sampler_option, "--sampler-option", arrays=False)
    n, grid = args.n, None
    if args.temperature is not None:  # n configurations at every temperature of the grid
        if "temperature" in conditions:
            raise ValueError("give the temperature either as --temperature or as --condition temperature=..., not both")
        grid = temperature_grid(args.temperature)
        n = args.n * len(grid)
    model = load(args.model)
    conditions = model.domain.check_conditions(conditions if grid is None else {**conditions, "temperature": grid[0]})
    # every output path is checked before any sampling: extension (format), folder, writable
    check_output(args.output, None if evaluate else model.domain.sample_suffixes)
    png = args.output.with_suffix(".png")
    if evaluate:
        model.domain.check_eval_count(n)
    elif png != args.output:
        check_output(png)
    guidance = None
    if args.guidance_scale is not None:
        from .guidance import ClassifierFree

        guidance = ClassifierFree(args.guidance_scale)
    how = dict(sampler=args.sampler, steps=args.steps, grid=args.grid, progress=True,
               variance=args.variance, guidance=guidance, **options)
    if grid is None:
        out = model.sample(n, seed=args.seed, conditions=conditions or None, **how)
    else:  # one batch per temperature (memory bounded by --n), joined on the batch axis (fixed-shape states)
        from .sampler_base import SamplerOutput

        parts = [model.sample(args.n, seed=args.seed + i, conditions={**conditions, "temperature": float(T)}, **how)
                 for i, T in enumerate(grid)]
        conditions["temperature"] = grid.repeat_interleave(args.n)
        out = SamplerOutput(torch.cat([p.sample for p in parts]), sum(p.nfe for p in parts),
                            model.domain.sample_space(n, conditions=conditions))
    if evaluate:
        metrics = {"model": str(args.model), "sampler": args.sampler, "variance": args.variance, "steps": args.steps,
                   "nfe": out.nfe, "n": n, "seed": args.seed, "conditions": list(args.condition),
                   "guidance_scale": args.guidance_scale, "sampler_options": options,
                   "metrics": model.domain.evaluate(out.sample, out.space)}
        bad = [k for k, v in metrics["metrics"].items() if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            raise ValueError(f"metrics {bad} of {n} samples are not finite; nothing written to {args.output}")
        write_json(args.output, metrics)
        print(json.dumps(metrics["metrics"]))
        return
    model.domain.write_samples(args.output, out.sample, out.space)  # writers go through outputs.atomic_path
    if png != args.output:
        model.domain.plot_samples(png, out.sample, out.space)
    print(f"wrote {n} samples to {args.output} and {png} ({args.sampler}, {out.nfe} network evaluations)")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 1000 else text[:997] + "..."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            if args.n < 10:
                raise ValueError("--n must be at least 10")
            if args.domain is not None and args.domain != "none":
                from .domain import domain_class

                domain_class(args.domain)  # a misspelt domain fails before anything runs
                run_domain_demo(args.domain, args.output, args.max_steps, args.seed, args.n_samples)
            run_demo(args.output / "core", n=args.n, seed=args.seed)
        elif args.command == "train":
            run_train(args)
        elif args.command in ("sample", "evaluate"):
            run_sample(args, evaluate=args.command == "evaluate")
        elif args.command == "estimate-variance":
            run_estimate_variance(args)
        elif args.command == "optimise-grid":
            run_optimise_grid(args)
        elif args.command == "detect":
            run_detect(args)
        elif args.command == "complete":
            run_complete(args)
    except (ValueError, OSError) as exc:
        print(f"sciddpm: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # Lightning's MisconfigurationException and friends: still one line
        if type(exc).__name__ != "MisconfigurationException":
            raise
        print(f"sciddpm: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
