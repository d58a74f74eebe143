"""Puts tests/ on sys.path so test modules can import shared helpers (`from exactness import ...`)."""

import os
import signal
import sys

import pytest
import torch
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def pytest_configure(config):
    """A suite started in the background by a non-interactive shell inherits SIGINT ignored (so
    Python never installs its KeyboardInterrupt handler, and the children it spawns ignore Ctrl-C
    too): give it Python's usual handler, so the Ctrl-C tests test Ctrl-C wherever they run."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def qwen_gguf():
    """The bundled 0.5B GGUF (assembled and verified on first use); CI installs the packages."""
    from saguaro.loading.bundled import bundled_gguf

    return bundled_gguf("qwen2.5-coder-0.5b")


@pytest.fixture(scope="module", autouse=True)
def restore_placement():
    """An in-process SSD engine pins the whole process to the target's cores (and sets torch's
    threads to match); undo that after each module, or every later module runs on one core."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    threads = torch.get_num_threads()
    yield
    if cores:
        from saguaro.ssd.placement import pin_process

        pin_process(cores)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Thousands of tiny per-row ops: on 2 shared cores a second intra-op thread made the
    exactness modules about 14x slower under load (threads spin waiting for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A small random model (an HF folder with a toy tokenizer), one per test module."""
    from saguaro.testing.random_model import write_random_model

    return str(write_random_model(tmp_path_factory.mktemp("tiny") / "m", seed=5))


@pytest.fixture(scope="module")
def tiny_llm(tiny_folder, one_torch_thread):
    """An AR LLM over `tiny_folder` in float32, closed after the module."""
    from saguaro import LLM

    with LLM(tiny_folder, dtype="float32") as made:
        yield made
