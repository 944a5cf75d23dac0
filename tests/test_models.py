"""Model resolution: precision per machine, LoRA adapter folders as models."""

import json

import pytest

from drift import DriftError
from drift.models import resolve_dtype, resolve_model

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("bf16_units,expected", [(True, "bfloat16"), (False, "float32")])
def test_auto_dtype_on_cpus_follows_their_bf16_units(monkeypatch, bf16_units, expected):
    import drift.models

    monkeypatch.setattr(drift.models, "cpu_has_bf16_units", lambda: bf16_units)
    assert resolve_dtype("auto", "cpu") == expected
    assert resolve_dtype("float32", "cpu") == "float32" and resolve_dtype("bfloat16", "cpu") == "bfloat16"


def test_auto_dtype_on_gpus_asks_the_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda:0") == "bfloat16"


def test_auto_dtype_on_gpus_that_only_emulate_bf16_is_float32(monkeypatch):
    """torch's is_bf16_supported() says True on a T4 or V100, which emulate bf16 slowly."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_dtype("auto", "cuda") == "float32"


def test_two_builds_of_one_model_never_share_a_folder(tmp_path, monkeypatch):
    """Processes of two containers sharing a cache can have the same pid: a build must not delete
    or reuse another's half-written folder."""
    from drift.models import _build_once

    folder = tmp_path / "cache" / "m"
    others = folder.with_name(f"m.tmp-{__import__('os').getpid()}")  # the other process's build
    others.mkdir(parents=True)
    (others / "half.bin").write_bytes(b"x")

    def build(tmp):
        assert not (tmp / "half.bin").exists()
        (tmp / "config.json").write_text("{}")

    assert _build_once(folder, build) == folder and (folder / "config.json").exists()
    assert (others / "half.bin").exists() and not (folder / "half.bin").exists()


def test_this_machines_answer_is_torchs():
    units = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_dtype("auto", "cpu") == ("bfloat16" if units else "float32")


def test_unknown_dtype_is_an_error():
    with pytest.raises(DriftError, match="unknown dtype 'half'"):
        resolve_dtype("half")


def test_a_lora_adapter_folder_is_a_model(tmp_path, tiny_model):
    # what drift train --no-merge-lora writes: adapter weights + tokenizer, no config.json
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a trained adapter: B != 0, so merging changes weights
    adapter = tmp_path / "adapter"
    peft.save_pretrained(adapter)
    assert not (adapter / "config.json").exists()
    merged = resolve_model(str(adapter), cache_dir=tmp_path / "cache")
    assert resolve_model(str(adapter), cache_dir=tmp_path / "cache") == merged  # merged once
    model = AutoModelForCausalLM.from_pretrained(merged)
    expected = peft.merge_and_unload().state_dict()
    got = model.state_dict()
    assert any(not torch.equal(got[k], AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()[k]) for k in got)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])
    assert (tmp_path / "cache" / merged.split("/")[-1] / "tokenizer_config.json").exists()
    json.loads((adapter / "adapter_config.json").read_text())  # untouched


def test_a_folder_that_is_neither_is_an_error(tmp_path):
    with pytest.raises(DriftError, match="nor a LoRA adapter"):
        resolve_model(str(tmp_path))


REFAULT = r"""
import ctypes, json, resource, sys, tempfile
from pathlib import Path
import torch
torch.set_num_threads(1)
libc = ctypes.CDLL(None)
libc.prctl(41, 1, 0, 0, 0)  # PR_SET_THP_DISABLE: 4 KiB pages, whatever the system's THP setting
if sys.argv[1] == "generator":
    from drift.backends.hf import HFGenerator
    HFGenerator(sys.argv[2], device="cpu", dtype="float32")
elif sys.argv[1] == "trainer":
    from drift.config import TrainConfig
    from drift.options import resolve
    from drift.trainer import Trainer
    Trainer(resolve(TrainConfig), dtype="float32", out=Path(tempfile.mkdtemp()), pad_token_id=0)
class Mallinfo2(ctypes.Structure):  # glibc >= 2.33: bytes the heap holds ("arena") and mmapped blocks ("hblkhd")
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Mallinfo2
def touch():  # a 128 MiB tensor, written and freed, like a training step's gradients
    torch.empty(2**25).fill_(1.0)
for _ in range(4):  # glibc settles in over the first few (so do training steps: benchmarks/README.md)
    touch()
live = torch.empty(2**25)
mmapped_while_live = libc.mallinfo2().hblkhd
del live
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(16):
    touch()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"faults": faults, "mmapped_while_live": mmapped_while_live, "heap": libc.mallinfo2().arena}))
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_processes_computing_on_a_cpu_reuse_freed_memory_without_page_faults(tiny_model):
    """Without drift.models.keep_freed_memory glibc serves every 128 MiB tensor with a fresh mmap:
    16 x 32,768 pages faulted in again. In a process with a CPU hf backend or a CPU Trainer the tensor
    comes from the heap, which keeps it when freed, so the pages are reused. What the child's glibc
    says is exact; the fault count is the effect, and a heap that must grow past a hole left by a small
    allocation faults a tensor's pages once more, so a few such rounds are allowed (seen: 3 of 8)."""
    import subprocess
    import sys

    def child(*args: str) -> dict:
        run = subprocess.run([sys.executable, "-c", REFAULT, *args], capture_output=True, text=True, check=True)
        return json.loads(run.stdout.splitlines()[-1])

    tensor, pages = 2**27, 32_768
    plain = child("-")
    assert plain["mmapped_while_live"] >= tensor and plain["faults"] > 12 * pages
    for args in (("generator", tiny_model), ("trainer",)):
        kept = child(*args)
        assert kept["mmapped_while_live"] < tensor and kept["heap"] >= tensor, args
        assert kept["faults"] < 6 * pages, args
