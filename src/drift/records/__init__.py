"""Trajectory records: the one JSONL schema every stage reads and writes.

=====================  ===========================================================================
``schema.py``          schema 1: fields, the two validators (typed fast path, precise slow path)
``reference.py``       the DRIFT reference code's layout, both ways
``jsonl.py``           reading (strict, streaming, format detected per file) and atomic writing
=====================  ===========================================================================

The names most code needs are importable from here.
"""

from drift.records.jsonl import (
    check_unique,
    dumps,
    file_format,
    iter_records,
    paused_gc,
    read_records,
    write_records,
    write_spliced,
)
from drift.records.reference import FORMATS, detect_format, from_reference, to_reference
from drift.records.schema import (
    FINISH_REASONS,
    SCHEMA_VERSION,
    FieldError,
    RecordError,
    Trajectory,
    first_correct_turn,
    validate_record,
)

__all__ = [
    "FINISH_REASONS",
    "FORMATS",
    "SCHEMA_VERSION",
    "FieldError",
    "RecordError",
    "Trajectory",
    "check_unique",
    "detect_format",
    "dumps",
    "file_format",
    "first_correct_turn",
    "from_reference",
    "iter_records",
    "paused_gc",
    "read_records",
    "to_reference",
    "validate_record",
    "write_records",
    "write_spliced",
]
