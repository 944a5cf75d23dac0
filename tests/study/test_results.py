"""The study table from hand-built reports: rows, seed means and intervals, and the match."""

import json

import pytest

from drift.study.results import read_rows, write_results
from drift.study.spec import StudySpec


def _report(out, method, kind, seed, rnd, acc, flops, n=10, final=True, as_run=None):
    tag = "final" if rnd is None else f"round-{rnd:05d}"
    path = out / "reports" / method / (f"seed-{seed}" if seed is not None else "") / (tag if seed is not None else "")
    path.mkdir(parents=True, exist_ok=True)
    report = {
        "n": n,
        "cumulative_accuracy": {"1": acc[0], "2": acc[1]},
        "correction_rate_overall": 0.1,
        "unique_answer_ratio": 0.9,
        "study": {"method": method, "kind": kind, "seed": seed, "lr": 1e-5 if kind != "base" else None,
                  "lr_from": None, "round": rnd, "final": final,
                  "compute": {"flops": flops, "sampling_seconds": 1.0, "training_seconds": 2.0}},
    }  # fmt: skip
    if as_run is not None:  # points made before drift counted the forwarded tokens have none
        report["study"]["compute"]["flops_as_run"] = as_run
    (path / "report.json").write_text(json.dumps(report))


def _drift_and_a_running_rl(out):
    """One seed: DRIFT's run (0.5 at 100 FLOPs) and an online run evaluated at its round 1 only
    (0.2 at 50 FLOPs, not its end); returns the study."""
    _report(out, "drift", "offline", 0, None, (0.3, 0.5), 100.0)
    _report(out, "rl", "online", 0, 1, (0.1, 0.2), 50.0, final=False)
    return StudySpec(
        methods=[{"name": "drift", "kind": "offline"}, {"name": "rl", "kind": "online"}],
        max_turns=2, seeds=[0], budget_method="drift",
    )  # fmt: skip


def test_table_means_intervals_and_the_compute_at_which_rl_matches(tmp_path):
    spec = StudySpec(
        methods=[{"name": "base", "kind": "base"}, {"name": "drift", "kind": "offline"},
                 {"name": "rl", "kind": "online"}],
        max_turns=2, seeds=[0, 1], budget_method="drift",
    )  # fmt: skip
    _report(tmp_path, "base", "base", None, None, (0.1, 0.2), 0.0)
    _report(tmp_path, "drift", "offline", 0, None, (0.3, 0.5), 100.0)
    _report(tmp_path, "drift", "offline", 1, None, (0.3, 0.7), 110.0)
    # rl seed 0 reaches 0.5 at its round 2 (200 FLOPs); seed 1 never reaches 0.7
    for seed, curve in ((0, [(1, 0.3, 50.0), (2, 0.5, 200.0), (3, 0.6, 400.0)]),
                        (1, [(1, 0.2, 60.0), (2, 0.4, 210.0), (3, 0.6, 420.0)])):  # fmt: skip
        for rnd, acc, flops in curve:
            _report(tmp_path, "rl", "online", seed, rnd, (acc - 0.1, acc), flops, final=rnd == 3)
    (tmp_path / "tuning.json").write_text(json.dumps({"drift": {"tries": 3}, "rl": {"tries": 3}}))
    table = write_results(tmp_path, spec)
    assert len(table["rows"]) == 1 + 2 + 6 == len(read_rows(tmp_path, 2))
    drift = next(s for s in table["summary"] if s["method"] == "drift")
    assert drift["multi_at"]["2"] == pytest.approx(0.6) and drift["flops"] == pytest.approx(105.0)
    # mean 0.6, s = 0.1414, t(0.975, 1) = 12.706: 0.6 +- 1.2706, cut to 0..1
    assert drift["multi_at_T_seed_ci"] == pytest.approx([0.6, 0.0, 1.0], abs=1e-3)
    # pooled: 12 solved of 20 episodes
    from drift.metrics import wilson_interval

    assert drift["multi_at_T_pooled_ci"] == pytest.approx(list(wilson_interval(12, 20)), abs=1e-4)
    rl = next(s for s in table["summary"] if s["method"] == "rl")
    assert rl["multi_at"]["2"] == pytest.approx(0.6) and rl["flops"] == pytest.approx(410.0)  # the last rounds
    (match,) = table["match"]
    assert match["per_seed"]["0"]["flops"] == 200.0 and match["per_seed"]["0"]["ratio"] == 2.0
    # the crossing lies between the last point below the target and the first at or above it
    assert match["per_seed"]["0"]["flops_below"] == 50.0 and match["per_seed"]["0"]["ratio_below"] == 0.5
    assert match["per_seed"]["1"]["flops_below"] is None
    assert match["per_seed"]["1"]["flops"] is None and match["per_seed"]["1"]["budget_ratio"] == pytest.approx(
        420 / 110, abs=1e-3
    )
    # mean curve: rounds (55, 0.25), (205, 0.45), (410, 0.6) against the mean target 0.6 at 105 FLOPs
    assert match["mean"]["flops"] == pytest.approx(410.0) and match["mean"]["ratio"] == pytest.approx(
        410 / 105, abs=1e-3
    )
    md = (tmp_path / "table.md").read_text()
    assert "| drift | 1e-05 (3) | 2 (0,1) | 0.300 | 0.600 |" in md and "not reached" in md
    assert "| 0 | 0.500 | 100.000 | 50.000 (0.50x) | 200.000 (2.00x) | 4.00 |" in md
    # one model, one run: no interval across seeds, and no training compute
    assert "| base | – | 1 | 0.100 | 0.200 | – | " in md and "| 0.900 | 0 | " in md


