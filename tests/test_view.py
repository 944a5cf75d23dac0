"""drift view: the page's data round-trips, its table equals the reports, model text stays text.

The Python tests read the page as a browser's HTML parser would (html.parser) and decode the
embedded data as the page's JS does. The browser test at the end opens pages in a real headless
Chromium (``chromium`` or Debian's ``chromium-headless-shell`` on PATH) and is skipped without one.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from drift import DriftError
from drift.cli import main
from drift.config import ViewConfig, WeightingOptions
from drift.diagnostics import kish_ess
from drift.records import read_records, write_records
from drift.view import decode_payload, render
from drift.weighting import compute_weights, discounted_return, repetition_penalty, trajectory_return
from factories import REFERENCE_SAMPLE, make_record

HOSTILE = [
    "</script><script>document.body.dataset.pwned = 1</script>",
    '<img src=x onerror="document.body.dataset.pwned = 1">',
    "<!-- a comment --> & &amp; \u2028 \u2029 ]]> <style>body{display:none}</style>",
    '<svg onload="document.body.dataset.pwned = 1"></svg>',
]


def hostile_records() -> list[dict]:
    """4 prompts x 4: prompt p0 all-fail with hostile replies, p1 with format errors, p2/p3 solved."""
    records = []
    for j in range(4):
        rec = make_record("p0", j, ["1", "2", None], question=HOSTILE[j % len(HOSTILE)])
        rec["messages"][2]["content"] = HOSTILE[j]
        rec["messages"][-1]["content"] = HOSTILE[(j + 1) % len(HOSTILE)]
        records.append(rec)
        records.append(make_record("p1", j, [None, "5"] if j % 2 else [None, "4", "5"], first_correct=None))
        records.append(make_record("p2", j, ["5"] if j else ["4", "5"], first_correct=1 if j else 2))
        records.append(make_record("p<b>3</b>", j, ["5"], first_correct=1))
    for rec in records:  # answers "5" are right: mark the correct turn consistently
        if rec["first_correct_turn"] is None and "5" in rec["answers"]:
            t = rec["answers"].index("5") + 1
            rec["correct"] = [i + 1 == t for i in range(len(rec["answers"]))]
            rec["rewards"] = [float(c) for c in rec["correct"]]
            rec["first_correct_turn"] = t
    return records


class Tags(HTMLParser):
    """Every start tag the browser's parser would build, with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text.append(data)


def parse(page: str) -> Tags:
    parser = Tags()
    parser.feed(page)
    return parser


def page_of(tmp_path: Path, *paths, **options) -> tuple[str, dict]:
    return render(ViewConfig(paths=[str(p) for p in paths], out=str(tmp_path / "v.html"), **options))


