"""Property-conditioned molecule models (EDM §5.2): normalisation, the joint p(N, c) draw, the network's context,
training through the engine, export/load without data, targets in the SDF, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sciddpm.domains.molecules.adapter import EDM_SCHEDULE, MoleculesDomain
from sciddpm.domains.molecules.conditioning import PropertyConditioning, resolve_properties
from sciddpm.domains.molecules.data import load_qm9
from sciddpm.export import load
from sciddpm.schedules import schedule_from_config
from sciddpm.training import config_from_dict, fit

SUBSET = Path(__file__).resolve().parents[2] / "data" / "qm9_subset.npz"
OPTIONS = {"path": str(SUBSET), "conditioning": ["alpha", "gap"]}


@pytest.fixture(scope="module")
def domain():
    d = MoleculesDomain(OPTIONS)
    d.train_dataset(OPTIONS)
    return d


def test_names_resolve_and_unknown_is_named():
    assert resolve_properties(["alpha", "Cv", "homo_hartree"]) == ("alpha_bohr3", "cv_cal_mol_k", "homo_hartree")
    with pytest.raises(ValueError, match="unknown QM9 property 'polarity'"):
        resolve_properties(["alpha", "polarity"])
    with pytest.raises(ValueError, match="appears twice"):
        resolve_properties(["alpha", "alpha_bohr3"])


def test_normalisation_is_edm_mean_mad(domain):
    """c̃ = (c − mean)/MAD over the training split: the training contexts have mean 0 and MAD 1 exactly."""
    train = domain.train_dataset(OPTIONS)
    context = torch.cat([train[i].context for i in range(len(train))]).double()
    assert context.shape == (len(train), 2)
    assert torch.allclose(context.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-6)
    assert torch.allclose((context - context.mean(0)).abs().mean(0), torch.ones(2, dtype=torch.float64), atol=1e-6)
    raw = domain.conditioning.denormalise(context)
    qm9 = train.qm9
    rows = qm9._rows()
    assert torch.allclose(raw[:, 0], torch.from_numpy(qm9.properties["alpha_bohr3"][rows]), rtol=1e-6)


def test_joint_draw_keeps_size_and_property_together(domain):
    """Every drawn condition is the property vector of a training molecule with the same atom count."""
    space = domain.sample_space(40, torch.Generator().manual_seed(3))
    batch, n = domain.batch_of(space)
    sizes = torch.bincount(batch, minlength=n)
    raw = domain.conditioning.denormalise(space.condition["context"])
    table = domain.conditioning.table
    for size, values in zip(sizes.tolist(), raw):
        same_size = table[table[:, 0] == size, 1:]
        assert torch.isclose(same_size, values, rtol=1e-6).all(1).any(), (size, values)
    again = domain.sample_space(40, torch.Generator().manual_seed(3))
    assert torch.equal(again.condition["context"], space.condition["context"])  # reproducible from the generator
    moved = space.to("cpu")
    assert torch.equal(moved.condition["context"], space.condition["context"]) and domain.network_condition(moved)["context"] is moved.condition["context"]


def test_fixed_targets_and_bad_targets():
    d = MoleculesDomain({**OPTIONS, "sample_properties": {"alpha": 75.0, "gap_hartree": 0.25}})
    space = d.sample_space(5, torch.Generator().manual_seed(0))
    raw = d.conditioning.denormalise(space.condition["context"])
    assert torch.allclose(raw, torch.tensor([[75.0, 0.25]], dtype=torch.float64).expand(5, 2), rtol=1e-6)
    with pytest.raises(ValueError, match="sample_properties must give exactly"):
        MoleculesDomain({**OPTIONS, "sample_properties": {"alpha": 75.0}}).sample_space(2)


def test_user_conditions_travel_with_the_space():
    """Per-molecule targets and atom counts given at sampling time override the defaults and ride on the space."""
    d = MoleculesDomain(dict(OPTIONS))
    d.train_dataset(d.options)
    a, b = torch.nonzero(d.histogram).flatten()[-2:].tolist()  # two atom counts the training split has
    space = d.sample_space(3, torch.Generator().manual_seed(0),
                           {"alpha": [70.0, 75.0, 80.0], "gap": 0.3, "n_atoms": [a, b, a]})
    raw = d.conditioning.denormalise(space.condition["context"])
    torch.testing.assert_close(raw, torch.tensor([[70.0, 0.3], [75.0, 0.3], [80.0, 0.3]], dtype=torch.float64))
    assert torch.bincount(d.batch_of(space)[0]).tolist() == [a, b, a]
    edges = space.parts[-1].edge_index
    assert edges.shape == (2, 2 * a * (a - 1) + b * (b - 1))  # all pairs, built once and carried by the space
    assert d.network_condition(space)["edge_index"] is edges
    with pytest.raises(ValueError, match="unknown condition 'homo'"):
        d.sample_space(2, conditions={"homo": 0.1})
    with pytest.raises(ValueError, match="property 'alpha_bohr3' holds 2 values for 3 molecules"):
        d.sample_space(3, conditions={"alpha": [1.0, 2.0], "gap": 0.3})
    with pytest.raises(ValueError, match="condition 'n_atoms' = 1 is not a size"):
        d.sample_space(2, conditions={"n_atoms": 1})
    with pytest.raises(ValueError, match="condition 'n_atoms' holds 2 counts for 3 molecules"):
        d.sample_space(3, conditions={"n_atoms": [a, b], "alpha": 70.0, "gap": 0.3})
    with pytest.raises(ValueError, match="condition 'n_atoms' must hold integers"):
        d.sample_space(2, conditions={"n_atoms": 9.5, "alpha": 70.0, "gap": 0.3})


def test_context_reaches_the_network(domain):
    """The backbone is built with context_nf = 2, and changing a molecule's condition changes its ε̂ only."""
    net = domain.build_backbone({"n_layers": 2, "hidden_nf": 16}, schedule_from_config(EDM_SCHEDULE))
    assert net.dynamics.context_nf == 2
    batch = domain.collate([domain.train_dataset(OPTIONS)[i] for i in range(3)])
    cond = domain.network_condition(domain.space_for(batch))
    t = torch.full((3,), 300.0, dtype=torch.float64)
    with torch.no_grad():
        out = net(batch.x, t, **cond)
        changed = cond["context"].clone()
        changed[1] += 2.0
        out2 = net(batch.x, t, **{**cond, "context": changed})
    moved = (out2 - out).abs().sum(1) > 1e-6
    assert moved[batch.batch == 1].all() and not moved[batch.batch != 1].any()
    with pytest.raises(ValueError, match="context_nf is 1 but data.conditioning names 2"):
        domain.build_backbone({"context_nf": 1}, schedule_from_config(EDM_SCHEDULE))


