"""The physics baseline: MBAR (Shirts & Chodera, J. Chem. Phys. 129:124105, 2008) reweighting of frames sampled at
several temperatures to a target temperature, through ``pymbar`` (imported here only, never by the core).

For frames n from K states with reduced potentials u_k(x) = β_k U(x) (β_k = 1/(k_B T_k), U the potential energy),
MBAR solves f_k = −ln Σ_n exp(−u_k(x_n)) / Σ_l N_l exp(f_l − u_l(x_n)); the weight of frame n at a new
temperature T is w_n ∝ exp(−β U(x_n)) / Σ_l N_l exp(f_l − u_l(x_n)) (Shirts & Chodera 2008, eqs. 11 and 15).
The effective sample size of the reweighted set is Kish's n_eff = (Σ w)² / Σ w² (Kish 1965; as used for MBAR by
Shirts & Chodera). Energies in kcal/mol, k_B in kcal/(mol K) as pymbar's parallel-tempering example uses."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning
from scipy.special import logsumexp

#: Boltzmann's constant in kcal/(mol K) (CODATA k_B N_A / 4184 J/kcal).
KB_KCAL = 1.380649e-23 * 6.02214076e23 / 4184.0


@dataclass
class MBARFit:
    """A solved MBAR over the training frames: ``beta`` [K] (mol/kcal), ``n_k`` [K] frames per state, ``f_k`` [K]
    dimensionless free energies, ``energy`` [N] pooled potential energies (kcal/mol) in the order ``order`` [N]
    (indices into the frames as given: frames grouped by state, as pymbar needs; align angles with it)."""

    beta: np.ndarray
    n_k: np.ndarray
    f_k: np.ndarray
    energy: np.ndarray
    order: np.ndarray

    def log_weights(self, temperature: float) -> np.ndarray:
        """ln w_n at ``temperature`` (K), normalised so Σ w = 1 (eq. 15 of Shirts & Chodera 2008)."""
        beta = 1.0 / (KB_KCAL * temperature)
        log_denominator = logsumexp(np.log(self.n_k)[:, None] + self.f_k[:, None] - self.beta[:, None] * self.energy[None],
                                    axis=0)
        lw = -beta * self.energy - log_denominator
        return lw - logsumexp(lw)

    def weights(self, temperature: float) -> tuple[np.ndarray, float]:
        """(w_n normalised to Σ w = 1, Kish effective sample size (Σ w)² / Σ w²) at ``temperature``."""
        w = np.exp(self.log_weights(temperature))
        return w, float(1.0 / np.sum(w ** 2))


def fit_mbar(energy: np.ndarray, temperature: np.ndarray) -> MBARFit:
    """Solve MBAR (pymbar 4, ``solver_protocol='robust'``) for frames with potential energies ``energy`` [N]
    (kcal/mol) drawn at ``temperature`` [N] (K; the distinct values are the states)."""
    import pymbar

    energy, temperature = np.asarray(energy, np.float64), np.asarray(temperature, np.float64)
    if energy.shape != temperature.shape or energy.ndim != 1 or not np.isfinite(energy).all():
        raise ValueError(f"fit_mbar: energy must be finite and match temperature, got {energy.shape} vs {temperature.shape}")
    states, state_of = np.unique(temperature, return_inverse=True)
    order = np.argsort(state_of, kind="stable")  # pymbar wants frames grouped by the state that sampled them
    energy = energy[order]
    beta = 1.0 / (KB_KCAL * states)
    n_k = np.bincount(state_of, minlength=len(states))
    with warnings.catch_warnings():  # pymbar 4.0.3 hands scipy a 'verbose' option its fallback solvers do not know
        warnings.filterwarnings("ignore", message="Unknown solver options", category=OptimizeWarning)
        mbar = pymbar.MBAR(beta[:, None] * energy[None], n_k, solver_protocol="robust")
    return MBARFit(beta, n_k.astype(np.float64), np.asarray(mbar.f_k, np.float64), energy, order)
