"""A study's ``table.md``: the summary of final points as a table (with the seeds each mean is
over), a note on the resolved options that differ between a method's seeds, and, per online
method, where it first reaches the budget method's multi@T on both FLOP axes. It only formats
what drift.study.results computed (``table.json`` holds the same numbers).
"""

from __future__ import annotations

from drift.study.spec import StudySpec


def options_note(summary: list[dict]) -> str:
    """table.md's note on drift.study.results.resolved_options: per method with two seeds or more that record
    them, the options that differ (each seed's value), or that they agree."""
    lines = []
    for s in summary:
        seeds, differ = s["resolved_options"]["seeds"], s["resolved_options"]["differ"]
        if len(seeds) > 1:
            values = [f"{k} " + ", ".join(f"{v} (seed {seed})" for seed, v in by.items()) for k, by in differ.items()]
            said = "; ".join(values) or "resolved options agree across seeds"
            lines.append(f"- {s['method']} (seeds {','.join(map(str, seeds))}): {said}\n")
    where = "`points/<method>/<run>.configs.json`"
    if not lines:
        return (f"\nResolved options: no method has two seeds whose runs record them ({where}; runs made "
                "before drift study wrote it have none), so none are compared across seeds.\n")  # fmt: skip
    return (f"\nResolved options across seeds (from each run's {where}; seeds, paths and online FLOP budgets "
            "differ by design and are not compared):\n\n" + "".join(lines))  # fmt: skip


def _fmt(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if x == 0:
        return "0"
    if isinstance(x, float) and (abs(x) >= 1e5):
        return f"{x:.2e}"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _seeds(seeds: list) -> str:
    """How many seeds, and which (a mean over seeds 0,2,3 is not one over 0,2): ``3 (0,2,3)``;
    ``1`` for a method not run per seed (base)."""
    which = [str(s) for s in seeds if s is not None]
    return f"{len(seeds)} ({','.join(which)})" if which else str(len(seeds))


def _row(cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |\n"


def _match_rows(m: dict) -> str:
    """One axis of a match (drift.study.results.match_table) as a table: per seed, and the mean curve."""
    if not m["per_seed"]:  # no seed has both an online run and a budget run (with this count)
        return "no seed to compare yet\n"
    head = ["seed", "target multi@T", "target FLOPs", "last point below (x target)",
            "first point at or above (x target)", "run's FLOPs x target"]  # fmt: skip
    text = _row(head) + "|" + "---|" * len(head) + "\n"
    mean = {**m["mean"], "budget_ratio": None, "ended": all(v["ended"] for v in m["per_seed"].values())}
    for seed, v in [*m["per_seed"].items(), ("mean curve", mean)]:
        below = f"{_fmt(v['flops_below'])} ({_fmt(v['ratio_below'], 2)}x)"
        if v["flops"] is None or v["flops_below"] is None:
            below = "–" if v["flops"] is None else "none (the first point)"
        reached = f"{_fmt(v['flops'])} ({_fmt(v['ratio'], 2)}x)"
        if v["flops"] is None:
            reached = "not reached" if v["ended"] else "not yet (the run is still going)"
        text += _row([seed, _fmt(v["target"]), _fmt(v["target_flops"]), below, reached, _fmt(v["budget_ratio"], 2)])
    return text


def markdown(spec: StudySpec, summary: list[dict], match: list[dict], tuning: dict) -> str:
    """``table.md`` from the summary, the match and the tuning of ``table.json``."""
    T = spec.max_turns
    head = ["method", "lr (tries)", "seeds", *[f"multi@{t}" for t in range(1, T + 1)],
            f"multi@{T} 95% CI (seeds)", f"multi@{T} 95% CI (pooled episodes, as if independent)", "correction rate",
            "unique ratio", "FLOPs", "FLOPs as run", "sampling s", "training s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summary:
        ci = s["multi_at_T_seed_ci"]
        if s["lr"] is None:
            lr = "–"
        elif s["lr_from"]:
            lr = f"{s['lr']:g} (from {s['lr_from']})"
        else:
            lr = f"{s['lr']:g} ({tuning.get(s['method'], {}).get('tries', '?')})"
        cells = [s["method"], lr, _seeds(s["seeds"]), *[_fmt(s["multi_at"][str(t)]) for t in range(1, T + 1)],
                 f"[{ci[1]:.3f}, {ci[2]:.3f}]" if ci and len(s["seeds"]) > 1 else "–",
                 "[{:.3f}, {:.3f}]".format(*s["multi_at_T_pooled_ci"]),
                 _fmt(s["correction_rate"]), _fmt(s["unique_answer_ratio"]), _fmt(s["flops"]), _fmt(s["flops_as_run"]),
                 _fmt(s["sampling_seconds"], 0), _fmt(s["training_seconds"], 0)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    text = (
        f"# Study {spec.name}: {spec.model} on {spec.task} {spec.task_options}, T = {T}\n\n" + "\n".join(lines) + "\n"
        "\nmulti@k: means over seeds. CI (seeds): Student's t over the seeds' results, cut to 0..1: the "
        "spread between runs. CI (pooled episodes): Wilson over all seeds' test episodes as if they were "
        "independent; every seed answers the same test problems, so it shows evaluation noise only and is "
        "too narrow for comparing methods.\n"
    ) + options_note(summary)
    for m in match:
        text += f"\n## When does {m['method']} reach {m['against']}'s multi@{T}?\n\n"
        text += "Between its last evaluated point below the target and its first at or above it.\n"
        text += "\nFLOPs counted nominally (every token of every example forwarded, as if each ran alone):\n\n"
        text += _match_rows(m)
        text += "\nFLOPs counted as run (a micro-batch's shared prefixes once; drift.compute):\n\n"
        text += _match_rows(m["as_run"])
        for x in m["as_run"]["missing"]:
            text += f"- seed {x['seed']}: no as-run count in {x['in']}'s points (made before drift kept one)\n"
    return text