def test_conditional_training_export_and_sampling(tmp_path):
    """Train a conditional model through the engine, export, load (no data needed) and sample: the conditions come
    from the exported table and the SDF carries each molecule's targets."""
    pytest.importorskip("rdkit")
    cfg = config_from_dict({"domain": "molecules", "data": OPTIONS, "max_steps": 4, "batch_size": 8,
                            "backbone": {"n_layers": 2, "hidden_nf": 16}, "schedule": EDM_SCHEDULE,
                            "checkpoint_every": 4, "log_every": 2, "accelerator": "cpu"})
    fit(cfg, tmp_path / "run", progress=False)
    model = load(tmp_path / "run" / "export")
    assert model.domain.conditioning is not None and model.domain._qm9 == {}  # nothing loaded from the data
    out = model.sample(3, sampler="ddpm", steps=4, seed=0)
    assert out.space.condition["context"].shape == (3, 2) and torch.isfinite(out.sample).all()
    path = tmp_path / "mols.sdf"
    model.domain.write_samples(path, out.sample, out.space)
    from rdkit import Chem

    mols = [m for m in Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False)]
    targets = model.domain.sample_targets(out.space)
    assert len(mols) == 3
    for mol, want in zip(mols, targets):
        assert np.isclose(float(mol.GetProp("alpha_bohr3")), want["alpha_bohr3"])


def test_bad_condition_table_and_missing_property(tmp_path):
    with pytest.raises(ValueError, match="NaN or inf"):
        PropertyConditioning(("alpha_bohr3",), torch.tensor([[5.0, float("nan")], [6.0, 1.0]]))
    with pytest.raises(ValueError, match="no spread"):
        PropertyConditioning(("alpha_bohr3",), torch.tensor([[5.0, 1.0], [6.0, 1.0]]))
    qm9 = load_qm9(SUBSET)
    qm9.properties.pop("gap_hartree")
    with pytest.raises(ValueError, match="no property 'gap_hartree'"):
        PropertyConditioning.from_dataset(("alpha_bohr3", "gap_hartree"), qm9)
