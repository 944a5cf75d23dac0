"""Figures: accuracy by turn, multi@k per method, weight histograms, accuracy against compute (PNG).

matplotlib is imported inside each function (it is an optional dependency) and used through
its object interface on the Agg canvas: no pyplot, so plotting never changes the backend or
the global state of a caller's notebook. Files are written atomically.

Reports are the dicts of :mod:`drift.report` (``{"cumulative_accuracy": {"1": 0.4, ...}, ...}``),
passed as ``{run name: report}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from drift.outputs import atomic_write

CI_NOTE = "shaded: 95% Wilson interval"


def _figure(width: float, height: float, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _style(i: int) -> tuple[Any, str]:
    """The colour and marker of the ``i``-th method: tab10's ten colours with circles, then their
    light tab20 companions with squares, so that a study's eleventh method is not drawn as its first.
    """
    from matplotlib import colormaps

    return colormaps["tab20"](2 * (i % 10) + (i // 10) % 2), "os"[(i // 10) % 2]


def _save(fig, path: str | Path) -> None:
    with atomic_write(path) as f:
        fig.savefig(f, format="png")


def _turn_series(table: Mapping[str, Any] | None) -> list[tuple[int, Any]]:
    """``{"2": a, "1": b}`` -> ``[(1, b), (2, a)]``, dropping nulls."""
    items = sorted(((int(t), v) for t, v in (table or {}).items()), key=lambda item: item[0])
    return [(t, v) for t, v in items if v is not None]


def _percent_axis(ax, top: float) -> None:
    from matplotlib.ticker import PercentFormatter

    # Headroom above 100% for value labels, but no tick beyond it.
    ax.set_ylim(0.0, min(1.12, top * 1.15 + 0.03) if top > 0 else 1.0)
    ticks = [y for y in ax.get_yticks() if -1e-9 <= y <= 1 + 1e-9]
    ax.set_yticks(ticks)
    # As few decimals as say every tick exactly (a 2.5% step needs one: 12.5%, not 12%).
    decimals = next((d for d in range(4) if all(abs(round(100 * y, d) - 100 * y) < 1e-6 for y in ticks)), 3)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=decimals))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _label(name: str, report: Mapping) -> str:
    return f"{name} (n={report['n']})" if "n" in report else name


def plot_cumulative_accuracy(reports: Mapping[str, Mapping], path: str | Path) -> None:
    """One line per run: share of episodes solved within k turns (multi@k), k = 1..max_turns,
    with its Wilson interval as a band when the report has ``cumulative_accuracy_ci``."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(6.4, 4.2)
    top, any_ci = 0.0, False
    for i, (name, report) in enumerate(reports.items()):
        points = _turn_series(report.get("cumulative_accuracy"))
        if not points:
            continue
        turns, values = zip(*points)
        color, marker = _style(i)
        ax.plot(turns, values, marker=marker, color=color, linewidth=2, label=_label(name, report))
        top = max(top, *values)
        bands = [(t, ci) for t, ci in _turn_series(report.get("cumulative_accuracy_ci")) if t in turns]
        if bands:
            any_ci = True
            ts, cis = zip(*bands)
            ax.fill_between(ts, [c[0] for c in cis], [c[1] for c in cis], color=color, alpha=0.15, linewidth=0)
            top = max(top, *(c[1] for c in cis))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _percent_axis(ax, top)
    ax.set_xlabel("turn k")
    ax.set_ylabel("solved within k turns (multi@k)")
    ax.set_title("Cumulative accuracy by turn")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", title=CI_NOTE if any_ci else None, title_fontsize="small", fontsize="small")
    _save(fig, path)


def plot_multi_at_k(reports: Mapping[str, Mapping], path: str | Path) -> None:
    """Grouped bars: for each k, one bar per run with its multi@k (cumulative accuracy at k),
    Wilson 95% intervals as error bars where the report has them, values printed on the bars."""
    # Runs with nothing to show get no bar slot; colours follow the order of `reports`, as in
    # plot_cumulative_accuracy, so a run has the same colour in both figures.
    drawn = [(i, name, r) for i, (name, r) in enumerate(reports.items()) if _turn_series(r.get("cumulative_accuracy"))]
    ks = sorted({t for _, _, r in drawn for t, _ in _turn_series(r.get("cumulative_accuracy"))})
    fig, ax = _figure(min(12.0, max(6.4, 1.5 + 0.25 * len(ks) * max(len(drawn), 1))), 4.4)
    width = 0.8 / max(len(drawn), 1)
    top, any_err = 0.0, False
    for slot, (i, name, report) in enumerate(drawn):
        acc = dict(_turn_series(report.get("cumulative_accuracy")))
        ci = dict(_turn_series(report.get("cumulative_accuracy_ci")))
        shown = [k for k in ks if k in acc]
        offset = (slot - (len(drawn) - 1) / 2) * width
        values = [acc[k] for k in shown]
        err = None
        if shown and all(k in ci for k in shown):
            err = [[acc[k] - ci[k][0] for k in shown], [ci[k][1] - acc[k] for k in shown]]
            any_err = True
        bars = ax.bar(
            [ks.index(k) + offset for k in shown],
            values,
            width * 0.92,
            color=_style(i)[0],
            label=_label(name, report),
            yerr=err,
            capsize=2,
            error_kw={"elinewidth": 0.8, "alpha": 0.6},
        )
        tips = [ci[k][1] if err else acc[k] for k in shown]  # print each value above its error bar
        if len(ks) * len(drawn) <= 24:
            for bar, v, tip in zip(bars, values, tips):
                ax.annotate(
                    f"{v:.0%}",
                    (bar.get_x() + bar.get_width() / 2, tip),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize="x-small",
                )
        top = max([top, *tips])
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_xlim(-0.6, len(ks) - 0.4)
    ax.set_xlabel("k (turns)")
    _percent_axis(ax, top)
    ax.set_ylabel("solved within k turns")
    ax.set_title("multi@k by method" + (" (error bars: 95% Wilson interval)" if any_err else ""))
    if drawn:
        fig.legend(loc="outside lower center", ncols=min(len(drawn), 4), fontsize="small", frameon=False)
    _save(fig, path)


