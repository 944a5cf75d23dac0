"""Tasks by name: where problems come from, how their gold answer is read, which verifier checks it.

==============  =========================================  =======================  ========
task            rows                                       gold                     verifier
==============  =========================================  =======================  ========
``arithmetic``  generated (seeded; knobs below)            the exact integer        numeric
``gsm8k``       ``question``, ``answer``                   after ``####``, no ``,``  math
``math``        ``problem``, ``answer`` or ``solution``    ``answer``, else the     math
                                                           last ``\\boxed{}``
``math500``     as ``math``                                as ``math``              math
``metamathqa``  ``query``, ``response``                    after "The answer is:"   math
``jsonl``       ``question``, ``answer`` (renamable)       the answer field         math
``mcq``         ``question``, ``choices``, ``answer``      the letter (index 0 = A)  choice
``theoremqa``   ``Question``, ``Answer``                   ``Answer`` as text       math
``gpqa``        ``Question``, ``Correct Answer``,          the letter of the        choice
                ``Incorrect Answer 1..3``                  correct answer after a
                                                           seeded shuffle
``mmlu_redux``  ``question``, ``choices``, ``answer``      as ``mcq``; a wrong       choice
                (``error_type``, ``correct_answer``)       ground truth corrected,
                                                           flawed questions left out
``mmlu_pro``    ``question``, ``options``,                 as ``mcq``               choice
                ``answer_index``
==============  =========================================  =======================  ========

Hub defaults of the benchmark tasks: ``TIGER-Lab/TheoremQA`` (split ``test``),
``Idavidrein/gpqa:gpqa_diamond`` (a gated dataset whose only split, ``train``, serves as ``test``;
asking it for ``train`` is an error), ``TIGER-Lab/MMLU-Pro`` (``test``, ``validation``);
MMLU-Redux 2.0 comes one subject per config, so ``mmlu_redux`` takes ``--source
edinburgh-dawg/mmlu-redux-2.0:<subject>`` or a local file. GPQA's four answers are shuffled by a
hash of ``(seed, question)``: the order is the same in every run with that seed, whatever the row
order or ``limit``.

A ``source`` (drift.task_sources) is a local ``.jsonl``/``.json`` (``.parquet`` with pandas)
file, a folder holding ``{split}.jsonl``, or a Hugging Face hub dataset (``owner/name`` or ``owner/name:config``;
needs ``datasets``, imported only then). Row tasks take the knobs ``question_field``,
``answer_field`` (``mcq`` also ``choices_field``) to rename columns and ``id_field`` to take
``prompt_id`` from a column; otherwise ``prompt_id`` is ``{task}-{row index:06d}``. ``metamathqa``
also takes ``type_prefix`` (``MATH_``: only the MATH-derived rows, as the paper). Bad rows stop
the load with ``file:line: field '...' ...``.

``arithmetic`` is generated (drift.arithmetic).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drift import DriftError
from drift.answers import extract_answer
from drift.arithmetic import load_arithmetic
from drift.env import Problem
from drift.records.schema import FieldError
from drift.task_sources import read_rows
from drift.verifiers import parse_choice

# -- fields ----------------------------------------------------------------------------------


def _text(row: dict, name: str) -> str:
    """``row[name]`` as a non-empty string (numbers are written out); :class:`FieldError` if not."""
    if not isinstance(row, dict):
        raise FieldError(f"expected a JSON object, got {type(row).__name__}")
    if name not in row:
        raise FieldError(f"field {name!r} missing")
    value = row[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise FieldError(f"field {name!r} must be a non-empty string, got {value!r:.40}")
    return value.strip()


def _qa_row(row: dict, question_field: str, answer_field: str) -> tuple[str, str, dict]:
    return _text(row, question_field), _text(row, answer_field), {}


def _gsm8k_row(row: dict, question_field: str, answer_field: str) -> tuple[str, str, dict]:
    solution = _text(row, answer_field)
    gold = extract_answer(solution, ("hash",))
    if gold is None:
        raise FieldError(f"field {answer_field!r} has no '#### <answer>' line")
    return _text(row, question_field), gold.replace(",", ""), {"solution": solution}


def _math_row(row: dict, question_field: str, answer_field: str, solution_field: str) -> tuple[str, str, dict]:
    meta = {k: row[k] for k in ("level", "type", "subject", "unique_id") if k in row}
    if row.get(answer_field) not in (None, ""):
        return _text(row, question_field), _text(row, answer_field), meta
    gold = extract_answer(_text(row, solution_field), ("boxed",))
    if gold is None:
        raise FieldError(f"field {answer_field!r} missing and field {solution_field!r} has no \\boxed{{}} answer")
    return _text(row, question_field), gold, meta


_METAMATH_ANSWER = re.compile(r"The answer is:?\s*")


def _metamathqa_row(
    row: dict, question_field: str, answer_field: str, type_prefix: str | None = None
) -> tuple[str, str, dict] | None:
    """``type_prefix``: keep only rows whose ``type`` starts with it (``MATH_``: the MATH-derived
    rows the paper trains on); the others are left out."""
    if type_prefix and not (isinstance(row, dict) and str(row.get("type", "")).startswith(type_prefix)):
        return None
    response = _text(row, answer_field)
    start = response.rfind("The answer is")
    gold = _METAMATH_ANSWER.sub("", response[start:], count=1).strip() if start >= 0 else ""
    if not gold:
        raise FieldError(f"field {answer_field!r} has no 'The answer is: <answer>' ending")
    return _text(row, question_field), gold, {"type": row["type"]} if "type" in row else {}


def _letters(n: int) -> list[str]:
    """The letters of ``n`` choices: A, B, ..."""
    return [chr(ord("A") + i) for i in range(n)]


def _render_mcq(question: str, choices: list[str], gold_index: int) -> tuple[str, str, dict]:
    """The question followed by ``(A) ...`` lines; the gold letter; the choices as meta."""
    letters = _letters(len(choices))
    rendered = question + "\n\n" + "\n".join(f"({letter}) {text}" for letter, text in zip(letters, choices))
    return rendered, letters[gold_index], {"choices": choices}


def _choice_texts(row: dict, choices_field: str) -> list[str] | None:
    """A row's choices as stripped texts (a parquet file's numpy array too); ``None`` if not a list."""
    choices: Any = row.get(choices_field)
    if hasattr(choices, "tolist"):  # a numpy array, from a parquet file
        choices = choices.tolist()
    return [str(c).strip() for c in choices] if isinstance(choices, list) else None


def _mcq_row(row: dict, question_field: str, answer_field: str, choices_field: str) -> tuple[str, str, dict]:
    question = _text(row, question_field)
    choices = _choice_texts(row, choices_field)
    if choices is None or not 2 <= len(choices) <= 26:
        raise FieldError(f"field {choices_field!r} must be a list of 2 to 26 choices")
    letters = _letters(len(choices))
    answer = row.get(answer_field)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        gold = letters[answer]  # an index, 0-based (as in MMLU's "answer": 1 for B)
    elif isinstance(answer, str) and answer.strip() in choices:
        gold = letters[choices.index(answer.strip())]  # the text of the right choice
    elif isinstance(answer, str) and (letter := parse_choice(answer)) in letters and letter is not None:
        gold = letter
    else:
        raise FieldError(
            f"field {answer_field!r} must be a letter A-{letters[-1]}, a 0-based index or a choice's text, "
            f"got {answer!r:.40}"
        )
    return _render_mcq(question, choices, letters.index(gold))


def _benchmark_mcq_row(meta_fields: tuple[str, ...]):
    """``_mcq_row`` keeping the benchmark's own labels (subject, category, ...) as meta."""

    def convert(row: dict, question_field: str, answer_field: str, choices_field: str) -> tuple[str, str, dict]:
        question, gold, meta = _mcq_row(row, question_field, answer_field, choices_field)
        return question, gold, {**meta, **{k: row[k] for k in meta_fields if k in row}}

    return convert


