"""Shipped config files stay valid as options change."""

import dataclasses
from pathlib import Path

import pytest

from drift import DriftError
from drift import config as C
from drift.options import add_arguments, load_yaml, resolve

PAPER = Path(__file__).resolve().parents[1] / "configs" / "paper"
CLASSES = {"rollout": C.RolloutConfig, "weight": C.WeightConfig, "train": C.TrainConfig, "eval": C.EvalConfig}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_paper_configs_load_with_their_command(name):
    values = load_yaml(PAPER / f"{name}.yaml", CLASSES[name])
    assert values, f"{name}.yaml is empty"
    resolve(CLASSES[name], **values)


def test_scheme_and_backend_names_come_from_their_tables(tmp_path, monkeypatch, capsys):
    """--scheme and --backend accept what drift.weighting.SCHEMES and drift.backends.BACKENDS hold
    (registering a new one is enough), on the command line and in YAML, and nothing else."""
    import argparse

    from drift.backends import BACKENDS
    from drift.weighting import SCHEMES, Scheme, sft_weights

    monkeypatch.setitem(SCHEMES, "mine", Scheme(sft_weights))
    monkeypatch.setitem(BACKENDS, "remote", "somewhere:Remote")
    parser = argparse.ArgumentParser()
    add_arguments(parser, C.RLConfig)
    assert resolve(C.RLConfig, parser.parse_args(["--scheme", "mine"])).scheme == "mine"
    rollout = argparse.ArgumentParser()
    add_arguments(rollout, C.RolloutConfig)
    assert resolve(C.RolloutConfig, rollout.parse_args(["--backend", "remote"])).backend == "remote"
    with pytest.raises(SystemExit):
        parser.parse_args(["--scheme", "nope"])
    assert "choose from drift, rwr, sft, rft, mine" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("beta: 0.2\nscheme: nope\n")
    with pytest.raises(DriftError, match=r"bad.yaml:2: key 'scheme' must be one of .*mine"):
        load_yaml(bad, C.WeightConfig)


def test_weighting_defaults_live_in_one_place():
    """Every command with weighting options gets the same defaults, from WeightingOptions."""
    from dataclasses import fields

    base = {f.name: f.default for f in fields(C.WeightingOptions)}
    for cls in (C.WeightConfig, C.RLConfig):
        assert {f.name: f.default for f in fields(cls) if f.name in base} == base
    assert C.RLConfig().weighting() == C.WeightConfig().weighting()


def test_library_defaults_are_the_commands_defaults():
    """What a library user of the backends, the environment, the verifier and the study gets
    without saying is what the commands' options default to."""
    import inspect

    from drift.backends.hf import HFGenerator
    from drift.env import CorrectionEnv, make_env
    from drift.options import default_of
    from drift.study.spec import StudySpec
    from drift.verifiers import Verifier

    def default(fn, name):
        return inspect.signature(fn).parameters[name].default

    assert default(HFGenerator.__init__, "batch_size") == default_of(C.RolloutConfig, "batch_size")
    for fn in (CorrectionEnv.__init__, make_env):
        assert default(fn, "max_turns") == default_of(C.RolloutConfig, "max_turns")
    assert default(make_env, "timeout") == default(Verifier.__init__, "timeout") == C.RolloutConfig().verifier_timeout
    assert StudySpec(methods=[]).max_turns == default_of(C.RolloutConfig, "max_turns")


@pytest.mark.parametrize("cls", [C.TrainConfig, C.RLConfig])
def test_keeping_no_checkpoint_is_refused(cls):
    """--save-total-limit 0 once deleted every checkpoint, the one just written included."""
    with pytest.raises(DriftError, match="save_total_limit must be at least 1"):
        resolve(cls, save_total_limit=0)
    assert resolve(cls, save_total_limit=1).save_total_limit == 1


def test_a_yaml_float_written_without_a_dot_is_a_float(tmp_path):
    """YAML 1.1 reads 1e-5 as a string (1.0e-5 is a float); --lr 1e-5 works on the command line,
    so it works in a file too."""
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-5\nwarmup_ratio: 3E-2\n")
    values = load_yaml(path, C.TrainConfig)
    assert resolve(C.TrainConfig, **values).lr == 1e-5 and resolve(C.TrainConfig, **values).warmup_ratio == 0.03
    path.write_text("lr: fast\n")
    with pytest.raises(DriftError, match="'lr' must be float"):
        load_yaml(path, C.TrainConfig)