def test_a_run_still_going_has_no_final_point(tmp_path):
    """Its last evaluated snapshot is not its result: the summary leaves the seed out until the
    run's end is evaluated, and the rows keep the snapshot's round."""
    spec = StudySpec(methods=[{"name": "rl", "kind": "online"}], max_turns=2, seeds=[0, 1], budget_method="rl")
    _report(tmp_path, "rl", "online", 0, 1, (0.1, 0.2), 10.0, final=False)
    _report(tmp_path, "rl", "online", 0, 3, (0.1, 0.4), 30.0, final=True)
    _report(tmp_path, "rl", "online", 1, 1, (0.1, 0.3), 11.0, final=False)
    rows = read_rows(tmp_path, 2)
    assert [(r["seed"], r["point"]) for r in rows] == [(0, 1), (0, "final"), (1, 1)]
    (summary,) = write_results(tmp_path, spec)["summary"]
    assert summary["seeds"] == [0] and summary["multi_at"]["2"] == 0.4


def test_a_method_with_snapshots_and_no_final_point_yet(tmp_path):
    """Its first run is still going: no summary row (nothing to summarise), but its snapshots stay
    in the rows, the match and the figure."""
    spec = _drift_and_a_running_rl(tmp_path)
    _report(tmp_path, "rl", "online", 0, 2, (0.3, 0.6), 150.0, final=False)
    table = write_results(tmp_path, spec)
    assert [s["method"] for s in table["summary"]] == ["drift"]
    assert [(r["method"], r["point"]) for r in table["rows"]] == [("drift", "final"), ("rl", 1), ("rl", 2)]
    (match,) = table["match"]
    assert match["per_seed"]["0"]["flops"] == 150.0 and match["per_seed"]["0"]["flops_below"] == 50.0
    assert "| rl |" not in (tmp_path / "table.md").read_text()


