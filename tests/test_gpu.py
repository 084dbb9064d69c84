"""CUDA checks of every backbone and of the engine (marker ``gpu``; deselected by default, skipped without CUDA).

Run on a GPU machine with ``python -m pytest tests/test_gpu.py -m gpu``. Each backbone must: run forward and
backward on CUDA, agree with its CPU output (fp32, TF32 off), stay E(3)-equivariant on CUDA (molecules, error
< 1e-4 in fp32) and give finite outputs under bf16 autocast. The engine must train on the GPU through Lightning and
sample on the model's device with every core sampler.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from sciddpm.domains.images.backbone import UNet
from sciddpm.domains.molecules.backbone import EGNNDynamics, edm_qm9_egnn
from sciddpm.domains.molecules.e3nn_backbone import E3NNDynamics
from sciddpm.export import load
from sciddpm.training import config_from_dict, fit
from tests.domains.images.common import LINEAR_1000
from tests.domains.molecules.test_backbones import SCHEDULE, SUBSET, _apply, _orthogonal, noisy_input

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
CUDA = torch.device("cuda")
ROOT = Path(__file__).resolve().parents[1]
TINY_UNET = {"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [14],
             "dropout": 0.0, "norm_groups": 8}

MOLECULE_NETS = {  # keywords (e.g. check_inputs=False) go to the network's constructor
    "egnn": lambda **kw: EGNNDynamics(in_node_nf=6, hidden_nf=32, n_layers=3, schedule=SCHEDULE, **kw),
    "egnn_paper": lambda **kw: edm_qm9_egnn(SCHEDULE, **kw),
    "e3nn": lambda **kw: E3NNDynamics(in_node_nf=6, irreps_hidden="16x0e + 4x1o + 4x1e", n_layers=3, num_basis=8,
                                      radial_neurons=32, schedule=SCHEDULE, **kw),
}
IMAGE_NETS = {
    "unet": lambda: UNet(schedule=LINEAR_1000, **TINY_UNET, zero_init=False),
    "unet_class": lambda: UNet(schedule=LINEAR_1000, **TINY_UNET, num_classes=10, zero_init=False),
    "unet_sr3": lambda: UNet(schedule=LINEAR_1000, **TINY_UNET, cond_channels=1, zero_init=False),
    "unet_heads": lambda: UNet(schedule=LINEAR_1000, **TINY_UNET, out_channels=2, zero_init=False),
    "unet_circular": lambda: UNet(schedule=LINEAR_1000, **TINY_UNET, cond_channels=1, padding_mode="circular",
                                  zero_init=False),
}


@pytest.fixture(autouse=True)
def _exact_fp32():
    """fp32 means fp32: TF32 matmuls would put CPU/CUDA differences near 1e-3."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture(scope="module")
def molecules():
    from sciddpm.domains.molecules.data import load_qm9

    qm9 = load_qm9(SUBSET)
    sizes = [qm9[i].num_atoms for i in range(40)]
    order = sorted(range(40), key=lambda i: sizes[i])
    return noisy_input(qm9, [order[0], order[20], order[-1]])


def test_spaces_move_to_cuda():
    from tests.test_spaces import every_layout

    for space in every_layout():
        moved = space.to(CUDA)
        assert moved.device.type == "cuda" and moved.noise().device.type == "cuda"
        assert torch.equal(moved.dof.cpu(), space.dof) and torch.equal(moved.element_owner().cpu(), space.element_owner())


@pytest.mark.parametrize("name", sorted(MOLECULE_NETS))
def test_molecule_backbone_cuda(name, molecules):
    torch.manual_seed(0)
    net = MOLECULE_NETS[name]().eval()
    x, t, batch = molecules
    with torch.no_grad():
        ref = net(x, t, batch=batch)
    net = net.to(CUDA)
    xc, tc, bc = x.to(CUDA), t.to(CUDA), batch.to(CUDA)
    with torch.no_grad():
        out = net(xc, tc, batch=bc)
        R = _orthogonal(-1.0, seed=5).to(CUDA)
        out_r = net(_apply(xc, R), tc, batch=bc)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_bf16 = net(xc, tc, batch=bc)
    assert out.device.type == "cuda"
    assert (out.cpu() - ref).abs().max() < 1e-4, "CUDA and CPU outputs differ"
    assert (out_r[:, :3] - out[:, :3] @ R.T).abs().max() < 1e-4, "not E(3)-equivariant on CUDA"
    assert (out_r[:, 3:] - out[:, 3:]).abs().max() < 1e-4
    assert torch.isfinite(out_bf16).all() and (out_bf16.float() - out).abs().max() < 0.1 * out.abs().max() + 1e-2
    net.train()
    loss = net(xc, tc, batch=bc).square().mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["egnn", "e3nn"])
