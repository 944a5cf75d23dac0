"""The vllm backend: its wiring against a stand-in ``vllm`` module (always), the real engine (opt-in, slow)."""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass
from typing import ClassVar

import pytest

from drift.backends import Sampling, backend_from_config, load_backend
from drift.config import RolloutConfig

QUESTION = [{"role": "user", "content": "What is 2+3?"}]


@dataclass
class FakeSamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True  # vLLM's default

    def __post_init__(self):  # vLLM's own checks (SamplingParams._verify_args, _verify_greedy_sampling)
        if not 0 <= self.temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}.")
        if self.n > 1 and self.temperature < 1e-5:
            raise ValueError(f"n must be 1 when using greedy sampling, got {self.n}.")


class FakeLLM:
    """Records its construction and chat calls; replies ``"<seed>:<j>"`` as ``j + 1`` token ids."""

    instances: ClassVar[list] = []
    tokenizer: ClassVar = types.SimpleNamespace(chat_template=None)  # what get_tokenizer gives

    def __init__(self, **kwargs):
        self.kwargs, self.calls = kwargs, []
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return FakeLLM.tokenizer

    def chat(self, messages, sampling_params, use_tqdm=True):
        self.calls.append((messages, sampling_params))
        assert isinstance(sampling_params, list) and len(sampling_params) == len(messages)
        if any(len(m) > 8 for m in messages):  # vLLM's InputProcessor._validate_prompt_len
            raise ValueError("The decoder prompt (length 5000) is longer than the maximum model length of 4096.")
        completion = types.SimpleNamespace
        return [
            types.SimpleNamespace(
                outputs=[
                    completion(
                        text=f" {p.seed}:{j} ",
                        token_ids=list(range(j + 1)),
                        finish_reason=("stop", "length", "abort")[j % 3],
                    )
                    for j in range(p.n)
                ],
                prompt_token_ids=list(range(10)),
                **({"num_cached_tokens": 4} if p.seed == 12 else {}),
            )  # a prefix-cache hit
            for p in sampling_params
        ]


@pytest.fixture
def model_dir(tmp_path):
    """A folder drift.models.resolve_model accepts as a model (the fake engine never reads it)."""
    (tmp_path / "config.json").write_text("{}")
    return str(tmp_path)


@pytest.fixture
def fake_vllm(monkeypatch):
    FakeLLM.instances = []
    monkeypatch.setattr(FakeLLM, "tokenizer", types.SimpleNamespace(chat_template=None))
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM, SamplingParams=FakeSamplingParams))
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)  # a vllm without the platforms module
    return FakeLLM


def test_replies_also_stop_at_the_templates_end_of_turn_token(fake_vllm, model_dir, tiny_model):
    """vLLM stops at the EOS of the tokenizer and of the generation config; a template whose
    end-of-turn token is neither (Llama 3's <|eot_id|> in some configs) is stopped at as in hf."""
    from drift.models import load_tokenizer

    tok = load_tokenizer(tiny_model)
    tok.add_special_tokens({"additional_special_tokens": ["<|eot_id|>"]})
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '<|eot_id|>' }}{% endfor %}"
    fake_vllm.tokenizer = tok
    gen = load_backend("vllm", model=model_dir)
    gen.generate([QUESTION], n=1, sampling=Sampling(seed=1))
    (params,) = fake_vllm.instances[-1].calls[-1][1]
    assert params.stop_token_ids == [tok.convert_tokens_to_ids("<|eot_id|>")] != [tok.eos_token_id]


@pytest.mark.parametrize("cpu", [True, False])
def test_cpu_builds_get_chunked_prefill_off_unless_set(fake_vllm, model_dir, monkeypatch, cpu):
    platform = types.SimpleNamespace(is_cpu=lambda: cpu)
    monkeypatch.setitem(sys.modules, "vllm.platforms", types.SimpleNamespace(current_platform=platform))
    load_backend("vllm", model=model_dir)
    assert fake_vllm.instances[-1].kwargs.get("enable_chunked_prefill") == (False if cpu else None)
    load_backend("vllm", model=model_dir, enable_chunked_prefill=True)
    assert fake_vllm.instances[-1].kwargs["enable_chunked_prefill"] is True


