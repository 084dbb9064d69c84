"""The molecules domain end to end: train through the engine on the committed QM9 subset, export, load, sample."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sciddpm.domains.molecules.adapter import EDM_SCHEDULE, MoleculesDomain
from sciddpm.export import load
from sciddpm.schedules import schedule_from_config
from sciddpm.spaces import DenseSpace
from sciddpm.training import config_from_dict, fit

TINY = {"n_layers": 2, "hidden_nf": 16}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("mol")
    cfg = config_from_dict({"domain": "molecules", "max_steps": 6, "batch_size": 16, "backbone": TINY,
                            "schedule": EDM_SCHEDULE, "checkpoint_every": 6, "log_every": 2, "noise_shards": 2,
                            "accelerator": "cpu"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny graphs: one thread avoids contention on a shared 2-core box
    try:
        module = fit(cfg, out, progress=False)
        yield out, module
    finally:
        torch.set_num_threads(threads)


def test_trains_exports_and_samples(trained, tmp_path):
    out, module = trained
    assert module.global_step == 6
    in_memory = module.ema_model().sample(2, sampler="dpm_solver_pp_2m", steps=3, seed=0)
    assert in_memory.sample.shape[0] == MoleculesDomain.batch_of(in_memory.space)[0].numel()
    model = load(out / "export")
    assert isinstance(model.domain, MoleculesDomain) and model.schedule.config()["type"] == "polynomial"
    res = model.sample(4, sampler="ddpm", steps=5, seed=1)
    batch, n = model.domain.batch_of(res.space)  # the layout travels with the samples, not on the domain
    assert n == 4 and res.sample.shape == (batch.numel(), 9) and torch.isfinite(res.sample).all()
    # per-molecule centre of mass of the positions is zero
    com = torch.zeros(4, 3, dtype=torch.float64).index_add_(0, batch, res.sample[:, :3].double())
    com /= torch.bincount(batch, minlength=4).unsqueeze(1)
    assert com.abs().max() < 1e-5
    # sizes come from the training-set histogram (saved in the export, so no data was needed)
    hist = model.domain.histogram
    assert (hist[torch.bincount(batch, minlength=4)] > 0).all()
    sizes = model.domain.size_sampler().sample(2000, torch.Generator().manual_seed(0))
    assert abs(sizes.double().mean() - (torch.arange(len(hist)) * hist).sum() / hist.sum()) < 0.3
    # files: SDF readable by RDKit, XYZ next to it
    from rdkit import Chem

    sdf = tmp_path / "samples.sdf"
    model.domain.write_samples(sdf, res.sample, res.space)
    mols = [m for m in Chem.SDMolSupplier(str(sdf), sanitize=False, removeHs=False)]
    assert len(mols) == 4 and all(m is not None for m in mols)
    assert [m.GetNumAtoms() for m in mols] == torch.bincount(batch, minlength=4).tolist()
    # each extension is its own format: .xyz holds XYZ frames (no SDF text), other extensions are refused
    model.domain.write_samples(tmp_path / "samples.xyz", res.sample, res.space)
    xyz = (tmp_path / "samples.xyz").read_text()
    assert xyz.count("sample ") == 4 and "$$$$" not in xyz and "M  END" not in xyz
    with pytest.raises(ValueError, match=r"m\.pdb has extension '\.pdb'; this writer writes \.sdf, \.xyz"):
        model.domain.write_samples(tmp_path / "m.pdb", res.sample, res.space)
    assert not list(tmp_path.glob(".*")), "temporary files left behind"
    model.domain.plot_samples(tmp_path / "samples.png", res.sample, res.space)
    assert (tmp_path / "samples.png").stat().st_size > 0
    metrics = model.domain.evaluate(res.sample, res.space)
    assert {"atom_stability", "mol_stability", "validity", "uniqueness"} <= set(metrics)
    # an explicit (samples, batch) pair decodes the same way
    assert model.domain.evaluate((res.sample, batch)) == metrics
    # a flat state without its layout, or with the wrong one, is refused with a clear error
    with pytest.raises(ValueError, match="space"):
        model.domain.evaluate(res.sample)
    with pytest.raises(ValueError, match="atoms"):
        model.domain.evaluate(res.sample[:-1], res.space)
    with pytest.raises(ValueError, match="batch="):
        model.net(res.sample, torch.zeros(4))


def test_space_state_and_split(trained):
    domain = MoleculesDomain({})
    data = domain.train_dataset({})
    batch = domain.collate([data[i] for i in range(5)])
    space, x = domain.space_for(batch), domain.state_from(batch)
    counts = torch.bincount(batch.batch)
    assert torch.equal(space.dof, (3 * (counts - 1) + 6 * counts).double())
    assert torch.allclose(space.project(x), x, atol=1e-5)  # data positions are zero-CoM already
    assert torch.allclose(x[:, 3:8].sum(1), torch.full((len(x),), 0.25))
    shards = domain.split_batch(batch, 2)
    assert [s.num_graphs for s in shards] == [3, 2]
    assert torch.equal(shards[1].x, torch.cat([data[1].x, data[3].x]))


def test_bad_input_raises(tmp_path):
    from sciddpm.domains.molecules.adapter import DEFAULT_PATH

    arrays = dict(np.load(DEFAULT_PATH))
    arrays["pos"] = arrays["pos"].copy()
    arrays["pos"][0, 0] = np.nan
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="non-finite"):
        MoleculesDomain({}).train_dataset({"path": str(tmp_path / "bad.npz")})
    with pytest.raises(ValueError, match="unknown molecules backbone"):
        MoleculesDomain({}).build_backbone({"type": "transformer"}, schedule_from_config(EDM_SCHEDULE))
    with pytest.raises(ValueError, match="need their space"):
        MoleculesDomain({}).decode(torch.zeros(7, 9))
    with pytest.raises(ValueError, match="molecule space"):
        MoleculesDomain.batch_of(DenseSpace((2, 3)))
