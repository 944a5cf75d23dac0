"""``drift <command>``: one sub-command per pipeline stage, each configured by one dataclass.

Commands are a table (name -> config class, runner, summary); runners are imported only when
their command runs, so ``drift --help`` and ``drift weight`` never import torch.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import signal
import sys
import threading

from drift import DriftError, __version__
from drift import config as C
from drift.options import add_arguments, resolve

COMMANDS: dict[str, tuple[type, str, str]] = {  # in pipeline order, as --help lists them
    "demo": (C.DemoConfig, "drift.demo:run_demo", "the whole pipeline on SmolLM2-135M, offline, on a CPU"),
    "rollout": (C.RolloutConfig, "drift.rollout:run_rollout", "sample K multi-turn trajectories per prompt (offline)"),
    "weight": (C.WeightConfig, "drift.weight:run_weight", "add returns and DRIFT importance weights to trajectories"),
    "train": (C.TrainConfig, "drift.train:run_train", "weighted SFT (drift, sft, rft: the weights decide)"),
    "eval": (C.EvalConfig, "drift.evaluate:run_eval", "multi-turn accuracy of a model (or of records): report.json"),
    "compare": (C.CompareConfig, "drift.compare:run_compare", "compare eval reports: table and plots"),
    "rl": (C.RLConfig, "drift.rl:run_rl", "online multi-turn RL baseline (group-relative PG) or iterated DRIFT"),
    "study": (C.StudyConfig, "drift.study.run:run_study", "DRIFT against its baselines: seeds, tuning, FLOPs, a table"),
    "view": (C.ViewConfig, "drift.view:run_view", "one HTML page of results, trajectories and weights"),
    "export-trl": (
        C.ExportTRLConfig,
        "drift.trl_export:run_export_trl",
        "write weighted trajectories as a TRL prompt/completion dataset",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drift",
        description="DRIFT: decoupled multi-turn rollouts and importance-weighted fine-tuning.",
        epilog="Run 'drift <command> --help' for a command's options. Options can also come from "
        "a YAML file (--config FILE); flags override it.",
    )
    parser.add_argument("--version", action="version", version=f"drift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, (cls, _, summary) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=summary, **_command_parser_options(cls)), cls)
    return parser


def _command_parser_options(cls) -> dict:
    return {"description": (cls.__doc__ or "").strip(), "formatter_class": argparse.RawDescriptionHelpFormatter}


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command and its options. A command's own parser reads its line, so that options may
    come between positional arguments (``drift view a.jsonl -o page.html runs/eval``), which
    argparse's sub-parsers do not allow."""
    if argv and argv[0] in COMMANDS:
        cls = COMMANDS[argv[0]][0]
        parser = argparse.ArgumentParser(prog=f"drift {argv[0]}", **_command_parser_options(cls))
        add_arguments(parser, cls)
        args = parser.parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return build_parser().parse_args(argv)  # --help, --version, or an unknown command


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (kill, a launcher, a scheduler) unwinds like Ctrl-C: engines close


def _group_up() -> bool:
    """Whether a torch.distributed process group is up; never imports torch."""
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def _end_group() -> None:
    """End the process group while the interpreter is still whole (an ``atexit`` handler). A process
    that exits with a gloo group alive can abort in its exit handlers ("terminate called without an
    active exception"), and torchrun then fails a run that finished. Ended at exit, not when the
    command returns: a second command in the same process keeps the group (a new one on the same
    launcher's store would not connect)."""
    dist = sys.modules["torch.distributed"]
    if dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    cls, target, _ = COMMANDS[args.command]
    started_group = not _group_up()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        cfg = resolve(cls, args)
        module, func = target.split(":")
        getattr(importlib.import_module(module), func)(cfg)
    except DriftError as e:
        print(f"drift {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"drift {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if started_group and _group_up():  # under torchrun, accelerate started it for this command
            atexit.register(_end_group)
    return 0


if __name__ == "__main__":
    sys.exit(main())
