"""The EGNN property predictor (EDM's evaluator φ_c, EEGSDE's noise-aware g(x_t, t)): E(3) and permutation
invariance, per-molecule independence, and that training fits real QM9 polarisabilities."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sciddpm.domains.molecules.adapter import MoleculesDomain
from sciddpm.domains.molecules.property import PropertyPredictor, predict, train_property_predictor
from tests.domains.molecules.test_backbones import SCHEDULE, _apply, _orthogonal

SUBSET = Path(__file__).resolve().parents[2] / "data" / "qm9_subset.npz"
OPTIONS = {"path": str(SUBSET), "conditioning": ["alpha"]}


@pytest.fixture(scope="module")
def data():
    domain = MoleculesDomain(OPTIONS)
    train = domain.train_dataset(OPTIONS)
    return domain, train


def test_invariant_to_rotation_reflection_translation_and_permutation(data):
    domain, train = data
    b = domain.collate([train[i] for i in range(6)])
    torch.manual_seed(0)
    net = PropertyPredictor(n_properties=1, hidden_nf=32, n_layers=3).eval()
    with torch.no_grad():
        ref = net(b.x, b.batch, b.num_graphs)
        for det in (1.0, -1.0):
            moved = _apply(b.x, _orthogonal(det, seed=3), torch.tensor([1.5, -2.0, 0.7]))
            assert (net(moved, b.batch, b.num_graphs) - ref).abs().max() < 1e-4
        perm = torch.randperm(b.x.shape[0], generator=torch.Generator().manual_seed(1))
        assert (net(b.x[perm], b.batch[perm], b.num_graphs) - ref).abs().max() < 1e-4
        alone = net(b.x[b.batch == 2], torch.zeros(int((b.batch == 2).sum()), dtype=torch.long), 1)
        assert (alone - ref[2]).abs().max() < 1e-5
    noisy = PropertyPredictor(noise_aware=True, hidden_nf=16, n_layers=2, schedule=SCHEDULE)
    with pytest.raises(ValueError, match="needs t"):
        noisy(b.x, b.batch, b.num_graphs)


def test_training_fits_polarisability(data):
    """On 48 real molecules, 300 steps (about 5 s) bring the MAE of α to under 0.55 of the MAE of predicting the
    mean (measured: 0.44; seeds 0-3: 0.43-0.45), on the molecules it saw. The LR decays by step, so it is
    reproducible (a wall-clock decay made it flaky: 0.46-0.99 for one seed)."""
    domain, train = data
    items = [train[i] for i in range(48)]
    loader = [domain.collate(items[k:k + 16]) for k in range(0, 48, 16)]
    torch.manual_seed(0)
    net = PropertyPredictor(n_properties=1, hidden_nf=32, n_layers=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        log = train_property_predictor(net, loader, seconds=120, max_steps=300, lr=1e-3)
    finally:
        torch.set_num_threads(threads)
    assert log["steps"] == 300
    pred, target = predict(net, domain.conditioning, loader)
    mae = float((pred - target).abs().mean())
    baseline = float((target - target.mean()).abs().mean())
    assert mae < 0.55 * baseline, (mae, baseline)


def test_eegsde_energy_gradient_is_equivariant(data):
    """E(x_t, c, t) = ‖g(x_t, t) − c̃‖² is invariant, so rotating x rotates its position gradient and leaves the
    feature gradient unchanged; the guided ε stays in the zero-CoM space."""
    from sciddpm.guidance import energy_guidance, grad_of
    from sciddpm.domains.molecules.property import property_energy

    domain, train = data
    b = domain.collate([train[i] for i in range(4)])
    torch.manual_seed(0)
    g = PropertyPredictor(n_properties=1, hidden_nf=16, n_layers=2, noise_aware=True, schedule=SCHEDULE)
    t = torch.full((4,), 400.0, dtype=torch.float64)
    energy = property_energy(g, b.context, b.batch, 4, b.edge_index)
    grad = grad_of(energy, b.x, t)
    R = _orthogonal(-1.0, seed=2)
    grad_r = grad_of(energy, _apply(b.x, R), t)
    assert (grad_r[:, :3] - grad[:, :3] @ R.T).abs().max() < 1e-4
    assert (grad_r[:, 3:] - grad[:, 3:]).abs().max() < 1e-4
    space = domain.space_for(b)
    schedule = SCHEDULE
    guided = energy_guidance(lambda x, tt: torch.zeros_like(x), energy, schedule, space, scale=2.0)(b.x, t)
    com = torch.zeros(4, 3).index_add_(0, b.batch, guided[:, :3])
    assert com.abs().max() < 1e-5 and guided.abs().max() > 0
    with pytest.raises(ValueError, match="noise-aware"):
        property_energy(PropertyPredictor(hidden_nf=8, n_layers=1), b.context, b.batch, 4)