def test_the_frontier_line_runs_left_to_right_over_points_every_seed_has(tmp_path, monkeypatch):
    """A round only one seed reached is not a mean over seeds: the line leaves it out, and its
    points are in order of FLOPs (summing a group's FLOPs put a one-seed round before a two-seed
    one, and the line ran backwards)."""
    import drift.plots as plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    spec = StudySpec(methods=[{"name": "rl", "kind": "online"}], max_turns=2, seeds=[0, 1], budget_method="rl")
    curves = {0: [(1, 10.0), (2, 20.0), (3, 30.0), (None, 40.0)], 1: [(1, 12.0), (2, 22.0), (None, 26.0)]}
    for seed, curve in curves.items():
        for rnd, flops in curve:
            _report(tmp_path, "rl", "online", seed, rnd, (0.1, flops / 100), flops, final=rnd is None)
    write_results(tmp_path, spec)
    (ax,) = saved[0].axes
    (line,) = ax.get_lines()
    assert list(line.get_xdata()) == pytest.approx([11.0, 21.0, 33.0])
    assert list(line.get_ydata()) == pytest.approx([0.11, 0.21, 0.33])


def test_a_partial_curve_is_not_yet_a_miss(tmp_path):
    """A run still going that has not reached the target is "not yet", not "not reached"."""
    spec = _drift_and_a_running_rl(tmp_path)
    (match,) = write_results(tmp_path, spec)["match"]
    assert match["per_seed"]["0"]["flops"] is None and match["per_seed"]["0"]["ended"] is False
    md = (tmp_path / "table.md").read_text()
    assert "not yet" in md and "not reached" not in md


def test_intervals_stay_within_zero_and_one_and_say_what_they_assume(tmp_path):
    spec = StudySpec(methods=[{"name": "drift", "kind": "offline"}], max_turns=2, seeds=[0, 1], budget_method="drift")
    _report(tmp_path, "drift", "offline", 0, None, (0.0, 0.05), 100.0)
    _report(tmp_path, "drift", "offline", 1, None, (0.3, 0.7), 110.0)
    (drift,) = write_results(tmp_path, spec)["summary"]
    assert drift["multi_at_T_seed_ci"][1] == 0.0 and drift["multi_at_T_seed_ci"][2] == 1.0
    md = (tmp_path / "table.md").read_text()
    assert "as if independent" in md


def test_a_mean_curve_that_equals_the_target_reaches_it(tmp_path):
    """Means in floating point: DRIFT's seeds 0.300 and 0.330 give the target 0.315, and a round
    at 0.345 and 0.285 averages 0.31499999999999995; equal to the target, it reaches it."""
    spec = StudySpec(
        methods=[{"name": "drift", "kind": "offline"}, {"name": "rl", "kind": "online"}],
        max_turns=2, seeds=[0, 1], budget_method="drift",
    )  # fmt: skip
    _report(tmp_path, "drift", "offline", 0, None, (0.1, 0.300), 100.0)
    _report(tmp_path, "drift", "offline", 1, None, (0.1, 0.330), 100.0)
    for seed, curve in ((0, [(1, 0.100, 50.0), (2, 0.345, 150.0), (3, 0.400, 400.0)]),
                        (1, [(1, 0.100, 50.0), (2, 0.285, 150.0), (3, 0.400, 400.0)])):  # fmt: skip
        for rnd, acc, flops in curve:
            _report(tmp_path, "rl", "online", seed, rnd, (0.0, acc), flops, final=rnd == 3)
    (match,) = write_results(tmp_path, spec)["match"]
    assert match["mean"]["target"] == 0.315
    assert match["mean"]["flops_below"] == 50.0 and match["mean"]["flops"] == 150.0


def test_two_ends_of_one_seed_s_run_are_refused(tmp_path):
    """Two reports marked ``final`` for one method and seed come from two runs (an offline run's
    end and an online run's last round, say): no mean over seeds may count that seed twice."""
    from drift import DriftError

    spec = StudySpec(methods=[{"name": "rl", "kind": "online"}], max_turns=2, seeds=[0], budget_method="rl")
    _report(tmp_path, "rl", "online", 0, None, (0.1, 0.3), 20.0, final=True)
    _report(tmp_path, "rl", "online", 0, 3, (0.1, 0.4), 30.0, final=True)
    with pytest.raises(DriftError, match="two runs") as err:
        write_results(tmp_path, spec)
    for tag in ("final", "round-00003"):
        assert f"reports/rl/seed-0/{tag}/report.json" in str(err.value)


