"""``drift view``: one self-contained HTML page of results, trajectories and weights.

The page (``drift view PATH... --out report.html``) holds:

* **Results**: one row per run (multi@k with its 95% Wilson interval, correction rate, unique-answer
  ratio, format-error rate, compute), from ``report.json`` / ``comparison.json``, rendered here as a
  static, escaped HTML table; the PNG figures found beside them, inline as base64 ``data:`` URIs.
* **Trajectories**: per trajectory file (rollouts, weighted, an eval's ``records.jsonl``) its prompts,
  paginated, with sort, filters and a text search; a prompt opens its K trajectories turn by turn
  (reply, extracted answer, correct or not, the feedback) with the return explained term by term.
* **Weights**: per prompt the Kish ESS of its weights; histograms of returns and weights.
* **Compare**: two trajectory sets on the same prompts side by side (which solved, which did not).

Returns are recomputed with drift.weighting (gamma, lam, format_penalty, beta from a weighted file's
sidecar ``<name>.config.yaml``, else the defaults of drift.config.WeightingOptions); a file's own
``return``/``weight`` fields are shown when present, else the computed ones.

Embedding: every trajectory set goes into one JSON payload (strings interned in a table, so a
system prompt or feedback repeated 28,800 times is stored once). By default that JSON is
gzip-compressed and base64-encoded into a ``<script type="application/octet-stream">`` block, which
the page's JS decodes with ``DecompressionStream``; base64 has no ``<``, so no model text can close
the block. ``--no-compress`` embeds plain JSON with ``<``, ``>``, ``&``, U+2028/9 as ``\\uXXXX``
escapes, so ``</script>`` cannot appear inside it either. The JS shows model text with
``textContent`` only; the CSS and JS come from ``drift/view_assets``.
"""

from __future__ import annotations

import base64
import html
import json
import re
import time
from dataclasses import fields
from pathlib import Path

from drift import DriftError
from drift.config import ViewConfig, WeightingOptions
from drift.outputs import sidecar

ROLES = {"system": 0, "user": 1, "assistant": 2, "tool": 3}
COMPARISON_NAME = "comparison.json"
HIST_BINS = 30


# -- inputs ----------------------------------------------------------------------------------


def _sidecar_config(path: Path):
    """The parsed sidecar ``<name>.config.yaml`` of ``path`` (``None`` if there is none); read errors
    propagate, each caller decides what they mean."""
    from drift.options import read_yaml

    config = sidecar(path, "config.yaml")
    return read_yaml(config.read_text(encoding="utf-8")) if config.is_file() else None


