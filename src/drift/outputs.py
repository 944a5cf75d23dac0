"""Where a command's outputs go and how they are written: atomically, with sidecars beside them.

A file output ``runs/w.jsonl`` gets its resolved config, summary and plots beside it
(``runs/w.config.yaml``, ``runs/w.summary.json``, :func:`sidecar`); a folder output holds them
inside. Every whole-file write goes through :func:`atomic_write`, so an interrupted command never
leaves a torn or clobbered file; per-step JSONL logs are cut back to a checkpoint with
:func:`trim_log` when a run resumes. Depends on nothing else in drift but its error type.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from drift import DriftError


@contextmanager
def atomic_write(path: str | os.PathLike):
    """Open ``path`` for binary writing through a temporary file renamed into place on success.

    On any exception the temporary file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise DriftError(f"{path} is a folder; give the output a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sidecar(out: str | os.PathLike, suffix: str) -> Path:
    """``runs/w.jsonl`` -> ``runs/w.<suffix>``: where a file output's config, summary and plots go.

    >>> str(sidecar("runs/weighted.jsonl", "config.yaml"))
    'runs/weighted.config.yaml'
    """
    out = Path(out)
    return out.with_name(f"{out.stem}.{suffix}")


def write_json(path: str | os.PathLike, data, default=None) -> None:
    """``data`` as indented JSON, atomically (``default``: as ``json.dumps`` takes it)."""
    with atomic_write(path) as f:
        f.write(json.dumps(data, indent=2, default=default).encode() + b"\n")


def trim_log(path: Path, step: int) -> None:
    """Keep the entries of a JSONL log with ``"step" <= step`` (atomically); a torn last line goes too."""
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