def test_the_table_names_each_method_s_seeds(tmp_path):
    """Means over different seed sets are not alike: a method over seeds 0, 2 and 3 and a variant
    over 0 and 2 say which seeds they are, in table.md as in the summary of table.json."""
    spec = StudySpec(
        methods=[{"name": "drift", "kind": "offline"}, {"name": "variant", "kind": "offline"}],
        max_turns=2, seeds=[0, 2, 3], budget_method="drift",
    )  # fmt: skip
    for seed in (0, 2, 3):
        _report(tmp_path, "drift", "offline", seed, None, (0.3, 0.5), 100.0)
    for seed in (0, 2):
        _report(tmp_path, "variant", "offline", seed, None, (0.3, 0.5), 100.0)
    table = write_results(tmp_path, spec)
    assert [s["seeds"] for s in table["summary"]] == [[0, 2, 3], [0, 2]]
    md = (tmp_path / "table.md").read_text()
    assert "| drift | 1e-05 (?) | 3 (0,2,3) |" in md and "| variant | 1e-05 (?) | 2 (0,2) |" in md


def _configs(out, method, seed, lr, configs):
    path = out / "points" / method / f"seed{seed}-lr{lr:g}.configs.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(configs))


def test_the_table_notes_resolved_options_that_differ_between_a_method_s_seeds(tmp_path):
    """From the runs that record their resolved configs (points/<method>/<run>.configs.json), at the
    learning rate in the table: an option whose value differs between a method's seeds is named;
    seeds, paths and an online run's FLOP budget (a multiple of that seed's budget run) differ by
    design. Runs made before the file was written have none: they are left out, not an error."""
    spec = StudySpec(
        methods=[{"name": "drift", "kind": "offline"}, {"name": "rl", "kind": "online"},
                 {"name": "older", "kind": "offline"}],
        max_turns=2, seeds=[0, 1, 2], budget_method="drift",
    )  # fmt: skip
    for seed in (0, 1, 2):
        _report(tmp_path, "drift", "offline", seed, None, (0.3, 0.5), 100.0)
    for seed in (0, 1):
        _report(tmp_path, "rl", "online", seed, 1, (0.3, 0.5), 100.0)
        _report(tmp_path, "older", "offline", seed, None, (0.3, 0.5), 100.0)
        paths = {"input": f"work/rollouts/seed{seed}.jsonl", "out": f"work/runs/drift/seed{seed}", "model": "m"}
        drift = {"weight": {"beta": 0.1, **paths}, "train": {"lr": 1e-5, "seed": seed, "target": "last", **paths}}
        _configs(tmp_path, "drift", seed, 1e-5, drift)
        rl = {"lr": 1e-5, "seed": seed, "kl_coef": [0.0, 0.05][seed], "max_flops": 400.0 + seed, **paths}
        _configs(tmp_path, "rl", seed, 1e-5, {"rl": rl})
    _configs(tmp_path, "drift", 0, 1e-3, {"train": {"lr": 1e-3}})  # a tuning run at another lr: not in the table
    summary = {s["method"]: s for s in write_results(tmp_path, spec)["summary"]}
    assert summary["drift"]["resolved_options"] == {"seeds": [0, 1], "differ": {}}  # seed 2 records none
    assert summary["rl"]["resolved_options"] == {"seeds": [0, 1], "differ": {"rl.kl_coef": {"0": 0.0, "1": 0.05}}}
    assert summary["older"]["resolved_options"] == {"seeds": [], "differ": {}}
    md = (tmp_path / "table.md").read_text()
    assert "- drift (seeds 0,1): resolved options agree across seeds\n" in md
    assert "- rl (seeds 0,1): rl.kl_coef 0.0 (seed 0), 0.05 (seed 1)\n" in md
    assert "- older" not in md
    # a table of runs none of which records them says so
    for path in (tmp_path / "points").rglob("*.configs.json"):
        path.unlink()
    write_results(tmp_path, spec)
    assert "no method has two seeds whose runs record them" in (tmp_path / "table.md").read_text()


