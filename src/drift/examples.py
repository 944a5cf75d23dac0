"""Training examples from trajectory records: prompt = history, completion = an assistant turn.

For the target turn the prompt is the conversation before it rendered with the chat template
(generation prompt added), exactly as the backends render it to generate. The completion is what
the policy produced:

- the ids it sampled, end token included, when the record holds them (``token_ids``: the hf and
  vllm backends record them);
- otherwise the turn's text tokenised, followed by the chat template's own end-of-turn marker
  (drift.chat.end_of_turn_ids: ``<|im_end|>`` for ChatML, ``<|eot_id|>`` for Llama 3,
  ``<end_of_turn>`` for Gemma) when the reply ended there (``finish_reasons[t-1] == "stop"``), and
  nothing after a reply cut by ``max_new_tokens`` (``"length"``): the model is never taught to stop
  where it did not. An unknown finish reason (records of the reference layout, or made before
  drift recorded it) counts as ``"stop"``, which is what those records' replies were.

Prompt and completion are concatenated as *token ids* (the joined text is never re-tokenised),
labels cover the completion only. An example longer than ``max_length`` is cut: the completion
keeps at least half of ``max_length`` (its end, and the end token, go first), the history is cut
from the left.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, NamedTuple

from drift import DriftError
from drift.chat import end_of_turn_ids, render_prompt


@dataclass
class Example:
    input_ids: list[int]
    n_prompt: int  # the first n_prompt tokens are context; the rest is trained
    weight: float
    index: int  # record index, for error messages and logs
    old_logp: list[float] | None = None  # log p of each completion token under the sampling policy (PPO's ratio)

    @property
    def n_completion(self) -> int:
        return len(self.input_ids) - self.n_prompt


def completion_ids(tokenizer, text: str, finish_reason: str | None) -> list[int]:
    """A reply's ids from its text: the text tokenised, plus the end-of-turn marker unless the
    reply was cut by its length limit (see the module notes)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids if finish_reason == "length" else ids + list(end_of_turn_ids(tokenizer))


def training_turns(
    record: dict, target: str = "last", *, where: str = "record", weight: float | None = None
) -> tuple[float, list[tuple[int, int]]]:
    """The weight of a record and its ``(turn, message index)`` pairs to train (1-based turns).

    ``target="last"`` gives the last assistant turn (the paper), ``"all"`` every one. ``weight``
    overrides the record's own (online RL passes advantages); ``where`` names the record in errors.

    >>> rec = {"weight": 0.5, "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
    ...        {"role": "user", "content": "again"}, {"role": "assistant", "content": "b"}]}
    >>> training_turns(rec), training_turns(rec, "all")
    ((0.5, [(2, 3)]), (0.5, [(1, 1), (2, 3)]))
    """
    if target not in ("last", "all"):
        raise DriftError(f"target must be 'last' or 'all', got {target!r}")
    w = record.get("weight") if weight is None else weight
    if w is None:
        raise DriftError(f"{where} has no field 'weight'; run drift weight first")
    turns = [i for i, m in enumerate(record["messages"]) if m["role"] == "assistant"]
    if not turns:
        raise DriftError(f"{where} has no assistant turn")
    pairs = list(enumerate(turns, start=1))
    return float(w), pairs if target == "all" else pairs[-1:]


