"""Builds Saguaro's C++ CPU kernels (qgemm.cpp, glue.cpp) once per machine and loads them into
torch.ops.

The build is tuned to this CPU (-march=native), so its cache folder is named by a hash of the
source, the torch version, the flags and this CPU's feature list: another CPU, or a new torch,
gets its own build rather than one that may not run. A build that cannot happen (no compiler,
no ninja) is logged once as a warning and the caller falls back to PyTorch's kernels.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from saguaro.cache_root import cache_dir

log = logging.getLogger(__name__)
SOURCES = [Path(__file__).with_name(name) for name in ("qgemm.cpp", "glue.cpp")]
NAME = "saguaro_qgemm"
# The CPU the build targets: native by default; tests set haswell (the AVX2 path),
# haswell+avxvnni (AVX2 with AVX-VNNI) or x86-64 (the portable loop) to run every path on a
# machine that has them all, and armv8-a (the portable loop) on aarch64. On x86, "+feature" after
# the -march value adds -mfeature; on aarch64 it stays in -march, as GCC spells it there
# (armv8.2-a+dotprod).
MARCH_ENV = "SAGUARO_QGEMM_MARCH"


def flags(machine: str | None = None) -> list[str]:
    """-fopenmp lets at::parallel_for use torch's OpenMP threads; fp-contract=off keeps every
    row's arithmetic the same instructions whatever the batch."""
    target = os.environ.get(MARCH_ENV, "native").strip() or "native"
    if (machine or platform.machine()) in ("aarch64", "arm64"):
        march, features = target, []
    else:
        march, *features = target.split("+")
    return ["-O3", f"-march={march}", *(f"-m{f}" for f in features if f), "-fopenmp", "-ffp-contract=off"]

BUILD_SECONDS = 15  # about, with two cores


def put_ninja_on_path() -> None:
    """pip's ninja sits in the environment's bin folder, which is not on PATH unless the
    environment is activated; torch's builder looks for ninja on PATH."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def cpu_features() -> str:
    """This CPU's feature list (Linux), else what the platform module knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def build_dir() -> Path:
    parts = [*(source.read_text() for source in SOURCES), torch.__version__, " ".join(flags()), cpu_features(),
             sys.platform]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    return cache_dir() / "kernels" / key


@functools.cache
def load_kernels() -> bool:
    """Build (first time) and load the kernels; False, with one warning, where that fails."""
    from torch.utils import cpp_extension

    put_ninja_on_path()
    if not cpp_extension.is_ninja_available():
        log.warning("cannot build Saguaro's CPU kernels: ninja is not installed; using PyTorch's kernels")
        return False
    folder = build_dir()
    if _load_built(folder):
        return True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fresh = not any(folder.glob(f"{NAME}*.so"))
        if fresh:
            log.info("building Saguaro's CPU kernels once (~%d s)", BUILD_SECONDS)
            if sys.stderr.isatty():  # like the first-use progress bars: a terminal only, never logs or pipes
                sys.stderr.write(f"first use: building Saguaro's CPU kernels into {folder} (~{BUILD_SECONDS} s)\n")
        start = time.perf_counter()
        cpp_extension.load(NAME, [str(source) for source in SOURCES], extra_cflags=flags(), extra_ldflags=["-fopenmp"],
                           build_directory=str(folder), is_python_module=False, verbose=False)
    except Exception as e:  # noqa: BLE001 - a compiler's failure has many types; all mean "fall back"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning("cannot build Saguaro's CPU kernels (%s); using PyTorch's kernels", reason)
        return False
    if fresh:
        log.info("built Saguaro's CPU kernels in %.0f s (%s)", time.perf_counter() - start, isa())
    return True


def _load_built(folder: Path) -> bool:
    """Load a finished build straight away. The folder's name already hashes what the build depends
    on, and asking torch's builder would run ninja, which rebuilds a copied or moved folder (its log
    holds the old paths). A build in progress holds torch's lock file: that one is waited for."""
    library = folder / f"{NAME}.so"
    if not library.is_file() or (folder / "lock").exists():
        return False
    try:
        torch.ops.load_library(str(library))
    except (OSError, RuntimeError) as e:  # a truncated or foreign file: rebuilt below
        log.warning("the CPU kernel build in %s does not load (%s); rebuilding it", folder, str(e).splitlines()[0])
        return False
    return True


def isa() -> str:
    """The vector path the loaded build took: avx512-vnni, avx2-vnni, avx2, neon-dotprod or portable."""
    return torch.ops.saguaro_qgemm.isa()