def test_the_match_is_also_counted_as_run_over_the_seeds_that_recorded_it(tmp_path):
    """Two FLOP axes: nominal (every example's tokens) and as run (shared prefixes once). Online RL
    trains most of its FLOPs, so counted as run its crossing moves left of the nominal one; a seed
    whose points lack the as-run count (made by older code) is left out of that axis, not guessed."""
    spec = StudySpec(
        methods=[{"name": "drift", "kind": "offline"}, {"name": "rl", "kind": "online"}],
        max_turns=2, seeds=[0, 1], budget_method="drift",
    )  # fmt: skip
    _report(tmp_path, "drift", "offline", 0, None, (0.3, 0.5), 100.0, as_run=90.0)
    _report(tmp_path, "drift", "offline", 1, None, (0.3, 0.5), 100.0)  # older: no as-run count
    for seed in (0, 1):
        for rnd, acc, flops in ((1, 0.3, 100.0), (2, 0.5, 300.0), (3, 0.6, 500.0)):
            _report(tmp_path, "rl", "online", seed, rnd, (0.1, acc), flops, final=rnd == 3,
                    as_run=flops * 0.6 if seed == 0 else None)  # fmt: skip
    table = write_results(tmp_path, spec)
    (match,) = table["match"]
    assert match["per_seed"]["0"]["flops"] == 300.0 and match["per_seed"]["0"]["ratio"] == 3.0
    as_run = match["as_run"]
    assert list(as_run["per_seed"]) == ["0"]
    assert as_run["per_seed"]["0"]["flops"] == pytest.approx(180.0) and as_run["per_seed"]["0"]["ratio"] == 2.0
    assert as_run["per_seed"]["0"]["flops_below"] == pytest.approx(60.0)
    assert as_run["mean"]["flops"] == pytest.approx(180.0) and as_run["mean"]["target_flops"] == 90.0
    drift, rl = table["summary"]
    assert drift["flops_as_run"] is None  # not over every seed: no mean
    assert rl["flops_as_run"] is None and table["rows"][0]["flops_as_run"] == 90.0
    md = (tmp_path / "table.md").read_text()
    assert "counted as run" in md and "| 0 | 0.500 | 90.000 | 60.000 (0.67x) | 180.000 (2.00x) | 3.33 |" in md
    assert "seed 1: no as-run count" in md