def build_examples(
    record: dict,
    tokenizer,
    *,
    index: int = 0,
    target: str = "last",
    max_length: int = 1024,
    weight: float | None = None,
) -> list[Example]:
    """The examples of one record: its last assistant turn (``target="last"``) or every one (``"all"``)."""
    where = f"record {index + 1} (prompt_id {record.get('prompt_id')!r})"
    if max_length < 2:
        raise DriftError(f"max_length must be >= 2 (a prompt token and a trained one), got {max_length}")
    w, turns = training_turns(record, target, where=where, weight=weight)
    messages = record["messages"]
    finish = record.get("finish_reasons") or [None] * len(record["correct"])
    sampled = record.get("token_ids") or [None] * len(record["correct"])
    out = []
    vocabulary = len(tokenizer) if any(ids for ids in sampled) else 0
    for t, i in turns:
        ids = sampled[t - 1]
        if ids and max(ids) >= vocabulary:  # sampled by a model with another tokenizer
            raise DriftError(
                f"{where}: field 'token_ids' (turn {t}) holds id {max(ids)}, but the model's tokenizer has "
                f"{vocabulary} tokens: train the model family that sampled them (field 'model': "
                f"{record.get('model')!r}), whose tokenizer the ids are in"
            )
        completion = list(ids) if ids is not None else completion_ids(tokenizer, messages[i]["content"], finish[t - 1])
        prompt = render_prompt(tokenizer, messages[:i])
        if len(prompt) + len(completion) > max_length:
            # The completion keeps what the prompt leaves, and at least half of max_length; the
            # prompt the most recent rest of the history (at least one token).
            completion = completion[: max(max_length - len(prompt), max_length // 2)]
            prompt = prompt[len(prompt) - (max_length - len(completion)) :]
        out.append(Example(prompt + completion, len(prompt), w, index))
    return out


def completion_sources(records: list[dict], tokenizer, target: str = "last") -> dict:
    """Where the trained completions come from, for a run's summary: ``from_ids`` (sampled ids in
    the record), ``from_text`` (re-tokenised text), and ``text_differs``: of the ``from_ids`` turns,
    how many the text path would have trained differently (the tokenizer's round-trip failures;
    0 means the text alone would have been exact).
    """
    counts = {"from_ids": 0, "from_text": 0, "text_differs": 0}
    for rec in records:
        _, turns = training_turns(rec, target, weight=1.0)
        finish = rec.get("finish_reasons") or [None] * len(rec["correct"])
        sampled = rec.get("token_ids") or [None] * len(rec["correct"])
        for t, i in turns:
            if sampled[t - 1] is None:
                counts["from_text"] += 1
                continue
            counts["from_ids"] += 1
            text_ids = completion_ids(tokenizer, rec["messages"][i]["content"], finish[t - 1])
            counts["text_differs"] += text_ids != list(sampled[t - 1])
    return counts


def plan_batches(
    n_examples: int, batch_size: int, *, seed: int, epoch: int, groups: list | None = None
) -> list[list[int]]:
    """Split an epoch of ``n_examples`` into optimizer steps of ``batch_size`` example indices.

    The order is a function of ``(seed, epoch)`` only, so a resumed run sees the same batches,
    whatever the number of processes. A final short step is kept. ``groups`` (a key per example,
    e.g. its prompt): the same shuffle, then each group's examples gathered where its first one
    fell, so that steps hold whole groups (a group larger than what is left of a step runs on into
    the next).

    >>> plan = plan_batches(5, 2, seed=0, epoch=0)  # every example once; the short last step kept
    >>> [len(step) for step in plan], sorted(i for step in plan for i in step)
    ([2, 2, 1], [0, 1, 2, 3, 4])
    >>> plan = plan_batches(6, 4, seed=0, epoch=0, groups=["a", "a", "b", "b", "c", "c"])
    >>> [len({i // 2 for i in step}) for step in plan]  # groups of 2 in steps of 4: two whole ones, then one
    [2, 1]

    (tests/test_examples.py: the orders themselves, across seeds, epochs and processes.)
    """
    order = list(range(n_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    if groups is not None:
        first: dict = {}
        for position, i in enumerate(order):
            first.setdefault(groups[i], position)
        order.sort(key=lambda i: first[groups[i]])
    return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]


def plan_minibatches(
    n_examples: int, minibatches: int, *, seed: int, epochs: int
) -> tuple[list[list[int]], list[list[int]]]:
    """An online round's updates: ``parts``, its examples shuffled once and cut into ``minibatches``
    parts whose sizes differ by at most one (fewer when there are fewer examples), and ``orders``,
    for each of ``epochs`` passes the order (indices into ``parts``) in which that pass takes them.
    Each part keeps its examples, so it is forwarded in the same micro-batches every time (what makes
    PPO's ratio exact: drift.rl).

    >>> parts, orders = plan_minibatches(5, 2, seed=0, epochs=2)
    >>> sorted(len(p) for p in parts), sorted(i for p in parts for i in p), [sorted(o) for o in orders]
    ([2, 3], [0, 1, 2, 3, 4], [[0, 1], [0, 1]])
    """
    order = list(range(n_examples))
    random.Random(seed).shuffle(order)
    m = min(minibatches, n_examples)
    cuts = [round(j * n_examples / m) for j in range(m + 1)] if m else [0]
    parts = [order[cuts[j] : cuts[j + 1]] for j in range(m)]
    orders = []
    for epoch in range(epochs):
        turn = list(range(m))
        random.Random(seed * 1_000_003 + epoch).shuffle(turn)
        orders.append(turn)
    return parts, orders


def negligible(weights: list[float], share: float) -> list[int]:
    """Positions of the lightest ``weights`` (by magnitude) that together carry at most ``share``
    of their summed magnitude (drift.train, note 4): a prefix of the weights sorted by ``|w|``,
    ties by position; zeros always.

    >>> negligible([1.0, 0.0, 2e-7, 1.0, 5e-7], 1e-6)      # 0 + 2e-7 + 5e-7 <= 1e-6 * 2.0000007
    [1, 2, 4]
    >>> negligible([1.0, 0.0, 1e-5, 1.0], 1e-6), negligible([0.0, 0.0], 1e-6), negligible([3.0], 0.0)
    ([1], [0, 1], [])
    >>> negligible([-1.5, 0.0, 1.5], 1e-4)                  # advantages: only the exact zero
    [1]
    """
    budget = share * sum(abs(w) for w in weights)
    carried, out = 0.0, []
    for i in sorted(range(len(weights)), key=lambda i: abs(weights[i])):
        carried += abs(weights[i])
        if carried > budget:
            break
        out.append(i)
    return sorted(out)


def to_forward(examples: list[Example], share: float | None) -> tuple[list[Example], list[int]]:
    """The examples of one optimizer step to forward, and the positions skipped (:func:`negligible`;
    ``share`` none: all of them). Never empty: when every example is skipped, a two-token stand-in
    of weight 0 (no trained token) keeps the step."""
    if share is None:
        return examples, []
    skipped = negligible([e.weight for e in examples], share)
    drop = set(skipped)
    kept = [e for j, e in enumerate(examples) if j not in drop]
    return kept or [Example(examples[0].input_ids[:2], 2, 0.0, -1)], skipped


def split_micro_batches(
    examples: list[Example],
    micro_batch_size: int,
    processes: int,
    rank: int,
    *,
    group_by_length: bool = True,
    by_prefix: bool = False,
) -> list[list[Example]]:
    """Process ``rank``'s micro-batches of one global batch (drift.trainer, note 1).

    The batch is sorted by length (``group_by_length``: less padding, same gradient), or by its
    tokens (``by_prefix``: examples that share a prefix become neighbours, for drift.packing), and
    cut into A = ceil(len / (micro_batch_size x processes)) micro-batches; the process takes examples
    rank, rank + processes, ... of each (``by_prefix``: the rank-th run of ``micro_batch_size``
    neighbours). Every process gets A micro-batches: where its slice is empty, a filler keeps it in
    step with the others: two tokens, none of them trained, weight 0, ``index -1``; every loss built
    on trained tokens is 0 on it.

    >>> exs = [Example([5, 6, 7], 1, 1.0, i) for i in range(3)]
    >>> [[(e.index, e.n_completion) for e in mb] for mb in split_micro_batches(exs, 1, 2, 1, group_by_length=False)]
    [[(1, 2)], [(-1, 0)]]
    >>> exs = [Example(ids, 1, 1.0, i) for i, ids in enumerate([[1, 2], [3, 4, 5], [1, 2, 6], [3, 4]])]
    >>> [[e.index for e in mb] for mb in split_micro_batches(exs, 2, 1, 0, by_prefix=True)]
    [[0, 2], [3, 1]]
    """
    order = list(range(len(examples)))
    if by_prefix:
        order.sort(key=lambda i: examples[i].input_ids)
    elif group_by_length:
        order.sort(key=lambda i: -len(examples[i].input_ids))
    per = micro_batch_size * processes
    cuts = [order[m : m + per] for m in range(0, len(order), per)]
    first = examples[order[0]]  # a filler: nothing to train (no completion), so no old log-probs either
    filler = Example(first.input_ids[:2], 2, 0.0, -1, old_logp=None if first.old_logp is None else [])
    take = [
        c[rank * micro_batch_size : (rank + 1) * micro_batch_size] if by_prefix else c[rank::processes] for c in cuts
    ]
    return [[examples[i] for i in mine] or [filler] for mine in take]


class Batch(NamedTuple):
    """A micro-batch as tensors (:func:`collate`); ``batch[i]`` works as for the plain tuple it was."""

    input_ids: Any  # (b, s), left-padded
    attention_mask: Any  # (b, s)
    position_ids: Any  # (b, s)
    labels: Any  # (b, k): labels[:, j] is the target of the logits at position s - k - 1 + j
    weights: Any  # (b,)
    k: int
    old_logp: Any = None  # (b, k) aligned with the labels, or None
    packed: Any = None  # drift.packing.PackedRows: the same rows as one prefix tree, or None

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) if hasattr(t, "to") else t for t in self))


