"""Answer extraction and normalisation. Pure Python, linear time on any input.

Model output is untrusted: nothing here evaluates it, and every scan is a single pass
(`str.rfind`, brace counting, non-backtracking regexes), so a 1 MB reply with ten thousand
unclosed ``<answer>`` tags costs one pass, not ten thousand.

Extraction methods, tried in order by :func:`extract_answer`:

=============  ========================================  ==========================
name           matches                                   example
=============  ========================================  ==========================
``tag``        the last ``<answer>...</answer>``          ``<answer> 42 </answer>``
               (a ``\\boxed{}`` or ``**`` in it: unwrapped)
``boxed``      the last ``\\boxed{...}`` (nested braces)  ``\\boxed{\\frac{1}{2}}``
``hash``       GSM8K's ``#### 42`` (rest of that line)    ``#### 1,234`` (not a heading)
``last_number``  the last number in the text               ``so it is 17.``
=============  ========================================  ==========================

``strict`` mode (the paper's format) uses ``tag`` only; ``lenient`` (for small models) tries all.
"""

from __future__ import annotations

import re
from collections import deque
from decimal import Decimal, InvalidOperation, localcontext

MODES: dict[str, tuple[str, ...]] = {
    "strict": ("tag",),
    "lenient": ("tag", "boxed", "hash", "last_number"),
}

MAX_ANSWER_CHARS = 1000
"""Longer extracted answers are cut: no real answer is this long, and verifiers stay cheap."""

# Never ends in a comma ("18, since"); a minus sign only where no word, number or bracket comes
# right before it ("x = 12-4" ends in 4, not -4).
_NUMBER = re.compile(r"(?:(?<![\w.)\]])-)?(?:\d(?:[\d,]*\d)?(?:\.\d+)?|\.\d+)")
# Canonicalised by normalize_answer: commas only as thousands separators, so the list "1,2"
# is not read as the number 12.
_PLAIN_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")


def _from_tag(text: str) -> str | None:
    end = text.rfind("</answer>")
    if end < 0:
        return None
    start = text.rfind("<answer>", 0, end)
    if start < 0:
        return None
    inside = text[start + len("<answer>") : end].strip()
    if len(inside) > 2 and inside[0] == inside[-1] == "*":  # Markdown emphasis: **B**
        inside = inside.strip("*")
    boxed = _from_boxed(inside) if "\\boxed{" in inside else None
    return boxed if boxed is not None else inside  # a box in the tag: its content


_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])\s*")
_BARE_BOX_TOKEN = re.compile(r"[^\s${}]+")  # \boxed 2$: the token after a box without braces


def _from_boxed(text: str) -> str | None:
    boxes = deque(_BOX.finditer(text), maxlen=1)
    if not boxes:
        return None
    i = boxes[0].end()
    if text[i : i + 1] != "{":
        bare = _BARE_BOX_TOKEN.match(text, i)
        return bare.group(0) if bare else None
    depth, i = 1, i + 1
    begin = i
    while i < len(text):
        ch = text[i]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
        i += 1
    return None  # unbalanced braces: no answer


_HASH_STARTS = set("0123456789-+.$\\")  # GSM8K's "#### 1,234" (or -5, .5, $5, \\frac...)


def _from_hash(text: str) -> str | None:
    start = text.rfind("####")
    if start < 0:
        return None
    line = text[start + 4 :].split("\n", 1)[0]
    return line if line.strip()[:1] in _HASH_STARTS else None  # "#### Final Answer": a heading


def _from_last_number(text: str) -> str | None:
    last = deque(_NUMBER.finditer(text), maxlen=1)
    return last[0].group(0) if last else None


EXTRACTORS = {"tag": _from_tag, "boxed": _from_boxed, "hash": _from_hash, "last_number": _from_last_number}


