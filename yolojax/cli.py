"""The `yolojax` console script.

Each stage registers its own subcommands: a module listed in COMMAND_MODULES defines
`register(subparsers)` which adds parsers whose `func(args) -> int` runs the command.
Modules are imported lazily so that `yolojax --help` stays fast and a stage's optional
dependencies are only needed when its command runs.

Errors: `main` is the one error path. A user error (bad argument, file or dataset: `yolojax.errors.UserError`,
and ValueError / missing files, which the readers raise with a message naming the path) prints one line and
exits 2; a runtime failure (`RuntimeFailure`, an OSError such as a full disk) one line and exit 1; Ctrl-C exits
130. `--verbose` (anywhere on the line) shows the traceback. Anything else is a bug and keeps its traceback.

Compilation cache: the command keeps JAX's persistent compilation cache in ~/.cache/yolojax/jax (under
$XDG_CACHE_HOME when set), so a second run of the same model and shapes skips XLA compilation (the first
training step of a run compiles for about a minute on a small CPU). YOLOJAX_JAX_CACHE=DIR moves it,
YOLOJAX_JAX_CACHE=off turns it off; a JAX_COMPILATION_CACHE_DIR you set yourself is used as is.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from .errors import RuntimeFailure, UserError

USER_ERRORS = (UserError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)
RUNTIME_FAILURES = (RuntimeFailure, OSError)

# module -> the commands it registers (named here so that a stage whose package fails to import still shows
# its commands, each saying why it cannot run, instead of vanishing from `yolojax --help`)
COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "yolojax.commands": ("info", "convert"),
    "yolojax.data.cli": ("data",),
    "yolojax.train.cli": ("train", "val", "predict"),
    "pruning.cli": ("prune",),
    "distill.cli": ("distill",),
    "export.cli": ("export", "benchmark"),
    "yolojax.pipeline": ("compress",),
}


def _unavailable(name: str, error: ModuleNotFoundError):
    def run(args) -> int:
        raise RuntimeFailure(f"yolojax {args.command}: {name} failed to import ({error}); reinstall yolojax "
                             "with its dependencies (pip install -e . -c constraints.txt)")
    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="yolojax", description="YOLOv8 in JAX/Flax with a compression toolkit.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, commands in COMMAND_MODULES.items():
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # the stage's own package (or a dependency of it) is missing: keep its commands, failing clearly
            for cmd in commands:
                p = sub.add_parser(cmd, help=f"(unavailable: {name} failed to import: {e})", add_help=False)
                p.set_defaults(func=_unavailable(name, e), unavailable=True)  # any arguments: it only explains
            continue
        module.register(sub)
    _add_verbose(parser, top=True)
    _set_formatter(parser)
    return parser


class HelpFormatter(argparse.HelpFormatter):
    """Every option's default appended to its help, as argparse.ArgumentDefaultsHelpFormatter does, except where
    it would say nothing: a None default (its help says what happens instead), an on/off flag, or a help text
    that already names it. Descriptions and epilogs written on several lines (examples) are kept as written,
    one-line ones wrapped."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or isinstance(default, bool) or default is argparse.SUPPRESS or default == []
                or "default" in text.lower() or not (action.option_strings or action.nargs in ("?", "*"))):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, (tuple, list)) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


def _set_formatter(parser: argparse.ArgumentParser) -> None:
    """HelpFormatter on the top parser and on every (nested) subcommand."""
    parser.formatter_class = HelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _set_formatter(child)


def compilation_cache_dir() -> str | None:
    """Where the CLI keeps JAX's persistent compilation cache (None: off). See the module docstring."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    where = os.environ.get("YOLOJAX_JAX_CACHE")
    if where is not None and where.strip().lower() in ("", "0", "off", "no", "none", "false"):
        return None
    if where:
        return os.path.expanduser(where)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "yolojax", "jax")


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache (before JAX is imported when possible: through its
    environment variable, so nothing is paid for commands that never compile). Returns the directory."""
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:  # a read-only home: run without the cache rather than fail
        return None
    if "jax" in sys.modules:  # called in-process (tests, notebooks): keep a cache the caller already chose
        import jax
        if jax.config.jax_compilation_cache_dir:
            return jax.config.jax_compilation_cache_dir
        jax.config.update("jax_compilation_cache_dir", path)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = path
    return path


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
    enable_compilation_cache()  # first: some stages import JAX when their commands are registered
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