# MMLU-Redux's annotations of the original MMLU questions: a corrected answer, or a flaw no answer fixes
_REDUX_FLAWED = (
    "no_correct_answer",
    "multiple_correct_answers",
    "bad_question_clarity",
    "bad_options_clarity",
    "expert",
)


def _mmlu_redux_row(row: dict, question_field: str, answer_field: str, choices_field: str):
    """MMLU-Redux as its authors score it: a ``wrong_groundtruth`` row's gold is its ``correct_answer``
    (a letter, or a choice's text; free text such as "A and C" counts as a flaw), a row with a flaw
    no answer fixes (:data:`_REDUX_FLAWED`, or a correction missing) is left out (``None``), every
    other row as given; ``subject`` and ``error_type`` go into meta."""
    kind = row.get("error_type") if isinstance(row, dict) else None
    if kind == "wrong_groundtruth":
        corrected = row.get("correct_answer")
        texts = _choice_texts(row, choices_field) or []
        letters = _letters(len(texts))
        # a letter or a choice's text; anything else (free text, "A and C") is a flaw no letter fixes
        said = corrected.strip().casefold() if isinstance(corrected, str) else ""
        by_text = [t.casefold() for t in texts]
        if said and said in [x.casefold() for x in letters]:
            row = {**row, answer_field: said.upper()}
        elif said and said in by_text:
            row = {**row, answer_field: letters[by_text.index(said)]}
        else:
            return None
    elif kind in _REDUX_FLAWED:
        return None
    return _benchmark_mcq_row(("subject", "error_type"))(row, question_field, answer_field, choices_field)


