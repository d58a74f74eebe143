"""A manifest of a converted model folder in the cache: each file's size and sha256.

Written last, after a conversion completes, so a folder without one (an interrupted conversion)
or whose files no longer match it (truncated, overwritten) is detected on load and rebuilt. The
hash is re-checked only when a file's modification time differs from the one recorded: hashing
gigabytes on every load would cost seconds, and truncation already shows in the size.
"""

from __future__ import annotations

import json
from pathlib import Path

from saguaro.loading.bundled import sha256_file

MANIFEST = "manifest.json"


def write_manifest(folder: Path) -> None:
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
        st = path.stat()
        files[path.name] = {"size": st.st_size, "sha256": sha256_file(path), "mtime_ns": st.st_mtime_ns}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def manifest_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete, intact conversion; None when it is."""
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "no manifest (the conversion did not complete)"
    except (OSError, ValueError, KeyError, TypeError):
        return "its manifest is unreadable"
    for name, entry in files.items():
        try:
            st = (folder / name).stat()
        except OSError:
            return f"{name} is missing"
        if st.st_size != entry["size"]:
            return f"{name} has {st.st_size} bytes, the manifest says {entry['size']}"
        if st.st_mtime_ns != entry["mtime_ns"] and sha256_file(folder / name) != entry["sha256"]:
            return f"{name} fails its sha256 check"
    return None