def test_molecule_compiled_core_and_host_waits_cuda(name):
    """The compiled core (Inductor/Triton, dynamic shapes) of the EGNN and of the e3nn network agrees with eager on
    CUDA, forward and gradients, on two batches of different sizes; with the collate's pairs, a forward and backward
    with checks off never waits for the GPU (``torch.cuda.set_sync_debug_mode('error')`` raises on any
    synchronising call)."""
    from sciddpm.domains.molecules.adapter import MoleculesDomain

    domain = MoleculesDomain({"path": str(SUBSET)})
    data = domain.train_dataset({"path": str(SUBSET)})
    batches = [domain.collate([data[i] for i in range(a, b)]).to(CUDA) for a, b in ((0, 12), (20, 27))]
    torch.manual_seed(0)
    eager = MOLECULE_NETS[name]().to(CUDA)
    compiled = MOLECULE_NETS[name]().to(CUDA)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_core()
    for b in batches:
        t = torch.linspace(10.0, 990.0, b.num_graphs, dtype=torch.float64, device=CUDA)
        outs, grads = [], []
        for net in (eager, compiled):
            net.zero_grad(set_to_none=True)
            out = net(b.x, t, batch=b.batch, num_graphs=b.num_graphs, edge_index=b.edge_index)
            out.square().mean().backward()
            outs.append(out.detach())
            grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        assert (outs[1] - outs[0]).abs().max() < 1e-4 * outs[0].abs().max()
        assert (grads[1] - grads[0]).abs().max() < 1e-3 * grads[0].abs().max()
    quiet = MOLECULE_NETS[name](check_inputs=False).to(CUDA)
    b = batches[0]
    t = torch.full((b.num_graphs,), 500.0, dtype=torch.float64, device=CUDA)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        quiet(b.x, t, batch=b.batch, num_graphs=b.num_graphs, edge_index=b.edge_index).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("name", sorted(IMAGE_NETS))
def test_unet_cuda(name):
    torch.manual_seed(0)
    net = IMAGE_NETS[name]().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 28, 28, generator=gen)
    t = torch.tensor([1.0, 250.0, 500.0, 999.0])
    kwargs = {}
    if net.num_classes is not None:
        kwargs["y"] = torch.tensor([0, 3, 9, 10])
    if net.cond_channels:
        kwargs["cond_image"] = torch.randn(4, 1, 14, 14, generator=gen)
    with torch.no_grad():
        ref = net(x, t, **kwargs)
    net = net.to(CUDA)
    ck = {k: v.to(CUDA) for k, v in kwargs.items()}
    with torch.no_grad():
        out = net(x.to(CUDA), t.to(CUDA), **ck)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_bf16 = net(x.to(CUDA), t.to(CUDA), **ck)
    assert out.shape == (4, net.out_channels, 28, 28)
    assert (out.cpu() - ref).abs().max() < 1e-4 * max(1.0, float(ref.abs().max()))
    assert torch.isfinite(out_bf16).all()
    net.train()
    net(x.to(CUDA), t.to(CUDA), **ck).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)


class TrainingDevice(Callback):
    """Records the device of every training batch's module."""

    def __init__(self) -> None:
        self.devices: set[str] = set()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # type: ignore[override]
        self.devices.add(next(pl_module.net.parameters()).device.type)


@pytest.mark.parametrize("domain,data,backbone", [
    ("images", {"path": str(ROOT / "tests" / "data" / "fashion_mnist_subset")}, TINY_UNET),
    ("molecules", {"path": str(SUBSET)}, {"n_layers": 2, "hidden_nf": 32}),
    ("timeseries", {}, {"dim": 16, "heads": 2, "layers": 1}),
])
def test_engine_trains_and_samples_on_cuda(domain, data, backbone, tmp_path):
    cfg = config_from_dict({"domain": domain, "data": data, "backbone": backbone, "batch_size": 16, "max_steps": 4,
                            "precision": "bf16", "accelerator": "gpu", "checkpoint_every": 2, "log_every": 1})
    seen = TrainingDevice()
    fit(cfg, tmp_path / "run", progress=False, callbacks=[seen])
    assert seen.devices == {"cuda"}  # (Lightning moves the module back to the CPU when fit returns)
    model = load(tmp_path / "run" / "export").to(CUDA)
    model.variances = model.estimate_gamma(batches=1, batch_size=8, num_times=10).state_dict()
    cpu_model = load(tmp_path / "run" / "export")
    for sampler, variance in [("ddpm", "beta_tilde"), ("ddpm", "analytic"), ("ddim", "beta_tilde"),
                              ("dpm_solver_pp_2m", "beta_tilde"), ("heun", "beta_tilde")]:
        out = model.sample(6, sampler=sampler, steps=5, seed=3, variance=variance)
        assert out.sample.device.type == "cuda" and torch.isfinite(out.sample).all()
        if sampler == "ddim":  # deterministic: the same x_T (drawn on the CPU) gives the same sample on both devices
            ref = cpu_model.sample(6, sampler=sampler, steps=5, seed=3).sample
            assert (out.sample.cpu() - ref).abs().max() < 1e-3


