"""The molecules domain keeps the Domain contract (``sciddpm.testing.check_domain``): an unconditional model with
given atom counts and a property-conditioned model (EDM's conditional QM9, α targets), each with the E(3) × S_N
equivariance of the EGNN checked numerically."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from sciddpm.domains.molecules.adapter import MoleculesDomain
from sciddpm.spaces import Space
from sciddpm.testing import DomainCheckError, check_domain, registered_domains

TINY = {"n_layers": 2, "hidden_nf": 16}
#: An orthogonal 3×3 matrix (QR of a seeded Gaussian): a rotation, or a rotation with a reflection (both in E(3)).
Q = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
#: Atom counts of the committed QM9 subset's histogram (11..25 occur).
SIZES = [11, 14, 18, 25]


pytestmark = pytest.mark.usefixtures("one_thread")


def reverse_atoms(space: Space) -> Tensor:
    """The permutation that reverses the atom order inside every molecule (molecules stay in place)."""
    batch, _ = MoleculesDomain.batch_of(space)
    idx = torch.arange(batch.numel())
    return torch.argsort(batch * batch.numel() + (batch.numel() - 1 - idx))


def rotate_and_permute(x: Tensor, space: Space) -> Tensor:
    """g = (Q, π) ∈ O(3) × S_N: positions x_i ↦ Q x_π(i), features h_i ↦ h_π(i); EDM's EGNN is equivariant to
    both (Satorras et al. 2021)."""
    x = x[reverse_atoms(space)]
    return torch.cat([x[:, :3] @ Q.T, x[:, 3:]], dim=1)


def test_unconditional_molecules_keep_the_contract():
    report = check_domain(MoleculesDomain(), backbone=TINY, conditions=[{"n_atoms": SIZES}, {"n_atoms": 16}, {}],
                          group_action=rotate_and_permute)
    checks = report["checks"]
    assert checks["sample_space"]["shapes"][:2] == [(sum(SIZES), 9), (64, 9)]
    assert checks["data_batch"]["network_keywords"] == ["batch", "edge_index", "num_graphs"]
    assert checks["export_load"]["max_abs_difference"] == 0.0
    assert checks["equivariance"]["max_abs_error"] < 1e-5  # float32 EGNN: rounding only
    assert set(checks["outputs"]["metrics"]) >= {"atom_stability", "mol_stability", "validity", "uniqueness"}


def test_conditional_molecules_keep_the_contract():
    """Atom counts and α targets (Bohr³) travel in the space; sampling A then B or B then A from one domain object
    gives the same molecules and the same SDF files (targets written as data fields) for each."""
    report = check_domain(MoleculesDomain({"conditioning": ["alpha"]}), backbone=TINY,
                          conditions=[{"n_atoms": SIZES, "alpha": 70.0},
                                      {"n_atoms": 16, "alpha": [60.0, 70.0, 80.0, 90.0]},
                                      {"n_atoms": 16, "alpha": 90.0}, {}],
                          group_action=rotate_and_permute)
    checks = report["checks"]
    assert checks["data_batch"]["network_keywords"] == ["batch", "context", "edge_index", "num_graphs"]
    assert checks["conditions"]["keys"] == [["context"]] * 4
    assert checks["sampling_state"]["pairs"] == [(0, 1), (1, 2), (2, 3)]
    assert checks["equivariance"]["max_abs_error"] < 1e-5


def test_a_translation_is_not_a_symmetry_of_the_noise_prediction():
    """The check has teeth on this backbone: ε̂ is translation invariant, so g: x ↦ x + c is not an equivariance."""
    def translate(x: Tensor, space: Space) -> Tensor:
        return torch.cat([x[:, :3] + 1.0, x[:, 3:]], dim=1)

    with pytest.raises(DomainCheckError, match=r"check_domain\[equivariance\]: the network is not equivariant"):
        check_domain(MoleculesDomain(), backbone=TINY, conditions=[{"n_atoms": SIZES}], group_action=translate)


class LayoutOnTheDomain(MoleculesDomain):
    """The molecules domain before the v2 contract: the last sampled layout was kept on the domain for decoding."""

    name = "molecules_layout_on_the_domain"

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> Any:
        self._last_space = super().sample_space(n, generator, conditions)
        return self._last_space

    def evaluate(self, samples: Any, space: Any = None) -> dict[str, float]:
        return super().evaluate(samples, self._last_space)


def test_a_layout_kept_on_the_domain_is_caught():
    """Sampled after 16-atom molecules, the 68 atoms of set #0 no longer fit the layout the domain kept."""
    with pytest.raises(DomainCheckError, match=r"check_domain\[sampling_state\]: ValueError: molecule state has 68 "
                                               r"atoms but its space has 64"):
        with registered_domains(LayoutOnTheDomain):
            check_domain(LayoutOnTheDomain(), backbone=TINY, conditions=[{"n_atoms": SIZES}, {"n_atoms": 16}])
