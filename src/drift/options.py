"""Dataclass configs as command lines and YAML files: how drift.config's fields become options.

Every field becomes a ``--flag`` (underscores -> dashes) whose help is the field's ``help``
metadata (:func:`option`). Values resolve in this order, later wins::

    dataclass default  <  YAML file (--config FILE)  <  command-line flags

The resolved config is saved beside the command's output (:func:`save_config`), so every artefact
says how it was made. Unknown YAML keys, wrong types and names outside a field's choices are
errors naming the file and line.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import types
import typing
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml

from drift import DriftError
from drift.outputs import atomic_write

_FLOAT_TEXT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def option(
    default: Any,
    help: str,
    *,
    positional: bool = False,
    short: str | None = None,
    choices: typing.Callable[[], typing.Iterable[str]] | None = None,
    at_least: float | None = None,
    above: float | None = None,
    at_most: float | None = None,
    below: float | None = None,
):
    """A config field with its help text (and whether it is a positional CLI argument).

    ``choices`` returns the allowed names from the table that owns them (``lambda: SCHEMES``), so
    the table stays the only list and is read only when a command's flags are built or checked.
    ``at_least`` / ``above`` / ``at_most`` / ``below`` bound a number (each item of a list; ``None`` passes):
    checked in YAML files (file:line) and whenever a config is built (:class:`Checked`).
    """
    kwargs = {"default_factory": default} if callable(default) else {"default": default}
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    meta = {"help": help, "positional": positional, "short": short, "choices": choices, "bounds": bounds}
    return field(metadata=meta, **kwargs)


def out_of_range(f: dataclasses.Field, value) -> str | None:
    """What is wrong with ``value`` for option ``f``'s bounds, or ``None``.

    >>> f = dataclasses.field(metadata={"bounds": {"at_least": 1, "above": None, "at_most": None}})
    >>> out_of_range(f, 0), out_of_range(f, [2, 0]), out_of_range(f, None), out_of_range(f, 3)
    ('must be at least 1, got 0', 'must be at least 1, got 0', None, None)
    """
    bounds = f.metadata.get("bounds") or {}
    for item in value if isinstance(value, list) else [value]:
        if not isinstance(item, (int, float)) or isinstance(item, bool):
            continue
        if bounds.get("at_least") is not None and item < bounds["at_least"]:
            return f"must be at least {bounds['at_least']:g}, got {item!r}"
        if bounds.get("above") is not None and item <= bounds["above"]:
            return f"must be above {bounds['above']:g}, got {item!r}"
        if bounds.get("at_most") is not None and item > bounds["at_most"]:
            return f"must be at most {bounds['at_most']:g}, got {item!r}"
        if bounds.get("below") is not None and item >= bounds["below"]:
            return f"must be below {bounds['below']:g}, got {item!r}"
    return None


class Checked:
    """Base of every config: building one checks each option's bounds and, where it names an
    entry of a table (``choices``), that the table has it, then :meth:`check` (what depends on
    several options); a ``DriftError`` names the option."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if (problem := out_of_range(f, value)) is not None:
                raise DriftError(f"{f.name} {problem}")
            _check_choice(value, f, DriftError, f.name)
        self.check()

    def check(self) -> None:
        """Checks across options; none by default."""


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


class YamlLoader(yaml.SafeLoader):
    """YAML 1.2's core schema for plain scalars: decimal integers (``010`` is 10), floats (``1e-5``
    too), ``true``/``false``, null; everything else is text. PyYAML's YAML 1.1 read ``010`` as 8,
    ``1:30`` as 90, ``0x10`` as 16 and ``yes``/``no``/``on``/``off`` as booleans, silently."""


_INT, _FLOAT, _BOOL = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_INT, _FLOAT, _BOOL)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
YamlLoader.add_implicit_resolver(_INT, re.compile(r"^[-+]?[0-9]+$"), list("-+0123456789"))
YamlLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
YamlLoader.add_constructor(_INT, lambda loader, node: int(loader.construct_scalar(node), 10))


def read_yaml(text: str):
    """``text`` parsed with :class:`YamlLoader` (what every drift config and study file is read with)."""
    return yaml.load(text, Loader=YamlLoader)


