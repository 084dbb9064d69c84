"""The molecule networks' faster execution paths compute the same network: EGNN's per-atom (factorized) first edge
layer against the concatenated one, pairs given by the collate against pairs built in the forward, the compiled
core (EGNN and e3nn) against the eager one; the checks wait for the device once per call; bad pairs get a one-line
error."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from benchmarks.qm9_train_step import OpCounter  # counts ATen operators; _local_scalar_dense = a host read
from sciddpm.domains.molecules.adapter import MoleculesDomain
from sciddpm.domains.molecules.backbone import EGNNDynamics, fully_connected_edges, pair_linear
from sciddpm.domains.molecules.e3nn_backbone import E3NNDynamics
from tests.domains.molecules.test_backbones import SCHEDULE

SUBSET = Path(__file__).resolve().parents[2] / "data" / "qm9_subset.npz"
F = 6


@pytest.fixture(scope="module")
def domain_batch():
    domain = MoleculesDomain({"path": str(SUBSET)})
    data = domain.train_dataset({"path": str(SUBSET)})
    return domain, domain.collate([data[i] for i in range(12)])


def _net(**kw) -> EGNNDynamics:
    torch.manual_seed(0)
    return EGNNDynamics(in_node_nf=F, hidden_nf=32, n_layers=3, schedule=SCHEDULE, **kw)


def _forward_and_grads(net: EGNNDynamics, batch, **kw) -> tuple[torch.Tensor, list[torch.Tensor]]:
    t = torch.linspace(10.0, 990.0, batch.num_graphs, dtype=torch.float64)
    x = batch.x.clone()
    out = net(x, t, batch=batch.batch, num_graphs=batch.num_graphs, **kw)
    net.zero_grad(set_to_none=True)
    (out * torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() for p in net.parameters()]


def _assert_close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    scale = max(float(b.abs().max()), 1e-6)
    assert float((a - b).abs().max()) <= rel * scale, float((a - b).abs().max()) / scale


def test_pair_linear_is_the_linear_layer_on_the_concatenation():
    torch.manual_seed(1)
    layer = torch.nn.Linear(2 * 8 + 2, 5)
    h, e = torch.randn(7, 8, dtype=torch.float64), torch.randn(9, 2, dtype=torch.float64)
    layer = layer.double()
    row, col = torch.randint(0, 7, (9,)), torch.randint(0, 7, (9,))
    exact = layer(torch.cat([h[row], h[col], e], dim=1))
    assert torch.allclose(pair_linear(layer, h, row, col, e), exact, rtol=0, atol=1e-12)
    assert torch.allclose(pair_linear(layer, h, row, col, e, factorized=False), exact, rtol=0, atol=0)


def test_factorized_network_matches_concatenated(domain_batch):
    """Same weights, outputs and parameter gradients within float32 rounding (1e-5 of their scale)."""
    _, batch = domain_batch
    fast, slow = _net(), _net(factorized_edges=False)
    slow.load_state_dict(fast.state_dict())
    out_f, grads_f = _forward_and_grads(fast, batch)
    out_s, grads_s = _forward_and_grads(slow, batch)
    _assert_close(out_f, out_s)
    for gf, gs in zip(grads_f, grads_s):
        _assert_close(gf, gs, rel=1e-4)  # sums over ~10^3 terms in a different order


def test_collated_pairs_match_built_pairs(domain_batch, one_thread):
    """The collate's edge_index is exactly the pairs the network builds from ``batch``, in the same order (one
    thread: bitwise-equal gradients need a fixed summation order, which parallel scatter-adds do not promise)."""
    domain, batch = domain_batch
    built = torch.stack(fully_connected_edges(batch.batch, batch.num_graphs))
    assert torch.equal(batch.edge_index, built)
    assert torch.equal(domain.network_condition(domain.space_for(batch))["edge_index"], built)
    net = _net()
    out_given, grads_given = _forward_and_grads(net, batch, edge_index=batch.edge_index)
    out_built, grads_built = _forward_and_grads(net, batch)
    assert torch.equal(out_given, out_built)
    assert all(torch.equal(a, b) for a, b in zip(grads_given, grads_built))


def test_sampling_space_carries_pairs(domain_batch):
    domain, _ = domain_batch
    space = domain.sample_space(5, torch.Generator().manual_seed(0))
    cond = domain.network_condition(space)
    assert torch.equal(cond["edge_index"], torch.stack(fully_connected_edges(cond["batch"], 5)))


def test_one_host_wait_per_call(domain_batch):
    """With the pairs given, a checked forward reads the device once (the combined check), an unchecked one never,
    and neither builds pairs (no repeat_interleave) or counts atoms with bincount (both wait on a GPU)."""
    _, batch = domain_batch
    t = torch.full((batch.num_graphs,), 500.0, dtype=torch.float64)
    for check, waits in ((True, 1), (False, 0)):
        net = _net(check_inputs=check)
        with OpCounter() as ops:
            net(batch.x, t, batch=batch.batch, num_graphs=batch.num_graphs, edge_index=batch.edge_index)
        assert ops.counts["aten._local_scalar_dense"] == waits
        assert ops.counts["aten.repeat_interleave"] == ops.counts["aten.bincount"] == 0


@pytest.mark.parametrize("bad,match", [
    ("cross", "pairs two atoms of different molecules"),
    ("self", "an atom with itself"),
    ("range", r"edge_index values must lie in \[0, "),
    ("shape", r"edge_index has shape \(3, "),
    ("missing", "a fully connected batch has sum n"),
])
def test_bad_edge_index(domain_batch, bad, match):
    _, batch = domain_batch
    edges = batch.edge_index.clone()
    n = batch.x.shape[0]
    if bad == "cross":
        edges[1, 0] = n - 1  # atom 0 is in molecule 0, atom n − 1 in the last one
    elif bad == "self":
        edges[1, 0] = edges[0, 0]
    elif bad == "range":
        edges[0, 3] = n
    elif bad == "missing":
        edges = edges[:, 1:]
    else:
        edges = torch.cat([edges, edges[:1]])
    t = torch.full((batch.num_graphs,), 500.0, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        _net()(batch.x, t, batch=batch.batch, num_graphs=batch.num_graphs, edge_index=edges)


#: A small e3nn network (the compile tests build it directly and through the domain).
SMALL_E3NN = {"irreps_hidden": "8x0e + 2x1o", "n_layers": 2, "num_basis": 4, "radial_neurons": 16}


def _e3nn_net() -> E3NNDynamics:
    torch.manual_seed(0)
    return E3NNDynamics(in_node_nf=F, **SMALL_E3NN, schedule=SCHEDULE)


@pytest.mark.parametrize("build", [_net, _e3nn_net], ids=["egnn", "e3nn"])
def test_compiled_core_matches_eager_across_sizes(domain_batch, build):
    """torch.compile (Inductor, dynamic shapes) of the core: same outputs and gradients as eager on two batches of
    different atom and pair counts, one compiled graph for both, and a deep copy (the EMA) runs it too."""
    domain, batch = domain_batch
    data = domain.train_dataset({"path": str(SUBSET)})
    other = domain.collate([data[i] for i in range(20, 27)])
    assert other.x.shape[0] != batch.x.shape[0]
    eager, compiled = build(), build()
    compiled.compile_core()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    for b in (batch, other):
        out_e, grads_e = _forward_and_grads(eager, b, edge_index=b.edge_index)
        out_c, grads_c = _forward_and_grads(compiled, b, edge_index=b.edge_index)
        _assert_close(out_c, out_e)
        for gc, ge in zip(grads_c, grads_e):
            _assert_close(gc, ge, rel=1e-4)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames == 1, f"{frames} graphs compiled for two batch sizes (dynamic shapes should give one)"
    ema = copy.deepcopy(compiled).requires_grad_(False)
    with torch.no_grad():
        t = torch.full((other.num_graphs,), 300.0, dtype=torch.float64)
        kw = dict(batch=other.batch, num_graphs=other.num_graphs, edge_index=other.edge_index)
        _assert_close(ema(other.x, t, **kw), eager(other.x, t, **kw))


def _losses(out: Path) -> list[float]:
    import csv

    with open(out / "logs" / "version_0" / "metrics.csv") as fh:
        return [float(r["train_loss"]) for r in csv.DictReader(fh) if r.get("train_loss")]


def test_engine_compile_option_trains_like_eager(tmp_path):
    """``compile: true`` in a training config compiles the EGNN core of the training network only (the EMA stays
    eager) and gives the eager run's per-step losses (same seeds, float32 rounding apart)."""
    from sciddpm.domains.molecules.adapter import EDM_SCHEDULE
    from sciddpm.training import config_from_dict, fit

    base = {"domain": "molecules", "max_steps": 3, "batch_size": 8, "backbone": {"n_layers": 2, "hidden_nf": 16},
            "schedule": EDM_SCHEDULE, "checkpoint_every": 3, "log_every": 1, "accelerator": "cpu",
            "data": {"path": str(SUBSET)}}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        eager = fit(config_from_dict(base), tmp_path / "eager", progress=False)
        compiled = fit(config_from_dict({**base, "compile": True}), tmp_path / "compiled", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert eager.net.dynamics._core is None
    assert compiled.net.dynamics._core is not None and compiled.ema.dynamics._core is None
    want, got = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    assert len(want) == len(got) == 3
    assert max(abs(a - b) / abs(a) for a, b in zip(got, want)) < 1e-4, (got, want)


@pytest.mark.parametrize("kind", ["egnn", "e3nn"])
def test_compile_network_hands_the_core_to_the_compiler(domain_batch, kind):
    """The engine's ``compile: true`` (``compile_network``) compiles the tensor-only core of either backbone, whole
    (one captured graph, no graph breaks), and the compiled network computes the eager one's output with the same
    checkpoint keys. The backend is dynamo's frame counter (graphs captured, then run eagerly), so this checks what
    reaches the compiler; Inductor itself is tested above and in tests/test_gpu.py."""
    from torch._dynamo.testing import CompileCounter

    from sciddpm.training import compile_network

    domain, batch = domain_batch
    config = {"type": kind, **({"n_layers": 2} if kind == "egnn" else SMALL_E3NN)}
    torch.manual_seed(0)
    eager = domain.build_backbone(config, SCHEDULE)
    compiled = copy.deepcopy(eager)
    counter = CompileCounter()
    torch._dynamo.reset()
    compile_network(compiled, backend=counter)
    t = torch.linspace(10.0, 990.0, batch.num_graphs, dtype=torch.float64)
    kw = dict(batch=batch.batch, num_graphs=batch.num_graphs, edge_index=batch.edge_index)
    with torch.no_grad():
        _assert_close(compiled(batch.x, t, **kw), eager(batch.x, t, **kw))
    assert compiled.dynamics._core is not None and eager.dynamics._core is None
    assert counter.frame_count == 1, f"{counter.frame_count} graphs captured (graph breaks in the core)"
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    torch._dynamo.reset()
