"""`drift view` at paper scale: 1,800 prompts x 16 trajectories = 28,800 (synthetic, arithmetic-like,
replies of ~200 characters varied like sampled ones, so few repeat exactly).

Writes a weighted trajectory file (ours, via drift weight), then the page both ways (gzip+base64 and
plain JSON); prints generation time and HTML size. With a headless Chromium on PATH
(chromium, chromium-headless-shell), also opens each page and reads the time the page itself
reports from opening to its first full render (``data-render-ms``, performance.now() after the data
is decoded and the lists drawn), and the wall time of the browser process.

    PYTHONPATH=src python benchmarks/view_scale.py [--prompts 1800] [--k 16] [--out /tmp/view-scale]
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

from drift.cli import main as drift
from drift.records import first_correct_turn, write_records

REPLY = (
    "Let me work through this step by step. {note} First I add the tens of {a} and {b}, which gives {tens}. "
    "Then the units: {units}, so I carry {carry}. So the result should be {x}.\n<answer>{x}</answer>"
)
NOTES = ["", "Careful this time.", "I may have slipped before.", "Let me recheck.", "Starting over.", "Hmm."]


def reply(rng: random.Random, a: int, b: int, x: str) -> str:
    """A reply about as varied as sampled ones: a random aside and random (wrong) intermediate steps."""
    units = rng.randint(0, 18)
    return REPLY.format(
        note=rng.choice(NOTES), a=a, b=b, tens=rng.randint(20, 190), units=units, carry=units // 10, x=x
    )


def synthetic(n_prompts: int, k: int, turns: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    records = []
    for p in range(n_prompts):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        gold = str(a + b)
        skill = rng.random()
        for j in range(k):
            msgs = [
                {"role": "system", "content": "You're a helpful assistant."},
                {"role": "user", "content": f"Solve. Give the answer in <answer></answer>.\n\nWhat is {a}+{b}?"},
            ]
            answers, correct = [], []
            for t in range(turns):
                if t:
                    msgs.append({"role": "user", "content": "Incorrect. Please think again."})
                ok = rng.random() < skill
                x = gold if ok else str(a + b + rng.choice([-10, -1, 1, 2, 10]))
                parsable = rng.random() > 0.05
                msgs.append({"role": "assistant", "content": reply(rng, a, b, x) if parsable else f"It is {x}"})
                answers.append(x if parsable else None)
                correct.append(ok and parsable)
                if ok and parsable:
                    break
            first = first_correct_turn(correct)
            records.append(
                {
                    "schema": 1,
                    "prompt_id": f"arith_{p}",
                    "traj_id": j,
                    "messages": msgs,
                    "answers": answers,
                    "correct": correct,
                    "rewards": [float(c) for c in correct],
                    "format_errors": answers.count(None),
                    "first_correct_turn": first,
                    "gold": gold,
                }
            )
    return records


def browser() -> str | None:
    return next((b for b in ("chromium", "chromium-headless-shell") if shutil.which(b)), None)


def open_in_browser(exe: str, page: Path) -> tuple[float, str]:
    start = time.perf_counter()
    dom = subprocess.run(
        [exe, "--headless", "--no-sandbox", "--virtual-time-budget=60000", "--dump-dom", page.resolve().as_uri()],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    ).stdout
    wall = time.perf_counter() - start
    found = re.search(r'data-render-ms="(\d+)"', dom)
    return wall, found.group(1) if found else "not ready"


def run() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=1800)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--out", default="/tmp/view-scale")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rollouts = out / "rollouts.jsonl"
    write_records(rollouts, synthetic(args.prompts, args.k, 5, seed=0))
    assert drift(["weight", str(rollouts), "--out", str(out / "weighted.jsonl")]) == 0
    print(f"weighted.jsonl: {(out / 'weighted.jsonl').stat().st_size / 1e6:.1f} MB")
    exe = browser()
    for flag in ("--compress", "--no-compress"):
        page = out / f"view{flag}.html"
        start = time.perf_counter()
        assert drift(["view", str(out / "weighted.jsonl"), "--out", str(page), flag]) == 0
        took = time.perf_counter() - start
        line = f"{flag}: {page.stat().st_size / 1e6:.2f} MB, written in {took:.1f} s"
        if exe:
            wall, ms = open_in_browser(exe, page)
            line += f"; {exe}: rendered {ms} ms after opening, browser process {wall:.1f} s"
        print(line)


if __name__ == "__main__":
    run()
