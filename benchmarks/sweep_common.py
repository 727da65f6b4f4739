"""What the sweep scripts (``gpt_sweep.py``, ``translate_sweep.py``) share.

- Variants run one after another, never side by side: their budgets are wall-clock time on this
  2-core machine, and a run sharing the cores would be measured on a slower machine.
- ``OUT/results.jsonl`` gets one line per finished variant; a variant already there is not run
  again, so a killed sweep resumes where it stopped (its unfinished run starts over).
- A name ending in ``-sN`` is a seed of the variant before it; :func:`by_variant` groups them
  for a mean and spread.
"""

from __future__ import annotations

import json
import shutil
import statistics
from collections.abc import Callable
from pathlib import Path

RESULTS = "results.jsonl"


def read_results(out: Path) -> dict[str, dict]:
    """``{name: row}`` of the variants finished in ``out``."""
    path = out / RESULTS
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["name"]: row for row in rows}


def run_in_sequence(configs: dict, out: Path, run_variant: Callable[[str, dict, Path], dict],
                    describe: Callable[[dict], str]) -> dict[str, dict]:
    """``run_variant(name, overrides, folder)`` for every config not yet in ``out``'s results, in
    order; each returned row (``name`` and ``overrides`` added) is appended as it finishes."""
    out.mkdir(parents=True, exist_ok=True)
    results = read_results(out)
    todo = [name for name in configs if name not in results]
    for number, name in enumerate(todo, start=1):
        folder = out / name
        if folder.exists():  # an unfinished run of a killed sweep: start it over
            shutil.rmtree(folder)
        print(f"[{number}/{len(todo)}] {name}: {json.dumps(configs[name])}", flush=True)
        row = {"name": name, "overrides": configs[name], **run_variant(name, configs[name], folder)}
        with open(out / RESULTS, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        results[name] = row
        print(f"    {describe(row)}", flush=True)
    return results


def variant_of(name: str) -> str:
    """``"lr6-s2"`` -> ``"lr6"``: seeds of one variant share the name before ``-sN``."""
    head, _, tail = name.rpartition("-s")
    return head if head and tail.isdigit() else name


def by_variant(values: dict[str, float]) -> dict[str, list[float]]:
    """``{run name: value}`` grouped by :func:`variant_of`, in first-seen order."""
    groups: dict[str, list[float]] = {}
    for name, value in values.items():
        groups.setdefault(variant_of(name), []).append(value)
    return groups


def spread_row(variant: str, values: list[float], digits: int = 4) -> str:
    """``| variant | seeds | mean | min-max | sd |`` for one variant's values."""
    spread = f"{min(values):.{digits}f}-{max(values):.{digits}f}" if len(values) > 1 else "-"
    sd = f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "-"
    return f"| {variant} | {len(values)} | {statistics.mean(values):.{digits}f} | {spread} | {sd} |"
