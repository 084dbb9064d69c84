"""Plant exports as time series: a CSV reader for any SCADA export of the BATADAL shape, normalisation, windows.

A plant export is a CSV with a header: one time column, numeric sensor columns and optionally a label column
(1 = attack / anomaly, 0 = normal; BATADAL's ``ATT_FLAG``, Taormina et al. 2018). Column names, the time format and
the label column are options, so a user points the reader at their own plant's export. Sensors whose values are
all 0 or 1 are recognised as binary actuator states (pump on/off). Empty cells and ``nan``/``NA`` are missing
values (carried by a mask, never silently filled); any other non-numeric cell, a timestamp that goes backwards or a
column that the model was trained on but the file lacks is a one-line ``ValueError`` naming the file, line and
column. A sensor that is constant in the training rows is kept with unit scale and a logged message (a later
deviation from the constant is then an anomaly in raw units rather than a division by zero).
"""
from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

import numpy as np

log = logging.getLogger(__name__)

#: Cells read as a missing value (masked), not as an error.
MISSING = frozenset({"", "nan", "na", "null", "none"})
#: BATADAL's names and time format (``06/01/14 00`` = day/month/year hour).
DEFAULT_TIME_COLUMN, DEFAULT_LABEL_COLUMN, DEFAULT_TIME_FORMAT = "DATETIME", "ATT_FLAG", "%d/%m/%y %H"
_EPOCH = datetime(1970, 1, 1)


@dataclass
class PlantTable:
    """A plant export in memory: ``values`` float64 [T, F] (NaN = missing), ``hours`` float64 [T] (hours since the
    epoch, or the row number without a time column), ``stamps`` the time cells as written, ``labels`` int [T] or
    None, ``columns`` the sensor names in file order."""

    source: str
    columns: list[str]
    values: np.ndarray
    hours: np.ndarray
    stamps: list[str]
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.hours)

    def select(self, columns: Sequence[str]) -> "PlantTable":
        """The same rows with the sensor columns ``columns`` in that order; ValueError naming the first one the file
        lacks (a model trained on a column cannot score a file without it)."""
        index = {c: i for i, c in enumerate(self.columns)}
        missing = [c for c in columns if c not in index]
        if missing:
            raise ValueError(f"{self.source}: column {missing[0]!r} that the model was trained on is missing "
                             f"({len(missing)} trained column(s) missing in all)")
        return PlantTable(self.source, list(columns), self.values[:, [index[c] for c in columns]], self.hours,
                          self.stamps, self.labels)

    def rows(self, start: int, stop: int) -> "PlantTable":
        """Rows start..stop−1."""
        labels = None if self.labels is None else self.labels[start:stop]
        return PlantTable(self.source, self.columns, self.values[start:stop], self.hours[start:stop],
                          self.stamps[start:stop], labels)

    def segments(self) -> list[tuple[int, int]]:
        """Contiguous runs [start, stop) of rows: a new run starts where the time step exceeds 1.5× the median
        step (BATADAL's training file joins dataset03 and dataset04, 18 months apart)."""
        if len(self) < 2:
            return [(0, len(self))]
        steps = np.diff(self.hours)
        cuts = np.flatnonzero(steps > 1.5 * np.median(steps)) + 1
        bounds = [0, *cuts.tolist(), len(self)]
        return list(zip(bounds[:-1], bounds[1:]))


def parse_time(text: str, time_format: str | None) -> float:
    """Hours since 1970-01-01 of a time cell: ``time_format`` (strptime), else ISO 8601, else a plain number of
    hours; ValueError otherwise."""
    text = text.strip()
    for parse in ((lambda s: datetime.strptime(s, time_format)) if time_format else None, datetime.fromisoformat):
        if parse is None:
            continue
        try:
            return (parse(text).replace(tzinfo=None) - _EPOCH).total_seconds() / 3600.0
        except ValueError:
            pass
    return float(text)