def test_requests_carry_their_own_seed_and_sampling(fake_vllm, model_dir):
    gen = load_backend(
        "vllm", model=model_dir, tensor_parallel_size=2, gpu_memory_utilization=0.5, seed=7, enforce_eager=True
    )
    (llm,) = fake_vllm.instances
    assert llm.kwargs == {
        "model": model_dir,
        "tensor_parallel_size": 2,
        "dtype": "auto",
        "gpu_memory_utilization": 0.5,
        "max_model_len": None,
        "seed": 7,
        "enforce_eager": True,
        "enable_prefix_caching": True,
    }
    second = QUESTION + [{"role": "assistant", "content": "4"}, {"role": "user", "content": "Incorrect."}]
    sampling = Sampling(temperature=0.7, top_p=0.9, max_new_tokens=12, seed=99)
    replies = gen.generate([QUESTION, second], 3, sampling, seeds=[11, 12])
    assert replies == [[" 11:0 ", " 11:1 ", " 11:2 "], [" 12:0 ", " 12:1 ", " 12:2 "]]  # as generated, in order
    assert [r.finish_reason for r in replies[0]] == ["stop", "length", None]  # vLLM's other reasons: unknown
    assert replies[1][2].token_ids == (0, 1, 2)
    messages, params = llm.calls[-1]
    assert messages == [QUESTION, second]
    assert params == [
        FakeSamplingParams(
            n=3, temperature=0.7, top_p=0.9, max_tokens=12, seed=s, stop_token_ids=[], skip_special_tokens=False
        )  # the text as generated, special tokens included, as the hf backend decodes it
        for s in (11, 12)
    ]
    assert gen.tokens_generated == 2 * (1 + 2 + 3)
    assert gen.tokens_prefilled == 10 + (10 - 4)  # prompt ids less the cached ones, where vLLM says
    gen.generate([QUESTION], 1, sampling)  # no per-conversation seeds: sampling.seed
    assert llm.calls[-1][1][0].seed == 99
    assert gen.generate([], 1, sampling) == []
    gen.close()
    gen.close()


def test_greedy_replies_and_settings_vllm_refuses(fake_vllm, model_dir):
    """vLLM refuses n > 1 when greedy and temperatures above 2, failing the whole batch: greedy
    replies are asked once and repeated (they are the same reply), a temperature above 2 is refused
    before the engine runs, and a prompt past the engine's max_model_len is a DriftError that says so."""
    from drift import DriftError

    gen = load_backend("vllm", model=model_dir)
    (llm,) = fake_vllm.instances
    replies = gen.generate([QUESTION], 3, Sampling(temperature=0.0, max_new_tokens=4), seeds=[5])
    assert replies == [[" 5:0 "] * 3] and llm.calls[-1][1][0].n == 1
    assert gen.tokens_generated == 1  # generated once: compute counts what ran
    calls = len(llm.calls)
    with pytest.raises(DriftError, match=r"temperature 2\.5.*vLLM"):
        gen.generate([QUESTION], 1, Sampling(temperature=2.5))
    assert len(llm.calls) == calls
    long = QUESTION + [{"role": "assistant", "content": "4"}, {"role": "user", "content": "Incorrect."}] * 4
    with pytest.raises(DriftError, match="max_model_len"):
        gen.generate([QUESTION, long], 1, Sampling(temperature=1.0))


def test_rollout_options_reach_the_engine(fake_vllm, model_dir):
    cfg = RolloutConfig(backend="vllm", model=model_dir, tensor_parallel_size=4, gpu_memory_utilization=0.8, seed=3)
    backend_from_config(cfg)
    kwargs = fake_vllm.instances[-1].kwargs
    assert (kwargs["tensor_parallel_size"], kwargs["gpu_memory_utilization"], kwargs["seed"]) == (4, 0.8, 3)
    assert kwargs["enable_prefix_caching"] is True  # multi-turn prompts extend the last turn's
    assert kwargs["dtype"] == "auto"  # on GPUs vLLM's own auto: the model's dtype
    backend_from_config(RolloutConfig(backend="vllm", model=model_dir, dtype="float32"))
    assert fake_vllm.instances[-1].kwargs["dtype"] == "float32"
    backend_from_config(RolloutConfig(backend="vllm", model=model_dir))
    assert fake_vllm.instances[-1].kwargs["gpu_memory_utilization"] == 0.9


