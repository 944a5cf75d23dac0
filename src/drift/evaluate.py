"""``drift eval``: run the correction environment on a model (or take existing records) and report.

The episodes come from exactly the code that makes rollouts (drift.rollout.sample_to_file), so
prompts, feedback and parsing cannot differ between data generation and evaluation.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import replace
from pathlib import Path

from drift import DriftError
from drift.config.groups import MAX_TURNS
from drift.options import to_dict
from drift.records import read_records


def fingerprint(records: list[dict]) -> str:
    """A short hash of the evaluated problems (prompt_id, question, gold), independent of order.

    >>> fingerprint([{"prompt_id": "a", "gold": "1"}]) == fingerprint([{"prompt_id": "a", "gold": "1"}] * 2)
    True
    """
    keys = sorted({f"{r['prompt_id']}\x00{r.get('question', '')}\x00{r.get('gold', '')}" for r in records})
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]


def agreed(values) -> object:
    """The value every item gives, else ``None`` (they differ, or none is given).

    >>> agreed([1.0, 1.0]), agreed([1.0, 0.0]), agreed([None, None]), agreed([])
    (1.0, None, None, None)
    """
    distinct = {repr(v): v for v in values}
    return next(iter(distinct.values())) if len(distinct) == 1 else None


def recorded_config(records: list[dict], cfg) -> dict:
    """What a report of existing records (``--records``) can say about how they were made: what
    every record agrees on (its ``sampling``, ``model``, ``task``, K, turn budget); null for the
    rest (the protocol, the answer mode, ...), never eval's own defaults (greedy), which
    ``drift compare`` would take for the truth."""
    config: dict = dict.fromkeys(to_dict(cfg))
    config.update(records=cfg.records, out=cfg.out)
    sampling: list[dict] = [rec["sampling"] if isinstance(rec.get("sampling"), dict) else {} for rec in records]
    for key in ("temperature", "top_p", "max_new_tokens", "seed", "model_generation_config"):
        config[key] = agreed(s.get(key) for s in sampling)
    for key in ("model", "task"):
        config[key] = agreed(rec.get(key) for rec in records)
    sizes: dict[str, int] = {}
    for rec in records:
        sizes[rec["prompt_id"]] = sizes.get(rec["prompt_id"], 0) + 1
    config["n"] = agreed(sizes.values())
    return config


def build_report(records: list[dict], cfg, *, wall_seconds: float, stats: dict | None = None) -> dict:
    from drift.report import score_records

    report = score_records(records, cfg.max_turns)
    config = recorded_config(records, cfg) if cfg.records else to_dict(cfg)
    if cfg.records:
        config["max_turns"] = report["max_turns"]
    report.update(
        model=config["model"] if not cfg.records else None,
        task=config["task"],
        dataset_fingerprint=fingerprint(records),
        wall_seconds=round(wall_seconds, 2),
        config=config,
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
    if not cfg.records and cfg.max_turns is None:
        cfg = replace(cfg, max_turns=MAX_TURNS)
    if not cfg.records and cfg.n > 1 and cfg.temperature == 0:
        raise DriftError(
            f"--n {cfg.n} at temperature 0 would sample the same episode {cfg.n} times per prompt (and narrow "
            "every interval for nothing); sample with --temperature above 0, or leave --n at 1"
        )
    if cfg.records:
        records = read_records(cfg.records)
        if (out / "report.json").exists():
            raise DriftError(f"{out / 'report.json'} exists; choose another --out")
        out.mkdir(parents=True, exist_ok=True)
    else:
        path = out / "records.jsonl"
        stats = sample_to_file(cfg, path, desc="eval", generator=generator)
        records = read_records(path)
    report = build_report(records, cfg, wall_seconds=time.perf_counter() - start, stats=stats)
    write_json(out / "report.json", report)
    print_report(report)
    return report