def test_yaml_reads_numbers_and_booleans_as_written(tmp_path):
    """YAML 1.1 (PyYAML's default) read 010 as 8, 1:30 as 90, 0x10 as 16 and no/on as booleans,
    silently, in files and in --task-options; drift reads YAML 1.2's core schema: decimal numbers,
    true/false, everything else text (refused where an option wants a number)."""
    import argparse

    path = tmp_path / "c.yaml"
    path.write_text(
        "num_prompts: 010\nseed: 0012\nanswer_mode: lenient\ntask_options: {digits: 010, mix: 1:30, x: no}\n"
    )
    values = load_yaml(path, C.RolloutConfig)
    assert values["num_prompts"] == 10 and values["seed"] == 12
    assert values["task_options"] == {"digits": 10, "mix": "1:30", "x": "no"}
    for text in ("num_prompts: 1:30\n", "num_prompts: 0x10\n"):
        path.write_text(text)
        with pytest.raises(DriftError, match="'num_prompts' must be int"):
            load_yaml(path, C.RolloutConfig)
    path.write_text("resume: yes\n")
    with pytest.raises(DriftError, match="'resume' must be bool"):
        load_yaml(path, C.RolloutConfig)
    parser = argparse.ArgumentParser()
    add_arguments(parser, C.RolloutConfig)
    args = parser.parse_args(["--task-options", "digits=010,mix=1:30,ops=no,flag=true,rate=1e3"])
    assert resolve(C.RolloutConfig, args).task_options == {
        "digits": 10,
        "mix": "1:30",
        "ops": "no",
        "flag": True,
        "rate": 1000.0,
    }


def test_numbers_out_of_range_are_refused_before_anything_runs(tmp_path, capsys):
    """--n 0 once crashed a rollout with ZeroDivisionError after writing its config, --chunk-prompts
    -1 wrote an empty file and exited 0, --log-steps 0 crashed training after a step: every number
    with a lower (or upper) bound is checked on the command line, in YAML (file:line) and in Python."""
    from drift.cli import main

    for flags, message in (
        (["rollout", "--backend", "scripted", "--n", "0"], "n must be at least 1, got 0"),
        (["rollout", "--backend", "scripted", "--chunk-prompts", "-1"], "chunk_prompts must be at least 1"),
        (["eval", "--backend", "scripted", "--top-p", "0"], "top_p must be above 0"),
        (["eval", "--backend", "scripted", "--top-p", "1.5"], "top_p must be at most 1"),
        (["train", "x.jsonl", "--log-steps", "0"], "log_steps must be at least 1"),
        (["train", "x.jsonl", "--epochs", "0"], "epochs must be above 0"),
        (["rl", "--minibatches", "0"], "minibatches must be at least 1"),
        (["weight", "x.jsonl", "--lam", "nan"], "finite"),
        (["demo", "--beta", "0"], "beta must be above 0"),
        (["demo", "--gamma", "2"], "gamma must be at most 1"),
        (["train", "x.jsonl", "--skip-weight-share", "1"], "skip_weight_share must be below 1"),
        (["rl", "--skip-weight-share", "1"], "skip_weight_share must be below 1"),  # would skip every example
    ):
        out = tmp_path / "o.jsonl"
        try:
            code = main([*flags, "-o", str(out)])
        except SystemExit as e:  # argparse's own errors (a value that is not a number)
            code = e.code
        assert code == 2, flags
        assert message in capsys.readouterr().err, flags
        assert not list(tmp_path.iterdir()), flags  # nothing written
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: 4\nchunk_prompts: 0\n")
    with pytest.raises(DriftError, match=r"bad.yaml:2: key 'chunk_prompts' must be at least 1, got 0"):
        load_yaml(bad, C.RolloutConfig)
    with pytest.raises(DriftError, match="max_turns must be at least 1"):
        C.RLConfig(max_turns=0)
    assert C.RolloutConfig(n=1, chunk_prompts=1, temperature=0.0).n == 1  # the bounds themselves are fine


def test_an_unknown_lr_scheduler_is_refused_with_the_known_ones():
    """--lr-scheduler cosin failed with transformers' ValueError after the model had loaded."""
    with pytest.raises(DriftError, match=r"lr_scheduler 'cosin' is not one of transformers' schedulers: .*cosine"):
        C.TrainConfig(lr_scheduler="cosin")
    with pytest.raises(DriftError, match="lr_scheduler"):
        C.RLConfig(lr_scheduler="cosin")
    with pytest.raises(DriftError, match="beta"):  # RLConfig still checks its weighting too
        C.RLConfig(beta=-1.0)
    assert C.RLConfig(lr_scheduler="constant_with_warmup").lr_scheduler == "constant_with_warmup"


