"""One dataclass config per command; the only place defaults live.

Every field becomes a ``--flag`` (underscores -> dashes) whose help is the field's ``help``
metadata. Values resolve in this order, later wins::

    dataclass default  <  YAML file (--config FILE)  <  command-line flags

The resolved config is saved beside the command's output (``save_config``), so every artefact
says how it was made. Unknown YAML keys and wrong types are errors naming the file and line.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from drift import DriftError


def option(default: Any, help: str, *, positional: bool = False, short: str | None = None):
    """A config field with its help text (and whether it is a positional CLI argument)."""
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    return field(metadata={"help": help, "positional": positional, "short": short}, **kwargs)


# -- commands' configs -----------------------------------------------------------------------


@dataclass
class WeightConfig:
    """drift weight: add the return R and importance weight w to every trajectory.

    R = sum_t gamma^(t-1) r_t - format_penalty * (unparsable turns) - lam * (1 - unique/answers)
    w = exp(R/beta) / mean over the prompt's K trajectories of exp(R/beta)   (scheme drift)
    """

    input: str = option("", "trajectories to weight (JSONL; ours or the DRIFT reference layout)", positional=True)
    out: str = option("", "where to write the weighted JSONL (atomically; parent folders are created)", short="-o")
    scheme: Literal["drift", "rwr", "sft", "rft"] = option(
        "drift",
        "drift: exp(R/beta) normalised per prompt; rwr: normalised over the file; "
        "sft: every trajectory weight 1; rft: keep trajectories that end correct, weight 1",
    )
    beta: float = option(0.1, "temperature of exp(R/beta): small beta puts the mass on the best trajectories")
    gamma: float = option(0.9, "discount per turn: solving at turn t earns gamma^(t-1)")
    lam: float = option(0.5, "repetition penalty lam * (1 - unique answers / answers)")
    format_penalty: float = option(0.1, "subtracted from R for each turn with no parsable answer")
    scope: Literal["group", "global"] = option("group", "normalise weights per prompt (group) or over the file")
    zero_variance: Literal["keep", "drop"] = option(
        "keep", "groups whose returns are all equal: keep them at weight 1, or drop them"
    )
    clip: float | None = option(None, "cap on weights after normalisation (none: no cap)")
    to_format: Literal["drift", "reference"] = option("drift", "output layout: ours, or the DRIFT reference code's")
    plot: bool = option(False, "also save a histogram of weights and returns next to the output (PNG)")


# -- dataclass -> argparse -------------------------------------------------------------------


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(hint):
    """``(inner_type, optional)`` for ``X | None`` / ``Optional[X]``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return hint, False


def _parse_scalar(text: str, hint):
    """Turn a command-line string into a value of type ``hint``."""
    inner, optional = _unwrap_optional(hint)
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(inner) is Literal:
        if text not in typing.get_args(inner):
            raise argparse.ArgumentTypeError(f"choose from {', '.join(map(str, typing.get_args(inner)))}")
        return text
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        return [item(x) for x in text.split(",") if x]
    try:
        return inner(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {inner.__name__}, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add ``--config`` and one flag per field of ``cls``; unset flags stay absent from the namespace."""
    parser.add_argument("--config", metavar="YAML", help="YAML file of options (command-line flags override it)")
    hints = typing.get_type_hints(cls, include_extras=False)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata.get("help", "")
        if hint is not bool and default not in ("", None):
            help_text += f" (default: {default})"
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, help=help_text)
            continue
        names = [_flag(f.name)] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        if hint is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                help=help_text + f" (default: {'on' if default else 'off'})",
            )
            continue
        inner, _ = _unwrap_optional(hint)
        choices = typing.get_args(inner) if typing.get_origin(inner) is Literal else None
        parser.add_argument(
            *names, dest=f.name, default=argparse.SUPPRESS, metavar="{" + ",".join(choices) + "}" if choices else None,
            type=lambda text, h=hint: _parse_scalar(text, h), help=help_text,
        )


# -- YAML ------------------------------------------------------------------------------------


def _coerce(value, hint, where: str):
    """Check a YAML value against a type hint; ints are accepted where floats are expected."""
    inner, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise DriftError(f"{where} must not be null")
    if typing.get_origin(inner) is Literal:
        if value not in typing.get_args(inner):
            raise DriftError(f"{where} must be one of {list(typing.get_args(inner))}, got {value!r}")
        return value
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if not isinstance(value, list):
            raise DriftError(f"{where} must be a list, got {type(value).__name__}")
        return [_coerce(v, item, where) for v in value]
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner in (int, float) and isinstance(value, bool) or not isinstance(value, inner):
        raise DriftError(f"{where} must be {inner.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_yaml(path: str | Path, cls) -> dict:
    """Read a YAML mapping of ``cls``'s fields, with file:line in every error."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DriftError(f"{path}: cannot read config: {e}") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise DriftError(f"{path}:{node.start_mark.line + 1}: a config must be a mapping of option: value")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    values = {}
    data = yaml.safe_load(text)
    for key_node, _ in node.value:
        key = key_node.value.replace("-", "_")
        where = f"{path}:{key_node.start_mark.line + 1}: key '{key_node.value}'"
        if key not in known:
            raise DriftError(f"{where} is not an option of this command (known: {', '.join(sorted(known))})")
        values[key] = _coerce(data[key_node.value], hints[key], where)
    return values


# -- resolve and save ------------------------------------------------------------------------


def resolve(cls, args: argparse.Namespace | None = None, **overrides):
    """Build ``cls`` from defaults, then ``args.config`` (YAML), then flags set in ``args``, then ``overrides``."""
    values: dict = {}
    cli = dict(vars(args)) if args is not None else {}
    if cli.get("config"):
        values.update(load_yaml(cli["config"], cls))
    known = {f.name for f in dataclasses.fields(cls)}
    values.update({k: v for k, v in cli.items() if k in known})
    values.update(overrides)
    return cls(**values)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from drift.records import atomic_write

    with atomic_write(path) as f:
        f.write(yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
