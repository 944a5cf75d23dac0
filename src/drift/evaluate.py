"""``drift eval``: run the correction environment on a model (or take existing records) and report.

The episodes come from exactly the code that makes rollouts (drift.rollout.sample_to_file), so
prompts, feedback and parsing cannot differ between data generation and evaluation.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from drift import DriftError
from drift.options import to_dict
from drift.records import read_records


def fingerprint(records: list[dict]) -> str:
    """A short hash of the evaluated problems (prompt_id, question, gold), independent of order.

    >>> fingerprint([{"prompt_id": "a", "gold": "1"}]) == fingerprint([{"prompt_id": "a", "gold": "1"}] * 2)
    True
    """
    keys = sorted({f"{r['prompt_id']}\x00{r.get('question', '')}\x00{r.get('gold', '')}" for r in records})
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def build_report(records: list[dict], cfg, *, wall_seconds: float, stats: dict | None = None) -> dict:
    from drift.report import score_records

    report = score_records(records, cfg.max_turns if not cfg.records else None)
    report.update(
        model=cfg.model if not cfg.records else None,
        task=cfg.task if not cfg.records else records[0].get("task"),
        dataset_fingerprint=fingerprint(records),
        wall_seconds=round(wall_seconds, 2),
        config=to_dict(cfg),
    )
    if stats:
        report["generation"] = stats
    return report


def print_report(report: dict, name: str = "eval") -> None:
    from drift.tables import format_table

    rows = []
    for t, acc in report["cumulative_accuracy"].items():
        lo, hi = report["cumulative_accuracy_ci"][t] or (None, None)
        rows.append([f"multi@{t}", acc, lo, hi, report["per_turn_accuracy"].get(t)])
    print(format_table(rows, [name, "solved", "ci_low", "ci_high", "turn acc"]))
    print(
        f"n={report['n']}  correction rate={report['correction_rate_overall']}  "
        f"unique answers={report['unique_answer_ratio']}  format errors={report['format_error_rate']}"
    )


def run_eval(cfg, generator=None) -> dict:
    """Evaluate; write ``records.jsonl`` and ``report.json`` into ``cfg.out``; return the report."""
    from drift.outputs import write_json
    from drift.rollout import sample_to_file

    if not cfg.out:
        raise DriftError("no output folder given (--out DIR)")
    out = Path(cfg.out)
    start = time.perf_counter()
    stats = None
    if cfg.records:
        records = read_records(cfg.records)
        out.mkdir(parents=True, exist_ok=True)
    else:
        path = out / "records.jsonl"
        stats = sample_to_file(cfg, path, desc="eval", generator=generator)
        records = read_records(path)
    report = build_report(records, cfg, wall_seconds=time.perf_counter() - start, stats=stats)
    write_json(out / "report.json", report)
    print_report(report)
    return report
