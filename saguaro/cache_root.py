"""Where Saguaro keeps what it builds once per machine: assembled models, packed weights, kernels."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SAGUARO_CACHE"


def cache_dir() -> Path:
    """The user cache folder: $SAGUARO_CACHE, else ~/.cache/saguaro."""
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "saguaro")
    return Path(root)