@pytest.mark.parametrize("name", ["ddim", "ddpm", "dpm_solver_pp_2m", "dpm_solver_pp_3m", "unipc", "heun"])
def test_sampler_loop_has_no_host_synchronisation_cuda(name):
    """Issue 14: no host–device synchronisation inside the sampling loop. torch's sync debug mode reports every
    synchronising call; the count must not grow with the number of steps (only the input checks before the loop
    and the one non-finite check after it synchronise), and a NaN state still raises with its step."""
    import warnings

    from sciddpm import samplers as S
    from sciddpm.schedules import LinearSchedule
    from sciddpm.spaces import DenseSpace

    schedule = LinearSchedule(1000)
    space = DenseSpace((64, 8), device=CUDA)
    x_T = torch.randn(64, 8, device=CUDA)

    def eps(x, t):
        return 0.5 * x

    def syncs(steps: int) -> int:
        kwargs = {"generator": torch.Generator(device=CUDA).manual_seed(0)} if name == "ddpm" else {}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                out = S.get_sampler(name)(eps, schedule, space, x_T, S.time_grid(schedule, steps), **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode(0)
        assert out.sample.device.type == "cuda" and torch.isfinite(out.sample).all()
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(5) == syncs(20)
    with pytest.raises(FloatingPointError, match=f"at step {1 if name == 'heun' else 2} "):
        calls = []
        S.get_sampler(name)(lambda x, t: x * float("nan") if calls.append(1) or len(calls) == 3 else 0.5 * x,
                            schedule, space, x_T, S.time_grid(schedule, 6),
                            **({"generator": torch.Generator(device=CUDA).manual_seed(0)} if name == "ddpm" else {}))


def test_ising_thermodynamic_map_trains_and_samples_on_cuda(tmp_path):
    """The Ising domain (circular UNet, tempered space: prior N(0, T I)) trains on CUDA and samples there; DDIM from
    the same x_T gives the same lattices on both devices, and the space keeps its noise variance on the GPU."""
    cfg = config_from_dict({"domain": "ising", "backbone": {"model_channels": 8, "channel_mult": [1, 2], "norm_groups": 4},
                            "batch_size": 16, "max_steps": 4, "accelerator": "gpu", "checkpoint_every": 2,
                            "log_every": 1})
    seen = TrainingDevice()
    fit(cfg, tmp_path / "run", progress=False, callbacks=[seen])
    assert seen.devices == {"cuda"}
    model, cpu_model = load(tmp_path / "run" / "export").to(CUDA), load(tmp_path / "run" / "export")
    temps = {"temperature": [1.0, 2.3, 4.0, 1.5]}
    out = model.sample(4, sampler="ddim", steps=5, seed=3, conditions=temps)
    assert out.sample.device.type == "cuda" and out.space.noise_variance.device.type == "cuda"
    ref = cpu_model.sample(4, sampler="ddim", steps=5, seed=3, conditions=temps).sample
    assert (out.sample.cpu() - ref).abs().max() < 1e-3
    assert torch.isfinite(model.sample(4, sampler="ddpm", steps=5, seed=3, conditions=temps).sample).all()


def test_timeseries_detector_cuda(tmp_path):
    """The TFDPM backbone and the diffusion detector on CUDA give the CPU's forecasts (same per-row x_T, drawn on
    the CPU) and the same per-row scores, in batches of 256 windows."""
    import numpy as np

    from sciddpm.domains.timeseries.adapter import DEFAULT_PATH, TimeSeriesDomain
    from sciddpm.domains.timeseries.detect import DiffusionForecaster, history_windows
    from sciddpm.testing import export_and_load

    domain = TimeSeriesDomain()
    domain.train_dataset(domain.options)
    _, cpu = export_and_load(domain, {"dim": 32, "heads": 4, "layers": 2}, tmp_path / "export")
    gpu = load(tmp_path / "export").to(CUDA)
    table = domain.read(DEFAULT_PATH, domain.options["columns"])
    z = domain.normaliser.apply(table.values)
    rows, hist, mask = history_windows(z, table.hours, domain.history, 1.0)
    keys = torch.as_tensor(np.round(table.hours[rows]).astype(np.int64))
    a = DiffusionForecaster(cpu, samples=4, steps=5)(hist[:300], mask[:300], keys[:300])
    b = DiffusionForecaster(gpu, samples=4, steps=5)(hist[:300], mask[:300], keys[:300])
    assert b.shape == (4, 300, 3, 43) and torch.isfinite(b).all()
    assert (a - b).abs().max() < 1e-3 * (1 + a.abs().max())


def test_torsions_torus_model_trains_and_samples_on_cuda(tmp_path):
    """The torsion network (Fourier features on T², temperature-conditioned) trains through Lightning on the GPU
    on the committed alanine-dipeptide subset, runs forward/backward and under bf16 autocast, and samples on CUDA
    with the CPU's result (same x_T) at per-sample temperatures."""
    import math

    from sciddpm.domains.torsions.backbone import TorsionNet
    from sciddpm.schedules import VESchedule

    net = TorsionNet(hidden=32, blocks=2, schedule=VESchedule(0.01, 2 * math.pi))
    x, t = torch.rand(64, 2) * 6 - 3, torch.rand(64, dtype=torch.float64)
    temp = torch.linspace(0.9, 2.0, 64, dtype=torch.float64)
    ref = net(x, t, temperature=temp)
    gnet = net.to(CUDA)
    out = gnet(x.to(CUDA), t.to(CUDA), temperature=temp.to(CUDA))
    out.square().mean().backward()
    assert (out.detach().cpu() - ref).abs().max() < 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert torch.isfinite(gnet(x.to(CUDA), t.to(CUDA), temperature=temp.to(CUDA))).all()
    cfg = config_from_dict({"domain": "torsions", "backbone": {"hidden": 32, "blocks": 2}, "max_steps": 20,
                            "batch_size": 128, "checkpoint_every": 20, "accelerator": "gpu", "devices": 1})
    fit(cfg, tmp_path / "run", progress=False)
    model, cpu_model = load(tmp_path / "run" / "export").to(CUDA), load(tmp_path / "run" / "export")
    temps = {"temperature": [280.0, 300.0, 450.0, 600.0]}
    a = model.sample(4, sampler="ddim", steps=10, seed=3, conditions=temps)
    assert a.sample.device.type == "cuda"
    b = cpu_model.sample(4, sampler="ddim", steps=10, seed=3, conditions=temps).sample
    assert (a.sample.cpu() - b).abs().max() < 1e-3


def test_pointcloud_backbone_and_refiner_cuda():
    """The PDR-style point backbone on CUDA: forward/backward in a batch of 16 clouds of 512 points, the CPU's output
    (fp32, TF32 off), permutation equivariance on the device, finite under bf16 autocast; the refinement net too."""
    from sciddpm.domains.pointclouds.backbone import PointDiffusionNet
    from sciddpm.domains.pointclouds.refine import OnePassNet, chamfer_loss

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    net = PointDiffusionNet(channels=(32, 64, 128), schedule=LINEAR_1000)
    x, part = torch.randn(16, 512, 3), torch.rand(16, 256, 3)
    t = torch.linspace(1, 999, 16, dtype=torch.float64)
    with torch.no_grad():
        cpu = net(x, t, part)
    gnet = net.to(CUDA)
    out = gnet(x.to(CUDA), t.to(CUDA), part.to(CUDA))
    out.pow(2).mean().backward()
    assert (out.detach().cpu() - cpu).abs().max() < 1e-3 * (1 + cpu.abs().max())
    perm = torch.randperm(512, device=CUDA)
    with torch.no_grad():
        moved = gnet(x.to(CUDA)[:, perm], t.to(CUDA), part.to(CUDA))
        assert (moved - out[:, perm]).abs().max() < 1e-4 * (1 + out.abs().max())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            assert torch.isfinite(gnet(x.to(CUDA), t.to(CUDA), part.to(CUDA))).all()
    refiner = OnePassNet(LINEAR_1000, {"channels": [32, 64]}).to(CUDA)
    loss = chamfer_loss(refiner(part.to(CUDA), x.to(CUDA)), x.to(CUDA))
    loss.backward()
    assert torch.isfinite(loss)
