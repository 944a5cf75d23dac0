"""What lets ``drift study`` continue in the same folder: the saved study it must still be.

``study.yaml`` in a study folder is the resolved study that made what the folder holds; a rerun
may add methods and snapshot rounds to it, never change them (:func:`check_same_study`).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from drift import DriftError
from drift.study.spec import StudySpec


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