def weighting_for(path: Path) -> WeightingOptions:
    """The weighting options of a trajectory file: its sidecar ``<name>.config.yaml`` if it names
    any, else the defaults (unknown keys in the sidecar, e.g. ``input``, are ignored)."""
    import yaml

    config = sidecar(path, "config.yaml")
    known = {f.name for f in fields(WeightingOptions)}
    try:
        data = _sidecar_config(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DriftError(f"{config}: cannot read the weighting options: {e}") from None
    options = {k: v for k, v in (data or {}).items() if k in known} if isinstance(data, dict) else {}
    try:
        opts = WeightingOptions(**options)
        opts.weighting()  # validates
    except (TypeError, DriftError) as e:
        raise DriftError(f"{config}: bad weighting options: {e}") from None
    return opts


def trajectory_set(name: str, path: Path, strings: dict[str, int]) -> dict:
    """The records of ``path`` as the page's compact arrays (strings interned into ``strings``)."""
    from drift.diagnostics import kish_ess
    from drift.records import read_records
    from drift.weighting import Columns, compute_weights, discounted_return, repetition_penalty

    records = read_records(path)
    opts = weighting_for(path)
    params = opts.weighting()
    returns, weights = compute_weights(Columns.of(records), params)

    def s(text) -> int:
        return strings.setdefault(str(text), len(strings))

    prompts: dict[str, int] = {}
    trajs: list[list] = []
    per_prompt: list[dict] = []
    stored = {"return": 0, "weight": 0}
    for rec, ret, w in zip(records, returns, weights):
        pid = rec["prompt_id"]
        if pid not in prompts:
            prompts[pid] = len(prompts)
            question = next((m["content"] for m in rec["messages"] if m["role"] == "user"), "")
            per_prompt.append({"id": pid, "gold": rec.get("gold"), "q": s(question), "t": []})
        for key in stored:
            stored[key] += key in rec
        ret = rec.get("return", ret)
        w = rec.get("weight", w)
        disc = discounted_return(rec["rewards"], params.gamma)
        msgs = [s(m["content"]) * 4 + ROLES.get(m["role"], 1) for m in rec["messages"]]
        answers = [-1 if a is None else s(a) for a in rec["answers"]]
        correct = "".join("1" if c else "0" for c in rec["correct"])
        row = [prompts[pid], rec["traj_id"], _num(ret), _num(w), rec.get("first_correct_turn") or 0]
        row += [rec["format_errors"], _num(disc), _num(repetition_penalty(rec["answers"], params.lam))]
        row += [msgs, answers, correct]
        per_prompt[prompts[pid]]["t"].append(len(trajs))
        trajs.append(row)
    summary = []
    for p in per_prompt:
        rows = [trajs[i] for i in p["t"]]
        ws = [r[3] for r in rows if r[3] is not None]
        firsts = [r[4] for r in rows if r[4]]
        # [id, gold, question, trajectory indices, K, solved, ESS, max w, best R, first correct, format errors]
        best, ess, top = _num(max(r[2] for r in rows)), _num(kish_ess(ws)), _num(max(ws, default=None))
        first, fmt_errors = min(firsts, default=0), sum(r[5] for r in rows)
        summary.append([p["id"], p["gold"], p["q"], p["t"], len(rows), len(firsts), ess, top, best, first, fmt_errors])
    return {
        "name": name,
        "source": str(path),
        "params": {k: getattr(opts, k) for k in ("scheme", "beta", "gamma", "lam", "format_penalty")},
        "stored": {k: v == len(records) for k, v in stored.items()},
        "prompts": summary,
        "trajs": trajs,
        "hist": {
            "return": _histogram([r[2] for r in trajs]),
            "weight": _histogram([r[3] for r in trajs if r[3] is not None]),
            "ess": _histogram([p[6] for p in summary]),
        },
    }


def _num(x):
    """A float rounded to 6 significant digits for the page (None stays None)."""
    return None if x is None else float(f"{x:.6g}")


def _histogram(values: list) -> dict:
    import numpy as np

    if not values:
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=HIST_BINS)
    return {"edges": [_num(e) for e in edges.tolist()], "counts": counts.tolist()}


def _run_from_report(name: str, report: dict) -> dict:
    from drift.compare import report_row

    max_k = max((int(t) for t in report["cumulative_accuracy"]), default=0)
    row = {"name": name, **report_row(report, max_k)}
    row["ci"] = report.get("cumulative_accuracy_ci") or {}
    return row