def _theoremqa_row(row: dict, question_field: str, answer_field: str) -> tuple[str, str, dict]:
    # TheoremQA answers are numbers, lists ("[1, 2]"), booleans or expressions; the math verifier
    # compares them. Questions with a picture cannot be solved from the text alone: marked in meta.
    answer = row.get(answer_field) if isinstance(row, dict) else None
    if isinstance(answer, (bool, list)):
        row = {**row, answer_field: str(answer)}
    meta = {"answer_type": row["Answer_type"]} if "Answer_type" in row else {}
    if row.get("Picture"):
        meta["has_picture"] = True
    return _text(row, question_field), _text(row, answer_field), meta


_GPQA_WRONG = ("Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")


def _gpqa_row(row: dict, question_field: str, answer_field: str, seed: int) -> tuple[str, str, dict]:
    question = _text(row, question_field)
    choices = [_text(row, answer_field)] + [_text(row, name) for name in _GPQA_WRONG]
    # The correct answer is first in the data: shuffle, keyed by the seed and the question only.
    order = list(range(4))
    random.Random(f"gpqa/{seed}/{question}").shuffle(order)
    meta_fields = ("Subdomain", "High-level domain", "Record ID")
    rendered, gold, meta = _render_mcq(question, [choices[i] for i in order], order.index(0))
    return rendered, gold, {**meta, **{k: row[k] for k in meta_fields if k in row}}


def _rows_loader(convert: Callable[..., tuple[str, str, dict] | None], seeded: bool = False):
    """A loader reading rows from ``source`` and turning each into an :class:`Problem` with ``convert``
    (called as ``convert(row, **fields)``, plus ``seed=`` when ``seeded``; ``None``: the row is left
    out, and the ids of the others stay those of their rows)."""

    def load(spec: TaskSpec, source: str, split: str, limit: int | None, seed: int, id_field=None, **fields):
        if source is None:
            raise DriftError(
                f"task {spec.name!r} needs a source: a .jsonl/.json file, a folder with {split}.jsonl, "
                "or a hub dataset name"
            )
        problems: list[Problem] = []
        first_seen: dict[str, str] = {}
        for index, (where, row) in enumerate(read_rows(source, split)):
            if limit is not None and len(problems) >= limit:
                break
            try:
                converted = convert(row, **fields, **({"seed": seed} if seeded else {}))
                if converted is None:  # a row the benchmark itself leaves out (MMLU-Redux's flawed ones)
                    continue
                question, gold, meta = converted
                prompt_id = _text(row, id_field) if id_field else f"{spec.name}-{index:06d}"
            except FieldError as e:
                raise DriftError(f"{where}: {e}") from None
            if prompt_id in first_seen:
                raise DriftError(
                    f"{where}: field {id_field!r}: duplicate id {prompt_id!r} (first at {first_seen[prompt_id]})"
                )
            first_seen[prompt_id] = where
            problems.append(Problem(prompt_id, question, gold, spec.name, meta))
        return problems

    return load