def collate(examples: list[Example], pad_id: int, *, pair_cost: float | None = None) -> Batch:
    """Left-padded tensors for a micro-batch; only the last ``k`` positions need logits.

    Returns a :class:`Batch`: ``input_ids, attention_mask, position_ids`` (b, s), ``labels`` (b, k)
    aligned with the logits of the last k positions (position j predicts token j+1), ``weights`` (b,),
    ``k``, and ``old_logp`` (b, k) aligned with the labels (0 off the completion) when the examples
    carry :attr:`Example.old_logp`, else ``None``. With a ``pair_cost`` (drift.packing.pair_cost): also
    the rows as one prefix tree (``packed``), where the tree is worth it (drift.packing.worth_packing).
    Left padding puts every completion at the end, so the LM head runs on k = longest completion
    positions instead of the whole sequence (k >= 1, so that a batch of fillers still has an output).
    """
    import torch

    from drift.losses import IGNORE
    from drift.packing import pack_rows

    width = max(len(e.input_ids) for e in examples)
    k = max(1, max(e.n_completion for e in examples))
    ids, mask, labels, old = [], [], [], []
    for e in examples:
        pad = width - len(e.input_ids)
        ids.append([pad_id] * pad + e.input_ids)
        mask.append([0] * pad + [1] * len(e.input_ids))
        # logits at positions width-k-1 .. width-2 predict tokens width-k .. width-1
        tail = ([IGNORE] * pad + [IGNORE] * e.n_prompt + e.input_ids[e.n_prompt :])[width - k :]
        labels.append(tail)
        if e.old_logp is not None and len(e.old_logp) != e.n_completion:
            raise DriftError(
                f"example {e.index}: {len(e.old_logp)} old log-probs for {e.n_completion} completion tokens"
            )
        old.append([0.0] * (k - e.n_completion) + list(e.old_logp or [0.0] * e.n_completion))
    attention = torch.tensor(mask)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    rows = [e.input_ids for e in examples]
    packed = pack_rows(rows, k, pair_cost=pair_cost) if pair_cost is not None and len(rows) > 1 else None
    return Batch(
        torch.tensor(ids),
        attention,
        positions,
        torch.tensor(labels),
        torch.tensor([e.weight for e in examples], dtype=torch.float32),
        k,
        torch.tensor(old) if any(e.old_logp is not None for e in examples) else None,
        packed,
    )
