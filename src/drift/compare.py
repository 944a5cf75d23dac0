"""``drift compare``: the reports of several runs side by side (console table, plots, JSON).

Reads only ``report.json`` files (see :mod:`drift.report`), so runs evaluated on different
machines compare without their records or models. A run evaluated with fewer turns than
another shows ``-`` for the multi@k it never measured.
"""

from __future__ import annotations

from pathlib import Path

from drift import DriftError
from drift.config import CompareConfig
from drift.options import save_config
from drift.outputs import write_json
from drift.report import REPORT_NAME, load_report
from drift.tables import format_table

# Table column -> key of a comparison row (see report_row).
COLUMNS = {
    "corr@2": "correction@2",
    "corr all": "correction_overall",
    "unique": "unique_answer_ratio",
    "fmt err": "format_error_rate",
}


def default_name(path: str | Path) -> str:
    """A run's label: the folder of ``.../NAME/report.json`` or ``NAME/``, else the file's stem.

    >>> default_name("runs/drift/report.json"), default_name("runs/sft"), default_name("runs/base.json")
    ('drift', 'sft', 'base')
    """
    path = Path(path)
    if path.name == REPORT_NAME:
        return path.resolve().parent.name
    return path.name if path.is_dir() or not path.suffix else path.stem


def report_row(report: dict, max_k: int) -> dict:
    """The numbers compared for one run: ``n``, ``multi@1..max_k``, correction at turn 2 and
    overall, unique-answer ratio, format-error rate, and ``compute`` if the report has it.

    >>> report = {"n": 4, "cumulative_accuracy": {"1": 0.25, "2": 0.5}, "correction_rate": {"2": 1/3}}
    >>> row = report_row(report, 3)   # evaluated over 2 turns: multi@3 unknown
    >>> row["multi@2"], row["multi@3"], round(row["correction@2"], 4), row["unique_answer_ratio"]
    (0.5, None, 0.3333, None)
    """
    row = {"n": report["n"]}
    row.update({f"multi@{k}": report["cumulative_accuracy"].get(str(k)) for k in range(1, max_k + 1)})
    row["correction@2"] = (report.get("correction_rate") or {}).get("2")
    row["correction_overall"] = report.get("correction_rate_overall")
    row["unique_answer_ratio"] = report.get("unique_answer_ratio")
    row["format_error_rate"] = report.get("format_error_rate")
    if report.get("compute"):
        row["compute"] = dict(report["compute"])
    return row


def _resolve_names(cfg: CompareConfig) -> list[str]:
    if cfg.names and len(cfg.names) != len(cfg.reports):
        raise DriftError(f"got {len(cfg.names)} names for {len(cfg.reports)} reports")
    names = list(cfg.names) or [default_name(p) for p in cfg.reports]
    seen = set()
    for name in names:
        if name in seen:
            raise DriftError(f"two reports are named {name!r}; label them with --names a,b,...")
        seen.add(name)
    return names


# What two reports must share to be compared: the problems (their fingerprint: the task, split,
# seed and count decide them), the turns, how replies were chosen and how they were checked; and
# when replies were sampled (temperature > 0), the seed.
SAME = (
    "dataset_fingerprint",
    "max_turns",
    "temperature",
    "top_p",
    "max_new_tokens",
    "model_generation_config",
    "n",
    "answer_mode",
    "protocol",
    "verifier",
)


def _same_form(value) -> str:
    """``value`` as text in which equal numbers read the same (``1`` and ``1.0``), text stays text."""
    import json

    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return json.dumps(value, sort_keys=True, default=str)


def mismatches(reports: dict) -> list[str]:
    """``"key: name=value, ..."`` for every :data:`SAME` key the reports give different values
    (read from the report, else its ``config``; reports that do not say are left out).

    >>> mismatches({"a": {"max_turns": 5}, "b": {"config": {"max_turns": 3}}, "c": {}})
    ['max_turns: a=5, b=3']
    """
    found = []
    sampled = any((r.get("temperature", r.get("config", {}).get("temperature")) or 0) > 0 for r in reports.values())
    for key in SAME + ("seed",) * sampled:
        values = {name: r.get(key, r.get("config", {}).get(key)) for name, r in reports.items()}
        values = {name: v for name, v in values.items() if v is not None}
        if len({_same_form(v) for v in values.values()}) > 1:
            found.append(f"{key}: " + ", ".join(f"{name}={v}" for name, v in values.items()))
    return found


def run_compare(cfg: CompareConfig) -> dict:
    """Load the reports, print the tables, save plots and ``comparison.json`` in ``cfg.out``.

    Returns ``{"runs": [{"name", "report", **report_row}, ...]}`` (what comparison.json holds).
    """
    if not cfg.reports:
        raise DriftError("no reports given (drift compare runs/a runs/b)")
    names = _resolve_names(cfg)
    reports = {name: load_report(path) for name, path in zip(names, cfg.reports)}
    max_k = max(max((int(t) for t in r["cumulative_accuracy"]), default=0) for r in reports.values())
    rows = {name: report_row(report, max_k) for name, report in reports.items()}

    multi = [f"multi@{k}" for k in range(1, max_k + 1)]
    print(
        format_table(
            [
                [name, row["n"], *(row[m] for m in multi), *(row[key] for key in COLUMNS.values())]
                for name, row in rows.items()
            ],
            ["method", "n", *multi, *COLUMNS],
        )
    )
    compute_keys = list(dict.fromkeys(k for row in rows.values() for k in row.get("compute", {})))
    if compute_keys:
        print()
        print(
            format_table(
                [[name, *(row.get("compute", {}).get(k) for k in compute_keys)] for name, row in rows.items()],
                ["method", *compute_keys],
            )
        )

    warnings = mismatches(reports)
    for warning in warnings:
        print(f"drift compare: warning: the reports differ in {warning}: their numbers are not on the same footing")
    result = {
        "runs": [{"name": name, "report": str(path), **rows[name]} for name, path in zip(names, cfg.reports)],
        "warnings": warnings,
    }
    if cfg.out:
        from drift.plots import plot_cumulative_accuracy, plot_multi_at_k

        out = Path(cfg.out)
        plot_cumulative_accuracy(reports, out / "cumulative_accuracy.png")
        plot_multi_at_k(reports, out / "multi_at_k.png")
        write_json(out / "comparison.json", result)
        save_config(cfg, out / "compare.config.yaml")
        print(f"wrote cumulative_accuracy.png, multi_at_k.png and comparison.json to {out}")
    return result
