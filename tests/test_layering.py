"""Packages depend one way: the core (yolojax without its orchestration) never imports a stage, pruning never
imports distill, and the CLI keeps a stage's commands (failing with the reason) when its package cannot load."""
import subprocess
import sys
import textwrap

from tests.conftest import REPO

CORE = ["yolojax", "yolojax.api", "yolojax.checkpoint", "yolojax.viz", "yolojax.model", "yolojax.model.ultralytics",
        "yolojax.model.counting", "yolojax.data", "yolojax.data.loader", "yolojax.eval", "yolojax.loss",
        "yolojax.train.trainer", "yolojax.train.step", "yolojax.train.validate"]


def _run(code: str):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_core_imports_without_any_stage_and_pruning_without_distill_or_export():
    r = _run(f"""
        import importlib, sys
        for stage in ("pruning", "distill", "export"):
            sys.modules[stage] = None  # any import of a stage now fails
        for m in {CORE!r}:
            importlib.import_module(m)
        del sys.modules["pruning"]
        import pruning, pruning.cli, pruning.latency
        del sys.modules["distill"]
        import distill, distill.cli
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_cli_keeps_the_commands_of_a_stage_that_fails_to_import():
    r = _run("""
        import sys
        sys.modules["distill"] = None
        from yolojax.cli import COMMAND_MODULES, build_parser, main
        sub = next(a for a in build_parser()._actions if a.dest == "command")
        assert set(sub.choices) == {c for cs in COMMAND_MODULES.values() for c in cs}, sorted(sub.choices)
        sys.exit(main(["distill", "--teacher", "x"]))
    """)
    assert r.returncode == 1, (r.returncode, r.stderr[-3000:])
    assert "yolojax distill: distill.cli failed to import" in r.stderr and "Traceback" not in r.stderr
