"""``drift export-trl``: weighted trajectories -> TRL's conversational prompt/completion dataset.

One JSONL row per trained assistant turn, in the *conversational prompt-completion* format that
TRL's ``SFTTrainer`` reads (``datasets.load_dataset("json", data_files=...)``)::

    {"prompt":     [{"role": "system", ...}, {"role": "user", ...}, ...],   # history before the turn
     "completion": [{"role": "assistant", "content": "..."}],               # the trained turn
     "weight": 1.7, "prompt_id": "p0", "traj_id": 3, "turn": 2}

``target="last"`` (drift train's default, the paper's) writes the last assistant turn of each
trajectory, ``"all"`` one row per assistant turn, exactly the examples ``drift train`` builds
(:func:`drift.examples.build_examples`). ``turn`` is the 1-based assistant turn, as in the record
schema. TRL's ``SFTTrainer`` ignores ``weight``: it is there for a weighted trainer (a subclass
whose ``compute_loss`` multiplies each example's loss by it), and so that nothing is lost.

Differences from ``drift train`` remain when TRL trains on this file, all from TRL's side:
TRL tokenizes ``prompt + completion`` rendered by the chat template, so it also trains whatever
the template writes after the end-of-turn token (ChatML's ``"\\n"`` after ``<|im_end|>``), which
drift does not; TRL averages the NLL over all completion tokens of a batch, drift per example
first (see ``tests/test_trl_interop.py``); a reply cut by the length limit (its ``finish_reason``,
written in each row, is ``"length"``) gets the template's end-of-turn token in TRL, which teaches
the model to stop where it did not, while drift trains no end token there; and TRL trains the
rendered text, drift the sampled ids where the record has them, cut at ``max_length``.
"""

from __future__ import annotations

from drift import DriftError
from drift.config import ExportTRLConfig


def to_trl_rows(record: dict, target: str = "last", *, index: int = 0, source: str = "") -> list[dict]:
    """The TRL prompt/completion rows of one weighted record (``index`` and ``source`` name it in errors).

    >>> rec = {"prompt_id": "p0", "traj_id": 1, "weight": 0.5, "messages": [
    ...     {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "5"},
    ...     {"role": "user", "content": "Incorrect."}, {"role": "assistant", "content": "4"}]}
    >>> row = to_trl_rows(rec)[0]
    >>> [m["content"] for m in row["prompt"]], row["completion"], row["weight"], row["turn"]
    (['2+2?', '5', 'Incorrect.'], [{'role': 'assistant', 'content': '4'}], 0.5, 2)
    >>> [r["turn"] for r in to_trl_rows(rec, "all")]
    [1, 2]
    >>> to_trl_rows({**rec, "weight": None}, source="w.jsonl", index=4)
    Traceback (most recent call last):
    ...
    drift.DriftError: w.jsonl: record 5 (prompt_id 'p0', traj_id 1) has no field 'weight'; run drift weight first
    """
    from drift.examples import training_turns

    where = (
        f"{source + ': ' if source else ''}record {index + 1} (prompt_id {record.get('prompt_id')!r}, "
        f"traj_id {record.get('traj_id')!r})"
    )
    weight, turns = training_turns(record, target, where=where)
    messages = record["messages"]
    rows = []
    for t, i in turns:
        rows.append(
            {
                "prompt": [{"role": m["role"], "content": m["content"]} for m in messages[:i]],
                "completion": [{"role": "assistant", "content": messages[i]["content"]}],
                "weight": float(weight),
                "prompt_id": record["prompt_id"],
                "traj_id": record.get("traj_id"),
                "turn": t,
                "finish_reason": (record.get("finish_reasons") or [None] * t)[t - 1],
            }
        )
    return rows


def run_export_trl(cfg: ExportTRLConfig) -> dict:
    """Read weighted records, write the TRL dataset (and its config sidecar); return a small summary."""
    from drift.options import save_config
    from drift.outputs import atomic_write, sidecar, write_json
    from drift.records import dumps, read_records

    if not cfg.input:
        raise DriftError("no input file given (drift export-trl weighted.jsonl --out trl.jsonl)")
    if not cfg.out:
        raise DriftError("no output given (--out OUT)")
    records = read_records(cfg.input, weighted=True)
    rows = [row for i, rec in enumerate(records) for row in to_trl_rows(rec, cfg.target, index=i, source=cfg.input)]
    with atomic_write(cfg.out) as f:
        for row in rows:
            f.write(dumps(row))
    summary = {
        "records": len(records),
        "rows": len(rows),
        "target": cfg.target,
        "weight_sum": sum(r["weight"] for r in rows),
        "format": "trl conversational prompt-completion",
    }
    save_config(cfg, sidecar(cfg.out, "config.yaml"))
    write_json(sidecar(cfg.out, "summary.json"), summary)
    print(f"wrote {len(rows)} prompt/completion rows from {len(records)} records to {cfg.out}")
    return summary
