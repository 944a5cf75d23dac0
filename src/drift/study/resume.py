"""What lets ``drift study`` continue in the same folder, and the checks that what it reuses is
still the study's.

- ``study.yaml``: the resolved study that made what the folder holds; a rerun may add methods and
  snapshot rounds to it, never change them (:func:`check_same_study`).
- ``reports/``: a point's report is reused when its file exists, and its path names no learning
  rate and no run: every kept report of a run must be one the run's own points made
  (:func:`check_kept_reports`), else a curve would mix two runs.
- the code: a study may be continued by other code than started it, so every point records the
  code that made its run and evaluation (:func:`code_version`).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from drift import DriftError
from drift.study.spec import StudySpec


def code_version() -> dict:
    """The drift code this process runs: ``version`` and, in a git checkout, the ``commit`` checked
    out when the study started and whether ``src/`` had uncommitted changes (``dirty``). A process
    imports some modules only when it first needs them, so a study should run from a checkout that
    nobody edits meanwhile (a ``git worktree`` of its own). A run resumed from a checkpoint is
    labelled with the code of the process that finished it."""
    import subprocess

    import drift

    code: dict = {"version": drift.__version__}
    root = Path(drift.__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30, check=False
        )
        if head.returncode == 0:
            status = ["git", "-C", str(root), "status", "--porcelain", "--", "src"]
            changed = subprocess.run(status, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
            code.update(commit=head.stdout.strip(), dirty=bool(changed))
    except (OSError, subprocess.SubprocessError):  # no git: the version is all there is
        pass
    return code


def check_same_study(saved: Path, spec: StudySpec) -> None:
    """A study folder continues only the same study: the shared setting unchanged, and every method
    it already has defined as before. Methods may be added (or left out) between runs, and snapshot
    rounds added (runs still to come get them; finished ones keep the points they have)."""
    if not saved.exists():
        return
    before = yaml.safe_load(saved.read_text())
    now = dict(spec.__dict__)
    grown = set(before.get("snapshot_rounds", [])) <= set(now["snapshot_rounds"])
    changed = [k for k in now if k != "methods" and before.get(k) != now[k] and not (k == "snapshot_rounds" and grown)]
    old = {m["name"]: m for m in before["methods"]}
    changed += [f"method {m['name']}" for m in now["methods"] if m["name"] in old and old[m["name"]] != m]
    if changed:
        raise DriftError(
            f"{saved.parent} holds a study that differs in {', '.join(changed)}; use another --out "
            "(methods and snapshot rounds may be added to a study, but not changed)"
        )


def write_study(saved: Path, spec: StudySpec) -> None:
    """Save the resolved study; a method the file no longer lists keeps its last definition, so
    that it cannot come back changed over its old results."""
    methods = list(spec.methods)
    if saved.exists():
        names = {m["name"] for m in methods}
        methods += [m for m in yaml.safe_load(saved.read_text())["methods"] if m["name"] not in names]
    saved.write_text(yaml.safe_dump({**spec.__dict__, "methods": methods}, sort_keys=False))


def check_kept_reports(folder: Path, expected: dict[Path, dict], run: str) -> None:
    """Every ``report.json`` under ``folder`` (a run's reports) is one of ``expected`` (path: the
    ``method``, ``seed``, ``lr``, ``round`` and ``compute`` its ``study`` block must record, those
    of the run's point) and records them; ``run`` names the run in the error."""
    for path in sorted(folder.rglob("report.json")) if folder.exists() else []:
        meta = json.loads(path.read_text())["study"]
        if path not in expected:
            why = f"its round {meta['round']} is not one of its points"
        else:
            differ = [k for k, v in expected[path].items() if meta.get(k) != v]
            if not differ:
                continue
            why = ", ".join(
                f"{k} {meta.get(k)}, not {expected[path][k]}" if k != "compute" else "compute" for k in differ
            )
            why = f"it records another {why}"
        raise DriftError(
            f"{path} is not a report of {run}: {why}; it was left by another run: delete {folder} to evaluate "
            "this run's points again (the run is made again if its models are gone)"
        )
