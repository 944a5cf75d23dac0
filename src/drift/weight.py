"""``drift weight``: add the return R and the importance weight w to every trajectory of a file.

The math is drift.weighting; this module reads, applies it and writes. A schema-1 input is
streamed: only the numbers the math needs are kept (:func:`read_columns`), and the two new fields
are spliced into the input's lines (a million records in seconds, memory for the numbers only).
A reference-layout input, or ``--to-format reference``, goes through whole records instead.
Beside the output: the resolved config, with ``--plot`` a histogram of weights and returns, and
the diagnostics (``.summary.json``), written last: it says the output is whole. A rerun first
deletes the sidecars of the run before, so none of them describes other weights.
"""

from __future__ import annotations

import time
from operator import attrgetter

from msgspec import UNSET

from drift import DriftError
from drift.config import WeightConfig
from drift.diagnostics import diagnostics
from drift.options import save_config
from drift.outputs import sidecar, write_json
from drift.records import (
    RecordError,
    check_unique,
    file_format,
    iter_records,
    paused_gc,
    read_records,
    write_records,
    write_spliced,
)
from drift.tables import format_table
from drift.weighting import Columns, compute_weights

SIDECARS = ("config.yaml", "weights.png", "summary.json")
"""What drift weight writes beside its output (drift.outputs.sidecar)."""


def read_columns(path) -> tuple[Columns, set[int]]:
    """The numbers of a schema-1 file, and which records already hold a ``return`` or ``weight``."""
    rows: list[tuple] = []
    line_nos: list[int] = []
    reweighted: set[int] = set()
    fields = attrgetter(*Columns.FIELDS)
    for line_no, core in iter_records(path, typed=True):
        if core.return_ is not UNSET or core.weight is not UNSET:
            reweighted.add(len(rows))
        rows.append(Columns.row(*fields(core)))
        line_nos.append(line_no)
    if not rows:
        raise RecordError(path, None, "no records (empty file)")
    check_unique(path, [row[:2] for row in rows], line_nos)
    return Columns.from_rows(rows), reweighted


def run_weight(cfg: WeightConfig) -> dict:
    """Read, weight, write; print and save the diagnostics. Returns them."""
    with paused_gc():
        return _run_weight(cfg)


def _run_weight(cfg: WeightConfig) -> dict:
    if not cfg.input:
        raise DriftError("no input file given (drift weight IN --out OUT)")
    if not cfg.out:
        raise DriftError("no output given (--out OUT)")
    start = time.perf_counter()
    params = cfg.weighting()
    for name in SIDECARS:  # the last run's: a crash below leaves none that describes other weights
        sidecar(cfg.out, name).unlink(missing_ok=True)
    if cfg.to_format == "drift" and file_format(cfg.input) == "drift":
        cols, reweighted = read_columns(cfg.input)
        returns, weights = compute_weights(cols, params)
        keep = [w is not None for w in weights]
        n_kept = sum(keep)
        if n_kept:
            write_spliced(cfg.input, cfg.out, {"return": returns, "weight": weights}, keep, reweighted)
    else:
        records = read_records(cfg.input)
        cols = Columns.of(records)
        returns, weights = compute_weights(cols, params)
        kept = []
        for rec, ret, w in zip(records, returns, weights):
            if w is not None:
                rec["return"], rec["weight"] = ret, w
                kept.append(rec)
        n_kept = len(kept)
        if kept:
            write_records(cfg.out, kept, to_format=cfg.to_format, format_penalty=cfg.format_penalty)
    if not n_kept:
        raise DriftError(
            f"scheme {cfg.scheme!r} with zero_variance={cfg.zero_variance!r}, all_fail={cfg.all_fail!r} "
            "dropped every record"
        )
    diag = diagnostics(cols, returns, weights)
    diag["seconds"] = round(time.perf_counter() - start, 3)
    save_config(cfg, sidecar(cfg.out, "config.yaml"))
    if cfg.plot:
        from drift.plots import plot_weights

        plot_weights(returns, [w for w in weights if w is not None], sidecar(cfg.out, "weights.png"))
    write_json(sidecar(cfg.out, "summary.json"), diag)  # last: the output is whole
    rows = [[k, v] for k, v in diag.items() if k != "success_by_turn"]
    rows += [[f"solved by turn {t}", v] for t, v in diag["success_by_turn"].items()]
    print(format_table(rows, ["weights", cfg.scheme]))
    print(f"wrote {n_kept} records to {cfg.out}")
    if diag["group_size_min"] != diag["group_size_max"]:
        print(
            f"drift weight: warning: trajectories per prompt differ ({diag['group_size_min']} to "
            f"{diag['group_size_max']}); a smaller group's Z(x) averages fewer samples (a rollout file cut "
            "short? drift rollout --resume completes it)"
        )
    return diag
