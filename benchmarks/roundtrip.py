"""Round trip: does re-tokenising a reply's text give back the ids the model sampled?

    .venv/bin/python benchmarks/roundtrip.py [--model smollm2-135m] [--prompts 32] [--n 4]

Runs ``drift rollout`` (hf backend, the demo's task: 2-digit addition, T = 5, temperature 1, 24 new
tokens at most) and then counts, over every assistant turn, whether drift train's text path
(``examples.completion_ids``: the text tokenised + the template's end-of-turn marker after
``stop``) equals the sampled ids the record holds. drift train trains the sampled ids whenever a
record has them; this measures what training from text alone (the reference layout, an OpenAI
server) would get wrong. Prints the machine, the counts and the share that differs.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path


def main() -> None:
    import torch

    from drift.cli import main as drift
    from drift.examples import completion_sources
    from drift.models import load_tokenizer, resolve_model
    from drift.records import read_records

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp()) / "rollouts.jsonl"
    assert (
        drift(
            [
                "rollout",
                "--model",
                args.model,
                "--task-options",
                "digits=2,ops=+",
                "--answer-mode",
                "lenient",
                "--max-new-tokens",
                "24",
                "--num-prompts",
                str(args.prompts),
                "--n",
                str(args.n),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    records = read_records(out)
    tokenizer = load_tokenizer(resolve_model(args.model))
    counts = completion_sources([{**r, "weight": 1.0} for r in records], tokenizer, target="all")
    finish = [f for r in records for f in r["finish_reasons"]]
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.backends.cpu.get_cpu_capability()}"
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "trajectories": len(records),
                "turns": len(finish),
                "stop": finish.count("stop"),
                "length": finish.count("length"),
                **counts,
                "share_text_differs": round(counts["text_differs"] / max(counts["from_ids"], 1), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