@pytest.fixture
def fake_cpu_vllm(fake_vllm, monkeypatch):
    platform = types.SimpleNamespace(current_platform=types.SimpleNamespace(is_cpu=lambda: True))
    monkeypatch.setitem(sys.modules, "vllm.platforms", platform)
    return fake_vllm


@pytest.mark.parametrize("bf16_units,expected", [(True, "bfloat16"), (False, "float32")])
def test_on_cpus_dtype_and_memory_fit_the_machine(fake_cpu_vllm, model_dir, monkeypatch, bf16_units, expected):
    import drift.models
    from drift.backends.vllm import cpu_memory_share

    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(drift.models, "cpu_has_bf16_units", lambda: bf16_units)
    backend_from_config(RolloutConfig(backend="vllm", model=model_dir))
    kwargs = fake_cpu_vllm.instances[-1].kwargs
    assert kwargs["dtype"] == expected and kwargs["enable_chunked_prefill"] is False
    assert kwargs["block_size"] == 32  # prefix-cache hits come in whole blocks: small ones on CPUs
    share = kwargs["gpu_memory_utilization"]
    assert 0 < share <= 0.5 and share == pytest.approx(cpu_memory_share(), abs=0.05)


def test_refuses_x86_cpus_without_avx512_before_starting_an_engine(fake_cpu_vllm, model_dir, monkeypatch):
    import platform

    from drift import DriftError

    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    with pytest.raises(DriftError, match="needs AVX512 on x86 and this CPU has AVX2"):
        load_backend("vllm", model=model_dir)
    assert fake_cpu_vllm.instances == []


def test_short_names_are_resolved_before_the_engine_sees_them(fake_vllm, monkeypatch):
    import drift.models

    monkeypatch.setattr(drift.models, "resolve_model", lambda name, cache_dir=None: f"/models/{name}")
    gen = load_backend("vllm", model="smollm2-135m")
    assert fake_vllm.instances[-1].kwargs["model"] == "/models/smollm2-135m" == gen.model_path


def test_module_imports_without_vllm_or_torch():
    code = "import sys, drift.backends.vllm; print(sorted(m for m in ('torch', 'vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_real_engine_generates_with_the_tiny_model(tmp_path):
    pytest.importorskip("vllm")
    from drift.tiny import build_tiny_model

    model = str(build_tiny_model(tmp_path / "model", head_dim=64))  # vLLM's CPU attention needs >= 32
    gen = load_backend("vllm", model=model, gpu_memory_utilization=0.3, enforce_eager=True, max_model_len=512)
    try:
        sampling = Sampling(temperature=1.0, max_new_tokens=8)
        conversations = [QUESTION, [{"role": "user", "content": "What is 7*6?"}]]
        first = gen.generate(conversations, 2, sampling, seeds=[1, 2])
        assert [len(r) for r in first] == [2, 2] and all(isinstance(t, str) for r in first for t in r)
        assert 0 < gen.tokens_generated <= 2 * 2 * 8
        assert gen.generate(conversations, 2, sampling, seeds=[1, 2]) == first  # seeded per request
        greedy = Sampling(temperature=0.0, max_new_tokens=8)
        assert gen.generate([QUESTION], 1, greedy) == gen.generate([QUESTION], 1, greedy)
    finally:
        gen.close()


@pytest.mark.slow
def test_sigterm_leaves_no_engine_process_behind(tmp_path):
    """A terminated ``drift rollout --backend vllm`` shuts its engine and workers down."""
    pytest.importorskip("vllm")
    psutil = pytest.importorskip("psutil")
    import os
    import signal
    import time

    from drift.tiny import build_tiny_model

    model = str(build_tiny_model(tmp_path / "model", head_dim=64))
    out = tmp_path / "rollouts.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "drift.cli",
        "rollout",
        "--backend",
        "vllm",
        "--model",
        model,
        "--out",
        str(out),
        "--num-prompts",
        "2000",
        "--n",
        "4",
        "--chunk-prompts",
        "8",
        "--max-new-tokens",
        "16",
        "--gpu-memory-utilization",
        "0.3",
        "--task-options",
        "digits=3",
    ]
    proc = subprocess.Popen(
        cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 400
    while not (out.exists() and out.stat().st_size) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert proc.poll() is None, "the rollout ended before it could be terminated"
    engine = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted" in err, err[-3000:]
    _gone, alive = psutil.wait_procs(engine, timeout=30)
    assert not alive, f"left running: {[(p.pid, p.name()) for p in alive]}"
