"""Builders of small valid records for tests, and the fixtures shipped in tests/data."""

from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
REFERENCE_SAMPLE = DATA / "reference-format" / "rollouts_small.jsonl"
"""48 trajectories (12 prompts x 4) in the DRIFT reference code's layout (copied from the project's shared
design data)."""
GSM8K_SAMPLE = DATA / "gsm8k"
"""The first 150 problems of GSM8K's test split, in its original layout (MIT licence beside it)."""


def make_record(prompt_id, traj_id, answers, first_correct=None, weight=None, question="What is 2+3?"):
    """A schema-1 record with the given per-turn answers (None = no <answer> tag)."""
    msgs = [{"role": "system", "content": "You're a helpful assistant."}, {"role": "user", "content": question}]
    for t, a in enumerate(answers):
        if t:
            msgs.append({"role": "user", "content": "Incorrect. Please think again."})
        msgs.append({"role": "assistant", "content": f"<answer>{a}</answer>" if a is not None else "I think 5"})
    correct = [t + 1 == first_correct for t in range(len(answers))]
    rec = {
        "schema": 1,
        "prompt_id": prompt_id,
        "traj_id": traj_id,
        "messages": msgs,
        "answers": list(answers),
        "correct": correct,
        "rewards": [float(c) for c in correct],
        "format_errors": list(answers).count(None),
        "first_correct_turn": first_correct,
    }
    if weight is not None:
        rec["weight"] = weight
    return rec


def weighting(**over):
    """drift.weighting.WeightingParams with drift's defaults (drift.config) and ``over`` changed."""
    from drift.config import WeightingOptions

    return WeightingOptions(**over).weighting()