class PlantReader:
    """Reads a plant CSV row by row (a file or a stream such as stdin), checking every cell as it arrives.

    ``time_column`` None: no time column (row numbers are the time); ``label_column`` is optional in the file.
    ``columns``: the sensor columns to keep (default: every other column)."""

    def __init__(self, stream: TextIO, source: str, time_column: str | None = DEFAULT_TIME_COLUMN,
                 label_column: str | None = DEFAULT_LABEL_COLUMN, time_format: str | None = DEFAULT_TIME_FORMAT,
                 columns: Sequence[str] | None = None) -> None:
        self.source, self.time_format = source, time_format
        self._reader = csv.reader(stream)
        try:
            header = [h.strip() for h in next(self._reader)]
        except StopIteration:
            raise ValueError(f"{source}: empty file (no header row)") from None
        if len(set(header)) != len(header):
            dup = next(h for h in header if header.count(h) > 1)
            raise ValueError(f"{source}: column {dup!r} appears twice in the header")
        self.header = header
        self.time_index = self._find(time_column, "time") if time_column else None
        self.label_index = header.index(label_column) if label_column and label_column in header else None
        others = [i for i in range(len(header)) if i not in (self.time_index, self.label_index)]
        if columns is None:
            self.sensor_index = others
        else:
            self.sensor_index = [self._find(c, "trained") for c in columns]
        self.columns = [header[i] for i in self.sensor_index]
        if not self.columns:
            raise ValueError(f"{source}: no sensor columns")
        self.line, self._last_hour, self._last_stamp = 1, -math.inf, ""

    def _find(self, name: str, what: str) -> int:
        if name not in self.header:
            if what == "trained":
                raise ValueError(f"{self.source}: column {name!r} that the model was trained on is missing")
            raise ValueError(f"{self.source}: no {what} column {name!r} in the header")
        return self.header.index(name)

    def __iter__(self) -> Iterator[tuple[str, float, np.ndarray, int | None]]:
        """(time cell, hours, values float64 [F] with NaN for missing cells, label or None) per data row."""
        for row in self._reader:
            self.line += 1
            if not row or all(not c.strip() for c in row):
                continue
            yield self.parse_row(row)

    def parse_row(self, row: list[str]) -> tuple[str, float, np.ndarray, int | None]:
        """One data row, checked: width, time order, numeric cells, 0/1 label."""
        where = f"{self.source} line {self.line}"
        if len(row) != len(self.header):
            raise ValueError(f"{where}: {len(row)} cells but the header has {len(self.header)}")
        if self.time_index is None:
            stamp, hour = str(self.line - 1), float(self.line - 1)
        else:
            stamp = row[self.time_index].strip()
            try:
                hour = parse_time(stamp, self.time_format)
            except ValueError:
                raise ValueError(f"{where}: time {stamp!r} does not match the format {self.time_format!r} "
                                 "(nor ISO 8601, nor a number)") from None
            if hour <= self._last_hour:
                raise ValueError(f"{where}: timestamp {stamp!r} goes backwards (or repeats): the previous row was "
                                 f"{self._last_stamp!r}")
        self._last_hour, self._last_stamp = hour, stamp
        values = np.empty(len(self.sensor_index))
        for k, i in enumerate(self.sensor_index):
            cell = row[i].strip()
            if cell.lower() in MISSING:
                values[k] = np.nan
                continue
            try:
                values[k] = float(cell)
            except ValueError:
                raise ValueError(f"{where} column {self.header[i]!r}: non-numeric value {cell!r}") from None
            if not math.isfinite(values[k]):
                raise ValueError(f"{where} column {self.header[i]!r}: non-finite value {cell!r}")
        label = None
        if self.label_index is not None:
            cell = row[self.label_index].strip()
            if cell not in ("0", "1"):
                raise ValueError(f"{where} column {self.header[self.label_index]!r}: label {cell!r} is not 0 or 1")
            label = int(cell)
        return stamp, hour, values, label


