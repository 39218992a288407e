"""The `yolojax` console script.

Each stage registers its own subcommands: a module listed in COMMAND_MODULES defines
`register(subparsers)` which adds parsers whose `func(args) -> int` runs the command.
Modules are imported lazily so that `yolojax --help` stays fast and a stage's optional
dependencies are only needed when its command runs.

Errors: `main` is the one error path. A user error (bad argument, file or dataset: `yolojax.errors.UserError`,
and ValueError / missing files, which the readers raise with a message naming the path) prints one line and
exits 2; a runtime failure (`RuntimeFailure`, an OSError such as a full disk) one line and exit 1; Ctrl-C exits
130. `--verbose` (anywhere on the line) shows the traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from .errors import RuntimeFailure, UserError

USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
RUNTIME_FAILURES = (RuntimeFailure, OSError)

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
    _add_verbose(parser, top=True)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, top: bool = False) -> None:
    """--verbose on the top parser and on every (nested) subcommand, so it may follow the command's arguments."""
    if "--verbose" not in parser._option_string_actions:
        parser.add_argument("--verbose", action="store_true", default=False if top else argparse.SUPPRESS,
                            help="show the full traceback of an error")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_verbose(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        if args.verbose:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS + RUNTIME_FAILURES as e:
        if args.verbose:
            traceback.print_exc()
        code = 2 if isinstance(e, USER_ERRORS) else 1
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return code


def _one_line(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename is not None and e.strerror:
        msg = f"{e.filename}: {e.strerror}"  # not "[Errno 2] No such file or directory: 'x'"
    return " ".join(msg.split())


if __name__ == "__main__":
    sys.exit(main())
