"""Reading and writing trajectory files (JSONL): strict, streaming, atomic.

Reading is strict: the first bad line stops the read with ``file:line: field '...' ...``. The
layout (ours, drift.records.schema, or the reference code's, drift.records.reference) is detected
from a file's first record; a file mixing both is an error. Whole-file outputs go through
:func:`drift.outputs.atomic_write`, so a failure never leaves a torn or clobbered output;
:func:`write_spliced` adds fields to a validated file without re-serialising its records.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Container, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, overload

import orjson

from drift import DriftError
from drift.outputs import atomic_write
from drift.records.reference import FORMATS, detect_format, from_reference, to_reference
from drift.records.schema import FieldError, RecordError, Trajectory, fast_core, validate_record

# -- reading ---------------------------------------------------------------------------------


def _parse_line(raw: bytes):
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    # Slow path for a precise message: stdlib json accepts NaN/Infinity, so the validator
    # can name the field that holds one; anything else really is broken JSON.
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FieldError(f"line is not valid UTF-8 (byte {e.start})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise FieldError(f"invalid JSON ({e.msg} at column {e.colno}); truncated line?") from None
    except RecursionError:
        raise FieldError("invalid JSON (nested too deeply)") from None
    except ValueError as e:  # an integer past Python's 4300-digit limit
        raise FieldError(f"invalid JSON ({e})") from None
    try:  # stdlib json also accepts lone surrogate escapes ("\\ud800"), which no writer can encode
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise FieldError(
            f"field '{_surrogate_field(value)}' holds a lone UTF-16 surrogate (not valid Unicode)"
        ) from None
    return value


def _surrogate_field(value, where: str = "") -> str:
    """Dotted path of the first string (or key) in ``value`` that is not encodable as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where or "(line)"
    elif isinstance(value, dict):
        for k, v in value.items():
            found = _surrogate_field(k, where) or _surrogate_field(v, f"{where}.{k}" if where else k)
            if found:
                return found
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found = _surrogate_field(v, f"{where}[{i}]")
            if found:
                return found
    return ""


