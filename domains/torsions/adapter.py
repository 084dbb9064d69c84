"""The torsions domain: backbone (φ, ψ) of a peptide on the torus T², conditioned on temperature.

State: (φ, ψ) in radians on ``TorusSpace`` [B, 2] (variance-exploding torus diffusion, wrapped-normal ε target;
Jing et al. 2022), carrying each frame's temperature through ``Space.with_temperature`` with the reduced
temperature τ = T / ``reference_temperature`` (default 300 K): with ``prior: thermo`` (default) the noise is
σ_t √τ (the thermodynamic-map trick of Herron et al., PNAS 2024, as the core builds it), with ``prior: unit`` τ is
only a network input (the ablation). ``geometry: euclidean`` is the DDPM_REMD ablation (Wang, Herron & Tiwary,
PNAS 2022): angles min-max scaled to [−1, 1) as plain numbers in a ``DenseSpace`` (no periodicity; decoded by
x·180° wrapped), trained with a VP schedule (give ``schedule:`` in the config, e.g. linear).
Backbone: ``TorsionNet`` (residual MLP on Fourier features of the angles). Metrics (``evaluate``): per sampled
temperature, JS to the data's 36 × 36 histogram at that temperature (where the data has it) and basin populations
and ΔG(α_L − C7eq) (``metrics``).

Options (``data:``): ``path`` (a parallel-tempering folder/.tar.gz, a ``.npz``/``.csv`` of phi/psi/temperature, or
a trajectory mdtraj reads; default the committed subset ``tests/data/ala2_pt_subset.npz``), ``topology`` and
``temperature`` (K) for a trajectory, ``temperatures`` (train only on these K values of the file), ``prior``
(``thermo`` | ``unit``), ``geometry`` (``torus`` | ``euclidean``), ``reference_temperature`` (K),
``val_fraction`` (the last fraction of each temperature's frames, in time order; default 0.1).

Condition: ``temperature`` in K (one value or one per sample; ``sciddpm sample --temperature 300,320,340``);
default: the training temperatures in turn.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset, default_collate

from sciddpm.domain import Domain, constructor_keys
from sciddpm.outputs import atomic_path, require_suffix
from sciddpm.schedules import NoiseSchedule, VESchedule
from sciddpm.spaces import DenseSpace, Space, TorusSpace, wrap_angle

from .backbone import TorsionNet
from .data import Torsions, load_torsions

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "tests" / "data" / "ala2_pt_subset.npz"
PRIORS, GEOMETRIES = ("thermo", "unit"), ("torus", "euclidean")


class TorsionsDomain(Domain):
    """(φ, ψ) on T² with a per-sample temperature (see the module docstring)."""

    name = "torsions"
    #: VE torus diffusion: σ from 0.01 to 2π (the marginal at 2π√τ, τ ≥ 0.9, is uniform to TV < 1e-8).
    default_schedule: dict[str, Any] = {"type": "ve", "sigma_min": 0.01, "sigma_max": 2 * math.pi}
    sample_suffix = ".npz"
    sample_suffixes = (".npz", ".csv")
    min_eval_samples = 2

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.prior = str(self.options.get("prior", "thermo"))
        self.geometry = str(self.options.get("geometry", "torus"))
        if self.prior not in PRIORS:
            raise ValueError(f"torsions option 'prior' must be one of {PRIORS}, got {self.prior!r}")
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"torsions option 'geometry' must be one of {GEOMETRIES}, got {self.geometry!r}")
        self.t_ref = float(self.options.get("reference_temperature", 300.0))
        if not (math.isfinite(self.t_ref) and self.t_ref > 0):
            raise ValueError(f"torsions option 'reference_temperature' must be > 0 K, got {self.t_ref}")
        self.train_temperatures: Tensor | None = None
        self._cache: dict[str, TensorDataset] = {}
        self._data: Torsions | None = None

    # -- data -------------------------------------------------------------------------------------
    def all_frames(self, options: dict[str, Any] | None = None) -> Torsions:
        """Every frame of the data file (all its temperatures), cached."""
        options = self.options if options is None else options
        if self._data is None:
            self._data = load_torsions(options.get("path", DEFAULT_PATH), options.get("topology"),
                                       options.get("temperature"))
        return self._data

    def encode(self, phi_deg: np.ndarray, psi_deg: np.ndarray) -> Tensor:
        """Degrees → the model's state: radians wrapped to (−π, π] (torus) or angle/180° ∈ [−1, 1) (euclidean)."""
        x = torch.from_numpy(np.stack([phi_deg, psi_deg], axis=1)).to(torch.float64)
        return (wrap_angle(torch.deg2rad(x)) if self.geometry == "torus" else x / 180.0).to(torch.float32)

    def _split(self, options: dict[str, Any], split: str) -> TensorDataset:
        key = f"{split}:{options.get('temperatures')}"
        if key not in self._cache:
            data = self.all_frames(options)
            wanted = options.get("temperatures")
            temps = data.temperatures if wanted is None else np.atleast_1d(np.asarray(wanted, dtype=np.float64))
            missing = [float(t) for t in temps if not np.isclose(data.temperatures, t, atol=1e-3).any()]
            if missing:
                raise ValueError(f"{options.get('path', DEFAULT_PATH)}: no frames at temperature {missing[0]} K "
                                 f"(has {np.round(data.temperatures, 3).tolist()})")
            frac = float(options.get("val_fraction", 0.1))
            if not 0.0 < frac < 1.0:
                raise ValueError(f"torsions option 'val_fraction' must be in (0, 1), got {frac}")
            xs, ts, used = [], [], []
            for t in temps:
                frames = data.at(float(data.temperatures[np.argmin(np.abs(data.temperatures - t))]))
                n_val = max(1, int(round(len(frames.phi) * frac)))
                if len(frames.phi) <= n_val:
                    raise ValueError(f"{options.get('path', DEFAULT_PATH)}: {len(frames.phi)} frames at {t} K, too few to split")
                sl = slice(None, -n_val) if split == "train" else slice(-n_val, None)
                xs.append(self.encode(frames.phi[sl], frames.psi[sl]))
                ts.append(torch.from_numpy(frames.temperature[sl].copy()))
                used.append(float(frames.temperature[0]))
            if split == "train":
                self.train_temperatures = torch.tensor(sorted(used), dtype=torch.float64)
            self._cache[key] = TensorDataset(torch.cat(xs), torch.cat(ts))
        return self._cache[key]

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._split(options, "train")

    def val_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._split(options, "val")

    def collate(self, items: list[Any]) -> tuple[Tensor, Tensor]:
        """(x₀ [B, 2] float32, T [B] float64 in K)."""
        return tuple(default_collate(items))

    # -- model ------------------------------------------------------------------------------------
    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        """``TorsionNet`` (periodic Fourier features on the torus, raw coordinates for ``geometry: euclidean``).
        Torus diffusion is variance exploding: a torus model needs a VE schedule (ValueError otherwise)."""
        if self.geometry == "torus" and schedule is not None and not isinstance(schedule, VESchedule):
            raise ValueError(f"torsions geometry 'torus' needs a VE schedule (type: ve), got {schedule.config()}")
        return TorsionNet(2, **config, periodic=self.geometry == "torus", schedule=schedule)

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...]:
        return constructor_keys(TorsionNet, exclude=("angles", "periodic"))

    def data_keys(self) -> tuple[str, ...]:
        return ("path", "topology", "temperature", "temperatures", "prior", "geometry", "reference_temperature",
                "val_fraction")

    def _space(self, n: int, temperature: Tensor, device: Any = "cpu") -> Space:
        base = DenseSpace((n, 2), device=device)
        space = TorusSpace(base) if self.geometry == "torus" else base
        return space.with_temperature(temperature.to(torch.float64) / self.t_ref, prior=self.prior == "thermo")

    def space_for(self, batch: Any) -> Space:
        """The batch's space carrying τ = T / reference_temperature (noise variance τ with ``prior: thermo``)."""
        x, temperature = batch
        return self._space(len(x), temperature.to(x.device), x.device)

    def state_from(self, batch: Any) -> Tensor:
        return batch[0]

    def condition_keys(self) -> tuple[str, ...]:
        return ("temperature",)

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> Space:
        """n samples at the given temperatures in K (default: the training temperatures in turn)."""
        given = self.check_conditions(conditions)
        if given.get("temperature") is None:
            if self.train_temperatures is None:
                raise ValueError("condition 'temperature' (K) is required (the model has no training temperatures)")
            temperature = self.train_temperatures[torch.arange(n) % len(self.train_temperatures)]
        else:
            temperature = torch.as_tensor(given["temperature"], dtype=torch.float64).reshape(-1)
            if temperature.numel() not in (1, n):
                raise ValueError(f"condition 'temperature' holds {temperature.numel()} values for {n} samples")
            if not (torch.isfinite(temperature).all() and (temperature > 0).all()):
                raise ValueError("condition 'temperature' must be finite and > 0 K")
        return self._space(n, temperature.expand(n).clone())

    def state_tensors(self) -> dict[str, Tensor]:
        if self.train_temperatures is None:
            raise ValueError("the torsions domain has no training temperatures yet: load its training data first")
        return {"train_temperatures": self.train_temperatures, "reference_temperature": torch.tensor(self.t_ref)}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.train_temperatures = tensors["train_temperatures"].to(torch.float64)
        self.t_ref = float(tensors["reference_temperature"])

    # -- output -----------------------------------------------------------------------------------
    def decode(self, samples: Tensor, space: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(φ, ψ in degrees wrapped to [−180, 180), T in K) of generated samples [n, 2] in ``space``."""
        if space is None or "temperature" not in getattr(space, "condition", {}):
            raise ValueError("torsion samples need their space (it carries each sample's temperature)")
        x = samples.detach().cpu().to(torch.float64)
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"torsion samples must have shape [n, 2], got {tuple(x.shape)}")
        deg = torch.rad2deg(x) if self.geometry == "torus" else 180.0 * x
        deg = ((deg + 180.0) % 360.0 - 180.0).numpy()
        return deg[:, 0], deg[:, 1], space.condition["temperature"].detach().cpu().numpy() * self.t_ref

    def write_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        """``.npz`` (``phi``, ``psi`` in degrees, ``temperature`` in K) or ``.csv`` (header phi,psi,temperature),
        sorted by temperature; ``sciddpm.domains.torsions.data.load_angles`` reads both."""
        path = Path(path)
        require_suffix(path, self.sample_suffixes)
        phi, psi, temperature = self.decode(samples, space)
        order = np.argsort(temperature, kind="stable")
        phi, psi, temperature = phi[order], psi[order], temperature[order]
        with atomic_path(path) as tmp, open(tmp, "wb" if path.suffix == ".npz" else "w", newline=None if path.suffix == ".npz" else "") as fh:
            if path.suffix == ".npz":
                np.savez_compressed(fh, phi=phi, psi=psi, temperature=temperature)
            else:
                writer = csv.writer(fh)
                writer.writerow(["phi", "psi", "temperature"])
                writer.writerows(zip(phi.round(4).tolist(), psi.round(4).tolist(), temperature.round(4).tolist()))

    def _reference(self, temperature: float) -> Torsions | None:
        """The data's frames at ``temperature`` (None if the data has none there or cannot be read)."""
        try:
            data = self.all_frames()
        except ValueError:
            return None
        near = np.isclose(data.temperatures, temperature, atol=1e-3)
        return data.at(float(data.temperatures[near][0])) if near.any() else None

    def plot_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        """Ramachandran free-energy panels −ln P(φ, ψ) (kT) per sampled temperature (at most 6), the data at the
        same temperature beneath where the data file has it."""
        from .plots import free_energy_panels

        phi, psi, temperature = self.decode(samples, space)
        temps = np.unique(temperature)
        temps = temps[np.linspace(0, len(temps) - 1, min(6, len(temps))).round().astype(int)]
        rows: dict[str, list[tuple[str, np.ndarray, np.ndarray] | None]] = {"model": [], "data": []}
        for t in temps:
            keep = temperature == t
            rows["model"].append((f"{t:.0f} K", phi[keep], psi[keep]))
            ref = self._reference(float(t))
            rows["data"].append(None if ref is None else (f"{t:.0f} K", ref.phi, ref.psi))
        if not any(rows["data"]):
            del rows["data"]
        free_energy_panels(path, rows)

    def evaluate(self, samples: Tensor, space: Any = None) -> dict[str, float]:
        """Averaged over the sampled temperatures: basin populations and ΔG(α_L − C7eq) (kT); where the data file
        has frames at a sampled temperature, the JS (nats) of the 36 × 36 histograms to them, the data's own
        half-vs-half noise floor, and |ΔG − ΔG_data|."""
        from .metrics import basin_stats, histogram, js_divergence, noise_floor

        self.check_eval_count(len(samples))
        phi, psi, temperature = self.decode(samples, space)
        out: dict[str, list[float]] = {}
        for t in np.unique(temperature):
            keep = temperature == t
            s = basin_stats(phi[keep], psi[keep], n_boot=100)
            for k, v in s.population.items():
                out.setdefault(f"population_{k}", []).append(v)
            out.setdefault("dg_alphaL_C7eq", []).append(s.dg_alphaL_C7eq)
            ref = self._reference(float(t))
            if ref is not None:
                out.setdefault("js", []).append(js_divergence(histogram(phi[keep], psi[keep]), histogram(ref.phi, ref.psi)))
                out.setdefault("js_noise_floor", []).append(noise_floor(ref.phi, ref.psi))
                r = basin_stats(ref.phi, ref.psi, n_boot=2)
                out.setdefault("dg_abs_error", []).append(abs(s.dg_alphaL_C7eq - r.dg_alphaL_C7eq))
        res = {"n_samples": float(len(phi)), "n_temperatures": float(len(np.unique(temperature)))}
        for k, v in out.items():
            finite = [x for x in v if math.isfinite(x)]
            res[k] = float(np.mean(finite)) if finite else float("nan")
        return res