def open_source(path: str | Path | TextIO) -> tuple[TextIO, str]:
    """(text stream, name) for a path, ``-`` (stdin) or an open stream; ValueError for a missing file."""
    import sys

    if isinstance(path, io.TextIOBase) or hasattr(path, "read"):
        return path, getattr(path, "name", "<stream>")  # type: ignore[return-value]
    if str(path) == "-":
        return sys.stdin, "<stdin>"
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"plant data file not found: {path}")
    return open(path, newline=""), str(path)


def read_plant_csv(path: str | Path | TextIO, time_column: str | None = DEFAULT_TIME_COLUMN,
                   label_column: str | None = DEFAULT_LABEL_COLUMN, time_format: str | None = DEFAULT_TIME_FORMAT,
                   columns: Sequence[str] | None = None) -> PlantTable:
    """A whole plant CSV as a :class:`PlantTable` (see :class:`PlantReader` for the checks)."""
    stream, source = open_source(path)
    try:
        reader = PlantReader(stream, source, time_column, label_column, time_format, columns)
        stamps, hours, values, labels = [], [], [], []
        for stamp, hour, row, label in reader:
            stamps.append(stamp), hours.append(hour), values.append(row), labels.append(label)
    finally:
        if stream is not path and source != "<stdin>":
            stream.close()
    if not values:
        raise ValueError(f"{source}: no data rows")
    lab = None if reader.label_index is None else np.asarray(labels, dtype=np.int64)
    return PlantTable(source, reader.columns, np.vstack(values), np.asarray(hours), stamps, lab)


@dataclass
class Normaliser:
    """Per-sensor standardisation z = (x − mean)/scale fitted on training rows (NaN-aware). ``binary``: sensors
    whose observed values are all 0/1 (actuator states); ``constant``: sensors with zero spread, given scale 1 (raw
    units) so that any later deviation stays visible."""

    columns: list[str]
    mean: np.ndarray
    scale: np.ndarray
    binary: np.ndarray
    constant: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, columns: Sequence[str], source: str = "data") -> "Normaliser":
        """Mean and standard deviation per column over the observed values of ``values`` [T, F]."""
        observed = np.isfinite(values)
        if not observed.any(axis=0).all():
            empty = columns[int(np.flatnonzero(~observed.any(axis=0))[0])]
            raise ValueError(f"{source}: sensor {empty!r} has no observed value in the training rows")
        mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        binary = np.array([bool(np.isin(values[observed[:, j], j], (0.0, 1.0)).all()) for j in range(len(columns))])
        constant = std < 1e-9
        for j in np.flatnonzero(constant):
            log.warning("%s: sensor %s is constant (%g) in the training rows; it is kept with unit scale, so any "
                        "deviation from that value scores in raw units", source, columns[j], mean[j])
        return cls(list(columns), mean, np.where(constant, 1.0, std), binary, constant)

    def apply(self, values: np.ndarray) -> np.ndarray:
        """(x − mean)/scale, NaN where missing."""
        return (values - self.mean) / self.scale

    def invert(self, z: np.ndarray) -> np.ndarray:
        """mean + scale·z."""
        return self.mean + self.scale * z


def window_starts(n_rows: int, segments: Iterable[tuple[int, int]], length: int,
                  exclude: np.ndarray | None = None) -> np.ndarray:
    """Start rows s of windows s..s+length−1 that lie inside one contiguous segment and contain no row flagged
    in ``exclude`` (e.g. labelled attacks or missing targets)."""
    starts = []
    for a, b in segments:
        starts.extend(range(a, max(a, b - length + 1)))
    starts_arr = np.asarray(starts, dtype=np.int64)
    if exclude is not None and len(starts_arr):
        bad = np.concatenate([[0], np.cumsum(exclude.astype(np.int64))])
        starts_arr = starts_arr[bad[starts_arr + length] - bad[starts_arr] == 0]
    return starts_arr[starts_arr + length <= n_rows]
