"""A study's YAML file: the setting every method shares, and the methods compared.

A method is an entry ``{name, kind, ...}``; ``kind`` names a row of drift.study.methods.KINDS:

- ``base``     the reference policy itself (no training)
- ``sft``      SFT on the gold answers of the training problems, one turn
- ``offline``  rollouts of the reference policy (``turns``), ``drift weight`` with ``weight:`` options
               (scheme drift, rft, sft, ... and beta, gamma, all_fail, ...), ``drift train``
- ``online``   ``drift rl`` with ``rl:`` options (algorithm grpo, drift = iterated DRIFT, trl-grpo),
               run until ``budget_multiple`` x the FLOPs of ``budget_method`` at the same seed and
               evaluated at the rounds in ``snapshot_rounds`` on the way

``train:`` / ``rl:`` override the study's shared ``train`` / ``rl`` options (drift train's and drift
rl's own option names). The learning rate is tuned for each method over ``lr_grid`` on the
validation split at ``tuning_seed``, except for a method with ``lr_from: OTHER`` (a variant that
takes OTHER's choice and says so in the table) and ``base``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drift import DriftError
from drift import config as C
from drift.cli import COMMANDS
from drift.config.groups import MAX_TURNS
from drift.demo import warmup_problem_seed
from drift.options import check_value, load_yaml

WARMUP_SEED = 0  # the reference policy is drift demo's format warm-up at this seed, whatever the study's seeds


@dataclass
class MethodSpec:
    name: str
    kind: str
    turns: int | None = None  # offline, online: turns of the training episodes (none: the study's max_turns)
    weight: dict = field(default_factory=dict)  # offline: drift weight options
    train: dict = field(default_factory=dict)  # sft, offline: drift train options over the study's
    rl: dict = field(default_factory=dict)  # online: drift rl options over the study's
    lr_from: str | None = None  # take this method's tuned learning rate instead of tuning


@dataclass
class StudySpec:
    """The study file's fields; every one has a default but ``methods``."""

    methods: list[dict]
    name: str = "study"
    model: str = "smollm2-135m"
    task: str = "arithmetic"
    task_options: dict = field(default_factory=dict)
    max_turns: int = MAX_TURNS
    answer_mode: str = "lenient"
    max_new_tokens: int = 24
    dtype: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0, 2, 3])  # not 1: see WARMUP_SEED
    warmup_prompts: int = 128  # the format warm-up of drift demo (0: the model as is is the reference)
    warmup_lr: float = 5e-5
    train_prompts: int = 64
    k: int = 8  # trajectories per prompt of the offline rollouts
    rollout_temperature: float = 1.0
    test_prompts: int = 200
    validation_prompts: int = 100
    lr_grid: list[float] = field(default_factory=lambda: [1e-5, 2e-5, 5e-5])
    tuning_seed: int = 0
    train: dict = field(default_factory=dict)  # drift train options of every sft / offline method
    rl: dict = field(default_factory=dict)  # drift rl options of every online method
    budget_method: str = "drift"  # the run whose FLOPs set the online methods' budget (same seed)
    budget_multiple: float = 4.0
    snapshot_rounds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128])
    max_rounds: int = 256  # an online run also stops here, whatever its budget

    def shared(self) -> dict:
        """Options every stage of every method takes alike."""
        return dict(
            model=self.model,
            task=self.task,
            task_options=self.task_options,
            max_turns=self.max_turns,
            answer_mode=self.answer_mode,
            max_new_tokens=self.max_new_tokens,
            dtype=self.dtype,
        )

    def method(self, name: str) -> MethodSpec:
        return next(MethodSpec(**m) for m in self.methods if m["name"] == name)

    def method_specs(self) -> list[MethodSpec]:
        return [MethodSpec(**m) for m in self.methods]


_FIXED = {  # options the study sets itself for every run: a method cannot change them
    "train": {"input", "out", "model", "seed", "resume", "lr", "dtype"},
    # the environment and sampling of every stage are the study's: what is trained is what is evaluated
    "rl": {"out", "model", "seed", "resume", "lr", "max_flops", "snapshot_steps", "steps", "split", "num_prompts"}
    | {"source", "protocol", "verifier", "verifier_timeout", "temperature", "top_p", "model_generation_config"}
    | set(StudySpec.__dataclass_fields__) & {f.name for f in dataclasses.fields(C.GenerationOptions)},
    "weight": {"input", "out", "to_format", "plot"},
}
# An online run's schedule spans max_rounds, but the FLOP budget ends it earlier, at a different
# round for each method: only a schedule that does not decay is the same whatever the end.
ONLINE_SCHEDULERS = ("constant", "constant_with_warmup")