def plot_weights(returns: Sequence[float], weights: Sequence[float], path: str | Path) -> None:
    """Side-by-side histograms of the trajectory returns R and the importance weights w, with
    the mean weight marked (1 under per-prompt normalisation)."""
    fig, (ax_r, ax_w) = _figure(9.6, 3.8, ncols=2)
    panels = (
        (ax_r, list(returns), "#4C72B0", "return R", "Returns"),
        (ax_w, list(weights), "#DD8452", "weight w", "Importance weights"),
    )
    for ax, values, color, xlabel, title in panels:
        if values:
            ax.hist(values, bins=min(40, max(5, len(set(values)) * 2)), color=color, edgecolor="white")
            mean = sum(values) / len(values)
            ax.axvline(mean, color="black", linestyle="--", linewidth=1, label=f"mean {mean:.3g}")
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("trajectories")
        ax.set_title(f"{title} (n={len(values)})")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    _save(fig, path)


NOMINAL = "estimated FLOPs: 2N per forwarded token, 6N per trained token"
AS_RUN = "estimated FLOPs as run: shared prefixes counted once"


def plot_frontier(curves: Mapping[str, Mapping], max_turns: int, path: str | Path, counted: str = NOMINAL) -> None:
    """Accuracy against compute (drift study): multi@T over estimated FLOPs (log x), one line per
    method through the mean over seeds at each point all its seeds have (online runs: one point per
    evaluated round), with a band from the lowest to the highest seed; a method with one point is a
    marker with that range as an error bar; a method that spent nothing (base) is a dashed
    horizontal line; a method with no point to draw (no seed has the count, or its seeds share no
    point yet) is named in the legend with the reason. ``curves``: method -> ``{"seeds": n,
    "points": [(mean FLOPs, mean multi@T, lowest, highest), ...]}`` in order of FLOPs
    (drift.study.results.frontier_curves). ``counted``: how the FLOPs were counted (:data:`NOMINAL`
    or :data:`AS_RUN`, drift.compute), for the axis label."""
    from matplotlib.lines import Line2D

    fig, ax = _figure(9.6, 4.6)
    top, undrawn = 0.0, []
    for i, (name, curve) in enumerate(curves.items()):
        points, (color, marker) = curve["points"], _style(i)
        if not points:  # named in the legend, not dropped without a word
            why = "no seed on this axis yet" if not curve["seeds"] else "its seeds share no point yet"
            undrawn.append(f"{name}: not drawn ({why})")
            continue
        xs, ys, lo, hi = (list(column) for column in zip(*points))
        top = max(top, *hi)
        if all(x == 0 for x in xs):
            ax.axhline(ys[0], color=color, linestyle="--", linewidth=1.5, label=f"{name} (no training)")
            continue
        seeds = f"{curve['seeds']} seed" + ("s" if curve["seeds"] != 1 else "")
        if len(xs) == 1:
            ax.errorbar(xs, ys, yerr=[[ys[0] - lo[0]], [hi[0] - ys[0]]], fmt=marker, color=color, capsize=4,
                        markersize=7, label=f"{name} ({seeds})")  # fmt: skip
        else:
            ax.plot(xs, ys, marker=marker, color=color, linewidth=2, label=f"{name} ({seeds})")
            ax.fill_between(xs, lo, hi, color=color, alpha=0.15, linewidth=0)
    ax.set_xscale("log")
    _percent_axis(ax, top)
    ax.set_xlabel(f"compute spent ({counted})")
    ax.set_ylabel(f"solved within {max_turns} turns (multi@{max_turns})")
    ax.set_title("Accuracy against compute")
    ax.grid(axis="x", which="both", alpha=0.2)
    handles, labels = ax.get_legend_handles_labels()
    handles += [Line2D([], [], linestyle="none") for _ in undrawn]  # after the drawn ones, no mark
    if handles:  # beside the axes: a study's many methods would cover its curves
        fig.legend(
            handles,
            labels + undrawn,
            loc="outside right upper",
            fontsize="small",
            title="mean over seeds;\nband, bars: lowest to highest",
            title_fontsize="small",
        )
    _save(fig, path)
