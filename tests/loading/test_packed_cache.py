"""The packed-weight cache: a cached load gives the same logits as an uncached one, any change
of what the bytes depend on is a miss, a bad entry is rebuilt, and a cache that cannot be
written still runs the model."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from saguaro.loading import bundled, loader, packed_cache
from saguaro.loading.manifest import MANIFEST


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(bundled.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(packed_cache.DISABLE_ENV, raising=False)
    conversions = []
    real = loader._load

    def counting(*args, **kwargs):
        conversions.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(loader, "_load", counting)
    return conversions


def logits(loaded) -> torch.Tensor:
    dec = loaded.decoder
    ids = torch.tensor([[1, 5, 9, 2, 7, 3]])  # [1, 6]
    pos = torch.arange(6)[None]
    mask = torch.tril(torch.ones(6, 16, dtype=torch.bool))[None]
    mask[..., 6:] = False
    return dec.forward(ids, pos, dec.new_cache(1, 16), pos, mask).float()  # [1, 6, vocab]


@pytest.mark.parametrize("kwargs", [dict(dtype="float32"), dict(dtype="bfloat16", quantize="int4"),
                                    dict(dtype="bfloat16", quantize="int8", head_tokens=40, draft=True)])
def test_a_cached_load_gives_the_logits_of_an_uncached_one(tiny_folder, cache, kwargs):
    first = loader.load_model(tiny_folder, **kwargs)
    second = loader.load_model(tiny_folder, **kwargs)
    assert len(cache) == 1  # the second load converted nothing
    assert torch.equal(logits(first), logits(second))
    assert second.quantization == first.quantization
    assert second.tokenizer.fingerprint() == first.tokenizer.fingerprint()
    assert second.tokenizer.eos_token_ids == first.tokenizer.eos_token_ids
    assert len(packed_cache.entries()) == 1


def test_each_option_is_its_own_entry(tiny_folder, cache):
    loader.load_model(tiny_folder, dtype="float32")
    loader.load_model(tiny_folder, dtype="bfloat16", quantize="none")
    loader.load_model(tiny_folder, dtype="float32")
    assert len(cache) == 2 and len(packed_cache.entries()) == 2


def only_entry():
    [entry] = packed_cache.entries()
    return entry["folder"]


def test_a_truncated_entry_is_rebuilt_with_one_warning(tiny_folder, cache, caplog):
    loader.load_model(tiny_folder, dtype="float32")
    weights = only_entry() / packed_cache.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.WARNING):
        again = loader.load_model(tiny_folder, dtype="float32")
    assert len(cache) == 2 and "unusable" in caplog.text
    assert torch.isfinite(logits(again)).all()
    assert len(packed_cache.entries()) == 1  # saved again


def test_one_flipped_byte_is_caught(tiny_folder, cache, caplog):
    reference = logits(loader.load_model(tiny_folder, dtype="float32"))
    weights = only_entry() / packed_cache.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x40  # inside the last tensor's bytes, same size
    stat = weights.stat()
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    with caplog.at_level(logging.WARNING):
        again = loader.load_model(tiny_folder, dtype="float32")
    assert len(cache) == 2 and "xxh3" in caplog.text
    assert torch.equal(logits(again), reference)


def test_a_stale_layout_version_is_a_miss_and_replaces_the_entry(tiny_folder, cache, monkeypatch):
    loader.load_model(tiny_folder, dtype="float32")
    old = only_entry()
    monkeypatch.setattr(packed_cache, "LAYOUT_VERSION", packed_cache.LAYOUT_VERSION + 1)
    loader.load_model(tiny_folder, dtype="float32")
    assert len(cache) == 2
    assert only_entry() != old and not old.exists()  # the older layout's entry is gone


def test_a_changed_source_is_a_miss(tiny_folder, cache, tmp_path):
    import shutil

    folder = tmp_path / "copy"
    shutil.copytree(tiny_folder, folder)
    loader.load_model(str(folder), dtype="float32")
    config = folder / "config.json"
    config.write_text(config.read_text() + "\n")
    loader.load_model(str(folder), dtype="float32")
    assert len(cache) == 2


def test_a_missing_manifest_is_rebuilt(tiny_folder, cache):
    loader.load_model(tiny_folder, dtype="float32")
    (only_entry() / MANIFEST).unlink()
    loader.load_model(tiny_folder, dtype="float32")
    assert len(cache) == 2


def test_a_cache_that_cannot_be_written_still_runs_the_model(tiny_folder, cache, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(bundled.CACHE_ENV, str(blocker / "cache"))
    with caplog.at_level(logging.WARNING):
        loaded = loader.load_model(tiny_folder, dtype="float32")
    assert torch.isfinite(logits(loaded)).all()
    assert sum("cannot write the packed-weight cache" in r.getMessage() for r in caplog.records) == 1


def test_the_cache_can_be_turned_off(tiny_folder, cache, monkeypatch):
    monkeypatch.setenv(packed_cache.DISABLE_ENV, "0")
    loader.load_model(tiny_folder, dtype="float32")
    loader.load_model(tiny_folder, dtype="float32")
    assert len(cache) == 2 and packed_cache.entries() == []


def test_random_weights_are_not_cached(cache):
    loader.load_model("random:tiny", dtype="float32")
    assert packed_cache.entries() == []


def test_entries_of_a_deleted_source_are_dropped(tiny_folder, cache, tmp_path):
    import shutil

    gone = tmp_path / "gone"
    shutil.copytree(tiny_folder, gone)
    loader.load_model(str(gone), dtype="float32")
    shutil.rmtree(gone)
    loader.load_model(tiny_folder, dtype="float32")
    assert [e["fields"]["source"]["folder"] for e in packed_cache.entries()] == [str(os.path.realpath(tiny_folder))]


def test_the_cache_command_lists_and_clears(tiny_folder, cache, capsys):
    from saguaro.cli.main import main

    loader.load_model(tiny_folder, dtype="float32")
    assert main(["cache", "path"]) == 0
    assert capsys.readouterr().out.strip() == str(bundled.cache_dir())
    assert main(["cache", "list"]) == 0
    out = capsys.readouterr().out
    assert "packed weights: 1 entry" in out and os.path.basename(tiny_folder) in out and "float32" in out
    assert main(["cache", "clear", "no-such-model"]) == 0
    assert len(packed_cache.entries()) == 1
    assert main(["cache", "clear"]) == 0
    assert "removed 1 packed-weight entry" in capsys.readouterr().out
    assert packed_cache.entries() == []
