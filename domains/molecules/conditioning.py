"""Property conditioning for the molecules domain, as EDM's conditional QM9 models (Hoogeboom et al., ICML 2022, §5.2).

A conditional model sees each molecule's property vector c (e.g. the polarisability α) normalised with the
training split's mean and mean absolute deviation, c̃ = (c − mean) / MAD (EDM's ``compute_mean_mad``), as the
EGNN's context (concatenated to every atom's features). New molecules are drawn with their conditions from the
training distribution p(N, c) = p(N) p(c | N): the atom count N from the training histogram, then c from a
uniformly chosen training molecule with N atoms (the role of EDM's ``DistributionProperty``), or c set to
target values given in physical units.

Names: the QM9 fields of :data:`.data.PROPERTY_FIELDS` or EDM's short names (``alpha``, ``gap``, ``homo``, ``lumo``,
``mu``, ``Cv``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .data import PROPERTY_FIELDS, QM9Dataset

#: EDM's conditioning names -> the QM9 fields (units: Debye, Bohr³, Hartree, cal/(mol K)).
EDM_PROPERTY_NAMES: dict[str, str] = {"mu": "mu_debye", "alpha": "alpha_bohr3", "homo": "homo_hartree",
                                      "lumo": "lumo_hartree", "gap": "gap_hartree", "Cv": "cv_cal_mol_k"}


def resolve_properties(names: Sequence[str] | str) -> tuple[str, ...]:
    """QM9 field names for ``names`` (fields or EDM's short names); ValueError naming an unknown one."""
    names = [names] if isinstance(names, str) else list(names)
    out = []
    for name in names:
        field = EDM_PROPERTY_NAMES.get(name, name)
        if field not in PROPERTY_FIELDS:
            raise ValueError(f"unknown QM9 property {name!r} in data.conditioning; expected one of "
                             f"{sorted(EDM_PROPERTY_NAMES)} or {list(PROPERTY_FIELDS)}")
        if field in out:
            raise ValueError(f"property {name!r} appears twice in data.conditioning")
        out.append(field)
    return tuple(out)


class PropertyConditioning:
    """Normalisation and joint sampling of the conditioning properties ``fields`` (see the module docstring).

    ``table`` [M, 1 + k] float64: the training molecules' atom counts and raw property values; it is the whole
    state (``state_tensors``), so a loaded model samples conditions without the data set.
    """

    def __init__(self, fields: Sequence[str], table: Tensor) -> None:
        self.fields = tuple(fields)
        table = torch.as_tensor(table, dtype=torch.float64)
        if table.dim() != 2 or table.shape[1] != 1 + len(self.fields) or table.shape[0] < 1:
            raise ValueError(f"condition table has shape {tuple(table.shape)}; expected (M >= 1, {1 + len(fields)})")
        if not bool(torch.isfinite(table).all()):
            raise ValueError(f"condition table holds NaN or inf (properties {list(self.fields)})")
        self.table = table
        values = table[:, 1:]
        self.mean = values.mean(0)
        self.mad = (values - self.mean).abs().mean(0)
        if bool((self.mad <= 0).any()):
            raise ValueError(f"properties {list(self.fields)} have no spread in the training split (MAD = 0)")
        self.n_atoms = table[:, 0].long()

    @classmethod
    def from_dataset(cls, fields: Sequence[str], qm9: QM9Dataset) -> "PropertyConditioning":
        """Statistics and the p(c | N) table of a QM9 split (ValueError if the file lacks a property)."""
        missing = [f for f in fields if f not in qm9.properties]
        if missing:
            raise ValueError(f"{qm9.source}: no property {missing[0]!r} (the file has {sorted(qm9.properties)})")
        rows = qm9._rows()
        columns = [qm9.n_atoms[rows].astype(np.float64)] + [qm9.properties[f][rows].astype(np.float64) for f in fields]
        return cls(fields, torch.from_numpy(np.stack(columns, axis=1)))

    def normalise(self, values: Tensor) -> Tensor:
        """c̃ = (c − mean) / MAD, float32 [..., k]."""
        return ((torch.as_tensor(values, dtype=torch.float64) - self.mean) / self.mad).to(torch.float32)

    def denormalise(self, context: Tensor) -> Tensor:
        """c = c̃ · MAD + mean, float64."""
        return context.to(torch.float64) * self.mad + self.mean

    def sample(self, sizes: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Normalised conditions [B, k] for molecules of ``sizes`` atoms: each from a uniformly drawn training
        molecule with the same atom count (ValueError for a count the training split does not have)."""
        out = torch.empty((len(sizes), len(self.fields)), dtype=torch.float64)
        u = torch.rand(len(sizes), generator=generator, dtype=torch.float64)
        for n in torch.unique(sizes).tolist():
            pool = torch.nonzero(self.n_atoms == n).flatten()
            if pool.numel() == 0:
                raise ValueError(f"no training molecule has {n} atoms to draw a condition from")
            where = torch.nonzero(sizes == n).flatten()
            pick = pool[(u[where] * pool.numel()).long().clamp(max=pool.numel() - 1)]
            out[where] = self.table[pick, 1:]
        return self.normalise(out)

    def targets(self, values: dict[str, Any], count: int, source: str = "sample_properties") -> Tensor:
        """Normalised conditions [count, k] set to ``values`` (physical units, every property named; each a number
        for all molecules or ``count`` numbers, one per molecule); ``source`` names the setting in errors."""
        names = {EDM_PROPERTY_NAMES.get(k, k): v for k, v in values.items()}
        unknown = sorted(set(names) - set(self.fields))
        if unknown or len(names) != len(self.fields):
            raise ValueError(f"{source} must give exactly the conditioning properties {list(self.fields)}, "
                             f"got {sorted(values)}")
        columns = []
        for f in self.fields:
            col = torch.as_tensor(names[f], dtype=torch.float64).reshape(-1)
            if col.numel() not in (1, count):
                raise ValueError(f"{source}: property {f!r} holds {col.numel()} values for {count} molecules")
            columns.append(col.expand(count))
        table = torch.stack(columns, dim=1)
        if not bool(torch.isfinite(table).all()):
            raise ValueError(f"{source} holds NaN or inf: {values}")
        return self.normalise(table)


__all__ = ["EDM_PROPERTY_NAMES", "PropertyConditioning", "resolve_properties"]
