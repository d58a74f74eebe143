"""The GGUF header reader against gguf-py's GGUFReader: the same fields and tensors, and clear
errors on broken files."""

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter, GGMLQuantizationType as T
from gguf.quants import quantize

from saguaro.errors import ModelLoadError
from saguaro.loading.gguf_reader import GGUFFile


def reference_fields(path) -> dict:
    return {k: f.contents() for k, f in GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}


@pytest.fixture
def small_gguf(tmp_path):
    path = tmp_path / "small.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -300)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -7)
    w.add_float32("t.f32", 0.25)
    w.add_uint64("t.u64", 2**40)
    w.add_int64("t.i64", -(2**40))
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ☃")
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.strs", ["a", "", "ü b"])
    w.add_array("t.floats", [0.5, -1.5])
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((2, 4)).astype(np.float16))
    q8 = rng.standard_normal((4, 64)).astype(np.float32)
    w.add_tensor("q8", quantize(q8, T.Q8_0), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_fields_and_tensors_match_gguf_py(small_gguf):
    ours = GGUFFile(small_gguf)
    assert ours.fields == reference_fields(small_gguf)
    assert ours.field("t.str") == "héllo ☃" and ours.field("absent", 3) == 3
    theirs = GGUFReader(str(small_gguf)).tensors
    assert [t.name for t in ours.tensors] == [t.name for t in theirs] == ["f32", "f16", "q8"]
    for a, b in zip(ours.tensors, theirs):
        assert a.shape == tuple(int(d) for d in b.shape) and a.tensor_type == b.tensor_type
        assert a.data.tobytes() == b.data.tobytes()
    assert ours.tensors[0].rows_cols == (3, 5) and ours.tensors[2].rows_cols == (4, 64)


def test_the_bundled_files_header(qwen_gguf):
    ours = GGUFFile(qwen_gguf)
    assert ours.fields == reference_fields(qwen_gguf)
    assert len(ours.field("tokenizer.ggml.tokens")) == 151_936


@pytest.mark.parametrize("cut", [0, 3, 30, 200, -100])
def test_a_truncated_file_is_a_clear_error(small_gguf, tmp_path, cut):
    data = small_gguf.read_bytes()
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(data[:cut] if cut >= 0 else data[:len(data) + cut])
    with pytest.raises(ModelLoadError, match="corrupt or truncated GGUF file"):
        GGUFFile(bad)


def test_not_a_gguf_and_a_missing_file(tmp_path):
    other = tmp_path / "x.gguf"
    other.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelLoadError, match="bad magic"):
        GGUFFile(other)
    with pytest.raises(ModelLoadError, match="no such GGUF file"):
        GGUFFile(tmp_path / "missing.gguf")


def test_a_string_longer_than_the_file(small_gguf, tmp_path):
    data = bytearray(small_gguf.read_bytes())
    data[24:32] = (2**40).to_bytes(8, "little")  # the first key's length
    bad = tmp_path / "long.gguf"
    bad.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        GGUFFile(bad)
