"""What each process of a torchrun test saw: a prelude for the script torchrun runs.

``SPY`` wraps drift.trainer's ``split_micro_batches`` and ``collate`` (what the trainer cuts
and forwards) without changing what they return, and appends one JSON line per call to
``$DRIFT_TEST_SPY/rank-<RANK>.jsonl``:

- ``{"call": "split", "by": caller, "batch": [...], "mine": [[...], ...]}``: the global batch's
  example indices and this process's micro-batches (a filler is index -1); ``by`` is the trainer
  method that cut it (``step`` or ``completion_logprobs``);
- ``{"call": "collate", "by": caller, "indices": [...], "tokens": n, "forwarded": n, "old_logp": bool}``:
  a micro-batch's real tokens, the tokens it runs (a prefix tree's nodes, or all of its rows'
  tokens), whether it carries old log-probs, and ``torch_seed`` (``torch.initial_seed()``: what
  seeded the process's dropout draws).

``read_spy(folder)`` gives ``{rank: [record, ...]}``.
"""

from __future__ import annotations

import json
from pathlib import Path

SPY = """
import json, os, sys
import drift.trainer as _trainer

_SPY_FILE = os.path.join(os.environ["DRIFT_TEST_SPY"], "rank-" + os.environ["RANK"] + ".jsonl")
_split, _collate = _trainer.split_micro_batches, _trainer.collate


def _note(record):
    with open(_SPY_FILE, "a") as f:
        f.write(json.dumps(record) + "\\n")


def _spy_split(examples, *args, **kwargs):
    mine = _split(examples, *args, **kwargs)
    _note({"call": "split", "by": sys._getframe(2).f_code.co_name, "batch": [e.index for e in examples],
           "mine": [[e.index for e in mb] for mb in mine]})
    return mine


def _spy_collate(examples, *args, **kwargs):
    batch = _collate(examples, *args, **kwargs)
    tokens = sum(len(e.input_ids) for e in examples if e.index >= 0)
    _note({"call": "collate", "by": sys._getframe(2).f_code.co_name, "indices": [e.index for e in examples],
           "tokens": tokens, "forwarded": tokens if batch.packed is None else batch.packed.n_nodes,
           "old_logp": batch.old_logp is not None, "torch_seed": __import__("torch").initial_seed()})
    return batch


_trainer.split_micro_batches, _trainer.collate = _spy_split, _spy_collate
"""

CLI = """
from drift.cli import main
sys.exit(main(sys.argv[1:]))
"""


def read_spy(folder: Path) -> dict[int, list[dict]]:
    return {
        int(path.stem.split("-")[1]): [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted(Path(folder).glob("rank-*.jsonl"))
    }
