"""``report.json``: the metrics of one evaluation, built from records, read back by ``drift compare``.

A report is plain JSON. Its core is :func:`drift.metrics.summarize` (turn keys are 1-based
strings), plus::

    report_version   1
    prompts          distinct prompt_ids
    pass_at_k        {"1": ..., "2": ..., "4": ...} up to the fewest episodes of any prompt
    optional, added by the command that wrote it: compute {"train_seconds": ..., ...}, model, ...

Readers only require ``n`` and ``cumulative_accuracy``; everything else is shown when present.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from drift import DriftError
from drift.metrics import cut_to, pass_at_k_values, summarize

REPORT_VERSION = 1
REPORT_NAME = "report.json"


def score_records(records: Sequence[dict], max_turns: int | None = None) -> dict:
    """The report of a list of evaluated episodes (records of schema 1).

    >>> rec = {"prompt_id": "p0", "correct": [False, True], "answers": ["3", "4"], "format_errors": 0}
    >>> report = score_records([rec], max_turns=3)
    >>> report["n"], report["cumulative_accuracy"], report["pass_at_k"]
    (1, {'1': 0.0, '2': 1.0, '3': 1.0}, {'1': 1.0})
    """
    budgets = sorted({rec["max_turns"] for rec in records if rec.get("max_turns") is not None})
    if max_turns is None and len(budgets) > 1:
        raise DriftError(
            f"the episodes have turn budgets {' and '.join(map(str, budgets))} (field 'max_turns'): an "
            "episode given fewer turns would count as unsolved at turns it never had; score them separately, "
            f"or score every episode's first {budgets[0]} turns (--max-turns {budgets[0]})"
        )
    if max_turns is not None:
        if budgets and budgets[0] < max_turns:
            raise DriftError(
                f"some episodes had a turn budget of {budgets[0]} (field 'max_turns'): scored over {max_turns} "
                f"turns they would count as unsolved at turns they never had; score at most {budgets[0]}"
            )
        records = cut_to(records, max_turns)
    report: dict[str, Any] = {"report_version": REPORT_VERSION}
    report.update(summarize(records, max_turns))
    report["prompts"] = len({rec["prompt_id"] for rec in records})
    report["pass_at_k"] = pass_at_k_values(records)
    return report


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_turn_table(path: Path, report: dict, key: str, required: bool) -> None:
    table = report.get(key)
    if table is None and not required:
        return
    if not isinstance(table, dict):
        raise DriftError(f"{path}: field '{key}' must be an object like {{\"1\": 0.5, ...}}")
    for t, value in table.items():
        if not (t.isascii() and t.isdigit() and len(t) <= 6) or str(int(t)) != t or int(t) < 1:  # "²".isdigit()
            raise DriftError(f"{path}: field '{key}' has key {t!r:.40}; turn keys are 1-based integers below 10^6")
        if not (value is None or _finite(value)):
            raise DriftError(f"{path}: field '{key}.{t}' must be a number or null, got {value!r}")


def load_report(path: str | Path) -> dict:
    """Read a ``report.json`` (or the ``report.json`` inside a folder) and check its shape."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_NAME
    if not path.is_file():
        raise DriftError(f"{path}: no such report file")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DriftError(f"{path}:{e.lineno}: not a readable JSON report ({e.msg} at column {e.colno})") from None
    except (OSError, UnicodeDecodeError, RecursionError, ValueError) as e:  # ValueError: a 5000-digit integer
        raise DriftError(f"{path}: not a readable JSON report ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(report, dict):
        raise DriftError(f"{path}: a report must be a JSON object")
    if not isinstance(report.get("n"), int) or isinstance(report.get("n"), bool):
        raise DriftError(f"{path}: field 'n' (number of episodes) must be an integer")
    _check_turn_table(path, report, "cumulative_accuracy", required=True)
    for key in ("per_turn_accuracy", "correction_rate"):
        _check_turn_table(path, report, key, required=False)
    for key in ("compute", "config"):
        if key in report and not isinstance(report[key], dict):
            raise DriftError(f"{path}: field '{key}' must be an object")
    for key in ("correction_rate_overall", "unique_answer_ratio", "format_error_rate"):
        if not (report.get(key) is None or _finite(report[key])):
            raise DriftError(f"{path}: field '{key}' must be a number or null, got {report[key]!r:.60}")
    intervals = report.get("cumulative_accuracy_ci") or {}
    pairs = intervals.values() if isinstance(intervals, dict) else [None, "not an object"]
    if not all(ci is None or (isinstance(ci, list) and len(ci) == 2 and all(map(_finite, ci))) for ci in pairs):
        raise DriftError(f"{path}: field 'cumulative_accuracy_ci' must be an object like {{\"1\": [0.4, 0.6], ...}}")
    for t, ci in intervals.items():
        value = report["cumulative_accuracy"].get(t)
        if ci is not None and value is not None and not ci[0] - 1e-9 <= value <= ci[1] + 1e-9:
            raise DriftError(f"{path}: field 'cumulative_accuracy_ci.{t}' is {ci}, which leaves out the value {value}")
    return report
