"""Command-line VALUES: ``--condition`` / ``--sampler-option`` assignments (numbers, lists, ``@file`` arrays) and
``--temperature`` grids, parsed with one-line errors that name the flag (``sciddpm.cli`` uses them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def temperature_grid(spec: str) -> torch.Tensor:
    """``--temperature``: ``LO:HI:STEP`` → LO, LO + STEP, … ≤ HI (HI included up to rounding), or ``T1,T2,…``, as
    float64; ValueError naming the flag for a malformed spec, a step ≤ 0, more than 10,000 values or a T ≤ 0."""
    parts = spec.split(":")
    try:
        if len(parts) == 3:
            lo, hi, step = (float(p) for p in parts)
            if not step > 0 or hi < lo or (hi - lo) / step > 10_000:
                raise ValueError
            grid = torch.arange(round((hi - lo) / step + 1e-9) + 1, dtype=torch.float64) * step + lo
        elif len(parts) == 1:
            grid = torch.tensor([float(p) for p in spec.split(",")], dtype=torch.float64)
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"--temperature {spec}: expected LO:HI:STEP with LO <= HI and STEP > 0, or T1,T2,...") from None
    if not bool(torch.isfinite(grid).all()) or bool((grid <= 0).any()):
        raise ValueError(f"--temperature {spec}: temperatures must be finite and > 0")
    return grid.round(decimals=10)


def parse_value(text: str, flag: str, key: str, arrays: bool = True) -> Any:
    """A command-line VALUE: an ``int``/``float`` number (``1``, ``-0.5``, ``1e-3``), a comma-separated list of
    numbers (a 1-D tensor: int64 if all are integers, else float32) or, with ``arrays``, ``@file`` — an array from a
    ``.npy``, ``.npz`` (the array named KEY, or its only array), ``.txt`` (whitespace) or ``.csv`` (commas, an
    optional header line) file, as a tensor (floating arrays as float32); without ``arrays`` (sampler options) a
    list is a tuple (e.g. ``clip_x0=-1,1``), ``true``/``false`` are booleans, ``none`` is None and a bare word is a
    string (``variant=bh1``). ValueError naming the flag otherwise."""
    what = f"{flag} {key}={text}"
    if not arrays and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if not arrays and text.lower() == "none":
        return None
    if not arrays and text.isidentifier():
        return text
    if text.startswith("@"):
        if not arrays:
            raise ValueError(f"{what}: files are not accepted here; give a number")
        return _array_file(Path(text[1:]), key, what)
    parts = [p.strip() for p in text.split(",")]
    try:
        numbers = [_number(p) for p in parts]
    except ValueError:
        raise ValueError(f"{what}: VALUE must be a number, a comma-separated list of numbers or @file") from None
    if len(numbers) == 1 and "," not in text:
        return numbers[0]
    if not arrays:
        return tuple(numbers)
    return torch.tensor(numbers) if all(isinstance(v, int) for v in numbers) else torch.tensor(
        [float(v) for v in numbers], dtype=torch.float32)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        value = float(text)  # ValueError for non-numbers
        if not torch.isfinite(torch.tensor(value)):
            raise ValueError(text) from None
        return value


def _array_file(path: Path, key: str, what: str) -> torch.Tensor:
    import numpy as np

    if path.suffix not in (".npy", ".npz", ".txt", ".csv"):
        raise ValueError(f"{what}: the file must end in .npy, .npz, .txt or .csv")
    if not path.is_file():
        raise ValueError(f"{what}: file not found: {path}")
    try:
        if path.suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                names = list(npz.files)
                if key not in names and len(names) != 1:
                    raise ValueError(f"{path} holds arrays {names}, none named {key!r}")
                array = npz[key if key in names else names[0]]
        else:
            delimiter = "," if path.suffix == ".csv" else None
            try:
                array = np.loadtxt(path, delimiter=delimiter, ndmin=1)
            except ValueError:  # a header line
                array = np.loadtxt(path, delimiter=delimiter, ndmin=1, skiprows=1)
    except (ValueError, OSError) as exc:
        raise ValueError(f"{what}: cannot read {path}: {str(exc).splitlines()[0]}") from None
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what}: {path} holds {array.dtype} values, not numbers")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_floating_point():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{what}: {path} holds NaN or infinite values")
        tensor = tensor.to(torch.float32)
    return tensor


def parse_assignments(items: list[str], flag: str, arrays: bool = True) -> dict[str, Any]:
    """``KEY=VALUE`` strings (a repeatable flag) as a dict of ``parse_value``s; ValueError for a malformed or
    repeated KEY."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key or not value:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        if key in out:
            raise ValueError(f"{flag} {key} is given twice")
        out[key] = parse_value(value.strip(), flag, key, arrays)
    return out
