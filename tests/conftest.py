"""Shared test fixtures. Tests may read ../shared (reference vectors and sample datasets)."""
import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"
DATA = SHARED / "data"


def committed_steps(run: Path) -> list[int]:
    """The training-state checkpoints a run has committed (RUN/checkpoints/<step>; Orbax writes a checkpoint
    under a temporary name and renames it when complete), read from the file system while a run may write."""
    d = Path(run) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []

# Many tests compile the same small programs from fresh closures (a new Trainer, a new jitted forward), which
# jit's in-memory cache cannot share; XLA's persistent cache is keyed by the program itself, so it does, also
# across pytest-xdist workers. Only compiled executables are cached: results are the same with or without it.
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("YOLOJAX_TEST_JAX_CACHE", str(REPO / ".pytest_cache" / "jax")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        raise FileNotFoundError(f"../shared not found beside the repo at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    return shared_dir / "reference"


@pytest.fixture(scope="session")
def data_dir(shared_dir) -> Path:
    return shared_dir / "data"
