"""Where a task's rows come from: a local ``.jsonl``/``.json`` (``.parquet`` with pandas) file, a
folder holding ``{split}.jsonl``, or a Hugging Face hub dataset (``owner/name`` or
``owner/name:config``; needs ``datasets``, imported only then). Every row comes with the place to
name in an error about it (``file:line``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import orjson

from drift import DriftError

_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def _rows_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = orjson.loads(raw)
            except orjson.JSONDecodeError as e:
                raise DriftError(f"{path}:{line_no}: invalid JSON ({e})") from None
            yield f"{path}:{line_no}", row


def _rows_json(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DriftError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(rows, list):
        raise DriftError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        yield f"{path}[{i}]", row


def _rows_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        import pandas
    except ImportError:
        raise DriftError(f"{path}: reading parquet needs pandas (pip install pandas pyarrow)") from None
    for i, row in enumerate(pandas.read_parquet(path).to_dict(orient="records")):
        yield f"{path}:row {i}", row


_READERS = {".jsonl": _rows_jsonl, ".json": _rows_json, ".parquet": _rows_parquet}


def _rows_hub(name: str, split: str) -> Iterator[tuple[str, dict]]:
    repo, _, config = name.partition(":")
    try:
        import datasets
    except ImportError:
        raise DriftError(
            f"{name!r} is no local file or folder, and loading it from the Hugging Face hub needs "
            f"`pip install datasets`; or pass a local file (a .jsonl, or a folder with {split}.jsonl)"
        ) from None
    try:
        rows = datasets.load_dataset(repo, config or None, split=split)
    except Exception as e:
        raise DriftError(
            f"could not load {name!r} split {split!r} from the Hugging Face hub ({type(e).__name__}: {e}); "
            f"pass a local file instead (a .jsonl, or a folder with {split}.jsonl)"
        ) from None
    for i, row in enumerate(rows):
        yield f"{name}[{split}]#{i}", row


def read_rows(source: str, split: str) -> Iterator[tuple[str, dict]]:
    """Yield ``(where, row)`` from a file, a folder's ``{split}.jsonl``/``.json``, or the hub.

    ``where`` (``file:line``) is the place to name in an error about the row.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        for suffix in (".jsonl", ".json"):
            if (path / f"{split}{suffix}").is_file():
                return (
                    _rows_jsonl(path / f"{split}{suffix}")
                    if suffix == ".jsonl"
                    else _rows_json(path / f"{split}{suffix}")
                )
        found = sorted(p.name for p in path.iterdir() if p.suffix in _LOCAL_SUFFIXES)
        raise DriftError(
            f"{path}: no {split}.jsonl or {split}.json in this folder (found: {', '.join(found) or 'nothing'})"
        )
    if path.is_file():
        if path.suffix not in _READERS:
            raise DriftError(f"{path}: unknown file type {path.suffix!r}; use .jsonl, .json or .parquet")
        return _READERS[path.suffix](path)
    if path.suffix in _LOCAL_SUFFIXES or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise DriftError(f"{source}: no such file or folder")
    return _rows_hub(source, split)
