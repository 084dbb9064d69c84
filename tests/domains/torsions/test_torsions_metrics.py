"""Ramachandran metrics and MBAR against exact answers: JS bounds, the basin partition, ΔG, block bootstrap,
and MBAR reweighting of harmonic-oscillator energies across temperatures (⟨U⟩ = k_B T / 2 per degree of freedom)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from sciddpm.domains.torsions.mbar import KB_KCAL, fit_mbar
from sciddpm.domains.torsions.metrics import (BASIN_NAMES, basin_index, basin_stats, histogram, js_divergence,
                                              noise_floor)


def test_js_divergence_exact_values() -> None:
    p = np.array([0.5, 0.5, 0.0, 0.0])
    q = np.array([0.0, 0.0, 0.5, 0.5])
    assert js_divergence(p, p) == 0.0
    assert js_divergence(p, q) == pytest.approx(math.log(2), abs=1e-12)
    r = np.array([0.25, 0.25, 0.25, 0.25])  # m = (3/8, 3/8, 1/8, 1/8)
    want = 0.5 * (2 * 0.5 * math.log(0.5 / 0.375)) + 0.5 * (2 * 0.25 * math.log(0.25 / 0.375) + 2 * 0.25 * math.log(2))
    assert js_divergence(p, r) == pytest.approx(want, rel=1e-12)
    assert js_divergence(p, r) == pytest.approx(js_divergence(r, p), rel=1e-12)


def test_histogram_and_basins_partition_the_torus() -> None:
    g = np.arange(-180.0, 180.0, 2.5) + 1.25
    phi, psi = [a.ravel() for a in np.meshgrid(g, g, indexing="ij")]
    h = histogram(phi, psi)
    assert h.shape == (36, 36) and h.sum() == pytest.approx(1.0) and np.allclose(h, 1 / 1296)
    idx = basin_index(phi, psi)
    assert (idx >= 0).all()
    area = np.bincount(idx, minlength=len(BASIN_NAMES)) / len(idx)  # box areas of the partition
    want = {"C7eq": 80 * 160, "PII": 100 * 160, "alphaR": 180 * 200, "alphaL": 180 * 200, "C7ax": 180 * 160}
    for name, a in want.items():
        assert area[BASIN_NAMES.index(name)] == pytest.approx(a / 360 ** 2)
    assert BASIN_NAMES[basin_index(np.array([60.0]), np.array([45.0]))[0]] == "alphaL"
    assert BASIN_NAMES[basin_index(np.array([-150.0]), np.array([170.0]))[0]] == "C7eq"
    assert BASIN_NAMES[basin_index(np.array([-70.0]), np.array([-40.0]))[0]] == "alphaR"
    assert BASIN_NAMES[basin_index(np.array([-150.0]), np.array([-170.0]))[0]] == "C7eq"  # ψ wraps past 180°


def test_delta_g_and_block_bootstrap() -> None:
    """p_αL = 1/11, p_C7eq = 10/11 → ΔG = ln 10; binomial errors: bootstrap σ of p ≈ √(p(1−p)/n) (10 % tol.);
    duplicating every frame within blocks of 2 leaves p and its block-bootstrap error unchanged (the blocks are the
    independent units), whereas frame-wise resampling shrinks it by √2."""
    rng = np.random.default_rng(123)  # not the bootstrap's own seed 0 (the same stream would correlate them)
    n = 4_400
    lab = rng.random(n) < 1 / 11
    phi = np.where(lab, 60.0, -150.0)
    psi = np.where(lab, 45.0, 170.0)
    s = basin_stats(phi, psi, n_boot=800)
    p = lab.mean()
    assert s.dg_alphaL_C7eq == pytest.approx(-math.log(p / (1 - p)), rel=1e-12)
    assert s.population_error["alphaL"] == pytest.approx(math.sqrt(p * (1 - p) / n), rel=0.1)
    dup = basin_stats(np.repeat(phi, 2), np.repeat(psi, 2), block=np.repeat(np.arange(n), 2), n_boot=800)
    assert dup.population["alphaL"] == pytest.approx(p) and dup.population_error["alphaL"] == pytest.approx(
        s.population_error["alphaL"], rel=0.1)
    naive = basin_stats(np.repeat(phi, 2), np.repeat(psi, 2), n_boot=800)
    assert naive.population_error["alphaL"] == pytest.approx(s.population_error["alphaL"] / math.sqrt(2), rel=0.1)
    assert noise_floor(phi, psi) < 1e-3


def test_mbar_reweights_harmonic_energies_exactly() -> None:
    """d = 3 harmonic degrees of freedom, U = Σ ½ k x²: frames at 300 and 400 K reweighted to 350 K give
    ⟨U⟩ = (d/2) k_B T within 3 standard errors, and the reweighted histogram of x matches N(0, k_B T / k); the Kish
    effective sample size is at most the number of frames and largest at a sampled temperature."""
    rng = np.random.default_rng(1)
    k, d, n = 2.0, 3, 20_000
    temps = np.repeat([300.0, 400.0], n)
    x = rng.normal(0.0, np.sqrt(KB_KCAL * temps / k)[:, None], (2 * n, d))
    energy = 0.5 * k * (x ** 2).sum(1)
    fit = fit_mbar(energy, temps)
    for target in (350.0, 300.0, 250.0):
        w, ess = fit.weights(target)
        u_mean = float(np.sum(w * fit.energy))
        se = math.sqrt(float(np.sum(w ** 2 * (fit.energy - u_mean) ** 2)))
        assert abs(u_mean - 0.5 * d * KB_KCAL * target) < 3 * se + 1e-12
        assert 0 < ess <= 2 * n
    assert fit.weights(300.0)[1] > fit.weights(250.0)[1]  # extrapolation shrinks the effective sample size
    with pytest.raises(ValueError, match="finite"):
        fit_mbar(np.array([1.0, np.nan]), np.array([300.0, 300.0]))
