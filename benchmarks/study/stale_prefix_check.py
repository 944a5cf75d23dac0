"""How much did the stale-prefix bug (fixed in f1aa077) move drift rl's sampling policy? Greedy
5-turn episodes on 200 held-out problems with a trained policy's weights: fresh caches vs the
shared start's keys and values taken from the reference policy (what the bug did from round 2 on).

    python benchmarks/study/stale_prefix_check.py REFERENCE_MODEL CHECKPOINT/model.safetensors

Measured 2026-12-02 (2-core AMD EPYC, AVX512-BF16, bf16) with the study's reference policy and
iterated DRIFT's seed-3 checkpoint after round 24: multi@5 0.44 fresh, 0.27 stale (study README).
It emulates the bug with today's code by restoring the store's fingerprint by hand.
"""

import sys
import time

import torch
from safetensors.torch import load_file

from drift.backends.base import Sampling
from drift.backends.hf import HFGenerator
from drift.backends.hf_cache import weights_fingerprint
from drift.config import RolloutConfig
from drift.metrics import cumulative_accuracy
from drift.models import load_model, load_tokenizer
from drift.rollout import env_factory, run_episodes
from drift.tasks import load_problems

ref_path, ckpt = sys.argv[1], sys.argv[2]
tok = load_tokenizer(ref_path)
model = load_model(ref_path)
ref_state = {k: v.clone() for k, v in model.state_dict().items()}
trained = load_file(ckpt)
missing = model.load_state_dict(trained, strict=False)
print("missing/unexpected:", missing)
trained_state = {k: v.clone() for k, v in model.state_dict().items()}
diff = sum((trained_state[k].float() - ref_state[k].float()).norm() ** 2 for k in ref_state) ** 0.5
print(f"|theta - theta_ref| = {diff:.3f}")
cfg = RolloutConfig(
    task="arithmetic",
    task_options={"digits": 2, "ops": "+"},
    max_turns=5,
    answer_mode="lenient",
    max_new_tokens=24,
    temperature=0.0,
)
make_env, _ = env_factory(cfg)
test = load_problems("arithmetic", split="test", limit=200, seed=0, digits=2, ops="+")
fill = load_problems("arithmetic", split="train", limit=8, seed=0, digits=2, ops="+")
greedy = Sampling(temperature=0.0, max_new_tokens=24)


def episodes(stale: bool):
    gen = HFGenerator(ref_path, model_obj=model, tokenizer=tok, device="cpu", dtype="bfloat16", batch_size=128)
    if stale:  # the bug: caches of the reference weights' shared start, kept across a weight change
        model.load_state_dict(ref_state)
        run_episodes(fill, make_env, gen, n=1, max_turns=1, sampling=greedy, seed=0)
    model.load_state_dict(trained_state)
    if stale:
        gen._store.fingerprint = weights_fingerprint(model)  # what fused AdamW left unchanged
    t = time.time()
    recs = run_episodes(test, make_env, gen, n=1, max_turns=5, sampling=greedy, seed=0)
    print(f"{'stale' if stale else 'fresh'}: {time.time() - t:.0f} s, prefilled {gen.tokens_prefilled}")
    return recs


torch.set_num_threads(2)
fresh, stale = episodes(False), episodes(True)
for name, recs in (("fresh", fresh), ("stale", stale)):
    print(name, {k: round(v, 3) for k, v in cumulative_accuracy(recs, 5).items()})
same1 = sum(a["messages"][2]["content"] == b["messages"][2]["content"] for a, b in zip(fresh, stale))
same = sum(a["messages"] == b["messages"] for a, b in zip(fresh, stale))
print(f"turn-1 replies identical: {same1}/200; whole episodes identical: {same}/200")
