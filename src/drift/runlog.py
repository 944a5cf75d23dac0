"""JSONL logs of training runs (train_log.jsonl, rl_log.jsonl): one entry per step."""

from __future__ import annotations

import json
from pathlib import Path


def trim_log(path: Path, step: int) -> None:
    """Keep the entries of a JSONL log with ``"step" <= step`` (atomically); a torn last line goes too."""
    from drift.records import atomic_write

    if not path.exists():
        return
    kept = []
    for line in path.read_bytes().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a crash
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= step:
            kept.append(line + b"\n")
    with atomic_write(path) as f:
        f.write(b"".join(kept))
