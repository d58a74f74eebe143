"""Puts tests/ on sys.path so test modules can import shared helpers (`from exactness import ...`)."""

import sys

import pytest
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(scope="session")
def qwen_gguf():
    """The bundled 0.5B GGUF (assembled and verified on first use); CI installs the packages."""
    from saguaro.loading.bundled import bundled_gguf

    return bundled_gguf("qwen2.5-coder-0.5b")
