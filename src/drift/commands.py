"""Runners of the light commands (file in, file out, no model). Heavy ones live in their modules."""

from __future__ import annotations

import json
import time
from pathlib import Path

from drift import DriftError
from drift.config import WeightConfig, save_config
from drift.records import atomic_write, paused_gc, read_records, write_records
from drift.tables import format_table
from drift.weighting import WeightingParams, compute_weights, diagnostics


def sidecar(out: str | Path, suffix: str) -> Path:
    """``runs/w.jsonl`` -> ``runs/w.<suffix>``: where a file output's config, summary and plots go.

    >>> str(sidecar("runs/weighted.jsonl", "config.yaml"))
    'runs/weighted.config.yaml'
    """
    out = Path(out)
    return out.with_name(f"{out.stem}.{suffix}")


def write_json(path: str | Path, data) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2).encode() + b"\n")


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
    params = WeightingParams(
        scheme=cfg.scheme, beta=cfg.beta, gamma=cfg.gamma, lam=cfg.lam, format_penalty=cfg.format_penalty,
        scope=cfg.scope, zero_variance=cfg.zero_variance, all_fail=cfg.all_fail, clip=cfg.clip,
    )
    records = read_records(cfg.input)
    returns, weights = compute_weights(records, params)
    kept = []
    for rec, ret, w in zip(records, returns, weights):
        if w is not None:
            rec["return"], rec["weight"] = ret, w
            kept.append(rec)
    if not kept:
        raise DriftError(f"scheme {cfg.scheme!r} with zero_variance={cfg.zero_variance!r}, all_fail={cfg.all_fail!r} "
                         "dropped every record")
    write_records(cfg.out, kept, to_format=cfg.to_format, format_penalty=cfg.format_penalty)
    diag = diagnostics(records, returns, weights)
    diag["seconds"] = round(time.perf_counter() - start, 3)
    save_config(cfg, sidecar(cfg.out, "config.yaml"))
    write_json(sidecar(cfg.out, "summary.json"), diag)
    if cfg.plot:
        from drift.plots import plot_weights

        plot_weights(returns, [w for w in weights if w is not None], sidecar(cfg.out, "weights.png"))
    rows = [[k, v] for k, v in diag.items() if k != "success_by_turn"]
    rows += [[f"solved by turn {t}", v] for t, v in diag["success_by_turn"].items()]
    print(format_table(rows, ["weights", cfg.scheme]))
    print(f"wrote {len(kept)} records to {cfg.out}")
    return diag