def _yaml_scalar(text: str):
    """``"3"`` -> 3, ``"true"`` -> True, ``"null"`` -> None; anything YAML would not read as a
    scalar stays a string.

    >>> _yaml_scalar("3"), _yaml_scalar("*"), _yaml_scalar("+-"), _yaml_scalar("null")
    (3, '*', '+-', None)
    """
    try:
        value = read_yaml(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, (int, float, bool, str)) else text


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
    if inner is dict:
        pairs = [p.split("=", 1) for p in text.split(",") if p]
        if any(len(p) != 2 for p in pairs):
            raise argparse.ArgumentTypeError(f"expected k=v,k=v, got {text!r}")
        return {k.strip(): _yaml_scalar(v) for k, v in pairs}
    try:
        value = inner(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {inner.__name__}, got {text!r}") from None
    if inner is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add ``--config`` and one flag per field of ``cls``; unset flags stay absent from the namespace."""
    parser.add_argument("--config", metavar="YAML", help="YAML file of options (command-line flags override it)")
    hints = typing.get_type_hints(cls, include_extras=False)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        default = _default(f)
        help_text = f.metadata.get("help", "")
        if hint is not bool and default not in ("", None, [], {}):
            help_text += f" (default: {default})"
        if f.metadata.get("positional"):
            many = typing.get_origin(hint) is list
            parser.add_argument(f.name, nargs="*" if many else "?", default=argparse.SUPPRESS, help=help_text)
            continue
        names = [_flag(f.name)] + ([f.metadata["short"]] if f.metadata.get("short") else [])
        if hint is bool:
            parser.add_argument(
                *names,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text + f" (default: {'on' if default else 'off'})",
            )
            continue
        inner, _ = _unwrap_optional(hint)
        choices = typing.get_args(inner) if typing.get_origin(inner) is Literal else _choices(f)
        parser.add_argument(
            *names,
            dest=f.name,
            default=argparse.SUPPRESS,
            metavar="{" + ",".join(choices) + "}" if choices else None,
            type=_flag_parser(hint, f),
            help=help_text,
        )


def default_of(cls, name: str) -> Any:
    """The default of option ``name`` of the config class ``cls`` (for code that fills in what a file left out)."""
    return _default(next(f for f in dataclasses.fields(cls) if f.name == name))


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _flag_parser(hint, f: dataclasses.Field) -> typing.Callable[[str], Any]:
    """argparse's ``type=`` for field ``f``: parse the text as ``hint``, then check the field's choices."""

    def parse(text: str) -> Any:
        return _check_choice(_parse_scalar(text, hint), f, argparse.ArgumentTypeError)

    return parse


def _choices(f: dataclasses.Field) -> tuple[str, ...] | None:
    table = f.metadata.get("choices")
    return tuple(table()) if table else None


def _check_choice(value, f: dataclasses.Field, error: type[Exception], where: str = ""):
    choices = _choices(f)
    if choices is not None and value is not None and value not in choices:
        raise error(
            f"{where} must be one of {', '.join(choices)}, got {value!r}"
            if where
            else f"choose from {', '.join(choices)}"
        )
    return value


# -- YAML ------------------------------------------------------------------------------------


def check_value(f: dataclasses.Field, hint, value, where: str):
    """A YAML value of option ``f`` (type ``hint``) checked and coerced: type, choices, then bounds;
    ``DriftError`` naming ``where`` otherwise."""
    value = _check_choice(_coerce(value, hint, where), f, DriftError, where)
    if (problem := out_of_range(f, value)) is not None:
        raise DriftError(f"{where} {problem}")
    return value


def _coerce(value, hint, where: str):
    """Check a YAML value against a type hint; ints are accepted where floats are expected."""
    inner, optional = _unwrap_optional(hint)
    if optional and isinstance(value, str) and value.strip().lower() in ("none", "null"):
        value = None  # as on the command line (--clip none)
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
    if inner is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)  # a quoted "1e-5": the command line takes it
    if inner is float and isinstance(value, float) and not math.isfinite(value):
        raise DriftError(f"{where} must be a finite number, got {value!r}")
    if (inner in (int, float) and isinstance(value, bool)) or not isinstance(value, inner):
        raise DriftError(f"{where} must be {inner.__name__}, got {type(value).__name__} {value!r}")
    return value


def load_yaml(path: str | Path, cls) -> dict:
    """Read a YAML mapping of ``cls``'s fields, with file:line in every error."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        text = raw.decode("utf-8")
        node = yaml.compose(text, Loader=YamlLoader)
        data = read_yaml(text)  # inside the try: unsafe tags (!!python/...) fail here, with a line
    except OSError as e:
        raise DriftError(f"{path}: cannot read config: {e}") from None
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DriftError(f"{path}:{line}: cannot read config: not valid UTF-8 (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else text[: getattr(e, "position", 0)].count("\n") + 1
        where = f"{path}:{line}"
        raise DriftError(f"{where}: cannot read config: {e}") from None
    if node is None:
        return {}
    if not isinstance(node, yaml.MappingNode):
        raise DriftError(f"{path}:{node.start_mark.line + 1}: a config must be a mapping of option: value")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = set(fields)
    values = {}
    for key_node, _ in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode) or not isinstance(key_node.value, str):
            raise DriftError(f"{path}:{line}: option names must be plain strings")
        key = key_node.value.replace("-", "_")
        where = f"{path}:{line}: key '{key_node.value}'"
        if key not in known:
            raise DriftError(f"{where} is not an option of this command (known: {', '.join(sorted(known))})")
        if key in values:
            raise DriftError(f"{where} is given twice")
        values[key] = check_value(fields[key], hints[key], data[key_node.value], where)
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


def check_resume_config(
    cfg, path: str | Path, may_change: tuple[str, ...] = (), remedy: str = "choose another --out"
) -> None:
    """Refuse to resume a run whose saved config (``path``) has other options than ``cfg``: what
    the finished part holds, or a checkpoint restores, was made with those. ``resume``, ``out``
    and ``may_change`` may differ; ``remedy`` ends the message."""
    path = Path(path)
    if not path.exists():
        return
    saved = read_yaml(path.read_text()) or {}
    now = to_dict(cfg)
    free = ("resume", "out", *may_change)
    differ = [f"{k}: {saved[k]} -> {now[k]}" for k in now if k not in free and k in saved and saved[k] != now[k]]
    if differ:
        raise DriftError(
            f"cannot resume {getattr(cfg, 'out', None) or path.parent}: options differ from the first run "
            f"({'; '.join(differ)}); see {path}, or {remedy}"
        )


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    with atomic_write(path) as f:
        f.write(yaml.safe_dump(to_dict(cfg), sort_keys=False).encode())
