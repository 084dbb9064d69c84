"""The molecules domain: EDM (Hoogeboom et al., ICML 2022) on QM9, wired to the core.

State (per atom, a flat PyG node tensor [n_nodes, 9]): positions in Angstrom with zero centre of mass per
molecule ⊕ one-hot(H, C, N, O, F) × 0.25 ⊕ atomic number × 0.1 (EDM's normalisation factors 1, 4, 10). Space:
``ProductSpace([ZeroCoMSpace(GraphSpace(batch, 3)), GraphSpace(batch, 6)])``, so d = 3(N − 1) + 6N per molecule.
Batches are ``torch_geometric.data.Batch`` objects (no padding). Backbone: EDM's EGNN (``backbone.EGNNDynamics``),
called with ``batch=``, ``num_graphs=`` and ``edge_index=`` (all atom pairs; batches carry them from the collate).

Options (``data:``): ``path`` (``qm9.npz`` or its folder; default the committed subset
``tests/data/qm9_subset.npz``, real training: ``../shared/data/qm9``), ``split`` (training split, default
``train``), ``val_split`` (default ``valid``), ``max_molecules`` (optional cap, a seeded random subset),
``split_seed`` (default 0), ``train_half`` ("a" or "b": one half of the training split, EDM's D_a / D_b of its
conditional experiments), ``conditioning`` (QM9 properties to condition on, e.g. ``["alpha"]``: EDM's
conditional models, see :mod:`.conditioning`; the backbone gets ``context_nf`` = their number) and
``sample_properties`` (a conditional model's target values for sampling, e.g. ``{"alpha": 80.0}`` in Bohr³;
without it each molecule's condition is drawn with its size from the training split). Backbone config: ``{}``
(a small CPU EGNN, 4 × 64), ``{"type": "egnn_paper"}`` (EDM's 9 × 256), ``{"type": "egnn", **EGNNDynamics kwargs}``
or ``{"type": "e3nn", **E3NNDynamics kwargs}``.

Schedule: the domain's ``default_schedule`` is EDM's ``EDM_SCHEDULE`` (polynomial_2, 1000 steps, precision 1e-5),
used whenever a training config names no schedule.

Conditions (``DiffusionModel.sample(conditions=...)``, ``sciddpm sample --condition``) travel in the sampling space
(``Space.condition``), and the layout (graph ``batch`` index, all atom pairs as the graph part's ``edge_index``) is
the space itself, so the domain keeps no sampling state:

- ``n_atoms``: atom counts, an int (all molecules) or n ints (≥ 2, within the training histogram's range); default
  drawn from the training histogram;
- a conditional model's properties, by EDM's short name or QM9 field (``alpha``, ``gap`` …), each a number or n
  numbers in physical units; default ``sample_properties`` (domain option), else each molecule's condition drawn
  with its size from the training split's p(c | N). The space carries them normalised as ``context`` [n, k].

``network_condition(space)`` hands the network ``batch``, ``num_graphs``, ``edge_index`` and ``context``;
``write_samples`` / ``plot_samples`` / ``evaluate`` decode a flat state with the samples' ``space`` (the engine
passes ``SamplerOutput.space``) or an explicit ``(samples, batch)`` tuple.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sciddpm.domain import Domain, constructor_keys, per_sample_integers, register_domain
from sciddpm.network_time import refuse_raw_time_config, require_schedule
from sciddpm.outputs import atomic_path, require_suffix
from sciddpm.schedules import NoiseSchedule
from sciddpm.spaces import GraphSpace, ProductSpace, ZeroCoMSpace

from .backbone import EGNNDynamics, fully_connected_edges
from .conditioning import EDM_PROPERTY_NAMES, PropertyConditioning, resolve_properties
from .data import MoleculeSizeSampler, QM9Dataset, load_qm9
from .metrics import ATOMIC_NUMBERS, ELEMENTS, bond_order_matrix, evaluate_molecules, write_sdf, xyz_block

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "tests" / "data" / "qm9_subset.npz"
#: EDM's QM9 schedule (``polynomial_2``, T = 1000, precision 1e-5): put it in ``TrainConfig.schedule``.
EDM_SCHEDULE: dict[str, Any] = {"type": "polynomial", "num_steps": 1000, "power": 2.0, "precision": 1e-5}
#: The default (CPU-sized) EGNN; EDM's paper network is ``{"type": "egnn_paper"}`` (9 × 256).
SMALL_EGNN: dict[str, Any] = {"n_layers": 4, "hidden_nf": 64}
ONE_HOT_SCALE, CHARGE_SCALE = 0.25, 0.1
N_FEATURES = len(ELEMENTS) + 1
_Z_OF_TYPE = torch.tensor([ATOMIC_NUMBERS[e] for e in ELEMENTS])
log = logging.getLogger(__name__)


def edm_config(**overrides: Any) -> Any:
    """A TrainConfig for the molecules domain with EDM's schedule (``overrides`` win)."""
    from sciddpm.training import config_from_dict

    return config_from_dict({"domain": "molecules", "schedule": dict(EDM_SCHEDULE), **overrides}, "edm_config")


