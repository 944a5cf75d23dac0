"""Verifiers: is a predicted answer equal to the gold one? Chosen by name from :data:`VERIFIERS`.

=========  ==========================================================  =====================
name       equal when                                                   example
=========  ==========================================================  =====================
``math``   math-verify finds the expressions equivalent (sympy)         ``1/2`` = ``\\frac12``
``exact``  :func:`~drift.answers.normalize_answer` forms are equal      ``Yes.`` = ``yes``
``numeric``  numbers agree (integers exactly, others within 1e-6)        ``1,000`` = ``1000.0``
``choice`` the same multiple-choice letter                              ``(B)`` = ``b``
=========  ==========================================================  =====================

Each is a plain function ``(prediction, gold) -> bool``. Use them through :class:`Verifier`
(:func:`get_verifier`), which never raises on model text, counts calls, timeouts and errors in
``.stats``, and gives ``math`` its time limit.

``math`` runs math-verify in a worker process with a hard time limit (drift.math_worker: sympy
can take forever on hostile input). Cheap cases never reach the worker: answers whose normalised
forms agree, or that are both plain numbers, are decided here. Nothing here evaluates model text
(no ``eval``/``exec``).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation, localcontext

from drift import DriftError
from drift.answers import decimal_text, normalize_answer, spaced_digits
from drift.config.groups import VERIFIER_TIMEOUT
from drift.math_worker import SHARED_WORKER, MathWorker, MathWorkerError  # noqa: F401 (MathWorkerError: re-exported)

MAX_MATH_CHARS = 2000
"""Longer answers are wrong without asking math-verify (extracted answers are cut at 1000)."""

REL_TOL = ABS_TOL = 1e-6
"""Tolerances of ``numeric`` (and of ``math`` on plain numbers) for non-integers."""

# -- numbers ---------------------------------------------------------------------------------

# Thousands separators only in groups of three ("1,000" yes, "1,00" no); exponents of at most
# four digits, so no parse can build a number Decimal cannot hold.
_NUMBER_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[-+]?\d{1,4})?|[-+]?\.\d+")
_MIXED_NUMBER = re.compile(r"([-+]?)(\d+)\s+(\d+)\s*/\s*(\d+)")
_NUMBER_JUNK = ("$", " ", "\\!", "\\,", "\\;", "\\ ")


def parse_number(text: str) -> tuple[Decimal, bool] | None:
    """``(value, is_integer_as_written)`` for a plain number or ``a/b``; ``None`` otherwise.

    A trailing ``%`` is dropped (``50%`` reads as 50, the number written), as are ``$``,
    spaces and a final period.

    >>> parse_number("1,000.")
    (Decimal('1000'), True)
    >>> parse_number("3/4")
    (Decimal('0.75'), False)
    >>> parse_number("50\\\\%"), parse_number("1,00"), parse_number("x")
    ((Decimal('50'), True), None, None)
    """
    s = text.strip()
    if mixed := _MIXED_NUMBER.fullmatch(s.strip("$").rstrip(".")):  # 1 1/2: one and a half
        sign, whole, num, den = mixed.groups()
        if int(den) == 0:
            return None
        with localcontext() as ctx:
            ctx.prec = 50
            value = Decimal(whole) + Decimal(num) / Decimal(den)
        return (-value if sign == "-" else value), False
    if spaced_digits(s):  # "1, 234" is a list, "1 2" two numbers: not one number
        return None
    for junk in _NUMBER_JUNK:
        s = s.replace(junk, "")
    s = s.replace("\\%", "%").rstrip(".").removesuffix("%").lower()
    parts = s.split("/")
    if len(parts) > 2 or not all(_NUMBER_RE.fullmatch(p) for p in parts):
        return None
    with localcontext() as ctx:
        ctx.prec = 50
        try:
            values = [Decimal(p.replace(",", "")) for p in parts]
            if len(values) == 2:
                return (values[0] / values[1], False) if values[1] != 0 else None
        except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
            return None
    return values[0], not any(c in s for c in ".e")


def numbers_equal(a: tuple[Decimal, bool], b: tuple[Decimal, bool]) -> bool:
    """Where either is an integer as written, the values must be equal (``5.0`` is ``5``, ``4.9999999``
    is not); otherwise ``|a-b| <= max(1e-6 max(|a|,|b|), 1e-6)``. A relative tolerance against an
    integer would grow with it: 1e-6 of ``99980001`` accepted ``99980000.0``.

    >>> numbers_equal(parse_number("1000000"), parse_number("1000001"))
    False
    >>> numbers_equal(parse_number("99980000.0"), parse_number("99980001"))
    False
    >>> numbers_equal(parse_number("0.3333333"), parse_number("1/3"))
    True
    """
    (x, x_int), (y, y_int) = a, b
    if x_int or y_int:
        return x == y
    with localcontext() as ctx:
        ctx.prec = 50
        return abs(x - y) <= max(Decimal(REL_TOL) * max(abs(x), abs(y)), Decimal(ABS_TOL))


# -- exact, numeric, choice ------------------------------------------------------------------


def verify_exact(prediction: str, gold: str) -> bool:
    """Equal after :func:`~drift.answers.normalize_answer`.

    >>> verify_exact(" $1,234.50$ ", "1234.5"), verify_exact("Yes.", "yes"), verify_exact("", "")
    (True, True, False)
    """
    p = normalize_answer(prediction)
    return bool(p) and p == normalize_answer(gold)


def verify_numeric(prediction: str, gold: str) -> bool:
    """Both parse as numbers (:func:`parse_number`) and agree (:func:`numbers_equal`).

    >>> verify_numeric("1,000", "1000.0"), verify_numeric("0.5", "1/2"), verify_numeric("7", "seven")
    (True, True, False)
    """
    p, g = parse_number(prediction), parse_number(gold)
    return p is not None and g is not None and numbers_equal(p, g)


_CHOICE_ALONE = re.compile(r"[(\[]?([a-z])[)\].:]?")
_CHOICE_STATED = re.compile(r"answer\b(?: is)?(?: ?[:=])? ?(?:option )?[(\[]?([a-z])(?![a-z])")
_CHOICE_LEADING = re.compile(r"[(\[]?([a-z])(?:[)\].:]| -) ")
_CHOICE_PARENS = re.compile(r"\(([a-z])\)")


def _last_match(pattern: re.Pattern, text: str) -> re.Match | None:
    last = deque(pattern.finditer(text), maxlen=1)
    return last[0] if last else None


def parse_choice(text: str) -> str | None:
    """The multiple-choice letter in ``text`` (upper case), or ``None``.

    Tried in order: the whole text is a letter (``B``, ``(b)``, ``B.``); the last "answer is X"
    / "answer: X"; a leading ``B) ...`` / ``B. ...``; the last ``(B)`` in the text.

    >>> [parse_choice(t) for t in ["(B)", "B.", "b", "The answer is B", "C) 42", "I pick (D) here", "maybe"]]
    ['B', 'B', 'B', 'B', 'C', 'D', None]
    """
    # One space between words: the patterns below then never backtrack over long blank runs.
    s = " ".join(text.lower().replace("\\text{", "").replace("$", "").replace("}", "").split())
    match = (
        _CHOICE_ALONE.fullmatch(s)
        or _last_match(_CHOICE_STATED, s)
        or _CHOICE_LEADING.match(s)
        or _last_match(_CHOICE_PARENS, s)
    )
    return match.group(1).upper() if match else None


def verify_choice(prediction: str, gold: str) -> bool:
    """The same letter (:func:`parse_choice`) in both.

    >>> verify_choice("The answer is (c).", "C"), verify_choice("A", "B")
    (True, False)
    """
    p = parse_choice(prediction)
    return p is not None and p == parse_choice(gold)


# -- math (math-verify in a worker process: drift.math_worker) -------------------------------


def _as_number(text: str, normalised: str) -> tuple[Decimal, bool] | None:
    """The number ``text`` states: read from its normalised form, unless spaces between its digits
    carry meaning (:func:`~drift.answers.spaced_digits`: a mixed number, a list): then as written."""
    return parse_number(text) if spaced_digits(text) else parse_number(normalised)


def verify_math(
    prediction: str, gold: str, *, timeout: float = VERIFIER_TIMEOUT, worker: MathWorker | None = None
) -> bool:
    """math-verify equivalence, with fast paths and a hard time limit.

    Raises :class:`TimeoutError` past ``timeout`` and :class:`MathWorkerError` when math-verify
    fails; :class:`Verifier` turns both into ``False`` and counts them.

    >>> verify_math("1,000", "1000"), verify_math("0.5", "1/2"), verify_math("3", "4")  # no worker needed
    (True, True, False)
    """
    p_norm, g_norm = normalize_answer(prediction), normalize_answer(gold)
    if not p_norm or not g_norm:
        return False
    if p_norm == g_norm:
        return True
    p_num, g_num = _as_number(prediction, p_norm), _as_number(gold, g_norm)
    if p_num is not None and g_num is not None:
        return numbers_equal(p_num, g_num)
    if len(prediction) > MAX_MATH_CHARS or len(gold) > MAX_MATH_CHARS:
        return False
    return (worker or SHARED_WORKER).check(prediction.strip(), gold.strip(), timeout)


VERIFIERS: dict[str, Callable[[str, str], bool]] = {
    "math": verify_math,
    "exact": verify_exact,
    "numeric": verify_numeric,
    "choice": verify_choice,
}


# -- the counted, never-raising wrapper ------------------------------------------------------


def number_key(answer: str) -> str:
    """A number's value as plain decimal text (``1,000``, ``1000.0``, ``1e3`` -> ``1000``; ``1/2`` ->
    ``0.5``); anything else as :func:`~drift.answers.normalize_answer` has it.

    >>> [number_key(a) for a in ["1,000", "1000.0", "1/2", "0.50", "x+1"]]
    ['1000', '1000', '0.5', '0.5', 'x+1']
    """
    parsed = parse_number(answer)
    if parsed is None or len(answer) > 100:
        return normalize_answer(answer)
    return decimal_text(parsed[0])


def choice_key(answer: str) -> str:
    """The choice letter (:func:`parse_choice`) where there is one, else the normalised text.

    >>> [choice_key(a) for a in ["B", "(b)", "The answer is B", "maybe"]]
    ['B', 'B', 'B', 'maybe']
    """
    return parse_choice(answer) or normalize_answer(answer)


# The form under which two answers count as the same (the repetition penalty, the unique-answer
# ratio): as each verifier reads them, short of asking it about every pair (math-verify's sets and
# expressions keep their normalised text).
ANSWER_KEYS: dict[str, Callable[[str], str]] = {"choice": choice_key, "numeric": number_key, "math": number_key}


@dataclass
class VerifierStats:
    """How a verifier fared: ``calls``; ``timeouts`` and ``errors`` (both scored as wrong)."""

    calls: int = 0
    timeouts: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Verifier:
    """A named verifier that never raises on model text and counts what happened.

    >>> check = Verifier("numeric")
    >>> check("1,000", "1000"), check("12", "13")
    (True, False)
    >>> check.stats
    VerifierStats(calls=2, timeouts=0, errors=0)
    """

    def __init__(self, name: str, timeout: float = VERIFIER_TIMEOUT, *, worker: MathWorker | None = None):
        if name not in VERIFIERS:
            raise DriftError(f"unknown verifier {name!r}; known: {', '.join(sorted(VERIFIERS))}")
        if not timeout > 0:
            raise DriftError(f"verifier timeout must be > 0 seconds, got {timeout!r}")
        self.name, self.timeout = name, timeout
        self.stats = VerifierStats()
        self._lock = threading.Lock()
        self._fn = VERIFIERS[name]
        if self._fn is verify_math:  # the one verifier with a time limit and a worker process
            if importlib.util.find_spec("math_verify") is None:
                raise DriftError("the 'math' verifier needs math-verify: pip install 'math-verify>=0.7'")
            self._fn = functools.partial(verify_math, timeout=timeout, worker=worker)

    def __call__(self, prediction: str, gold: str) -> bool:
        try:
            result, outcome = bool(self._fn(prediction, gold)), None
        except TimeoutError:
            result, outcome = False, "timeouts"
        except Exception:
            result, outcome = False, "errors"
        with self._lock:
            self.stats.calls += 1
            if outcome:
                setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
        return result

    def key(self, answer: str) -> str:
        """``answer`` in the form two answers count as the same in (:data:`ANSWER_KEYS`)."""
        return ANSWER_KEYS.get(self.name, normalize_answer)(answer)

    def __repr__(self) -> str:
        return f"Verifier({self.name!r}, timeout={self.timeout})"


def get_verifier(name: str, timeout: float = VERIFIER_TIMEOUT) -> Verifier:
    """A fresh :class:`Verifier` (own stats; ``math`` ones share this process's worker).

    >>> get_verifier("exact")("Yes", "yes")
    True
    >>> get_verifier("fuzzy")
    Traceback (most recent call last):
    ...
    drift.DriftError: unknown verifier 'fuzzy'; known: choice, exact, math, numeric
    """
    return Verifier(name, timeout)
