"""`saguaro cache`: where the model cache is, what it holds, and clearing it.

It holds the packed-weight entries (saguaro.loading.packed_cache), the bundled GGUFs assembled
from their chunks, conversions for the benchmarks' baselines, the compiled kernels and SSD's
start-up timings (saguaro.ssd.calibration). Listing and clearing need no torch, so they answer
at once.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from saguaro.loading import bundled

# Folders of the cache besides the packed entries, and what each one holds.
OTHER_FOLDERS = {"gguf": "bundled GGUFs, assembled", "models": "float32 conversions (benchmarks)",
                 "kernels": "compiled CPU kernels", "calibration": "SSD start-up timings"}


def add_cache_parser(sub, parents) -> None:
    cache = sub.add_parser("cache", parents=parents, help="the model cache: path, list, clear [MODEL]")
    cache.add_argument("action", nargs="?", choices=("list", "path", "clear"), default="list")
    cache.add_argument("model", nargs="?", help="clear: only this model's packed entries (a name from list)")
    cache.add_argument("--all", action="store_true", help="clear: everything in the cache, bundled GGUFs included")


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _describe(fields: dict) -> str:
    head = fields.get("head_tokens")
    parts = [fields.get("dtype", "?").removeprefix("torch."), f"quantize {fields.get('quantize', '?')}",
             f"kernels {fields.get('kernels', '?')}"]
    return ", ".join(parts + ([f"head {head} tokens"] if head else []))


def cmd_cache(args: argparse.Namespace) -> int:
    from saguaro.loading import packed_cache

    root = bundled.cache_dir()
    if args.action == "path":
        print(root)
        return 0
    if args.action == "clear":
        if args.all:
            if root.is_dir():
                shutil.rmtree(root)
            print(f"removed {root}")
            return 0
        removed = packed_cache.clear(args.model)
        freed = sum(e["size"] for e in removed)
        what = f"of {args.model} " if args.model else ""
        print(f"removed {len(removed)} packed-weight entr{'y' if len(removed) == 1 else 'ies'} {what}({_gb(freed)})")
        timings = root / "calibration"
        if args.model is None and timings.is_dir():  # they are keyed by the entries just removed
            shutil.rmtree(timings)
            print(f"removed SSD's start-up timings ({timings})")
        return 0
    print(f"cache: {root} (set {bundled.CACHE_ENV} to move it)")
    found = packed_cache.entries()
    print(f"packed weights: {len(found)} entr{'y' if len(found) == 1 else 'ies'}")
    for e in found:
        print(f"  {e['label']:<28} {e['key'][:12]}  {_gb(e['size']):>9}  {_describe(e['fields'])}")
    for name, what in OTHER_FOLDERS.items():
        folder = root / name
        if folder.is_dir():
            print(f"{what}: {_gb(_size(folder))} in {folder}")
    return 0