def test_a_second_frontier_counts_compute_as_run_over_the_seeds_that_have_it(tmp_path, monkeypatch):
    """frontier_as_run.png: the same curves on the as-run FLOP axis, each method over the seeds whose
    points all have the count; not drawn when no run of the budget method has one (a study made
    before the count: base and TRL GRPO alone would have it)."""
    import drift.plots as plots

    saved = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.setdefault(path.name, fig))
    spec = StudySpec(methods=[{"name": "rl", "kind": "online"}], max_turns=2, seeds=[0, 1], budget_method="rl")
    for rnd, flops in ((1, 10.0), (None, 40.0)):
        _report(tmp_path, "rl", "online", 0, rnd, (0.1, flops / 100), flops, final=rnd is None)  # no count
        _report(tmp_path, "rl", "online", 1, rnd, (0.1, flops / 50), flops, final=rnd is None, as_run=flops / 2)
    write_results(tmp_path, spec)
    (nominal,) = saved["frontier.png"].axes
    (as_run,) = saved["frontier_as_run.png"].axes
    assert list(nominal.get_lines()[0].get_xdata()) == pytest.approx([10.0, 40.0])
    assert list(as_run.get_lines()[0].get_xdata()) == pytest.approx([5.0, 20.0])  # seed 1 only
    assert list(as_run.get_lines()[0].get_ydata()) == pytest.approx([0.2, 0.8])
    assert "as run" in as_run.get_xlabel() and "as run" not in nominal.get_xlabel()
    assert "(1 seed)" in saved["frontier_as_run.png"].legends[0].get_texts()[0].get_text()
    saved.clear()
    for path in (tmp_path / "reports").rglob("report.json"):
        report = json.loads(path.read_text())
        report["study"]["compute"].pop("flops_as_run", None)
        path.write_text(json.dumps(report))
    _report(tmp_path, "trl", "online", 0, None, (0.1, 0.2), 30.0)  # as run = nominal, known without the count
    spec.methods.append({"name": "trl", "kind": "online", "rl": {"algorithm": "trl-grpo"}})
    (tmp_path / "frontier_as_run.png").write_bytes(b"stale")
    write_results(tmp_path, spec)
    assert set(saved) == {"frontier.png", "accuracy_by_turn.png"} and not (tmp_path / "frontier_as_run.png").exists()


def test_points_made_before_the_count_are_known_as_run_where_nothing_is_shared(tmp_path):
    """Reports made before drift kept the as-run count: base forwarded nothing (0 either way) and
    TRL's GRPOTrainer runs every example whole (as run = nominal); others stay unknown, and the
    match says on which side the count is missing."""
    spec = StudySpec(
        methods=[{"name": "base", "kind": "base"}, {"name": "drift", "kind": "offline"},
                 {"name": "trl", "kind": "online", "rl": {"algorithm": "trl-grpo"}},
                 {"name": "rl", "kind": "online"}],
        max_turns=2, seeds=[0], budget_method="drift",
    )  # fmt: skip
    _report(tmp_path, "base", "base", None, None, (0.1, 0.2), 0.0)
    _report(tmp_path, "drift", "offline", 0, None, (0.3, 0.5), 100.0, as_run=80.0)
    for name in ("trl", "rl"):
        for rnd, acc, flops in ((1, 0.3, 100.0), (2, 0.6, 300.0)):
            _report(tmp_path, name, "online", 0, rnd, (0.1, acc), flops, final=rnd == 2)
    table = write_results(tmp_path, spec)
    as_run = {(r["method"], r["point"]): r["flops_as_run"] for r in table["rows"]}
    assert as_run[("base", "final")] == 0.0 and as_run[("trl", "final")] == 300.0 and as_run[("rl", "final")] is None
    trl, rl = table["match"]
    assert trl["as_run"]["per_seed"]["0"]["ratio"] == pytest.approx(300 / 80, abs=1e-3)
    assert rl["as_run"]["per_seed"] == {} and rl["as_run"]["missing"] == [{"seed": 0, "in": "rl"}]
    md = (tmp_path / "table.md").read_text()
    assert "- seed 0: no as-run count in rl's points (made before drift kept one)" in md


def test_the_as_run_match_says_when_there_is_nothing_to_compare_yet(tmp_path):
    spec = _drift_and_a_running_rl(tmp_path)  # no budget run with an as-run count, no ended online run
    (tmp_path / "reports" / "drift").rename(tmp_path / "drift-report")  # no budget run at all
    (match,) = write_results(tmp_path, spec)["match"]
    assert match["as_run"]["per_seed"] == {} and match["as_run"]["missing"] == []
    md = (tmp_path / "table.md").read_text()
    for axis in ("nominally (every token of every example forwarded, as if each ran alone)",
                 "as run (a micro-batch's shared prefixes once; drift.compute)"):  # fmt: skip
        assert f"FLOPs counted {axis}:\n\nno seed to compare yet\n" in md
    assert "not reached" not in md  # (the mean curve of no seed said so)
