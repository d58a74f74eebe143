"""Tests for rebuilding a tokenizer.json from GGUF metadata.

Tiny GGUF files written here cover the rules; the bundled Qwen GGUF is checked against transformers.
"""

import json

import gguf
import pytest
from tokenizers import Tokenizer

from saguaro.errors import ModelLoadError
from saguaro.loading.gguf_reader import GGUFFile
from saguaro.loading.gguf_tokenizer import byte_alphabet, tokenizer_files_from_gguf


def write_gguf(path, *, model="gpt2", pre="qwen2", add_bos=None, template=None):
    """A tokenizer-only GGUF: the 256 byte tokens, digit merges, and two added tokens."""
    tokens = list(byte_alphabet().values()) + ["12", "123", "45", "<s>", "<tool>"]
    types = [1] * (len(tokens) - 2) + [3, 4]  # <s> is CONTROL, <tool> USER_DEFINED
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(64)
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["1 2", "12 3", "4 5"])
    writer.add_bos_token_id(tokens.index("<s>"))
    writer.add_eos_token_id(tokens.index("<s>"))
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if template is not None:
        writer.add_chat_template(template)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return GGUFFile(path)


def build(reader):
    text, config = tokenizer_files_from_gguf(reader)
    return Tokenizer.from_str(text), config


def test_digit_grouping_follows_the_pre_tokenizer(tmp_path):
    qwen, _ = build(write_gguf(tmp_path / "q.gguf", pre="qwen2"))
    llama, _ = build(write_gguf(tmp_path / "l.gguf", pre="llama-bpe"))
    # Qwen2 splits digits one by one, so the digit merges never apply; llama-3 groups up to three.
    assert qwen.encode("12345").tokens == ["1", "2", "3", "4", "5"]
    assert llama.encode("12345").tokens == ["123", "45"]


def test_added_tokens_and_config(tmp_path):
    tok, config = build(write_gguf(tmp_path / "t.gguf", template="{{ messages }}"))
    added = {t.content: t.special for t in tok.get_added_tokens_decoder().values()}
    assert added == {"<s>": True, "<tool>": False}
    assert tok.encode("a<s>b<tool>").tokens == ["a", "<s>", "b", "<tool>"]
    assert tok.decode(tok.encode("x<s>y<tool>").ids) == "xy<tool>"
    assert config["bos_token"] == config["eos_token"] == "<s>"
    assert config["pad_token"] is None
    assert config["add_bos_token"] is False  # absent from the file: llama.cpp's BPE default
    assert config["chat_template"] == "{{ messages }}"
    assert config["model_max_length"] == 64


def test_add_bos_token_goes_into_the_post_processor(tmp_path):
    with_bos, config = build(write_gguf(tmp_path / "b.gguf", add_bos=True))
    without, _ = build(write_gguf(tmp_path / "n.gguf", add_bos=False))
    assert config["add_bos_token"] is True
    assert with_bos.encode("hi").tokens == ["<s>", "h", "i"]
    assert with_bos.encode("hi", add_special_tokens=False).tokens == ["h", "i"]
    assert without.encode("hi").tokens == ["h", "i"]


def test_unknown_pre_tokenizer_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="pre-tokenizer 'mystery'"):
        tokenizer_files_from_gguf(write_gguf(tmp_path / "m.gguf", pre="mystery"))


def test_sentencepiece_is_rejected(tmp_path):
    with pytest.raises(ModelLoadError, match="sentencepiece.*unsupported"):
        tokenizer_files_from_gguf(write_gguf(tmp_path / "s.gguf", model="llama"))


# ---- the bundled GGUF against transformers ---------------------------------------------------


@pytest.fixture(scope="module")
def ours(qwen_gguf):
    text, config = tokenizer_files_from_gguf(GGUFFile(qwen_gguf))
    return json.loads(text), config


@pytest.fixture(scope="module")
def hf(qwen_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(qwen_gguf.parent), gguf_file=qwen_gguf.name)


@pytest.mark.slow
def test_same_tokenizer_json_as_transformers(ours, hf):
    mine, _ = ours
    theirs = json.loads(hf.backend_tokenizer.to_str())
    for part in ("normalizer", "pre_tokenizer", "decoder", "post_processor", "added_tokens"):
        assert mine[part] == theirs[part], part
    for part in ("vocab", "merges", "byte_fallback", "fuse_unk", "ignore_merges"):
        assert mine["model"][part] == theirs["model"][part], part


@pytest.mark.slow
def test_same_config_as_transformers(ours, hf):
    _, config = ours
    assert config["bos_token"] == hf.bos_token == "<|endoftext|>"
    assert config["eos_token"] == hf.eos_token == "<|im_end|>"
    assert config["pad_token"] == hf.pad_token == "<|endoftext|>"
    assert config["add_bos_token"] is False
    assert config["chat_template"] == hf.chat_template
    assert config["model_max_length"] == 32768


@pytest.mark.slow
def test_same_ids_as_transformers(ours, hf):
    tok = Tokenizer.from_str(json.dumps(ours[0]))
    for text in ("def f(x):\n    return x ** 2\n", "<|im_start|>user\nhi<|im_end|>", "数字 12345 🦙", "  \t\n\n x"):
        ids = tok.encode(text).ids
        assert ids == hf.encode(text), text
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True), text