@functools.lru_cache(maxsize=256)
def _all_pairs(n_atoms: int) -> Tensor:
    """[2, n(n − 1)]: every ordered pair (receiver, sender) of distinct atoms of one n-atom molecule."""
    return torch.stack(fully_connected_edges(torch.zeros(n_atoms, dtype=torch.long), 1))


def training_half(n: int, half: str, seed: int = 0) -> np.ndarray:
    """EDM's D_a / D_b (§5.2): the training split cut into two halves by a seeded permutation
    (``numpy.random.default_rng(seed + 1)``); ``half`` "a" is the first ⌊n/2⌋, "b" the rest (sorted indices)."""
    if half not in ("a", "b"):
        raise ValueError(f"data.train_half must be 'a' or 'b', got {half!r}")
    perm = np.random.default_rng(seed + 1).permutation(n)
    return np.sort(perm[: n // 2] if half == "a" else perm[n // 2:])


class MoleculeSet(Dataset):
    """QM9 molecules as PyG ``Data(x=[n, 9] state, edge_index=[2, n(n − 1)])``: zero-CoM positions ⊕ one-hot × 0.25
    ⊕ charge × 0.1, and every ordered atom pair (the EGNN is fully connected). PyG's collate offsets the pairs,
    so a batch carries its pairs, built on the CPU (in the loader's workers), not by the GPU every step. With
    ``conditioning``, each molecule also has ``context`` [1, k]: its normalised properties."""

    def __init__(self, qm9: QM9Dataset, conditioning: PropertyConditioning | None = None) -> None:
        self.qm9, self.conditioning = qm9, conditioning

    def __len__(self) -> int:
        return len(self.qm9)

    def __getitem__(self, i: int) -> Any:
        from torch_geometric.data import Data

        item = self.qm9[i]
        pos = item.pos - item.pos.mean(0, keepdim=True)
        x = torch.cat([pos, item.one_hot * ONE_HOT_SCALE, item.charges * CHARGE_SCALE], dim=1)
        data = Data(x=x, edge_index=_all_pairs(x.shape[0]), num_nodes=x.shape[0])
        if self.conditioning is not None:
            data.context = self.conditioning.normalise(torch.cat([item[f] for f in self.conditioning.fields]))[None]
        return data


class MoleculeNet(nn.Module):
    """The backbone called as ``net(x_t, t, batch=..., num_graphs=..., edge_index=None)`` (the molecule index of
    every atom, and optionally the atom pairs, which the backbone builds from ``batch`` when absent)."""

    def __init__(self, dynamics: nn.Module) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, x_t: Tensor, t: Tensor, batch: Tensor | None = None, num_graphs: int | None = None,
                edge_index: Tensor | None = None, context: Tensor | None = None) -> Tensor:
        if batch is None:
            raise ValueError("the molecule network needs batch= (the molecule index of every atom); the domain's "
                             "network_condition(space) provides it")
        if edge_index is not None:
            edge_index = edge_index.to(x_t.device)
        if context is not None:
            context = context.to(x_t.device)
        return self.dynamics(x_t, t, batch=batch.to(x_t.device), num_graphs=num_graphs, edge_index=edge_index,
                             context=context)

    @property
    def schedule(self) -> NoiseSchedule | None:
        """The schedule whose noise level the wrapped network reads (``network_time.check_network_schedule``)."""
        return self.dynamics.schedule

    def compile_core(self, **options: Any) -> None:
        """Compile the backbone's tensor-only core (``forward_core`` of the EGNN or the e3nn network, dynamic
        shapes); the input checks stay eager."""
        self.dynamics.compile_core(**options)


@register_domain
class MoleculesDomain(Domain):
    name = "molecules"
    sample_suffix = ".sdf"
    sample_suffixes = (".sdf", ".xyz")
    default_schedule = EDM_SCHEDULE

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.histogram: Tensor | None = None
        self._qm9: dict[str, QM9Dataset] = {}
        #: QM9 property fields the model is conditioned on (``data.conditioning``), and their statistics.
        self.properties = resolve_properties(self.options.get("conditioning", []))
        self.conditioning: PropertyConditioning | None = None

    # ---------------------------------------------------------------------------------------- data
    def _split(self, options: dict[str, Any], split: str) -> QM9Dataset:
        path = str(options.get("path", DEFAULT_PATH))
        half = options.get("train_half") if split == "train" else None
        key = f"{path}|{split}|{options.get('max_molecules')}|{options.get('split_seed', 0)}|{half}"
        if key not in self._qm9:
            if path not in self._qm9:
                self._qm9 = {path: load_qm9(path)}  # one-line ValueErrors (NaN, empty molecule, element) propagate
            view = self._qm9[path].split(split, seed=int(options.get("split_seed", 0)), as_view=True)
            if half is not None:
                view = view.subset(training_half(len(view), half, int(options.get("split_seed", 0))))
            cap = options.get("max_molecules")
            if cap is not None and int(cap) < len(view):
                view = view.subset(np.sort(np.random.default_rng(0).permutation(len(view))[: int(cap)]))
            if len(view) == 0:
                raise ValueError(f"{path}: split {split!r} has no molecules")
            self._qm9[key] = view
        return self._qm9[key]

    def train_dataset(self, options: dict[str, Any]) -> MoleculeSet:
        qm9 = self._split(options, options.get("split", "train"))
        self.histogram = torch.as_tensor(qm9.atom_count_histogram(), dtype=torch.float64)
        if self.properties:
            self.conditioning = PropertyConditioning.from_dataset(self.properties, qm9)
        return MoleculeSet(qm9, self.conditioning)

    def val_dataset(self, options: dict[str, Any]) -> MoleculeSet:
        return MoleculeSet(self._split(options, options.get("val_split", "valid")), self._property_conditioning())

    def _property_conditioning(self) -> PropertyConditioning | None:
        """The training split's property statistics (computed on first use), None for an unconditional model."""
        if self.properties and self.conditioning is None:
            self.train_dataset(self.options)
        return self.conditioning

    def collate(self, items: list[Any]) -> Any:
        from torch_geometric.data import Batch

        return Batch.from_data_list(items)

    def split_batch(self, batch: Any, parts: int) -> list[Any]:
        """Interleaved shards by molecule (molecules k::parts), each a PyG Batch."""
        from torch_geometric.data import Batch

        data = batch.to_data_list()
        return [Batch.from_data_list(data[k::parts]) for k in range(parts)]

    # ---------------------------------------------------------------------------------------- model
    def build_backbone(self, config: dict[str, Any], schedule: NoiseSchedule | None = None) -> nn.Module:
        """The ``type`` (egnn, egnn_paper, e3nn) network of ``config``, reading t through ``schedule`` (required)."""
        refuse_raw_time_config(config, "molecules backbone")
        schedule = require_schedule(schedule, "MoleculesDomain.build_backbone")
        config = dict(config)
        kind = config.pop("type", "egnn")
        if kind == "egnn_paper":
            config = {"hidden_nf": 256, "n_layers": 9, **config}
            kind = "egnn"
        if config.setdefault("context_nf", len(self.properties)) != len(self.properties):
            raise ValueError(f"backbone context_nf is {config['context_nf']} but data.conditioning names "
                             f"{len(self.properties)} properties")
        if kind == "egnn":
            net: nn.Module = EGNNDynamics(in_node_nf=N_FEATURES, **{**SMALL_EGNN, **config}, schedule=schedule)
        elif kind == "e3nn":
            from .e3nn_backbone import E3NNDynamics

            net = E3NNDynamics(in_node_nf=N_FEATURES, **config, schedule=schedule)
        else:
            raise ValueError(f"unknown molecules backbone type {kind!r}; expected 'egnn', 'egnn_paper' or 'e3nn'")
        return MoleculeNet(net)

    def data_keys(self) -> tuple[str, ...]:
        return ("path", "max_molecules", "split", "val_split", "split_seed", "train_half", "conditioning",
                "sample_properties")

    def backbone_keys(self, config: dict[str, Any]) -> tuple[str, ...]:
        if config.get("type") == "e3nn":
            from .e3nn_backbone import E3NNDynamics

            net: type = E3NNDynamics
        else:
            net = EGNNDynamics
        return ("type",) + constructor_keys(net, exclude=("in_node_nf",))

    @staticmethod
    def _space(batch: Tensor, num_graphs: int, context: Tensor | None = None,
               edge_index: Tensor | None = None) -> ProductSpace:
        """positions (zero CoM) ⊕ features over one graph batch; the atom pairs ride on the feature part."""
        space = ProductSpace([ZeroCoMSpace(GraphSpace(batch, 3, num_graphs)),
                              GraphSpace(batch, N_FEATURES, num_graphs, edge_index)])
        return space.with_condition({"context": context}) if context is not None else space

    def space_for(self, batch: Any) -> ProductSpace:
        return self._space(batch.batch, int(batch.num_graphs), getattr(batch, "context", None),
                           getattr(batch, "edge_index", None))

    def state_from(self, batch: Any) -> Tensor:
        return batch.x

    def network_condition(self, space: Any) -> dict[str, Any]:
        """The network's keywords for states in ``space``: the molecule index of every atom, the number of molecules,
        all atom pairs (carried by the space; built here once if it has none) and a conditional model's context."""
        batch, n = self.batch_of(space)
        edges = space.parts[-1].edge_index
        cond = {"batch": batch, "num_graphs": n,
                "edge_index": edges if edges is not None else torch.stack(fully_connected_edges(batch, n))}
        if self.properties:
            context = space.condition.get("context")
            if context is None:
                raise ValueError(f"the model is conditioned on {list(self.properties)} but the molecules' space "
                                 "carries no context (sample in a space from sample_space)")
            cond["context"] = context
        return cond

    # ---------------------------------------------------------------------------------------- sampling
    def size_sampler(self) -> MoleculeSizeSampler:
        """Atom counts from the training-set histogram (bins below 2 atoms removed: zero CoM needs 2)."""
        if self.histogram is None:
            self.train_dataset(self.options)
        hist = self.histogram.clone()
        hist[:2] = 0
        return MoleculeSizeSampler(hist)

    def condition_keys(self) -> tuple[str, ...]:
        short = {v: k for k, v in EDM_PROPERTY_NAMES.items()}
        return ("n_atoms",) + tuple(name for f in self.properties for name in dict.fromkeys((f, short.get(f, f))))

    def sample_space(self, n: int, generator: torch.Generator | None = None,
                     conditions: dict[str, Any] | None = None) -> ProductSpace:
        """n molecules (sizes given as ``n_atoms`` or drawn from the training histogram) carrying their conditions
        (see the module docstring); all atom pairs are built once here and travel with the space."""
        given = self.check_conditions(conditions)
        sizes = self._sizes(given.pop("n_atoms", None), n, generator)
        context = None
        conditioning = self._property_conditioning()
        if conditioning is not None:
            if given:
                context = conditioning.targets(given, n, source="conditions")
            elif self.options.get("sample_properties") is not None:
                context = conditioning.targets(self.options["sample_properties"], n)
            else:
                context = conditioning.sample(sizes, generator)
        batch = torch.repeat_interleave(torch.arange(n), sizes)
        return self._space(batch, n, context, torch.stack(fully_connected_edges(batch, n)))

    def _sizes(self, value: Any, n: int, generator: torch.Generator | None) -> Tensor:
        sampler = self.size_sampler()
        if value is None:
            return sampler.sample(n, generator)
        sizes = per_sample_integers(value, n, "n_atoms", "counts", "molecules")
        bad = sizes[(sampler.log_prob(sizes) == float("-inf"))]
        if bad.numel():
            raise ValueError(f"condition 'n_atoms' = {int(bad[0])} is not a size of the training molecules "
                             f"(2..{sampler.probs.numel() - 1} with non-zero count)")
        return sizes

    @staticmethod
    def batch_of(space: Any) -> tuple[Tensor, int]:
        """(molecule index of every atom, number of molecules) of a molecule space (``space_for``/``sample_space``)."""
        if not (isinstance(space, ProductSpace) and isinstance(space.parts[-1], GraphSpace)):
            raise ValueError(f"expected a molecule space (ProductSpace of graph spaces), got {type(space).__name__}")
        return space.parts[-1].batch, space.batch_size

    def state_tensors(self) -> dict[str, Tensor]:
        if self.histogram is None:
            self.train_dataset(self.options)
        out = {"atom_count_histogram": self.histogram}
        if self.conditioning is not None:
            out["condition_table"] = self.conditioning.table
        return out

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        self.histogram = tensors["atom_count_histogram"].to(torch.float64)
        if self.properties:
            if "condition_table" not in tensors:
                raise ValueError(f"the export is conditioned on {list(self.properties)} but has no condition_table")
            self.conditioning = PropertyConditioning(self.properties, tensors["condition_table"])

    # ---------------------------------------------------------------------------------------- decoding, I/O
    def decode(self, samples: Tensor | tuple[Tensor, Tensor], space: Any = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Molecules (atomic numbers [n], positions [n, 3] Å) from a flat state tensor and its ``space`` (or a
        ``(state, batch)`` tuple); atom type = argmax of the one-hot part."""
        if isinstance(samples, (tuple, list)):
            x, batch = samples
            n_graphs = int(batch.max()) + 1 if batch.numel() else 0
        elif space is None:
            raise ValueError("molecule samples need their space (SamplerOutput.space) or a (samples, batch) tuple")
        else:
            x = samples
            batch, n_graphs = self.batch_of(space)
            if batch.numel() != x.shape[0]:
                raise ValueError(f"molecule state has {x.shape[0]} atoms but its space has {batch.numel()}")
        x, batch = x.detach().cpu().double(), batch.cpu()
        if x.dim() != 2 or x.shape[1] != 3 + N_FEATURES:
            raise ValueError(f"molecule samples have shape {tuple(x.shape)}, expected [n_atoms, {3 + N_FEATURES}]")
        z = _Z_OF_TYPE[x[:, 3:3 + len(ELEMENTS)].argmax(1)]
        order = torch.argsort(batch, stable=True)
        counts = torch.bincount(batch, minlength=n_graphs).tolist()
        return [(zz.numpy(), pp.numpy()) for zz, pp in
                zip(torch.split(z[order], counts), torch.split(x[order, :3], counts))]

    def write_samples(self, path: Path, samples: Tensor | tuple[Tensor, Tensor], space: Any = None) -> None:
        """``path`` by its extension: ``.sdf`` (EDM bonds, unsanitized, so unstable molecules are kept; a conditional
        model's targets, the space's conditions in physical units, become SDF data fields) or ``.xyz`` (one XYZ
        frame per molecule); any other extension is refused. Molecules with non-finite coordinates are skipped,
        with a warning. Written to a temporary name, then renamed."""
        path = Path(path)
        suffix = require_suffix(path, self.sample_suffixes)
        mols = self.decode(samples, space)
        targets = self.sample_targets(space)
        keep = [k for k, m in enumerate(mols) if np.isfinite(m[1]).all() and len(m[0]) > 0]
        finite = [mols[k] for k in keep]
        if len(finite) < len(mols):
            log.warning("write_samples: skipped %d of %d molecules with non-finite coordinates",
                        len(mols) - len(finite), len(mols))
        with atomic_path(path) as tmp:
            if suffix == ".sdf":
                write_sdf(tmp, finite, None if targets is None else [targets[k] for k in keep])
            else:
                tmp.write_text("".join(xyz_block(z, p, f"sample {k}") for k, (z, p) in enumerate(finite)))

    def sample_targets(self, space: Any) -> list[dict[str, float]] | None:
        """Each molecule's conditions in ``space`` as ``{property: value}`` in physical units (None when the model
        or the space has no conditions)."""
        context = getattr(space, "condition", {}).get("context")
        if self.conditioning is None or context is None:
            return None
        values = self.conditioning.denormalise(context.detach().cpu())
        return [dict(zip(self.properties, row.tolist())) for row in values]

    def plot_samples(self, path: Path, samples: Tensor | tuple[Tensor, Tensor], space: Any = None,
                     count: int = 6) -> None:
        """Up to ``count`` molecules in 3-D: atoms coloured by element, EDM-rule bonds as lines."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        colours = {1: "lightgrey", 6: "black", 7: "blue", 8: "red", 9: "green"}
        mols = [m for m in self.decode(samples, space) if np.isfinite(m[1]).all()][:count]
        cols = max(1, min(3, len(mols)))
        rows = max(1, -(-len(mols) // cols))
        fig = plt.figure(figsize=(3.2 * cols, 3.2 * rows))
        for k, (z, pos) in enumerate(mols):
            ax = fig.add_subplot(rows, cols, k + 1, projection="3d")
            orders = bond_order_matrix(z, pos)
            for i, j in zip(*np.nonzero(np.triu(orders, 1))):
                ax.plot(*pos[[i, j]].T, color="grey", linewidth=orders[i, j])
            ax.scatter(*pos.T, c=[colours[int(a)] for a in z], s=[40 if a == 1 else 90 for a in z],
                       edgecolors="k", depthshade=False)
            ax.set_title(f"{len(z)} atoms", fontsize=9)
            ax.set_axis_off()
        fig.tight_layout()
        try:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=80, format="png")
        finally:
            plt.close(fig)

    def evaluate(self, samples: Tensor | tuple[Tensor, Tensor], space: Any = None) -> dict[str, float]:
        """EDM's metrics: atom/molecule stability, validity, uniqueness (+ RDKit DetermineBonds validity)."""
        out = evaluate_molecules(self.decode(samples, space))
        return {k: float(v) for k, v in out.items() if v is not None}


__all__ = ["MoleculesDomain", "MoleculeSet", "MoleculeNet", "EDM_SCHEDULE", "SMALL_EGNN", "edm_config"]
