"""Puts tests/ on sys.path so test modules can import shared helpers (`from exactness import ...`)."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