def extract_answer(text: str, mode: str | tuple[str, ...] = "strict") -> str | None:
    """Return the answer in ``text`` (stripped, non-empty), or ``None`` when there is none.

    ``mode`` is ``"strict"``, ``"lenient"`` or a tuple of method names from :data:`EXTRACTORS`.

    >>> extract_answer("I think <answer> 391 </answer>")
    '391'
    >>> extract_answer("The answer is 391.") is None
    True
    >>> extract_answer("The answer is 391.", mode="lenient")
    '391'
    >>> extract_answer("so \\\\boxed{\\\\frac{1}{2}}", mode="lenient")
    '\\\\frac{1}{2}'
    """
    methods = MODES[mode] if isinstance(mode, str) else mode
    for name in methods:
        found = EXTRACTORS[name](text)
        if found is not None:
            found = found.strip()
            if found:
                return found[:MAX_ANSWER_CHARS]
    return None


_DIGIT_GAP = re.compile(r"(?<=\d)(,?)\s+(?=\d)")
_SPACED_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:\s\d{3})+(?:\.\d+)?")


def spaced_digits(text: str) -> bool:
    """Does whitespace separate digits otherwise than as thousands groups? Then the spaces are part
    of what was written: ``1 1/2`` (a mixed number), ``1, 234`` (a list), not ``11/2`` or ``1234``.

    >>> spaced_digits("1 1/2"), spaced_digits("1, 234"), spaced_digits("12 000"), spaced_digits("x = 5")
    (True, True, False, False)
    """
    return bool(_DIGIT_GAP.search(text)) and not _SPACED_THOUSANDS.fullmatch(text.strip().strip("$").rstrip("."))


_SIZING = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_LATEX_WRAPPERS = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")


def normalize_answer(answer: str) -> str:
    """Canonical string form of an answer, used for exact matching and repetition tracking.

    Lower-cases, drops ``$``, spaces, ``\\left``/``\\right``, ``\\text{}`` wrappers, a trailing
    period and thousands separators; writes numbers canonically (``42.0`` -> ``42``). Commas
    not in groups of three are kept (``1,2`` is a list, not twelve; ``1, 234`` too), and so is one
    space between digits that are not thousands groups (:func:`spaced_digits`: ``1 1/2``).

    >>> normalize_answer(" $1,234.50$ ")
    '1234.5'
    >>> normalize_answer("\\\\text{Yes}.")
    'yes'
    >>> normalize_answer("-0")
    '0'
    >>> normalize_answer("1,2")
    '1,2'
    """
    s = answer.strip()
    s = _LATEX_WRAPPERS.sub(r"\1", s)
    s = _SIZING.sub("", s)  # \\left( and \\right), not \\leftarrow
    listed = any(gap.group(1) for gap in _DIGIT_GAP.finditer(s))  # "1, 234": a list, never the number 1234
    if spaced_digits(s):  # "1 1/2": one space kept through the removal below
        s = _DIGIT_GAP.sub(lambda m: m.group(0) if m.group(1) else "\x00", s)
    for junk in ("$", "\\!", "\\,", "\\;", " ", "\t", "\n"):
        s = s.replace(junk, "")
    s = s.replace("\x00", " ")
    s = s.rstrip(".").lower()
    if len(s) <= 100 and not listed and _PLAIN_NUMBER.fullmatch(s):
        try:
            number = Decimal(s.replace(",", ""))
        except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
            return s
        return decimal_text(number)
    return s


def decimal_text(number: Decimal) -> str:
    """A number as plain decimal text, every digit of up to 100 kept (Decimal's default context
    keeps 28), no trailing zeros, ``0`` for any zero.

    >>> decimal_text(Decimal("1.50")), decimal_text(Decimal("-0.0")), decimal_text(Decimal("1E+3"))
    ('1.5', '0', '1000')
    """
    if number == 0:
        return "0"
    with localcontext() as ctx:
        ctx.prec = 101
        return format(number.normalize(), "f")
