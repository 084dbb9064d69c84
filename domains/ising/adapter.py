"""The Ising domain: thermodynamic maps of the 2-D Ising model (Herron, Mondal, Schneider & Tiwary, PNAS 2024).

State: one L × L periodic lattice of dequantised spins, x₀ = s + δ·z (s = ±1, z ~ N(0, 1) drawn afresh for every
batch, δ = ``dequant_std``), shape [B, 1, L, L] in a ``DenseSpace``; samples are decoded as sign(x) (``evaluate``
reports the fraction with |x| < 0.5, where the sign is ambiguous). Each sample carries its temperature T
(``Space.with_temperature``): with ``prior: thermo`` (default) the forward process relaxes it to N(0, T I), the
thermodynamic-map trick, and with ``prior: unit`` it has unit noise (the ablation); either way the network sees T
as a constant input channel (the UNet's ``cond_image``), as in the paper.
Backbone: the images UNet (``sciddpm.domains.images.backbone.UNet``) with ``padding_mode = "circular"``, so it
respects the lattice's periodic translations (exactly for shifts by multiples of its deepest stride).
Metrics: per temperature ⟨E⟩/N, ⟨|M|⟩/N, C/N, χ/N, U₄ (``metrics.observables``) against Kaufman's exact ⟨E⟩/N and
C/N (``exact.kaufman``), and T_c from the fitted heat-capacity peak against the exact finite-L peak.

Options (``data:``): ``path`` (lattice ``.npz``: ``spins`` [n, L, L] of ±1 and ``temperature`` [n]; default the
committed L = 8 subset ``tests/data/ising_L8_subset.npz``), ``temperatures`` (train only on these T of the file;
default all), ``prior`` (``thermo`` | ``unit``), ``dequant_std`` (default 0.1), ``val_fraction`` (default 0.1),
``split_seed``, ``plot_mc_frames`` (Wolff frames per T behind ``plot_samples``' MC curve; 0: none; default 200).

Condition (``sample(conditions=...)``, ``sciddpm sample --temperature LO:HI:STEP`` or ``--condition
temperature=...``): ``temperature``, one value or n values > 0; default: the training temperatures in turn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from sciddpm.domain import Domain, constructor_keys
from sciddpm.outputs import atomic_path, require_suffix
from sciddpm.network_time import refuse_raw_time_config, require_schedule
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import DenseSpace, Space

from ..images.backbone import UNet
from .data import check_lattices, load_lattices

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "tests" / "data" / "ising_L8_subset.npz"
#: The default (CPU-sized) lattice UNet: 3 levels (L, L/2, L/4), one res block each, no attention.
SMALL_LATTICE_UNET: dict[str, Any] = {"model_channels": 32, "channel_mult": [1, 2, 2], "num_res_blocks": 1,
                                      "attention_resolutions": [], "dropout": 0.0, "norm_groups": 8}
PRIORS = ("thermo", "unit")


class IsingDomain(Domain):
    """Dequantised Ising lattices [B, 1, L, L] with a per-sample temperature (see the module docstring)."""

    name = "ising"
    sample_suffix = ".npz"
    sample_suffixes = (".npz",)

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.prior = str(self.options.get("prior", "thermo"))
        if self.prior not in PRIORS:
            raise ValueError(f"ising option 'prior' must be one of {PRIORS}, got {self.prior!r}")
        self.dequant_std = float(self.options.get("dequant_std", 0.1))
        if not 0.0 <= self.dequant_std < 0.5:
            raise ValueError(f"ising option 'dequant_std' must be in [0, 0.5), got {self.dequant_std}")
        self._cache: dict[str, TensorDataset] = {}
        self.size: int | None = None
        self.train_temperatures: Tensor | None = None

    # -- data -------------------------------------------------------------------------------------
    def _split(self, options: dict[str, Any], split: str) -> TensorDataset:
        path = Path(options.get("path", DEFAULT_PATH))
        key = f"{split}:{path}:{options.get('temperatures')}"
        if key not in self._cache:
            spins, temperature, _ = load_lattices(path)
            wanted = options.get("temperatures")
            if wanted is not None:
                wanted = np.atleast_1d(np.asarray(wanted, dtype=np.float64))
                missing = [float(t) for t in wanted if not np.isclose(temperature, t).any()]
                if missing:
                    raise ValueError(f"{path}: no lattices at temperature {missing[0]} (has {sorted(set(temperature))})")
                keep = np.isclose(temperature[:, None], wanted[None]).any(1)
                spins, temperature = spins[keep], temperature[keep]
            rng = np.random.default_rng(int(options.get("split_seed", 0)))
            val = np.zeros(len(spins), dtype=bool)
            for t in np.unique(temperature):  # the same fraction held out at every temperature
                idx = np.flatnonzero(temperature == t)
                val[rng.permutation(idx)[: max(1, int(len(idx) * float(options.get("val_fraction", 0.1))))]] = True
            sel = ~val if split == "train" else val
            self.size = spins.shape[-1]
            if split == "train":
                self.train_temperatures = torch.tensor(np.unique(temperature[sel]), dtype=torch.float64)
            self._cache[key] = TensorDataset(torch.from_numpy(spins[sel]).float().unsqueeze(1),
                                             torch.from_numpy(temperature[sel]))
        return self._cache[key]

    def train_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._split(options, "train")

    def val_dataset(self, options: dict[str, Any]) -> TensorDataset:
        return self._split(options, "val")

    def collate(self, items: list[Any]) -> tuple[Tensor, Tensor]:
        """(x₀ = s + δ z with fresh z ~ N(0, 1) from torch's generator [B, 1, L, L], T [B] float64)."""
        spins = torch.stack([it[0] for it in items])
        return spins + self.dequant_std * torch.randn_like(spins), torch.stack([it[1] for it in items])

    # -- model ------------------------------------------------------------------------------------
    def _lattice_size(self) -> int:
        if self.size is None:
            raise ValueError("the ising domain has no lattice size yet: load its training data first")
        return self.size

    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        """The images UNet (over ``SMALL_LATTICE_UNET``) with circular padding, one input channel and T as a
        constant conditioning channel, reading t through ``schedule.c_noise`` (required)."""
        refuse_raw_time_config(config, "ising backbone")
        cfg = {**SMALL_LATTICE_UNET, **config, "in_channels": 1, "cond_channels": 1,
               "image_size": self._lattice_size(), "padding_mode": "circular"}
        return UNet(**cfg, schedule=require_schedule(schedule, "IsingDomain.build_backbone"))

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...]:
        return constructor_keys(UNet, exclude=("in_channels", "cond_channels", "image_size", "padding_mode",
                                               "num_classes", "out_channels"))

    def data_keys(self) -> tuple[str, ...]:
        return ("path", "temperatures", "prior", "dequant_std", "val_fraction", "split_seed", "plot_mc_frames")

    def _space(self, shape: tuple[int, ...], temperature: Tensor, device: Any = "cpu") -> Space:
        return DenseSpace(shape, device=device).with_temperature(temperature, prior=self.prior == "thermo")

    def space_for(self, batch: Any) -> Space:
        """The lattices' space carrying their temperatures (prior variance T with ``prior: thermo``)."""
        x, temperature = batch
        return self._space(tuple(x.shape), temperature.to(x.device), x.device)

    def state_from(self, batch: Any) -> Tensor:
        return batch[0]

    def network_condition(self, space: Any) -> dict[str, Any]:
        """{"cond_image": T as a constant [B, 1, L, L] channel}."""
        temperature = space.condition["temperature"]
        return {"cond_image": space.broadcast(temperature).to(torch.float32).expand(space.shape)}

    def condition_keys(self) -> tuple[str, ...]:
        return ("temperature",)

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> Space:
        """n lattices [n, 1, L, L] at the given temperatures (default: the training temperatures in turn)."""
        given = self.check_conditions(conditions)
        L = self._lattice_size()
        if given.get("temperature") is None:
            if self.train_temperatures is None:
                raise ValueError("condition 'temperature' is required (the model has no training temperatures)")
            temperature = self.train_temperatures[torch.arange(n) % len(self.train_temperatures)]
        else:
            temperature = torch.as_tensor(given["temperature"], dtype=torch.float64).reshape(-1)
            if temperature.numel() not in (1, n):
                raise ValueError(f"condition 'temperature' holds {temperature.numel()} values for {n} samples")
        return self._space((n, 1, L, L), temperature.expand(n).clone())

    def state_tensors(self) -> dict[str, Tensor]:
        return {"size": torch.tensor(self._lattice_size()), "train_temperatures": self.train_temperatures}

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.size = int(tensors["size"])
        self.train_temperatures = tensors["train_temperatures"].to(torch.float64)

    # -- output -----------------------------------------------------------------------------------
    @staticmethod
    def decode(samples: Tensor, space: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(spins = sign(x) int8 [n, L, L] (0 → +1), x float32 [n, L, L], temperature [n]) of generated samples."""
        if space is None or "temperature" not in getattr(space, "condition", {}):
            raise ValueError("ising samples need their space (it carries each sample's temperature)")
        x = samples.detach().cpu().float().numpy()[:, 0]
        spins = np.where(x < 0, -1, 1).astype(np.int8)
        return spins, x, space.condition["temperature"].detach().cpu().numpy()

    def write_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        """``path``: an ``.npz`` lattice file (``spins`` = sign(x) int8, ``temperature``, and the raw ``x``),
        grouped by temperature: ``sciddpm.domains.ising.data.load_lattices`` reads it."""
        require_suffix(path, self.sample_suffixes)
        spins, x, temperature = self.decode(samples, space)
        order = np.argsort(temperature, kind="stable")
        spins, temperature = check_lattices(spins[order], temperature[order], str(path))
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, spins=spins, temperature=temperature, x=x[order].astype(np.float32))

    def plot_samples(self, path: Path, samples: Tensor, space: Any = None) -> None:
        """Observables vs T of the samples beside Kaufman's exact ⟨E⟩, C and a short Wolff MC at the same T
        (``plot_mc_frames`` per T), plus the first configurations."""
        from .data import simulate
        from .metrics import observables, plot_observables

        spins, _, temperature = self.decode(samples, space)
        series = {"model": observables(spins, temperature)}
        frames = int(self.options.get("plot_mc_frames", 200))
        if frames > 0:
            runs = [simulate(spins.shape[-1], float(t), frames, seed=i) for i, t in enumerate(np.unique(temperature))]
            series[f"Wolff MC ({frames}/T)"] = observables(np.concatenate([r.spins for r in runs]),
                                                           np.repeat([r.temperature for r in runs], frames))
        plot_observables(path, series, spins.shape[-1], examples=(spins, temperature))

    def evaluate(self, samples: Tensor, space: Any = None) -> dict[str, float]:
        """Errors of ⟨E⟩/N and C/N against Kaufman's exact values (mean |error| over the sampled temperatures, and
        the largest in units of the bootstrap error), ⟨|M|⟩/N and U₄ averaged over T, the fraction of ambiguous spins
        (|x| < 0.5) and, with ≥ 3 temperatures, T_c from the fitted C peak beside the exact finite-L peak."""
        from .exact import heat_capacity_peak, kaufman
        from .metrics import ambiguous_fraction, observables, peak_temperature

        spins, x, temperature = self.decode(samples, space)
        obs = observables(spins, temperature)
        L = spins.shape[-1]
        ex = kaufman(obs.temperature, L)
        de = obs.value["energy"] - ex.energy_per_spin
        dc = obs.value["heat_capacity"] - ex.heat_capacity_per_spin
        with np.errstate(divide="ignore", invalid="ignore"):
            z_e = np.abs(de) / obs.error["energy"]
        out = {"n_samples": float(len(spins)), "n_temperatures": float(len(obs.temperature)),
               "ambiguous_fraction": ambiguous_fraction(x), "energy_abs_error": float(np.abs(de).mean()),
               "energy_max_error_in_se": float(np.nanmax(z_e)) if np.isfinite(z_e).any() else float("nan"),
               "heat_capacity_abs_error": float(np.abs(dc).mean()), "abs_m_mean": float(obs.value["abs_m"].mean()),
               "binder_mean": float(np.nanmean(obs.value["binder"])) if np.isfinite(obs.value["binder"]).any()
               else float("nan")}
        if len(obs.temperature) >= 3:
            tc, tc_err = peak_temperature(obs.temperature, obs.value["heat_capacity"], obs.error["heat_capacity"],
                                          obs.replicates["heat_capacity"])
            out.update({"tc_heat_capacity_peak": tc, "tc_error": tc_err, "tc_exact_finite_L": heat_capacity_peak(L)})
        return out