# -- data ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_embedded_data_round_trips_and_holds_every_turn(tmp_path, compress):
    records = hostile_records()
    write_records(tmp_path / "r.jsonl", records)
    page, payload = page_of(tmp_path, tmp_path / "r.jsonl", compress=compress)
    assert decode_payload(page) == payload
    strings, (data,) = payload["strings"], payload["sets"]
    assert len(data["trajs"]) == len(records) and [p[0] for p in data["prompts"]] == ["p0", "p1", "p2", "p<b>3</b>"]
    for rec, row in zip(records, data["trajs"]):
        assert data["prompts"][row[0]][0] == rec["prompt_id"] and row[1] == rec["traj_id"]
        messages = [
            {"role": ["system", "user", "assistant", "tool"][m % 4], "content": strings[m // 4]} for m in row[8]
        ]
        assert messages == rec["messages"]  # every reply and feedback, hostile text included, verbatim
        assert [None if a < 0 else strings[a] for a in row[9]] == rec["answers"]
        assert row[10] == "".join("1" if c else "0" for c in rec["correct"])


def test_returns_weights_and_their_terms_are_drift_weightings(tmp_path):
    records = hostile_records()
    write_records(tmp_path / "r.jsonl", records)
    _, payload = page_of(tmp_path, tmp_path / "r.jsonl")
    (data,) = payload["sets"]
    opts = WeightingOptions()
    assert data["params"]["gamma"] == opts.gamma and data["params"]["lam"] == opts.lam
    returns, weights = compute_weights(records, opts.weighting())
    for rec, row, ret, w in zip(records, data["trajs"], returns, weights):
        expected = trajectory_return(
            rec["rewards"], rec["answers"], rec["format_errors"], gamma=0.9, lam=0.5, format_penalty=0.1
        )
        assert row[2] == pytest.approx(expected, abs=1e-5) and row[2] == pytest.approx(ret, abs=1e-5)
        assert row[3] == pytest.approx(w, rel=1e-5, abs=1e-9)
        assert row[6] == pytest.approx(discounted_return(rec["rewards"], 0.9), abs=1e-6)
        assert row[7] == pytest.approx(repetition_penalty(rec["answers"], 0.5), abs=1e-6)
        assert row[6] - 0.1 * row[5] - row[7] == pytest.approx(row[2], abs=1e-5)  # the page's explanation adds up
    for prompt in data["prompts"]:
        ws = [weights[i] for i in prompt[3]]
        assert prompt[6] == pytest.approx(kish_ess(ws), rel=1e-5)
        assert prompt[4] == 4 and prompt[5] == sum(records[i]["first_correct_turn"] is not None for i in prompt[3])
    assert data["prompts"][0][5] == 0  # p0 fails everywhere


def test_a_weighted_files_sidecar_gives_the_parameters_and_its_own_weights_are_shown(tmp_path):
    write_records(tmp_path / "r.jsonl", hostile_records())
    weighted = tmp_path / "w.jsonl"
    assert main(["weight", str(tmp_path / "r.jsonl"), "--out", str(weighted), "--gamma", "0.5", "--beta", "1"]) == 0
    _, payload = page_of(tmp_path, weighted)
    (data,) = payload["sets"]
    assert data["params"]["gamma"] == 0.5 and data["params"]["beta"] == 1.0 and data["stored"]["weight"]
    for rec, row in zip(read_records(weighted), data["trajs"]):
        assert row[2] == pytest.approx(rec["return"], abs=1e-5) and row[3] == pytest.approx(rec["weight"], rel=1e-5)
        assert row[6] == pytest.approx(discounted_return(rec["rewards"], 0.5), abs=1e-6)


# -- the results table -----------------------------------------------------------------------------


def table_rows(page: str) -> list[list[str]]:
    body = re.search(r"<table class=.results.>(.*?)</table>", page, re.S).group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", r, re.S)] for r in rows]


def test_results_table_equals_the_reports(tmp_path):
    assert main(["eval", "--records", str(REFERENCE_SAMPLE), "--out", str(tmp_path / "ref")]) == 0
    assert (
        main(["eval", "--backend", "scripted", "--num-prompts", "6", "--max-turns", "3", "-o", str(tmp_path / "s")])
        == 0
    )
    assert main(["compare", str(tmp_path / "ref"), str(tmp_path / "s"), "--out", str(tmp_path / "cmp")]) == 0
    for inputs in ([tmp_path / "ref", tmp_path / "s"], [tmp_path / "cmp"]):
        page, _ = page_of(tmp_path, *inputs)
        head, *rows = table_rows(page)
        assert [r[0] for r in rows] == ["ref", "s"]
        for row, name in zip(rows, ("ref", "s")):
            report = json.loads((tmp_path / name / "report.json").read_text())
            cells = dict(zip(head, row))
            assert int(cells["n"]) == report["n"]
            for t, value in report["cumulative_accuracy"].items():
                shown, lo, hi = map(float, re.findall(r"[\d.]+", cells[f"multi@{t}"]))
                assert shown == round(value, 3)
                assert [lo, hi] == [round(x, 3) for x in report["cumulative_accuracy_ci"][t]]
            assert cells["unique"] == f"{report['unique_answer_ratio']:.3f}"
            corr = report["correction_rate"].get("2")
            assert cells["corr@2"] == ("–" if corr is None else f"{corr:.3f}")
    figures = [a for tag, a in parse(page).tags if tag == "img"]
    assert {f["alt"] for f in figures} == {"cumulative_accuracy.png", "multi_at_k.png"}
    assert all(f["src"].startswith("data:image/png;base64,") for f in figures)


# -- hostile text ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_hostile_model_text_cannot_become_markup(tmp_path, compress):
    write_records(tmp_path / "r.jsonl", hostile_records())
    evals = tmp_path / "<img src=x onerror=alert(1)>"  # a hostile run name, too
    assert main(["eval", "--records", str(tmp_path / "r.jsonl"), "--out", str(evals)]) == 0
    page, _ = page_of(tmp_path, tmp_path / "r.jsonl", evals, compress=compress, title="<script>alert(1)</script>")
    tags = parse(page)
    scripts = [a for tag, a in tags.tags if tag == "script"]
    assert [s.get("id") for s in scripts] == ["drift-data", None]  # the data block and our code, nothing else
    assert not [t for t, _ in tags.tags if t in ("img", "svg", "iframe", "object")]
    assert [t for t, _ in tags.tags].count("style") == 1  # ours, in <head>
    data = re.search(r'<script id="drift-data" type="[^"]+">(.*?)</script>', page, re.S).group(1)
    assert not set("<>&") & set(data)  # so the parser can never see a tag or an end of the block in it
    assert page.count("</script") == 2
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page  # the run name, escaped


def test_a_hostile_comparison_cannot_become_markup(tmp_path):
    """A comparison.json row whose report is not found is shown as written: every cell is escaped,
    and a row key that is not multi@<turn> is refused with the file's name."""
    folder = tmp_path / "cmp"
    folder.mkdir()
    row = {"name": "x", "report": "nowhere", "n": "<svg onload=alert(1)>", "multi@1": "<b>bold</b>",
           "unique_answer_ratio": "<img src=x onerror=alert(1)>", "compute": {"flops": "<i>f</i>"}}  # fmt: skip
    (folder / "comparison.json").write_text(json.dumps({"runs": [row]}))
    page, _ = page_of(tmp_path, folder)
    assert not [t for t, _ in parse(page).tags if t in ("img", "svg", "b", "i")]
    assert "&lt;svg onload=alert(1)&gt;" in page and "&lt;img src=x" in page
    (folder / "comparison.json").write_text(json.dumps({"runs": [{"name": "x", "multi@x": 0.5}]}))
    with pytest.raises(DriftError, match=r"comparison\.json.*multi@x"):
        page_of(tmp_path, folder)


def test_assets_cannot_close_their_own_blocks():
    from drift.view import asset

    assert "</script" not in asset("view.js").lower() and "</style" not in asset("view.css").lower()
    assert "innerHTML" not in asset("view.js") and "insertAdjacentHTML" not in asset("view.js")


# -- the command ---------------------------------------------------------------------------------


def test_drift_view_on_a_rollout_file_and_an_eval_folder(tmp_path, capsys):
    write_records(
        tmp_path / "rollouts.jsonl", [make_record(f"q{p}", j, ["4", "5"], 2) for p in range(3) for j in range(2)]
    )
    assert main(["eval", "--records", str(tmp_path / "rollouts.jsonl"), "--out", str(tmp_path / "ev")]) == 0
    out = tmp_path / "pages" / "report.html"
    assert main(["view", str(tmp_path / "rollouts.jsonl"), str(tmp_path / "ev"), "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    payload = decode_payload(page)
    assert [s["name"] for s in payload["sets"]] == ["rollouts"] and len(payload["sets"][0]["trajs"]) == 6
    assert [r[0] for r in table_rows(page)[1:]] == ["ev"]
    assert "http://" not in page.replace("http://www.w3.org", "") and "https://" not in page  # nothing to fetch
    # options may come between the inputs, as with any command line
    mixed = tmp_path / "mixed.html"
    assert main(["view", str(tmp_path / "rollouts.jsonl"), "--out", str(mixed), str(tmp_path / "ev")]) == 0
    assert decode_payload(mixed.read_text(encoding="utf-8"))["sets"] == payload["sets"]
    before = out.read_bytes()
    capsys.readouterr()
    assert main(["view", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert f"{tmp_path / 'missing'}: no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["view", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert f"{tmp_path / 'empty'}: no report.json" in capsys.readouterr().err
    assert out.read_bytes() == before  # a failed run leaves the page as it was
    write_records(tmp_path / "unscored" / "records.jsonl", [make_record("q", 0, ["5"], 1)])  # an eval cut short
    assert main(["view", str(tmp_path / "unscored"), "--out", str(out)]) == 0
    assert [s["name"] for s in decode_payload(out.read_text())["sets"]] == ["unscored"]
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "comparison.json").write_text('{"runs": [{"n": 3}]}')
    capsys.readouterr()
    assert main(["view", str(tmp_path / "cmp"), "--out", str(out)]) == 2
    assert 'a comparison holds {"runs": [{"name"' in capsys.readouterr().err
    (tmp_path / "cmp" / "comparison.json").write_text('{"runs": [')
    assert main(["view", str(tmp_path / "cmp"), "--out", str(out)]) == 2
    assert "not a readable comparison" in capsys.readouterr().err


def test_a_demo_like_folder_shows_runs_records_weights_and_figures(tmp_path):
    demo = tmp_path / "demo"
    records = hostile_records()
    write_records(demo / "rollouts.jsonl", records)
    assert main(["weight", str(demo / "rollouts.jsonl"), "--out", str(demo / "weighted.jsonl"), "--plot"]) == 0
    for name, recs in (("base", records), ("drift-eval", records[::2])):
        write_records(demo / name / "records.jsonl", recs)
        assert main(["eval", "--records", str(demo / name / "records.jsonl"), "--out", str(demo / name)]) == 0
    compare = ["compare", str(demo / "base"), str(demo / "drift-eval"), "--names", "base,drift", "--out", str(demo)]
    assert main(compare) == 0
    page, payload = page_of(tmp_path, demo)
    assert [r[0] for r in table_rows(page)[1:]] == ["base", "drift"]
    assert [s["name"] for s in payload["sets"]] == ["base", "drift", "weighted"]  # rollouts: weighted holds them
    alts = {a["alt"] for t, a in parse(page).tags if t == "img"}
    assert alts == {"cumulative_accuracy.png", "multi_at_k.png", "weighted.weights.png"}


# -- a real browser -------------------------------------------------------------------------------

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-headless-shell") if shutil.which(b)), None)


def dom(page: Path, fragment: str = "") -> str:
    """The DOM after the page's script ran (headless Chromium, its time budget covering the decoding)."""
    args = [BROWSER, "--headless", "--no-sandbox", "--virtual-time-budget=20000", "--dump-dom"]
    url = page.resolve().as_uri() + fragment
    result = subprocess.run([*args, url], capture_output=True, text=True, timeout=120, check=False)
    assert 'data-ready="1"' in result.stdout, result.stderr[-2000:]
    return result.stdout


@pytest.mark.skipif(BROWSER is None, reason="no headless Chromium on PATH (apt-get install chromium-headless-shell)")
@pytest.mark.parametrize("flag", ["--compress", "--no-compress"])
def test_in_a_browser_the_page_renders_filters_and_keeps_hostile_text_inert(tmp_path, flag):
    records = hostile_records()
    write_records(tmp_path / "a.jsonl", records)
    write_records(tmp_path / "b.jsonl", [r for r in records if r["prompt_id"] != "p2"])
    assert main(["eval", "--records", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "ev")]) == 0
    out = tmp_path / "v.html"
    assert (
        main(["view", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), str(tmp_path / "ev"), "-o", str(out), flag])
        == 0
    )

    first = dom(out)  # the results tab: the table the browser shows is the report's
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert f"{report['cumulative_accuracy']['1']:.3f}" in table_rows(first)[1][2]

    every = dom(out, "#tab=trajectories")
    failing = dom(out, "#tab=trajectories&allfail=1")
    assert every.count('class="prow"') == 4 and failing.count('class="prow"') == 1  # the filter shows p0 alone
    assert "(4 prompts)" in every and "(1 prompts)" in failing

    opened = dom(out, "#tab=trajectories&open=0")  # p0: every hostile reply on show
    tags = parse(opened)
    assert [t for t, _ in tags.tags].count("script") == 2 and not [t for t, _ in tags.tags if t in ("img", "svg")]
    assert "data-pwned" not in opened  # no handler ran
    assert opened.count("&lt;img src=x onerror=") == 2  # the two replies that hold it, shown as text
    assert "&lt;/script&gt;&lt;script&gt;" in opened

    compare = dom(out, "#tab=compare&a=0&b=1&cfilter=all&copen=p0")
    assert "3 shared prompts" in compare and "&lt;svg onload=" in compare

    # a link with values the page does not offer keeps the defaults (an unknown filter once threw)
    odd = dom(out, "#tab=compare&a=0&b=1&cfilter=zzz&tsort=zzz&toString=1")
    assert "3 shared prompts" in odd


def test_the_choices_a_link_may_give_are_the_pages_own():
    """view.js accepts from a URL only the values its selects and tabs offer."""
    from drift.view import asset

    page, js = asset("page.html"), asset("view.js")
    choices = json.loads(
        re.sub(r"(\w+):", r'"\1":', re.search(r"const CHOICES = (\{.*?\});", js, re.S).group(1).replace("\n", " "))
    )
    bound = dict(re.findall(r'bind\("([\w-]+)", "(\w+)"', js))
    for select, key in bound.items():
        options = re.search(rf'<select id="{select}">(.*?)</select>', page, re.S)
        if options and key in choices:
            assert choices[key] == re.findall(r'<option value="(\w+)"', options.group(1)), key
    assert choices["tab"] == re.findall(r'data-tab="(\w+)"', page)
    assert set(choices) == {"tab", "sort", "tsort", "cfilter"}
