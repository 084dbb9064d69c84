"""Shared result writer for benchmark scripts.

Every benchmark prints its table and saves ``benchmarks/results/NAME.json`` and ``NAME.md`` with the
machine, the command and the date, so a reader can rerun it and compare like with like.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any, Sequence

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_description() -> str:
    """One line naming the CPU count, the platform, Python, torch and the GPU (if any)."""
    parts = [platform.platform(), f"python {platform.python_version()}", f"{os.cpu_count()} CPUs"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(torch.cuda.get_device_name(0))
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    return ", ".join(parts)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Render rows (dicts with the same keys) as a GitHub markdown table."""
    if not rows:
        return "(no rows)\n"
    keys = list(rows[0].keys())
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(_format(row.get(k, "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def write_results(
    name: str,
    rows: list[dict[str, Any]],
    *,
    title: str,
    notes: str = "",
    extra: dict[str, Any] | None = None,
    results_dir: Path = RESULTS_DIR,
) -> tuple[Path, Path]:
    """Write ``NAME.json`` ({benchmark, date, machine, command, rows, ...}) and ``NAME.md``; print the table."""
    results_dir.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]) if sys.argv and sys.argv[0] else "?"
    payload: dict[str, Any] = {
        "benchmark": name,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "command": command,
        "rows": rows,
    }
    if extra:
        payload.update(extra)
    json_path = results_dir / f"{name}.json"
    md_path = results_dir / f"{name}.md"
    table = markdown_table(rows)
    md = (
        f"# {title}\n\n- date: {payload['date']}\n- machine: {payload['machine']}\n"
        f"- command: `{command}`\n\n{table}"
        + (f"\n{notes.strip()}\n" if notes else "")
    )
    tmp_json = json_path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(payload, indent=2) + "\n")
    tmp_json.replace(json_path)
    md_path.write_text(md)
    print(md)
    return json_path, md_path
