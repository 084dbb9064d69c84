"""Ising physics against exact answers: Kaufman's finite-lattice solution against enumeration of all 2^16 states
at L = 4 and against finite differences of its own ln Z; Wolff + Metropolis MC against Kaufman within error bars;
metrics (bootstrap, peak fit, Binder crossing) on known inputs; lattice files' one-line errors."""
from __future__ import annotations

import numpy as np
import pytest

from sciddpm.domains.ising.data import (energy, integrated_autocorrelation_time, load_lattices, magnetisation,
                                        metropolis_sweep, save_lattices, simulate, wolff_update)
from sciddpm.domains.ising.exact import ONSAGER_TC, brute_force, heat_capacity_peak, kaufman
from sciddpm.domains.ising.metrics import binder_crossing, observables, peak_temperature

TEMPS = np.array([0.4, 1.0, 1.5, 2.0, ONSAGER_TC, 2.3, 3.0, 5.0, 50.0])


@pytest.mark.parametrize("L", [2, 3, 4])
def test_kaufman_equals_enumeration(L: int) -> None:
    """ln Z/N, ⟨E⟩/N and C/N equal the sums over all 2^(L²) states to 1e-10 (at T_c exactly too)."""
    a, b = kaufman(TEMPS, L), brute_force(TEMPS, L)
    for name in ("log_z_per_spin", "energy_per_spin", "heat_capacity_per_spin"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-10, atol=1e-12, err_msg=name)


def test_kaufman_derivatives_equal_finite_differences() -> None:
    """⟨E⟩ = −∂ln Z/∂β and C = β²∂²ln Z/∂β² against central differences of ln Z at L = 16 and 32: step 1e-5 for
    the first derivative (truncation ~h² f‴/6 ≈ 1e-9 relative); for the second, Richardson's extrapolation of the
    steps 2e-3 and 1e-3 (truncation O(h⁴); rounding of ln Z ≈ 5e-13 over h² ≈ 1e-6 absolute, 1e-9 per spin)."""
    for L in (16, 32):
        T = np.array([1.2, 2.0, 2.3, 2.5, 3.5])
        beta, N = 1 / T, L * L

        def log_z(h: float) -> list[np.ndarray]:
            return [kaufman(1 / (beta + k * h), L).log_z_per_spin * N for k in (-1, 0, 1)]

        ex = kaufman(T, L)
        f = log_z(1e-5)
        np.testing.assert_allclose(ex.energy_per_spin, -(f[2] - f[0]) / 2e-5 / N, rtol=1e-8)
        d2 = [(lambda f: (f[2] - 2 * f[1] + f[0]) / h**2)(log_z(h)) for h in (2e-3, 1e-3)]
        richardson = (4 * d2[1] - d2[0]) / 3  # O(h⁴)
        np.testing.assert_allclose(ex.heat_capacity_per_spin, beta**2 * richardson / N, rtol=1e-6)


def test_exact_limits_and_peak() -> None:
    """Ground state E/N → −2, C → 0 at low T; E/N → 0 at high T; the finite-L C peak lies above Onsager's T_c and
    approaches it as L grows (Ferdinand & Fisher 1969)."""
    ex = kaufman([0.2, 1000.0], 16)
    assert abs(ex.energy_per_spin[0] + 2) < 1e-8 and ex.heat_capacity_per_spin[0] < 1e-8
    assert abs(ex.energy_per_spin[1]) < 5e-3
    p8, p16, p32 = (heat_capacity_peak(L) for L in (8, 16, 32))
    assert p8 > p16 > p32 > ONSAGER_TC
    c = kaufman([p16 - 1e-3, p16, p16 + 1e-3], 16).heat_capacity_per_spin
    assert c[1] > c[0] and c[1] > c[2]


@pytest.mark.parametrize("T", [1.5, 2.3, 4.0])
def test_monte_carlo_matches_kaufman_within_errors(T: float) -> None:
    """Wolff + Metropolis at L = 8: ⟨E⟩/N and C/N within 4 bootstrap errors of the exact values, and decorrelated
    frames (τ_int of |M| and E below 1 frame)."""
    run = simulate(8, T, 3000, chains=32, seed=11)
    obs = observables(run.spins, np.full(len(run.spins), T), n_boot=200)
    ex = kaufman(T, 8)
    assert abs(obs.value["energy"][0] - ex.energy_per_spin[0]) < 4 * obs.error["energy"][0]
    assert abs(obs.value["heat_capacity"][0] - ex.heat_capacity_per_spin[0]) < 4 * obs.error["heat_capacity"][0]
    assert run.tau_abs_m < 1.0 and run.tau_energy < 1.0


