"""Every figure is written as a non-empty PNG, also for odd inputs (no CI, no data), and draws the
numbers it is given: the figures are caught before saving (``drift.plots._save``) and their lines,
bars, bands and labels read back."""

from __future__ import annotations

import pytest

from drift.plots import plot_cumulative_accuracy, plot_multi_at_k, plot_weights

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

REPORTS = {
    "drift": {
        "n": 10,
        "cumulative_accuracy": {"1": 0.3, "2": 0.5, "3": 0.6},
        "cumulative_accuracy_ci": {"1": [0.1, 0.6], "2": [0.24, 0.76], "3": [0.31, 0.83]},
    },
    "sft": {"n": 10, "cumulative_accuracy": {"1": 0.2, "2": 0.3}},  # no CI, fewer turns
    "empty": {"n": 0, "cumulative_accuracy": {"1": None, "2": None}},  # nothing to draw
}


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 5_000


@pytest.mark.parametrize("plot", [plot_cumulative_accuracy, plot_multi_at_k])
def test_report_plots_write_pngs(tmp_path, plot):
    path = tmp_path / "nested" / "figure.png"  # parent folders are created
    plot(REPORTS, path)
    assert_png(path)
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]  # no temporary file left


@pytest.mark.parametrize("plot", [plot_cumulative_accuracy, plot_multi_at_k])
def test_report_plots_accept_no_runs(tmp_path, plot):
    plot({}, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_weights(tmp_path):
    plot_weights([0.9, 0.81, -0.1, 0.0], [1.8, 1.6, 0.3, 0.3], tmp_path / "weights.png")
    assert_png(tmp_path / "weights.png")
    plot_weights([], [], tmp_path / "none.png")
    assert (tmp_path / "none.png").read_bytes().startswith(PNG_MAGIC)


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, in order (nothing is written)."""
    import drift.plots as plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    return saved


def points(xs, ys):
    return [(round(float(x), 9), round(float(y), 9)) for x, y in zip(xs, ys)]


def test_cumulative_accuracy_draws_each_reports_numbers(figures):
    plot_cumulative_accuracy(REPORTS, "unused.png")
    (fig,) = figures
    (ax,) = fig.axes
    lines = {line.get_label(): points(line.get_xdata(), line.get_ydata()) for line in ax.get_lines()}
    # turn k against multi@k, one line per run with data ("empty" has none)
    assert lines == {"drift (n=10)": [(1, 0.3), (2, 0.5), (3, 0.6)], "sft (n=10)": [(1, 0.2), (2, 0.3)]}
    (band,) = ax.collections  # drift's Wilson interval; sft has none
    corners = set(points(*band.get_paths()[0].vertices.T))
    assert {(1, 0.1), (2, 0.24), (3, 0.31), (1, 0.6), (2, 0.76), (3, 0.83)} <= corners
    assert {y for _, y in corners} == {0.1, 0.24, 0.31, 0.6, 0.76, 0.83}  # nothing else in the band
    assert "turn" in ax.get_xlabel() and "solved within k turns" in ax.get_ylabel()
    assert ax.yaxis.get_major_formatter()(0.3, 0) == "30%"  # shares shown as percentages
    assert ax.get_legend().get_title().get_text() == "shaded: 95% Wilson interval"


def test_multi_at_k_draws_each_reports_bars_and_intervals(figures):
    from matplotlib.container import BarContainer

    plot_multi_at_k(REPORTS, "unused.png")
    (fig,) = figures
    (ax,) = fig.axes
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
    assert sorted(bars) == ["drift (n=10)", "sft (n=10)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    for label, heights in (("drift (n=10)", [0.3, 0.5, 0.6]), ("sft (n=10)", [0.2, 0.3])):
        patches = bars[label].patches
        assert [round(p.get_height(), 9) for p in patches] == heights
        assert [round(p.get_x() + p.get_width() / 2) for p in patches] == list(range(len(heights)))  # k's slot
    # within a slot, the runs side by side in the reports' order
    assert all(d.get_x() < s.get_x() for d, s in zip(bars["drift (n=10)"].patches, bars["sft (n=10)"].patches))
    segments = bars["drift (n=10)"].errorbar.lines[2][0].get_segments()  # error bars from lower to upper bound
    assert [(round(a[1], 9), round(b[1], 9)) for a, b in segments] == [(0.1, 0.6), (0.24, 0.76), (0.31, 0.83)]
    assert bars["sft (n=10)"].errorbar is None  # no interval in its report
    assert [t.get_text() for t in ax.texts] == ["30%", "50%", "60%", "20%", "30%"]  # the values on the bars
    assert "k" in ax.get_xlabel() and "turns" in ax.get_xlabel() and "solved within k turns" in ax.get_ylabel()
    assert ax.yaxis.get_major_formatter()(0.3, 0) == "30%"
    assert "95% Wilson interval" in ax.get_title()


def test_weight_histograms_count_every_value_and_mark_the_mean(figures):
    returns, weights = [0.9, 0.81, -0.1, 0.0], [1.8, 1.6, 0.3, 0.3]
    plot_weights(returns, weights, "unused.png")
    (fig,) = figures
    ax_r, ax_w = fig.axes
    for ax, values, mean, xlabel in ((ax_r, returns, 0.4025, "return R"), (ax_w, weights, 1.0, "weight w")):
        bins = [(p.get_x(), p.get_x() + p.get_width(), p.get_height()) for p in ax.patches]
        assert sum(h for _, _, h in bins) == len(values) == 4
        for lo, hi, h in bins:  # each bin counts the values in it (the last one includes its right edge)
            inside = [v for v in values if lo - 1e-12 <= v < hi - 1e-12 or (hi == bins[-1][1] and v == hi)]
            assert h == len(inside), (xlabel, lo, hi)
        (line,) = ax.get_lines()  # the mean: 1.61 / 4 for the returns, 4.0 / 4 for the weights
        assert [round(x, 9) for x in line.get_xdata()] == [mean, mean]
        assert ax.get_xlabel() == xlabel and ax.get_ylabel() == "trajectories" and "(n=4)" in ax.get_title()


def test_the_frontier_legend_hides_no_data(tmp_path, monkeypatch):
    # eleven methods' legend drawn inside the axes covered the middle of the plot, where the
    # curves run: it sits beside them
    import drift.plots as plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    methods = ["base"] + [f"method-{i}" for i in range(10)]
    rows = [{"method": "base", "seed": 0, "point": "final", "flops": 0, "multi_at_T": 0.2}]
    for i, name in enumerate(methods[1:]):
        for seed in (0, 1):
            for k in range(3):
                rows.append({"method": name, "seed": seed, "point": k, "round": k, "flops": 1e13 * (k + 1) * (i + 1),
                             "multi_at_T": 0.1 * k + 0.02 * i + 0.01 * seed})  # fmt: skip
    from drift.study.results import frontier_curves

    plots.plot_frontier(frontier_curves(rows, methods), 5, tmp_path / "frontier.png")
    (fig,) = saved
    fig.canvas.draw()
    (ax,) = fig.axes
    legend = fig.legends[0] if fig.legends else ax.get_legend()
    assert legend is not None and len(legend.get_texts()) == len(methods)
    box, axes_box = legend.get_window_extent(), ax.get_window_extent()
    assert not box.overlaps(axes_box), "the legend is drawn over the axes"


def test_a_study_s_eleventh_method_is_not_drawn_as_its_first(tmp_path, monkeypatch):
    """drift study compares eleven methods; ten colours drew the eleventh (a DRIFT variant) in the
    base line's colour and marker."""
    import drift.plots as plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    curves = {f"m{i}": {"seeds": 1, "points": [(1e12 * (i + 1), 0.1, 0.1, 0.1)]} for i in range(11)}
    plots.plot_frontier(curves, 5, tmp_path / "frontier.png")
    (ax,) = saved[0].axes
    drawn = [(tuple(line.get_color()), line.get_marker()) for line in ax.get_lines() if line.get_marker() in ("o", "s")]
    assert len(drawn) == 11 and len(set(drawn)) == 11


def test_a_method_the_frontier_cannot_draw_is_named_not_dropped(tmp_path, monkeypatch):
    """frontier_as_run.png left out, without a word, every method none of whose seeds had the as-run
    count (in mixed: DRIFT's variants, run once before drift kept it); the legend names them."""
    import drift.plots as plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    curves = {
        "drift": {"seeds": 1, "points": [(1e13, 0.1, 0.1, 0.1)]},
        "drift-keep": {"seeds": 0, "points": []},
        "grpo": {"seeds": 2, "points": []},  # seeds that share no point yet
    }
    plots.plot_frontier(curves, 5, tmp_path / "frontier.png", counted=plots.AS_RUN)
    texts = [t.get_text() for t in saved[0].legends[0].get_texts()]
    assert texts[0] == "drift (1 seed)"
    assert any("drift-keep" in t and "no seed" in t for t in texts), texts
    assert any("grpo" in t and "no point" in t for t in texts), texts


@pytest.mark.parametrize("top", [0.04, 0.13, 0.16, 0.3, 0.55, 1.0])
def test_percent_tick_labels_say_their_ticks_value(figures, top):
    # A 2.5% step labelled without decimals read "2%, 5%, 8%, 10%, 12%" (mixed's frontier_as_run.png).
    reports = {"run": {"n": 10, "cumulative_accuracy": {"1": top / 2, "2": top}}}
    plot_cumulative_accuracy(reports, "unused.png")
    (ax,) = figures[0].axes
    ticks = [y for y in ax.get_yticks() if 0 <= y <= ax.get_ylim()[1]]
    assert len(ticks) >= 3
    labels = [ax.yaxis.get_major_formatter()(y, i) for i, y in enumerate(ticks)]
    assert [float(label.rstrip("%")) for label in labels] == pytest.approx([100 * y for y in ticks])