# -- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A task: ``loader(spec, source, split, limit, seed, **knobs) -> list[Problem]``, the
    verifier and instruction kind its episodes use, its default source and knobs."""

    name: str
    loader: Callable[..., list[Problem]]
    verifier: str
    instruction: str = "math"
    default_source: str | None = None
    knobs: Mapping[str, object] = field(default_factory=dict)
    source_splits: Mapping[str, str] = field(default_factory=dict)
    """How the default source names our splits, where it differs (GPQA's only split is ``train``)."""


_QA = {"question_field": "question", "answer_field": "answer", "id_field": None}
_MATH = {"question_field": "problem", "answer_field": "answer", "solution_field": "solution", "id_field": None}

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("arithmetic", load_arithmetic, "numeric", knobs={"digits": 2, "ops": "+", "terms": 2, "mix": False}),
        TaskSpec("gsm8k", _rows_loader(_gsm8k_row), "math", default_source="openai/gsm8k:main", knobs=_QA),
        TaskSpec(
            "math", _rows_loader(_math_row), "math", default_source="DigitalLearningGmbH/MATH-lighteval", knobs=_MATH
        ),
        TaskSpec("math500", _rows_loader(_math_row), "math", default_source="HuggingFaceH4/MATH-500", knobs=_MATH),
        TaskSpec(
            "metamathqa",
            _rows_loader(_metamathqa_row),
            "math",
            default_source="meta-math/MetaMathQA",
            knobs={"question_field": "query", "answer_field": "response", "id_field": None, "type_prefix": None},
        ),
        TaskSpec("jsonl", _rows_loader(_qa_row), "math", knobs=_QA),
        TaskSpec("mcq", _rows_loader(_mcq_row), "choice", "choice", knobs={**_QA, "choices_field": "choices"}),
        TaskSpec(
            "theoremqa",
            _rows_loader(_theoremqa_row),
            "math",
            default_source="TIGER-Lab/TheoremQA",
            knobs={"question_field": "Question", "answer_field": "Answer", "id_field": None},
        ),
        TaskSpec(
            "gpqa",
            _rows_loader(_gpqa_row, seeded=True),
            "choice",
            "choice",
            default_source="Idavidrein/gpqa:gpqa_diamond",
            source_splits={"test": "train"},
            knobs={"question_field": "Question", "answer_field": "Correct Answer", "id_field": None},
        ),
        TaskSpec(
            "mmlu_redux",
            _rows_loader(_mmlu_redux_row),
            "choice",
            "choice",
            knobs={**_QA, "choices_field": "choices"},
        ),
        TaskSpec(
            "mmlu_pro",
            _rows_loader(_benchmark_mcq_row(("category", "src", "question_id"))),
            "choice",
            "choice",
            default_source="TIGER-Lab/MMLU-Pro",
            knobs={**_QA, "answer_field": "answer_index", "choices_field": "options"},
        ),
    )
}


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name``; :class:`DriftError` listing the known ones if none."""
    if name not in TASKS:
        raise DriftError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def load_problems(
    task: str, source: str | None = None, split: str = "test", limit: int | None = None, seed: int = 0, **knobs
) -> list[Problem]:
    """The first ``limit`` problems of ``task`` (all when ``None``) from ``source`` (default: the task's).

    >>> problems = load_problems("arithmetic", split="test", limit=2, seed=0, digits=2, ops="+")
    >>> [e.prompt_id for e in problems], all(e.question.startswith("What is ") for e in problems)
    (['arith-000000', 'arith-000001'], True)
    """
    spec = get_task(task)
    unknown = sorted(set(knobs) - set(spec.knobs))
    if unknown:
        raise DriftError(f"task {task!r}: unknown knob(s) {unknown}; known: {', '.join(spec.knobs) or 'none'}")
    # a column is named by text: question_field=1 (read as a number on the command line) is column "1"
    knobs = {k: str(v) if k.endswith("_field") and v is not None else v for k, v in knobs.items()}
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise DriftError(f"limit must be a non-negative integer or None, got {limit!r}")
    if source is None:
        if split in spec.source_splits.values() and split not in spec.source_splits:
            ours = [k for k, v in spec.source_splits.items() if v == split]
            raise DriftError(
                f"task {task!r}: its default source has no {split!r} split of its own (its {split!r} is our "
                f"{', '.join(ours)}): use split {ours[0]!r}, or give a source with a {split} split"
            )
        source, split = spec.default_source, spec.source_splits.get(split, split)
    return spec.loader(spec, source, split, limit, seed, **{**spec.knobs, **knobs})
