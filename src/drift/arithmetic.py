"""Generated arithmetic problems: the task that needs no dataset.

``arithmetic`` is generated: ``digits`` per operand, ``terms`` operands joined by operators
drawn from ``ops`` (``+-*``, usual precedence), ``mix`` draws 1..digits digits and 2..terms
operands per problem. A problem belongs to split ``test`` when a hash of its text falls in
bucket 0 of 10, ``validation`` in bucket 1, ``train`` otherwise, so splits never share a
question, whatever the seeds; the seed only picks which problems of the split you get, and
``limit`` how many (default :data:`DEFAULT_ARITHMETIC_SIZE`).

Splits can share a problem up to the order of its operands: ``40+85`` and ``85+40`` hash apart.
Of the demo's 200 test problems (2-digit addition, seed 0), 11 have such a twin among the 192
training problems it uses (64 weighted, 128 of the format warm-up's own answers); 8-11 for the
study's seeds. Hashing a canonical form would change every split, the committed study's
included, so it waits for a study that starts afresh.
"""

from __future__ import annotations

import hashlib
import random

from drift import DriftError
from drift.env import Problem

SPLIT_BUCKETS = {"test": range(1), "validation": range(1, 2), "train": range(2, 10)}
"""Which of 10 hash buckets of the question text belong to each split of ``arithmetic``."""

DEFAULT_ARITHMETIC_SIZE = 1000


def evaluate_arithmetic(numbers: list[int], ops: list[str]) -> int:
    """``numbers[0] ops[0] numbers[1] ...`` with ``*`` before ``+``/``-`` (no ``eval``).

    >>> evaluate_arithmetic([2, 3, 4, 5], ["-", "*", "+"])   # 2 - 3*4 + 5
    -5
    """
    total, sign, product = 0, 1, numbers[0]
    for op, n in zip(ops, numbers[1:]):
        if op == "*":
            product *= n
        else:
            total, sign, product = total + sign * product, 1 if op == "+" else -1, n
    return total + sign * product


def split_of(question: str) -> str:
    """The split a generated question belongs to (a stable hash, the same in every process).

    >>> split_of("What is 40+85?") in SPLIT_BUCKETS
    True
    """
    bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def load_arithmetic(spec, source, split, limit, seed, digits=2, ops="+", terms=2, mix=False) -> list[Problem]:
    """The ``arithmetic`` task's loader (drift.tasks.TASKS): ``limit`` problems of ``split``, picked by ``seed``."""
    if source is not None:
        raise DriftError("task 'arithmetic' is generated and takes no source")
    if split not in SPLIT_BUCKETS:
        raise DriftError(f"arithmetic: unknown split {split!r}; known: {', '.join(SPLIT_BUCKETS)}")
    if not isinstance(digits, int) or not 1 <= digits <= 18:
        raise DriftError(f"arithmetic: knob 'digits' must be an integer in 1..18, got {digits!r}")
    if not isinstance(terms, int) or not 2 <= terms <= 10:
        raise DriftError(f"arithmetic: knob 'terms' must be an integer in 2..10, got {terms!r}")
    if not isinstance(ops, str) or not ops or set(ops) - set("+-*"):
        raise DriftError(f"arithmetic: knob 'ops' must be made of + - *, got {ops!r}")
    count = DEFAULT_ARITHMETIC_SIZE if limit is None else limit
    rng = random.Random(f"arithmetic/{split}/{seed}")  # str seeds are hashed stably (sha512)
    questions: dict[str, int] = {}
    for _ in range(100 * count + 1000):
        if len(questions) >= count:
            break
        n_terms = rng.randint(2, terms) if mix else terms
        widths = [rng.randint(1, digits) if mix else digits for _ in range(n_terms)]
        numbers = [rng.randint(10 ** (w - 1) if w > 1 else 0, 10**w - 1) for w in widths]
        chosen = [rng.choice(ops) for _ in range(n_terms - 1)]
        question = "What is " + "".join(f"{n}{op}" for n, op in zip(numbers, chosen)) + f"{numbers[-1]}?"
        if question not in questions and split_of(question) == split:
            questions[question] = evaluate_arithmetic(numbers, chosen)
    if len(questions) < count:
        raise DriftError(
            f"arithmetic: only {len(questions)} distinct {split} problems with digits={digits}, terms={terms}, "
            f"ops={ops!r}; ask for fewer (limit) or allow more (digits, terms, ops)"
        )
    return [
        Problem(f"arith-{i:06d}", question, str(gold), spec.name, {"split": split, "seed": seed})
        for i, (question, gold) in enumerate(questions.items())
    ]
