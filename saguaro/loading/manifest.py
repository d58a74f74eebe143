"""A manifest of a folder in the cache: each file's size and hash (sha256 or xxh3).

Written last, after a conversion completes, so a folder without one (an interrupted conversion)
or whose files no longer match it (truncated, overwritten) is detected on load and rebuilt. A
sha256 is re-checked only when a file's modification time differs from the one recorded
(hashing gigabytes on every load would cost seconds, and truncation already shows in the size);
an xxh3 hash reads a gigabyte in about 0.15 s, so `always_hash` checks it on every load and a
flipped byte is caught too.
"""

from __future__ import annotations

import json
import mmap
from pathlib import Path

from saguaro.loading.bundled import sha256_file

MANIFEST = "manifest.json"
DIGESTS = ("sha256", "xxh3_128")


def xxh3_file(path: Path) -> str:
    import xxhash

    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            return xxhash.xxh3_128(b"").hexdigest()
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return xxhash.xxh3_128(m).hexdigest()


def file_digest(path: Path, digest: str) -> str:
    return sha256_file(path) if digest == "sha256" else xxh3_file(path)


def write_manifest(folder: Path, digest: str = "sha256") -> None:
    files = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST):
        st = path.stat()
        files[path.name] = {"size": st.st_size, digest: file_digest(path, digest), "mtime_ns": st.st_mtime_ns}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def manifest_problem(folder: Path, always_hash: bool = False) -> str | None:
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
            if st.st_size != entry["size"]:
                return f"{name} has {st.st_size} bytes, the manifest says {entry['size']}"
            digest = next(d for d in DIGESTS if d in entry)
            if (always_hash or st.st_mtime_ns != entry["mtime_ns"]) and file_digest(folder / name, digest) != entry[digest]:
                return f"{name} fails its {digest} check"
        except OSError:
            return f"{name} is missing"
        except (KeyError, TypeError, StopIteration):
            return "its manifest is unreadable"
    return None