def collect(paths: list[str]) -> tuple[list[dict], list[tuple[str, Path]], list[tuple[str, Path]]]:
    """From the inputs: runs (rows of the results table), figures (label, PNG) and trajectory files
    (label, JSONL). A folder may be an eval folder, a compare folder, a demo folder or a mix."""
    from drift.report import REPORT_NAME, load_report

    runs: list[dict] = []
    figures: list[tuple[str, Path]] = []
    sets: list[tuple[str, Path]] = []

    def add_eval(folder: Path, name: str) -> None:
        if (folder / "records.jsonl").is_file():
            sets.append((name, folder / "records.jsonl"))

    for raw in paths:
        path = Path(raw)
        if path.is_file():
            sets.append((path.stem, path))
            png = sidecar(path, "weights.png")
            if png.is_file():
                figures.append((png.name, png))
            continue
        if not path.is_dir():
            raise DriftError(f"{path}: no such file or folder")
        found = len(runs) + len(sets) + len(figures)
        evals = [d for d in [path, *sorted(p for p in path.iterdir() if p.is_dir())] if (d / REPORT_NAME).is_file()]
        if (path / COMPARISON_NAME).is_file():
            for row in _comparison_runs(path / COMPARISON_NAME):
                folder = _find_report(path, str(row.get("report", "")))
                if folder is not None:
                    runs.append(_run_from_report(row["name"], load_report(folder)))
                    add_eval(folder, row["name"])
                else:
                    runs.append({**row, "ci": {}})
        else:
            for folder in evals:
                runs.append(_run_from_report(folder.name, load_report(folder)))
                add_eval(folder, folder.name)
        shown = {d / "records.jsonl" for d in evals}  # shown under their run's name
        jsonls = sorted(p for p in path.glob("*.jsonl") if p not in shown)
        derived = {_input_of(p) for p in jsonls} - {None}
        sets += [(path.name if p.name == "records.jsonl" else p.stem, p) for p in jsonls if p.name not in derived]
        figures += [(p.name, p) for p in sorted(path.glob("*.png"))]
        if len(runs) + len(sets) + len(figures) == found:
            raise DriftError(f"{path}: no report.json, comparison.json, trajectory file (*.jsonl) or figure in it")
    names = [n for n, _ in sets]
    sets = [(f"{n} ({p.parent.name})" if names.count(n) > 1 else n, p) for n, p in sets]
    return runs, figures, sets


def _comparison_runs(path: Path) -> list[dict]:
    """The rows of a ``comparison.json`` (drift.compare), each with a ``name``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise DriftError(f"{path}: not a readable comparison ({type(e).__name__}: {str(e)[:200]})") from None
    runs = data.get("runs") if isinstance(data, dict) else None
    if not isinstance(runs, list) or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in runs):
        raise DriftError(f'{path}: a comparison holds {{"runs": [{{"name": ..., ...}}, ...]}}')
    for i, run in enumerate(runs):
        bad = [k for k in run if k.startswith("multi@") and not (k[6:].isascii() and k[6:].isdigit())]
        if bad:
            raise DriftError(f"{path}: run {i + 1} has key {bad[0]!r:.40}; multi@ keys end in a turn number")
        if not isinstance(run.get("compute", {}), dict):
            raise DriftError(f"{path}: run {i + 1}: field 'compute' must be an object")
    return runs


def _find_report(folder: Path, report: str) -> Path | None:
    """The eval folder a comparison row names: the sub-folder of ``folder`` of that name, else the
    path as written (relative to the working folder); None when neither holds a report.json."""
    from drift.report import REPORT_NAME

    named = Path(report).parent if Path(report).name == REPORT_NAME else Path(report)
    for candidate in (folder / named.name, named):
        if (candidate / REPORT_NAME).is_file():
            return candidate
    return None


def _input_of(path: Path) -> str | None:
    """The name of the file that ``path`` was weighted from (its sidecar config's ``input``)."""
    import yaml

    try:
        data = _sidecar_config(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    return Path(data["input"]).name if isinstance(data, dict) and isinstance(data.get("input"), str) else None


# -- the page --------------------------------------------------------------------------------


def _fmt(x) -> str:
    """A table cell's text, escaped (a comparison row may hold anything)."""
    return "–" if x is None else f"{x:.3f}" if isinstance(x, float) else html.escape(str(x))


def results_table(runs: list[dict]) -> str:
    """The runs as an escaped HTML table: multi@k [95% interval], correction, unique answers, compute."""
    if not runs:
        return "<p class='muted'>No report.json or comparison.json among the inputs.</p>"
    ks = sorted({int(k.split("@")[1]) for run in runs for k in run if k.startswith("multi@")})
    extra = list(dict.fromkeys(k for run in runs for k in (run.get("compute") or {})))
    head = ["method", "n", *(f"multi@{k}" for k in ks), "corr@2", "corr all", "unique", "fmt err", *extra]
    out = ["<table class='results'><thead><tr>"]
    out += [f"<th>{html.escape(h)}</th>" for h in head]
    out.append("</tr></thead><tbody>")
    for run in runs:
        cells = [html.escape(str(run["name"])), _fmt(run.get("n"))]
        for k in ks:
            value, ci = run.get(f"multi@{k}"), (run.get("ci") or {}).get(str(k))
            text = _fmt(value)
            if ci and value is not None:
                text += f" <span class='ci'>[{_fmt(ci[0])}, {_fmt(ci[1])}]</span>"
            cells.append(text)
        cells += [_fmt(run.get(key)) for key in ("correction@2", "correction_overall", "unique_answer_ratio")]
        cells.append(_fmt(run.get("format_error_rate")))
        cells += [_fmt((run.get("compute") or {}).get(k)) for k in extra]
        out.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table><p class='muted'>multi@k: share solved by turn k, [95% Wilson interval].</p>")
    return "".join(out)


def figures_html(figures: list[tuple[str, Path]]) -> str:
    parts = []
    for label, png in figures:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(label, quote=True)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(label)}</figcaption></figure>"
        )
    return "".join(parts)