def test_updates_keep_spins_and_detailed_balance_sanity() -> None:
    """Updates keep ±1 int8 lattices; at β → ∞ Metropolis never raises the energy; a Wolff cluster at β = 0 is one
    site (p_add = 0) and at β → ∞ in an ordered lattice is the whole lattice."""
    rng = np.random.default_rng(0)
    s = rng.choice(np.array([-1, 1], dtype=np.int8), (5, 8, 8))
    e0 = energy(s)
    metropolis_sweep(s, np.full(5, 1e6), rng)
    assert s.dtype == np.int8 and np.isin(s, (-1, 1)).all() and (energy(s) <= e0).all()
    sizes = wolff_update(s, np.zeros(5), rng)
    assert (sizes == 1).all()
    ordered = np.ones((3, 8, 8), dtype=np.int8)
    assert (wolff_update(ordered, np.full(3, 50.0), rng) == 64).all() and (magnetisation(ordered) == -64).all()


def test_autocorrelation_time_of_known_series() -> None:
    """τ_int of white noise is ½; of an AR(1) series with coefficient a it is ½(1 + a)/(1 − a) (= 4.5 for a = 0.8)."""
    rng = np.random.default_rng(0)
    assert abs(integrated_autocorrelation_time(rng.standard_normal((8, 20000))) - 0.5) < 0.05
    z = rng.standard_normal((8, 40000))
    x = np.zeros_like(z)
    for i in range(1, z.shape[1]):
        x[:, i] = 0.8 * x[:, i - 1] + z[:, i]
    assert abs(integrated_autocorrelation_time(x) - 4.5) < 0.4


def test_peak_fit_and_binder_crossing_on_known_curves() -> None:
    """A noiseless parabola's vertex is found off the grid; two lines' crossing is located exactly."""
    T = np.linspace(1.0, 4.0, 31)
    c = 1.5 - 2.0 * (T - 2.317) ** 2
    tc, err = peak_temperature(T, c)
    assert abs(tc - 2.317) < 1e-10 and np.isnan(err)
    for cross in (2.3, 2.317):  # on a grid point and between two
        assert abs(binder_crossing(T, 0.6 - 0.1 * (T - cross), 0.6 - 0.3 * (T - cross)) - cross) < 1e-12
    assert np.isnan(binder_crossing(T, T, T + 1))


def test_binder_cumulant_limits() -> None:
    """U₄ = 2/3 for an ordered phase (|m| = 1) and ≈ 0 for Gaussian m (infinite temperature)."""
    up = np.ones((50, 4, 4), dtype=np.int8)
    up[25:] *= -1
    assert abs(observables(up, 1.0).value["binder"][0] - 2 / 3) < 1e-12
    rng = np.random.default_rng(1)
    hot = observables(rng.choice(np.array([-1, 1], dtype=np.int8), (4000, 16, 16)), 1e3)
    assert abs(hot.value["binder"][0]) < 4 * hot.error["binder"][0] + 0.02


def test_lattice_files_round_trip_and_one_line_errors(tmp_path) -> None:
    path = tmp_path / "ok.npz"
    spins = np.ones((3, 4, 4), dtype=np.int8)
    save_lattices(path, spins, 2.0, note=np.arange(2))
    s, t, extra = load_lattices(path)
    assert s.dtype == np.int8 and (t == 2.0).all() and list(extra) == ["note"]
    cases = {"values.npz": (dict(spins=np.zeros((2, 4, 4)), temperature=[1.0, 1.0]), "only -1 and \\+1"),
             "shape.npz": (dict(spins=np.ones((2, 4, 5)), temperature=1.0), r"shape \[n, L, L\]"),
             "flat.npz": (dict(spins=np.ones(16), temperature=1.0), r"shape \[n, L, L\]"),
             "temp.npz": (dict(spins=np.ones((2, 4, 4)), temperature=[1.0, -2.0]), "> 0"),
             "count.npz": (dict(spins=np.ones((2, 4, 4)), temperature=[1.0, 2.0, 3.0]), "3 values for 2"),
             "missing.npz": (dict(spins=np.ones((2, 4, 4))), "missing array 'temperature'")}
    for name, (arrays, match) in cases.items():
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(ValueError, match=match) as err:
            load_lattices(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(ValueError, match="not found"):
        load_lattices(tmp_path / "nope.npz")
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="junk.npz"):
        load_lattices(tmp_path / "junk.npz")
