"""The model cache: a cache that cannot be written is one error naming SAGUARO_CACHE, and a
partial or corrupt conversion is detected by its manifest and converted again. The conversion
itself is replaced by a small stand-in (the real one needs the bundled GGUF)."""

from __future__ import annotations

import os

import pytest

from saguaro.errors import ModelLoadError
from saguaro.loading import bundled, loader
from saguaro.loading.manifest import MANIFEST

NAME = bundled.DEFAULT_DRAFT


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(bundled, "bundled_gguf", lambda name: tmp_path / "stand-in.gguf")
    conversions = []

    def convert(gguf_path, folder):
        conversions.append(folder)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"w" * 4096)

    monkeypatch.setattr(loader, "write_hf_folder", convert)
    return conversions


def test_a_truncated_conversion_is_rebuilt(cache):
    folder = loader.bundled_folder(NAME)
    assert (folder / MANIFEST).exists() and len(cache) == 1
    assert loader.bundled_folder(NAME) == folder and len(cache) == 1  # intact: reused
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    assert loader.bundled_folder(NAME) == folder and len(cache) == 2
    assert weights.stat().st_size == 4096


def test_same_size_corruption_is_caught_by_the_hash(cache):
    folder = loader.bundled_folder(NAME)
    weights = folder / "model.safetensors"
    stat = weights.stat()
    weights.write_bytes(b"x" * 4096)  # same size, other bytes
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a coarse clock may not move
    loader.bundled_folder(NAME)
    assert len(cache) == 2 and (folder / "model.safetensors").read_bytes() == b"w" * 4096


def test_an_interrupted_conversion_without_manifest_is_rebuilt(cache):
    folder = loader.bundled_folder(NAME)
    (folder / MANIFEST).unlink()
    loader.bundled_folder(NAME)
    assert len(cache) == 2


def test_a_corrupt_conversion_that_cannot_be_rebuilt_names_the_folder(cache, monkeypatch):
    folder = loader.bundled_folder(NAME)
    (folder / "model.safetensors").write_bytes(b"")

    def read_only(gguf_path, tmp):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(loader, "write_hf_folder", read_only)
    with pytest.raises(ModelLoadError) as caught:
        loader.bundled_folder(NAME)
    message = str(caught.value)
    assert bundled.CACHE_ENV in message and str(folder) in message and "delete" in message


def test_an_unwritable_cache_is_one_clear_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")  # a cache path below a regular file cannot be made, even by root
    monkeypatch.setenv(bundled.CACHE_ENV, str(blocker / "cache"))
    chunk = tmp_path / "part1.bin"
    chunk.write_bytes(b"x")
    monkeypatch.setattr(bundled, "chunk_paths", lambda model: [chunk])
    with pytest.raises(ModelLoadError, match=bundled.CACHE_ENV):
        bundled.bundled_gguf(NAME)
    with pytest.raises(ModelLoadError, match=bundled.CACHE_ENV):
        loader.bundled_folder(NAME)
