"""drift: Decoupled Rollouts and Importance-Weighted Fine-Tuning for multi-turn LLMs.

The pipeline is a chain of inspectable JSONL files::

    drift rollout  -> trajectories.jsonl   (K multi-turn trajectories per prompt, offline)
    drift weight   -> weighted.jsonl       (adds `return` and `weight`, pure math)
    drift train    -> model/               (weight x NLL on the last assistant turn; checkpoints/, train_summary.json)
    drift eval     -> report.json          (multi@k, correction rate, ...)
"""

__version__ = "0.1.0"


class DriftError(Exception):
    """An error a user can fix (bad input, bad option). The CLI prints it and exits with code 2."""