def _check_options(section: str, values: dict, where: str) -> None:
    """Options of drift train / rl / weight, checked like a config file's (types, choices, names)."""
    cls = COMMANDS[section][0]  # the option section names its command
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        at = f"{where}: {section}.{key}"
        if key not in fields:
            raise DriftError(f"{at} is not an option of drift {section}")
        if key in _FIXED[section]:
            raise DriftError(f"{at} is set by the study for every run; it cannot be changed per method")
        check_value(fields[key], hints[key], value, at)


def _check_online(spec: StudySpec, method: MethodSpec, where: str) -> None:
    """An online method's schedule must not decay (``ONLINE_SCHEDULERS``); TRL's trainer is single-turn."""
    defaults = {f.name: f.default for f in dataclasses.fields(C.RLConfig)}
    options = {**defaults, **spec.rl, **method.rl}
    if options["lr_scheduler"] not in ONLINE_SCHEDULERS:
        raise DriftError(
            f"{where}: rl.lr_scheduler {options['lr_scheduler']!r} decays over max_rounds, but the FLOP budget "
            f"ends each online run at its own round; use one of {', '.join(ONLINE_SCHEDULERS)}"
        )
    if options["algorithm"] == "trl-grpo" and (method.turns or spec.max_turns) != 1:
        raise DriftError(f"{where}: algorithm trl-grpo trains single-turn episodes; give the method 'turns: 1'")


def _method_lines(path: Path) -> list[int]:
    """The line of each entry of ``methods:`` (for error messages)."""
    node = yaml.compose(path.read_text())
    for key, value in node.value:
        if key.value == "methods" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def load_spec(path: str | Path) -> StudySpec:
    """Read and check a study file; every error names the file, the line and the field."""
    from drift.study.methods import KINDS  # here: drift.study.methods imports this module

    path = Path(path)
    values = load_yaml(path, StudySpec)
    if "methods" not in values or not values["methods"]:
        raise DriftError(f"{path}: a study needs a non-empty 'methods:' list")
    if not values.get("lr_grid", [1.0]) or not values.get("seeds", [0]):
        raise DriftError(f"{path}: lr_grid and seeds must not be empty")
    spec = StudySpec(**values)
    for section in ("train", "rl"):
        _check_options(section, getattr(spec, section), f"{path}: {section}")
    lines = _method_lines(path)
    names: list[str] = []
    method_fields = {f.name for f in dataclasses.fields(MethodSpec)}
    for i, entry in enumerate(spec.methods):
        where = f"{path}:{lines[i] if i < len(lines) else '?'}: method {i + 1}"
        if not isinstance(entry, dict) or "name" not in entry or "kind" not in entry:
            raise DriftError(f"{where} must be a mapping with at least 'name' and 'kind'")
        unknown = set(entry) - method_fields
        if unknown:
            known = sorted(method_fields)
            raise DriftError(f"{where} ({entry['name']}): unknown field(s) {sorted(unknown)}; known: {known}")
        if entry["kind"] not in KINDS:
            kinds = ", ".join(KINDS)
            raise DriftError(f"{where} ({entry['name']}): kind must be one of {kinds}, got {entry['kind']!r}")
        if entry["name"] in names:
            raise DriftError(f"{where}: the name {entry['name']!r} is used twice")
        names.append(entry["name"])
        for section in ("weight", "train", "rl"):
            if not isinstance(entry.get(section, {}), dict):
                raise DriftError(f"{where} ({entry['name']}): '{section}' must be a mapping of options")
            _check_options(section, entry.get(section, {}), f"{where} ({entry['name']})")
        if entry["kind"] == "online":
            _check_online(spec, MethodSpec(**entry), f"{where} ({entry['name']})")
    for m in spec.method_specs():
        source = spec.method(m.lr_from) if m.lr_from in names else None
        if m.lr_from is not None and (source is None or source.lr_from is not None or source.kind == "base"):
            raise DriftError(f"{path}: method {m.name}: lr_from must name a method that is tuned, got {m.lr_from!r}")
    online = [m for m in spec.method_specs() if m.kind == "online"]
    if online and spec.budget_method not in names:
        raise DriftError(f"{path}: budget_method {spec.budget_method!r} is not one of the methods ({', '.join(names)})")
    if online and spec.method(spec.budget_method).kind not in ("offline", "sft"):
        raise DriftError(f"{path}: budget_method must be an offline method, got {spec.budget_method!r}")
    warmup = warmup_problem_seed(WARMUP_SEED)
    if spec.warmup_prompts and warmup in spec.seeds:
        raise DriftError(
            f"{path}: seed {warmup} trains on the problems of the format warm-up (the reference policy "
            f"answered the first {spec.warmup_prompts} training problems of seed {warmup}); leave it out of seeds"
        )
    if spec.tuning_seed not in spec.seeds:
        raise DriftError(f"{path}: tuning_seed {spec.tuning_seed} must be one of the seeds {spec.seeds}")
    return spec