def file_format(path: str | os.PathLike) -> str | None:
    """The layout of a file, from its first non-blank line (``None`` if that is not JSON, or no line)."""
    if not Path(path).is_file():
        return None
    with open(path, "rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    return detect_format(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    return None
    return None


@overload
def iter_records(path: str | os.PathLike, *, typed: Literal[False] = False) -> Iterator[tuple[int, dict]]: ...


@overload
def iter_records(path: str | os.PathLike, *, typed: Literal[True]) -> Iterator[tuple[int, Trajectory]]: ...


def iter_records(path: str | os.PathLike, *, typed: bool = False) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, record)`` in schema 1, validating every line (blank lines skipped).

    The format (ours or the reference code's) is detected from the first record; a file
    mixing both is an error. ``typed=True`` yields each record's :class:`Trajectory` core instead
    of the whole dict: about twice as fast on big files, for readers that need only the numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(path, None, "no such file")
    fmt = None
    group_sizes: dict[str, int] = {}
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            core = fast_core(raw) if fmt == "drift" else None
            if core is not None:
                if typed:
                    yield line_no, core
                    continue
                try:
                    yield line_no, orjson.loads(raw)
                    continue
                except orjson.JSONDecodeError:
                    pass  # the slow path below names the problem
            if not raw.strip():
                continue
            try:
                rec = _parse_line(raw)
                this = detect_format(rec)
                if fmt is None:
                    fmt = this
                elif this != fmt:
                    raise FieldError(f"a {this}-format record in a {fmt}-format file (mixed formats)")
                if fmt == "reference":
                    pid = rec.get("prompt_id") if isinstance(rec, dict) else None
                    k = group_sizes.get(pid, 0) if isinstance(pid, str) else 0  # a bad id fails in from_reference
                    rec = from_reference(rec, traj_id=k)
                    group_sizes[rec["prompt_id"]] = k + 1
                validate_record(rec)  # a reference record's carried-through fields too (weight, token_ids)
            except FieldError as e:
                raise RecordError(path, line_no, str(e)) from None
            yield line_no, Trajectory.of(rec) if typed else rec


@contextmanager
def paused_gc():
    """Pause the cyclic garbage collector: records are acyclic, and with a million of them alive
    every collection walks them all (reading 1M records takes 2.4x longer with it running)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_records(path: str | os.PathLike, *, allow_empty: bool = False, weighted: bool = False) -> list[dict]:
    """Read and validate a whole file; reject duplicate ``(prompt_id, traj_id)`` and empty files,
    and with ``weighted`` a record with no ``weight`` field (``null``, dropped, is a weight)."""
    with paused_gc():
        return _read_records(path, allow_empty, weighted)


def _read_records(path, allow_empty: bool, weighted: bool) -> list[dict]:
    records, line_nos = [], []
    for line_no, rec in iter_records(path):
        if weighted and "weight" not in rec:
            raise RecordError(path, line_no, "no field 'weight'; run drift weight first")
        records.append(rec)
        line_nos.append(line_no)
    if not records and not allow_empty:
        raise RecordError(path, None, "no records (empty file)")
    check_unique(path, [(r["prompt_id"], r["traj_id"]) for r in records], line_nos)
    return records


def check_unique(path: str | os.PathLike, keys: Sequence[tuple[str, int]], line_nos: Sequence[int]) -> None:
    """Raise :class:`RecordError` at the second of two records with the same ``(prompt_id, traj_id)``."""
    if len(set(keys)) == len(keys):
        return
    seen: dict[tuple[str, int], int] = {}
    for key, line_no in zip(keys, line_nos):
        if key in seen:
            raise RecordError(
                path, line_no, f"field 'traj_id': duplicate (prompt_id, traj_id) = {key}, first on line {seen[key]}"
            )
        seen[key] = line_no


# -- writing ---------------------------------------------------------------------------------


def dumps(rec: dict) -> bytes:
    """One JSONL line (UTF-8, newline-terminated)."""
    return orjson.dumps(rec) + b"\n"


def write_records(
    path: str | os.PathLike, records: Iterable[dict], *, to_format: str = "drift", format_penalty: float | None = None
) -> int:
    """Write records atomically, in our layout or the reference code's (which records the format
    penalty each trajectory paid, so it needs ``format_penalty``); return how many."""
    if to_format not in FORMATS:
        raise DriftError(f"unknown format {to_format!r}; choose from {FORMATS}")
    if to_format == "reference" and format_penalty is None:
        raise DriftError("writing the reference layout needs the format penalty the returns used")
    penalty = format_penalty or 0.0
    n = 0
    with atomic_write(path) as f:
        for rec in records:
            f.write(dumps(to_reference(rec, penalty) if to_format == "reference" else rec))
            n += 1
    return n


def write_spliced(
    src: str | os.PathLike,
    out: str | os.PathLike,
    fields: dict[str, Sequence],
    keep: Sequence[bool],
    rewrite: Container[int] = (),
) -> int:
    """Copy the records of the validated schema-1 file ``src`` to ``out``, adding ``fields[name][i]``
    to the i-th record and skipping it where ``keep[i]`` is false; return how many were written.

    Nothing is re-serialised: the new fields are appended to each line's JSON object as text, so a
    record keeps its bytes (a million records in about a second). Records listed in ``rewrite``
    (those that already hold one of the fields) are parsed and rewritten instead, so no key is
    ever duplicated.
    """
    names = list(fields)
    values = zip(*(fields[name] for name in names))
    n = written = 0
    with atomic_write(out) as f, open(src, "rb") as lines:
        records = filter(bytes.strip, lines)  # the non-blank lines, as the reader counted them
        for n, (added, raw) in enumerate(
            zip(values, records), start=1
        ):  # values first: a longer file keeps its extra line
            if not keep[n - 1]:
                continue
            new = dict(zip(names, added))
            if n - 1 in rewrite:
                f.write(dumps({**orjson.loads(raw), **new}))
            else:
                f.write(raw.rstrip()[:-1] + b"," + orjson.dumps(new)[1:] + b"\n")
            written += 1
        if n != len(keep) or next(records, None) is not None:
            raise DriftError(f"{src} changed while it was being read")
    return written
