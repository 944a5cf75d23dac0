"""What lets ``drift study`` continue in the same folder, and the checks that what it reuses is
still the study's.

- ``study.yaml``: the resolved study that made what the folder holds; a rerun may add methods and
  snapshot rounds to it, never change them (:func:`check_same_study`).
- ``reports/``: a point's report is reused when its file exists, and its path names no learning
  rate and no run: every kept report of a run must be one the run's own points made
  (:func:`check_kept_reports`), else a curve would mix two runs.
- ``reference.json``: the fingerprint of the reference policy's weights, recorded when the study
  first uses it. A fresh clone has no ``work/``, so the format warm-up is made again when a run
  needs it, and need not come out the same (another machine, other library versions): new runs
  would then start from another model than the kept ones (:func:`check_reference`).
- the code: a study may be continued by other code than started it, so every point records the
  code that made its run and evaluation (:func:`code_version`).
"""

from __future__ import annotations

import hashlib
import json
import mmap
from contextlib import ExitStack
from pathlib import Path

import yaml

from drift import DriftError
from drift.options import read_yaml
from drift.outputs import atomic_write, write_json
from drift.study.provenance import is_points_file
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
    before = read_yaml(saved.read_text())
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
        methods += [m for m in read_yaml(saved.read_text())["methods"] if m["name"] not in names]
    with atomic_write(saved) as f:  # a rerun reads it back: never half written
        f.write(yaml.safe_dump({**spec.__dict__, "methods": methods}, sort_keys=False).encode())


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


def fingerprint(model: str) -> str | None:
    """sha256 over a local model folder's weights: every tensor of its ``*.safetensors`` files, in
    name order, as its name, dtype, shape and bytes (not the files' bytes: the same weights give the
    same fingerprint whatever order, sharding or metadata they were saved with). ``None`` for a
    model that is no such folder (a hub name). Reads every byte once: about a second for SmolLM2-135M."""
    files = sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    with ExitStack() as stack:
        tensors = []
        for path in files:  # the format: an 8-byte little-endian header length, a JSON header, the data
            data = stack.enter_context(
                mmap.mmap(stack.enter_context(open(path, "rb")).fileno(), 0, access=mmap.ACCESS_READ)
            )
            size = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + size])
            tensors += [(name, info, data, 8 + size) for name, info in header.items() if name != "__metadata__"]
        for name, info, data, start in sorted(tensors, key=lambda t: t[0]):
            begin, end = info["data_offsets"]
            digest.update(json.dumps([name, info["dtype"], info["shape"]]).encode())
            digest.update(memoryview(data)[start + begin : start + end])
    return digest.hexdigest()


def check_reference(out: Path, model: str, code: dict) -> str | None:
    """The reference policy ``model`` is the one ``out/reference.json`` records (its
    :func:`fingerprint`), else refused while runs made from the recorded one are kept in ``out``.
    Recorded (with ``code``, this process's) when there is no record, or no run yet; returns a line
    to log when that happens beside existing runs, else ``None``."""
    from drift.models import resolve_model

    saved = out / "reference.json"
    now = {"model": model, "sha256": fingerprint(resolve_model(model))}
    made = any(map(is_points_file, (out / "points").glob("*/*.json")))
    note = None
    if saved.exists():
        before = json.loads(saved.read_text())
        if before["sha256"] == now["sha256"]:
            return None
        if made:
            raise DriftError(
                f"the reference policy {model} (weights sha256 {now['sha256']}) was made again (no work/ "
                f"here: a fresh clone, or work/ deleted) and is not the one {saved} records (sha256 "
                f"{before['sha256']}): new runs would start from a different reference than the runs kept in "
                f"{out / 'points'}. Start the study in a new --out; or, to accept the new reference (the kept "
                f"runs then stay those of the old one: delete their points/ and reports/ to make them again), "
                f"delete {saved} and run the same command"
            )
    elif made:
        note = f"{saved}: recorded now; the runs already in {out / 'points'} were made before, unchecked"
    write_json(saved, {**now, "code": code})
    return note
