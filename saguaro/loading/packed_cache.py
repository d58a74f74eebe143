"""The packed-weight cache: a loaded CPU model saved as its kernels read it, and mapped back.

The first load of a model converts it (GGUF blocks or float tensors to packed codes, a
tokenizer from the GGUF's metadata) and saves the result under `cache_dir()/packed`; later
loads map that safetensors file (no copy: two processes of one model share its pages) and
convert nothing. The key holds everything the saved bytes depend on, so any change is a miss,
never wrong weights; a manifest with each file's size and xxh3 hash, checked on every load,
catches a truncated or corrupted entry, which is then rebuilt with one warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from saguaro.loading import bundled
from saguaro.loading.manifest import manifest_problem, write_manifest

if TYPE_CHECKING:  # torch loads with the model, not for `saguaro cache list`
    import torch

log = logging.getLogger(__name__)
FOLDER = "packed"
WEIGHTS = "weights.safetensors"
MODEL = "model.json"
# Bump on a change of what an entry holds that the source hash below would not see.
LAYOUT_VERSION = 1
DISABLE_ENV = "SAGUARO_PACKED_CACHE"  # 0/off/false: always load from the source
HEAD_BYTES = 16 << 20  # a GGUF's header and tensor table, hashed into its identity
# The code that decides what the saved bytes are: any edit there is a miss.
LAYOUT_PACKAGES = ("model", "quant", "loading")


@dataclass(frozen=True)
class Entry:
    folder: Path
    key: str  # sha256 of `fields`
    label: str  # the model, for people: a bundled name or the file or folder name
    fields: dict  # what the key is made of


def root() -> Path:
    return bundled.cache_dir() / FOLDER


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def source_identity(ref: str) -> tuple[str, dict] | None:
    """(label, identity) of a model reference, or None where it is not cached (random weights,
    hub ids: a hub id resolves to a folder only by asking the hub)."""
    if ref in bundled.BUNDLED:
        return ref, {"bundled": ref, "sha256": bundled.BUNDLED[ref].sha256}
    path = Path(os.path.expanduser(ref))
    try:
        if path.is_dir():
            return path.name, _folder_identity(path.resolve())
        if path.is_file():
            return path.stem, _file_identity(path.resolve())
    except OSError:
        return None
    return None


def _file_identity(path: Path) -> dict:
    st = path.stat()
    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(HEAD_BYTES)).hexdigest()
    return {"file": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "head_sha256": head}


def _folder_identity(folder: Path) -> dict:
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.suffix in (".json", ".safetensors", ".jinja", ".model", ".txt")):
            st = p.stat()
            files[p.name] = [st.st_size, st.st_mtime_ns]
            if p.suffix == ".safetensors":
                files[p.name].append(_safetensors_header_hash(p))
    return {"folder": str(folder), "files": files}


def _safetensors_header_hash(path: Path) -> str:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return hashlib.sha256(f.read(min(n, HEAD_BYTES))).hexdigest()


def layout_hash() -> str:
    """A hash of the loading, quantizing and model code: what decides an entry's bytes."""
    package = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(str(LAYOUT_VERSION).encode())
    for sub in LAYOUT_PACKAGES:
        for p in sorted((package / sub).rglob("*.py")):
            h.update(p.relative_to(package).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def kernel_path(scheme: str) -> str:
    """Which kernels the quantize transform will pack for: none, the native build's ISA, or
    PyTorch's (whose int4 packing depends on the torch build and the CPU)."""
    if scheme == "none":
        return "none"
    from saguaro.quant.native import use_native

    if use_native():
        from saguaro.quant.native.build import MARCH_ENV, isa

        return f"native:{isa()}:{os.environ.get(MARCH_ENV, 'native')}"
    from saguaro.quant.native.build import cpu_features

    return "torch:" + hashlib.sha256(cpu_features().encode()).hexdigest()[:16]


def entry_for(ref: str, device: torch.device, dtype: torch.dtype, head_tokens: int | None, scheme: str,
              draft: bool) -> Entry | None:
    """The cache entry of a load, or None where loads of `ref` are not cached."""
    import torch

    if device.type != "cpu" or not enabled():
        return None
    identity = source_identity(ref)
    if identity is None:
        return None
    label, source = identity
    options = {"source": source, "dtype": str(dtype), "quantize": scheme, "head_tokens": head_tokens, "draft": draft,
               "kernels": kernel_path(scheme), "torch": torch.__version__}
    fields = {**options, "layout": layout_hash()}
    slot, key = _digest(options), _digest(fields)
    return Entry(root() / f"{_safe(label)}-{slot[:10]}-{key[:10]}", key, label, fields)


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _safe(label: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in label)[:64] or "model"


def load(entry: Entry):
    """(decoder, tokenizer, quantization) from an intact entry, else None (a bad entry is removed)."""
    from safetensors.torch import load_file

    from saguaro.loading.snapshot import Uncacheable, rebuild_decoder
    from saguaro.tokenizer import Tokenizer

    if not entry.folder.is_dir():
        return None
    problem = manifest_problem(entry.folder, always_hash=True)
    meta = None
    if problem is None:
        try:
            meta = json.loads((entry.folder / MODEL).read_text())
            if meta.get("key") != entry.key:
                problem = "its key differs"
        except (OSError, ValueError) as e:
            problem = f"unreadable {MODEL} ({e})"
    if problem is not None:
        return _discard(entry, f"is unusable ({problem})")
    try:
        tensors = load_file(str(entry.folder / WEIGHTS))  # mapped, not read
        decoder = rebuild_decoder(meta["decoder"], tensors)
        tokenizer = Tokenizer.from_files((entry.folder / "tokenizer.json").read_text(encoding="utf-8"),
                                         json.loads((entry.folder / "tokenizer_config.json").read_text(encoding="utf-8")),
                                         extra_eos_ids=meta["eos_ids"])
    except (OSError, KeyError, ValueError, Uncacheable) as e:
        return _discard(entry, f"does not load ({e})")
    log.info("loaded %s from the packed-weight cache (%s)", entry.label, entry.folder)
    return decoder, tokenizer, meta["quantization"]


def _discard(entry: Entry, why: str) -> None:
    log.warning("the packed-weight cache entry %s %s; converting %s again", entry.folder, why, entry.label)
    shutil.rmtree(entry.folder, ignore_errors=True)


def save(entry: Entry, decoder, tokenizer, quantization: str, source: str) -> None:
    """Save a freshly converted model; a cache that cannot be written costs one warning, no more."""
    from safetensors.torch import save_file

    from saguaro.loading.snapshot import Uncacheable, describe_decoder

    try:
        spec, tensors = describe_decoder(decoder)
    except Uncacheable as e:
        log.info("%s is not cached: %s", entry.label, e)
        return
    tmp = entry.folder.with_name(entry.folder.name + f".tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS))
        tokenizer.save(tmp)
        meta = {"key": entry.key, "label": entry.label, "source": source, "fields": entry.fields,
                "quantization": quantization, "eos_ids": sorted(tokenizer.eos_token_ids), "decoder": spec}
        (tmp / MODEL).write_text(json.dumps(meta))
        write_manifest(tmp, digest="xxh3_128")
        drop_stale(entry)
        if entry.folder.exists():  # another process saved it meanwhile
            return
        os.replace(tmp, entry.folder)
        log.info("saved %s to the packed-weight cache (%s)", entry.label, entry.folder)
    except Exception as e:  # noqa: BLE001 - a full disk shows as OSError or safetensors' own error
        log.warning("cannot write the packed-weight cache at %s (%s); %s loads from its source each time",
                    root(), str(e).splitlines()[0] if str(e) else type(e).__name__, entry.label)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def entries() -> list[dict]:
    """Every complete entry's label, key, size and what it was made from, largest first."""
    found = []
    for folder in sorted(root().glob("*")) if root().is_dir() else []:
        if ".tmp" in folder.name:  # a save in progress
            continue
        try:
            meta = json.loads((folder / MODEL).read_text())
        except (OSError, ValueError):
            continue
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
        found.append({"folder": folder, "label": meta.get("label"), "key": meta.get("key", ""), "size": size,
                      "fields": meta.get("fields", {})})
    return sorted(found, key=lambda e: -e["size"])


def drop_stale(entry: Entry) -> None:
    """Remove entries this one replaces (the same model and options under older code) and
    entries whose source file or folder is gone (a deleted download, a test's temporary model)."""
    slot_prefix = entry.folder.name.rsplit("-", 1)[0] + "-"
    for e in entries():
        source = e["fields"].get("source", {})
        path = source.get("file") or source.get("folder")
        gone = path is not None and not os.path.exists(path)
        if e["folder"] != entry.folder and (e["folder"].name.startswith(slot_prefix) or gone):
            log.info("removing the stale packed-weight cache entry %s", e["folder"])
            shutil.rmtree(e["folder"], ignore_errors=True)


def clear(label: str | None = None) -> list[dict]:
    """Remove every entry (or those of one model); returns what was removed."""
    removed = [e for e in entries() if label is None or e["label"] == label]
    for e in removed:
        shutil.rmtree(e["folder"], ignore_errors=True)
    if label is None and root().is_dir():  # leftovers of interrupted saves too
        for folder in root().glob("*.tmp*"):
            shutil.rmtree(folder, ignore_errors=True)
    return removed