def embed_json(payload: dict) -> str:
    """``payload`` as JSON safe inside ``<script>``: no ``<``, ``>`` or ``&`` appears in it."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def encode_payload(payload: dict, compress: bool) -> tuple[str, str]:
    """``(script type, text)`` of the data block: gzip+base64 or escaped JSON."""
    import gzip

    if not compress:
        return "application/json", embed_json(payload)
    raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return "application/octet-stream", base64.b64encode(gzip.compress(raw, compresslevel=6, mtime=0)).decode("ascii")


def decode_payload(page: str) -> dict:
    """The data embedded in a page written by :func:`render` (what the page's JS reads)."""
    import gzip

    match = re.search(r'<script id="drift-data" type="([^"]+)">(.*?)</script>', page, re.S)
    if match is None:
        raise DriftError("no drift-data block in this page")
    kind, text = match.groups()
    if kind == "application/json":
        return json.loads(text)
    return json.loads(gzip.decompress(base64.b64decode(text)).decode("utf-8"))


def asset(name: str) -> str:
    from importlib.resources import files

    return (files("drift") / "view_assets" / name).read_text(encoding="utf-8")


def render(cfg: ViewConfig) -> tuple[str, dict]:
    """The page's HTML and its embedded payload."""
    runs, figures, files = collect(cfg.paths)
    strings: dict[str, int] = {}
    sets = [trajectory_set(name, path, strings) for name, path in files]
    title = cfg.title or "drift view: " + ", ".join(Path(p).name or p for p in cfg.paths)
    payload = {"title": title, "page_size": cfg.page_size, "strings": list(strings), "sets": sets}
    kind, data = encode_payload(payload, cfg.compress)
    parts = {
        "TITLE": html.escape(title),
        "CSS": asset("view.css"),
        "JS": asset("view.js"),
        "RESULTS": results_table(runs),
        "FIGURES": figures_html(figures),
        "DATA_TYPE": kind,
        "DATA": data,
    }
    page = re.sub(r"\{\{([A-Z_]+)\}\}", lambda m: parts[m.group(1)], asset("page.html"))  # one pass
    return page, payload


def run_view(cfg: ViewConfig) -> Path:
    """Write the page to ``cfg.out`` (atomically); print its path, size and time."""
    from drift.outputs import atomic_write

    if not cfg.paths:
        raise DriftError("nothing to view (drift view FILE_OR_FOLDER... --out report.html)")
    start = time.perf_counter()
    page, payload = render(cfg)
    out = Path(cfg.out)
    with atomic_write(out) as f:
        f.write(page.encode("utf-8"))
    n = sum(len(s["trajs"]) for s in payload["sets"])
    size = out.stat().st_size / 1e6
    print(f"wrote {out} ({size:.2f} MB, {n} trajectories, {time.perf_counter() - start:.1f} s)")
    return out