def test_the_accelerate_configs_are_what_drift_expects():
    """configs/accelerate/*.yaml parse; the DeepSpeed one leaves accumulation at 1 and clipping to
    drift (drift.trainer.fill_deepspeed_config refuses a value that disagrees with --max-grad-norm)."""
    import yaml

    folder = PAPER.parent / "accelerate"
    configs = {p.stem: yaml.safe_load(p.read_text()) for p in folder.glob("*.yaml")}
    assert set(configs) == {"ddp", "deepspeed_zero3", "fsdp"}
    assert {c["distributed_type"] for c in configs.values()} == {"MULTI_GPU", "DEEPSPEED", "FSDP"}
    ds = configs["deepspeed_zero3"]["deepspeed_config"]
    assert ds["gradient_accumulation_steps"] == 1 and "gradient_clipping" not in ds and ds["zero_stage"] == 3


def test_none_means_none_in_a_file_as_on_the_command_line(tmp_path):
    """--clip none and --source none give None; in a YAML file `clip: none` was an error and
    `source: none` the text "none" (a dataset of that name)."""
    path = tmp_path / "c.yaml"
    path.write_text("clip: none\nsource: None\nnum_prompts: NULL\n")
    assert load_yaml(path, C.RLConfig) == {"clip": None, "source": None, "num_prompts": None}
    path.write_text("model: none\n")  # not optional: the text stays (a model folder named none)
    assert load_yaml(path, C.RLConfig) == {"model": "none"}


def test_drift_rl_offers_only_what_it_can_run(tmp_path, capsys):
    """drift rl samples from the policy it trains, so its --backend lists only the backends that can
    (drift.backends.POLICY_BACKENDS), and the options of the others (a server's URL, vLLM's engine)
    are not its options: not in --help, an error on the command line and in a file."""
    from drift.cli import main

    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    text = capsys.readouterr().out
    assert "--backend {hf}" in text
    for flag in ("--base-url", "--concurrency", "--api-key-file", "--tensor-parallel-size", "--gpu-memory-utilization"):
        assert flag not in text, flag
    with pytest.raises(SystemExit):
        main(["rl", "--backend", "openai", "--out", str(tmp_path / "rl")])
    assert "choose from hf" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rl", "--base-url", "http://x/v1", "--out", str(tmp_path / "rl")])
    assert "unrecognized arguments: --base-url" in capsys.readouterr().err
    bad = tmp_path / "rl.yaml"
    bad.write_text("lr: 1e-5\ntensor_parallel_size: 2\n")
    with pytest.raises(DriftError, match=r"rl.yaml:2: .*tensor_parallel_size"):
        load_yaml(bad, C.RLConfig)
    assert not (tmp_path / "rl").exists()
    for cls in (C.RolloutConfig, C.EvalConfig):  # the commands that run those backends keep them
        names = {f.name for f in dataclasses.fields(cls)}
        assert {"base_url", "concurrency", "tensor_parallel_size", "gpu_memory_utilization"} <= names, cls


def test_the_policy_backends_are_those_that_can_follow_a_policy():
    """POLICY_BACKENDS (drift rl's --backend choices, read without importing any backend) names
    exactly the backends whose class has for_policy and forget."""
    import importlib

    from drift.backends import BACKENDS, POLICY_BACKENDS

    able = set()
    for name, path in BACKENDS.items():
        module, cls = path.split(":")
        klass = getattr(importlib.import_module(module), cls)
        if hasattr(klass, "for_policy") and hasattr(klass, "forget"):
            able.add(name)
    assert set(POLICY_BACKENDS) == able and able


def test_a_config_built_in_code_checks_its_choices():
    """A library user's config is checked as a command line is: a name outside an option's table is
    a DriftError naming the option and the names it takes, before anything runs."""
    with pytest.raises(DriftError, match=r"algorithm must be one of grpo, drift, trl-grpo, got 'ppo'"):
        C.RLConfig(algorithm="ppo")
    with pytest.raises(DriftError, match=r"backend must be one of hf, got 'vllm'"):
        C.RLConfig(backend="vllm")
    with pytest.raises(DriftError, match=r"scheme must be one of .*rft, got 'nope'"):
        C.WeightConfig(scheme="nope")
    assert C.RolloutConfig(backend="vllm").backend == "vllm"
