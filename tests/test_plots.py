"""Every figure is written as a non-empty PNG, also for odd inputs (no CI, no data)."""

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
