"""A study's results, read back from its reports only: ``table.json``, ``table.md``, figures.

Nothing here runs a model: every number comes from ``reports/**/report.json`` (each holds its
evaluation and, under ``study``, the method, seed, learning rate, round and compute of its point),
so the table always equals what the reports say and can be rebuilt at any time.

- ``table.json``: one row per evaluated point (``method``, ``seed``, ``round``, ``multi_at_T``,
  ``multi_at`` (1..T), ``correction_rate``, ``unique_answer_ratio``, ``flops``, ``flops_as_run``
  (drift.compute: ``None`` for points made before it was counted), the compute, ``report``: the
  report's path relative to the study folder), the per-method ``summary`` of final points (and
  :func:`resolved_options`), and ``match``: between which evaluated points each online method first
  reaches the budget method's multi@T (``flops_below``, ``flops``), per seed and on the mean over
  seeds; the same counted as run under ``as_run``, over the seeds whose points all have it.
- ``table.md`` (drift.study.markdown): the summary as a table (with the seeds each mean is over),
  a note on the resolved options that differ between a method's seeds, and the match on both FLOP axes.
- ``frontier.png`` (multi@T against FLOPs, log x, a band over seeds), ``frontier_as_run.png`` (the
  same against FLOPs as run, where points have the count, drawn once a run of the budget method
  has it), ``accuracy_by_turn.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

from drift import DriftError
from drift.algorithms import RUNNERS
from drift.metrics import seed_interval, wilson_interval
from drift.outputs import atomic_write, write_json
from drift.study.markdown import markdown
from drift.study.provenance import configs_file, differing_options, run_name
from drift.study.spec import StudySpec


def as_run(compute: dict, runs_whole: bool = False) -> float | None:
    """A point's FLOPs as run (drift.compute). A point made before drift kept the count has none;
    it is still known where nothing was forwarded (no FLOPs: base) or where the trainer runs every
    example whole (``runs_whole``: TRL's GRPOTrainer), as the nominal count.

    >>> as_run({"flops": 5.0, "flops_as_run": 4.0}), as_run({"flops": 0.0}), as_run({"flops": 5.0})
    (4.0, 0.0, None)
    """
    if compute.get("flops_as_run") is not None:
        return compute["flops_as_run"]
    return compute["flops"] if runs_whole or not compute["flops"] else None


def read_rows(out: Path, max_turns: int, runs_whole: frozenset = frozenset()) -> list[dict]:
    """One row per report under ``out/reports``, in a stable order (method, seed, flops); two
    reports that both end one method's run at one seed are refused. ``runs_whole``: the methods
    whose trainer runs every example whole (:func:`as_run`)."""
    rows = []
    for path in sorted((out / "reports").rglob("report.json")):
        report = json.loads(path.read_text())
        meta, acc = report["study"], report["cumulative_accuracy"]
        rows.append(
            {
                "method": meta["method"],
                "kind": meta["kind"],
                "seed": meta["seed"],
                "lr": meta["lr"],
                "lr_from": meta["lr_from"],
                "round": meta["round"],
                "point": "final" if meta["final"] else meta["round"],  # the run's end, or a snapshot on the way
                "n": report["n"],
                "multi_at_T": acc[str(max_turns)],
                "multi_at": {t: acc[str(t)] for t in map(str, range(1, max_turns + 1))},
                "correction_rate": report.get("correction_rate_overall"),
                "unique_answer_ratio": report.get("unique_answer_ratio"),
                "flops": meta["compute"]["flops"],
                "flops_as_run": as_run(meta["compute"], meta["method"] in runs_whole),
                "compute": meta["compute"],
                "report": path.relative_to(out).as_posix(),
            }
        )
    rows.sort(key=lambda r: (r["method"], -1 if r["seed"] is None else r["seed"], r["flops"]))
    ends: dict[tuple, str] = {}
    for r in rows:
        if r["point"] == "final" and ends.setdefault((r["method"], r["seed"]), r["report"]) != r["report"]:
            raise DriftError(
                f"{out}: {ends[r['method'], r['seed']]} and {r['report']} both end {r['method']}'s run at seed "
                f"{r['seed']}: they come from two runs; delete the one that is not of the run in "
                f"points/{r['method']}/ (or the seed's whole folder, to evaluate its run again)"
            )
    return rows


def seed_band(rows: list[dict], seeds: list, axis: str = "flops") -> list[tuple[float, float, float, float]]:
    """One method's curve over ``seeds``: ``(mean FLOPs, mean multi@T, lowest, highest multi@T)`` at
    every point all of them have (the snapshot rounds, and each run's end, ``point = "final"``: each
    seed's run ends at its own round, where its FLOP budget ran out), in order of mean FLOPs. A round
    that only some seeds reached is left out: it is no mean over seeds. ``axis``: the FLOP count
    (``flops``, or ``flops_as_run``).

    >>> rows = [{"seed": s, "point": p, "flops": f, "multi_at_T": a} for s, p, f, a in
    ...         [(0, 1, 10.0, 0.1), (0, 2, 30.0, 0.2), (0, "final", 40.0, 0.3), (1, 1, 12.0, 0.3),
    ...          (1, "final", 44.0, 0.5)]]
    >>> seed_band(rows, [0, 1])
    [(11.0, 0.2, 0.1, 0.3), (42.0, 0.4, 0.3, 0.5)]
    """
    keys = set.intersection(*[{r["point"] for r in rows if r["seed"] == s} for s in seeds]) if seeds else set()
    band = []
    for key in keys:
        group = [r for r in rows if r["point"] == key and r["seed"] in seeds]
        acc = [r["multi_at_T"] for r in group]
        band.append((sum(r[axis] for r in group) / len(group), sum(acc) / len(acc), min(acc), max(acc)))
    return sorted(band)


def mean_curve(rows: list[dict], seeds: list, axis: str = "flops") -> list[tuple[float, float]]:
    """:func:`seed_band` without the band: ``(mean FLOPs, mean multi@T)``."""
    return [(flops, acc) for flops, acc, _, _ in seed_band(rows, seeds, axis)]


def frontier_curves(rows: list[dict], methods: list[str], axis: str = "flops") -> dict:
    """What drift.plots.plot_frontier draws: per method, its :func:`seed_band` on ``axis`` over the
    seeds whose points all have that count (points made before ``flops_as_run`` was kept lack it)."""
    curves = {}
    for name in methods:
        mine = [r for r in rows if r["method"] == name]
        seeds = sorted({r["seed"] for r in mine}, key=lambda s: -1 if s is None else s)
        seeds = [s for s in seeds if all(r[axis] is not None for r in mine if r["seed"] == s)]
        curves[name] = {"seeds": len(seeds), "points": seed_band(mine, seeds, axis)}
    return curves


def final_rows(rows: list[dict], method: str) -> list[dict]:
    """The end point of each seed's run of ``method``: the row its report marks ``final`` (a run
    still going has none), in the order of :func:`read_rows`."""
    return [r for r in rows if r["method"] == method and r["point"] == "final"]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _mean_of_all(values) -> float | None:
    """The mean, or ``None`` when a value is missing: a mean over some seeds is not the method's."""
    values = list(values)
    return None if None in values else _mean(values)


def summarize_method(rows: list[dict], method: str, max_turns: int) -> dict:
    """Mean over seeds of ``method``'s ended runs (:func:`final_rows`; at least one)."""
    finals = final_rows(rows, method)
    solved = sum(round(r["multi_at_T"] * r["n"]) for r in finals)
    episodes = sum(r["n"] for r in finals)
    return {
        "method": method,
        "seeds": [r["seed"] for r in finals],
        "lr": finals[0]["lr"],
        "lr_from": finals[0]["lr_from"],
        "multi_at": {t: _mean(r["multi_at"][t] for r in finals) for t in map(str, range(1, max_turns + 1))},
        "multi_at_T_seed_ci": seed_interval([r["multi_at_T"] for r in finals]),
        "multi_at_T_pooled_ci": [round(x, 4) for x in wilson_interval(solved, episodes)],
        "correction_rate": _mean(r["correction_rate"] for r in finals),
        "unique_answer_ratio": _mean(r["unique_answer_ratio"] for r in finals),
        "flops": _mean(r["flops"] for r in finals),
        "flops_as_run": _mean_of_all(r["flops_as_run"] for r in finals),
        "sampling_seconds": _mean(r["compute"]["sampling_seconds"] for r in finals),
        "training_seconds": _mean(r["compute"]["training_seconds"] for r in finals),
    }


def resolved_options(out: Path, rows: list[dict], method: str) -> dict:
    """Which seeds of ``method``'s ended runs (at the learning rate in the table) record their
    resolved configs (``points/<method>/<run>.configs.json``; older runs have none), and the
    options that differ between them (drift.study.provenance.differing_options)."""
    by_seed = {}
    for r in final_rows(rows, method):
        path = configs_file(out / "points" / method / f"{run_name(r['seed'], r['lr'])}.json")
        if r["seed"] is not None and path.exists():
            by_seed[r["seed"]] = json.loads(path.read_text())
    return {"seeds": sorted(by_seed), "differ": differing_options(by_seed)}


TIE = 1e-9  # accuracies closer than this are equal: means over seeds differ in the last bits


def reaches(accuracy: float, target: float) -> bool:
    """``accuracy >= target``, up to :data:`TIE` (a mean over seeds, or a target that is one, is
    not exact: (0.345 + 0.285) / 2 is 0.31499999999999995, (0.300 + 0.330) / 2 is 0.315).

    >>> reaches((0.345 + 0.285) / 2, (0.300 + 0.330) / 2)
    True
    """
    return accuracy >= target - TIE


def crossing(curve: list, target: float) -> tuple[float | None, float | None]:
    """Where a curve of ``(flops, accuracy)`` first reaches ``target`` (:func:`reaches`): the last
    point below it before that and the first point at or above it (the crossing lies between the
    two; the first is ``None`` if the curve starts at or above, the second if it never gets there).

    >>> crossing([(1.0, 0.2), (2.0, 0.5), (4.0, 0.4)], 0.45)
    (1.0, 2.0)
    >>> crossing([(1.0, 0.2)], 0.45)
    (1.0, None)
    """
    below = None
    for flops, acc in sorted(curve):
        if reaches(acc, target):
            return below, flops
        below = flops
    return below, None


def _ratio(flops: float | None, of: float | None) -> float | None:
    return None if flops is None or not of else round(flops / of, 3)


def _bracket(curve: list, target: float | None, target_flops: float | None) -> dict:
    """Where ``curve`` first reaches ``target`` (:func:`crossing`), in FLOPs and as a multiple of
    ``target_flops``: ``flops_below`` / ``ratio_below`` (the last point below, only when it is
    reached) and ``flops`` / ``ratio`` (the first point at or above; ``None`` if never)."""
    below, hit = crossing(curve, target) if target is not None else (None, None)
    below = below if hit is not None else None
    return {
        "target": target,
        "target_flops": target_flops,
        "flops_below": below,
        "ratio_below": _ratio(below, target_flops),
        "flops": hit,
        "ratio": _ratio(hit, target_flops),
    }


def _match_on(mine: list[dict], ref: dict, axis: str) -> dict:
    """One online method's match on one FLOP ``axis``: per seed (against that seed's budget run) and
    on the curve averaged over seeds (:func:`mean_curve`), over the seeds whose budget run and
    points all have the count (the others: ``missing``)."""
    per_seed, missing = {}, []
    for seed in sorted({r["seed"] for r in mine}):
        if seed not in ref:
            continue
        run = [r for r in mine if r["seed"] == seed]
        if ref[seed][axis] is None or any(r[axis] is None for r in run):
            missing.append(
                {"seed": seed, "in": run[0]["method"] if ref[seed][axis] is not None else ref[seed]["method"]}
            )
            continue
        curve = [(r[axis], r["multi_at_T"]) for r in run]
        per_seed[str(seed)] = {
            **_bracket(curve, ref[seed]["multi_at_T"], ref[seed][axis]),
            "budget_ratio": round(max(f for f, _ in curve) / ref[seed][axis], 3),
            "ended": any(r["point"] == "final" for r in run),  # else: still going
        }
    seeds = [int(s) for s in per_seed]
    curve = mean_curve(mine, seeds, axis)
    target = _mean(ref[s]["multi_at_T"] for s in seeds) if seeds else None
    target_flops = _mean(ref[s][axis] for s in seeds) if seeds else None
    return {"per_seed": per_seed, "mean": _bracket(curve, target, target_flops), "missing": missing}


def match_table(rows: list[dict], spec: StudySpec) -> list[dict]:
    """For every online method: the FLOPs at which it first reaches the budget method's multi@T,
    counted nominally (``per_seed``, ``mean``) and as run (``as_run``), by :func:`_match_on`."""
    ref = {r["seed"]: r for r in final_rows(rows, spec.budget_method)}
    out = []
    for m in spec.method_specs():
        mine = [r for r in rows if r["method"] == m.name]
        if m.kind != "online" or not mine:  # not evaluated yet
            continue
        nominal = _match_on(mine, ref, "flops")
        del nominal["missing"]  # every point has it
        out.append(
            {"method": m.name, "against": spec.budget_method, **nominal, "as_run": _match_on(mine, ref, "flops_as_run")}
        )
    return out


def _runs_whole(spec: StudySpec, method) -> bool:
    """Whether ``method`` is an online run whose trainer forwards every example whole (drift.algorithms.Runner)."""
    runner = RUNNERS.get({**spec.rl, **method.rl}.get("algorithm", ""))
    return method.kind == "online" and runner is not None and runner.runs_whole


def write_results(out: Path, spec: StudySpec) -> dict:
    """Build ``table.json``, ``table.md`` and the figures from the reports in ``out``; return the table."""
    from drift.plots import AS_RUN, plot_cumulative_accuracy, plot_frontier

    rows = read_rows(out, spec.max_turns, frozenset(m.name for m in spec.method_specs() if _runs_whole(spec, m)))
    methods = [m.name for m in spec.method_specs() if any(r["method"] == m.name for r in rows)]
    summary = [summarize_method(rows, m, spec.max_turns) for m in methods if final_rows(rows, m)]  # ended runs only
    for s in summary:
        s["resolved_options"] = resolved_options(out, rows, s["method"])
    match = match_table(rows, spec)
    tuning = json.loads((out / "tuning.json").read_text()) if (out / "tuning.json").exists() else {}
    table = {
        "study": spec.name,
        "max_turns": spec.max_turns,
        "rows": rows,
        "summary": summary,
        "match": match,
        "tuning": tuning,
    }
    write_json(out / "table.json", table)
    with atomic_write(out / "table.md") as f:
        f.write(markdown(spec, summary, match, tuning).encode())
    plot_frontier(frontier_curves(rows, methods), spec.max_turns, out / "frontier.png")
    as_run = out / "frontier_as_run.png"
    if any(r["flops_as_run"] is not None for r in final_rows(rows, spec.budget_method)):
        plot_frontier(frontier_curves(rows, methods, "flops_as_run"), spec.max_turns, as_run, counted=AS_RUN)
    else:  # no run to compare with has the count: no figure (nor one left from an earlier table)
        as_run.unlink(missing_ok=True)
    by_turn = {s["method"]: {"cumulative_accuracy": s["multi_at"]} for s in summary}  # means over seeds
    plot_cumulative_accuracy(by_turn, out / "accuracy_by_turn.png")
    print((out / "table.md").read_text())
    return table
