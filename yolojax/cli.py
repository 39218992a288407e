"""The `yolojax` console script.

Each stage registers its own subcommands: a module listed in COMMAND_MODULES defines
`register(subparsers)` which adds parsers whose `func(args) -> int` runs the command.
Modules are imported lazily so that `yolojax --help` stays fast and a stage's optional
dependencies are only needed when its command runs.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "yolojax.commands",      # info, convert, demo
    "yolojax.data.cli",      # data check|convert|synth
    "yolojax.train.cli",     # train, val, predict
    "pruning.cli",           # prune
    "distill.cli",           # distill
    "export.cli",            # export, benchmark
    "yolojax.pipeline",      # compress
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yolojax", description="YOLOv8 in JAX/Flax with a compression toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # A stage that is not built yet simply contributes no command; any other missing
            # module is a real error and must surface.
            if e.name is not None and (name == e.name or name.startswith(e.name + ".")):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
