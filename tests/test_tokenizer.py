"""Tests for the Tokenizer wrapper and StreamDecoder.

A tiny byte-level tokenizer covers the rules; the bundled Qwen GGUF is checked against transformers.
"""

import json

import pytest
from tokenizers import AddedToken, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as Backend

from saguaro.errors import InvalidRequestError, ModelLoadError
from saguaro.loading.gguf_reader import GGUFFile
from saguaro.loading.gguf_tokenizer import byte_alphabet, tokenizer_files_from_gguf
from saguaro.tokenizer import StreamDecoder, Tokenizer

TEMPLATE = (
    "{% for m in messages %}{% if m.role == 'bad' %}{{ raise_exception('no bad roles') }}{% endif %}"
    "[{{ m.role }}]{{ m.content }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]{% endif %}"
)


def tiny_files(**config):
    """A byte-level tokenizer with one token per byte (so every multi-byte character splits)."""
    vocab = {c: i for i, c in enumerate(byte_alphabet().values())}
    backend = Backend(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken("<s>", special=True), AddedToken("</s>", special=True)])
    return backend.to_str(), {"bos_token": "<s>", "eos_token": "</s>", "chat_template": TEMPLATE, **config}


def stream(tok, ids):
    decoder = StreamDecoder(tok)
    pieces = [decoder.push(i) for i in ids]
    return pieces, "".join(pieces) + decoder.flush()


def test_bos_only_when_asked():
    assert Tokenizer.from_files(*tiny_files()).encode("a") == [ord("a") - ord("!")]
    tok = Tokenizer.from_files(*tiny_files(add_bos_token=True))
    assert tok.encode("a")[0] == tok.bos_token_id == 256
    assert tok.encode("a", add_special_tokens=False) == [ord("a") - ord("!")]


def test_ids_and_stops():
    tok = Tokenizer.from_files(*tiny_files(), extra_eos_ids=[7])
    assert tok.vocab_size == 258
    assert tok.id_to_token(257) == "</s>"
    assert tok.eos_token_ids == frozenset({257, 7})
    assert tok.decode(tok.encode("x</s>y")) == "xy"
    assert tok.decode(tok.encode("x</s>y"), skip_special_tokens=False) == "x</s>y"


def test_save_and_from_folder(tmp_path):
    Tokenizer.from_files(*tiny_files(add_bos_token=True)).save(tmp_path)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [257, 3]}))
    tok = Tokenizer.from_folder(tmp_path)
    assert tok.encode("é") == [256, *tok.encode("é", add_special_tokens=False)]
    assert tok.eos_token_ids == frozenset({257, 3})
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]) == "[user]hi</s>\n[assistant]"


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(ModelLoadError, match="tokenizer.json"):
        Tokenizer.from_folder(tmp_path)


@pytest.mark.parametrize("messages", [
    "hi", [], ["hi"], [{"role": "user"}], [{"role": "user", "content": None}],
    [{"role": 1, "content": "x"}], [{"role": "user", "content": [{"type": "text", "text": "x"}]}],
])
def test_bad_messages(messages):
    with pytest.raises(InvalidRequestError):
        Tokenizer.from_files(*tiny_files()).apply_chat_template(messages)


def test_template_errors_are_request_errors():
    tok = Tokenizer.from_files(*tiny_files())
    with pytest.raises(InvalidRequestError, match="no bad roles"):
        tok.apply_chat_template([{"role": "bad", "content": "x"}])
    text, config = tiny_files()
    del config["chat_template"]
    with pytest.raises(InvalidRequestError, match="no chat template"):
        Tokenizer.from_files(text, config).apply_chat_template([{"role": "user", "content": "x"}])


def test_tojson_keeps_unicode_and_html():
    text, config = tiny_files(chat_template="{{ messages[0] | tojson }}|{{ messages[0] | tojson(indent=1) }}")
    rendered = Tokenizer.from_files(text, config).apply_chat_template([{"role": "user", "content": "<é>"}])
    assert rendered == '{"role": "user", "content": "<é>"}|{\n "role": "user",\n "content": "<é>"\n}'


def test_stream_holds_back_split_characters():
    tok = Tokenizer.from_files(*tiny_files())
    ids = tok.encode("aé🦙</s>b")
    pieces, text = stream(tok, ids)
    assert pieces == ["a", "", "é", "", "", "", "🦙", "", "b"]
    assert text == tok.decode(ids) == "aé🦙b"
    # An unfinished character still comes out on flush, as decode shows it.
    assert stream(tok, ids[:2])[1] == tok.decode(ids[:2]) == "a\ufffd"


# ---- the bundled GGUF against transformers ---------------------------------------------------

TEXTS = [
    "", "hello world", "Hello, World!", "  leading spaces", "trailing spaces   ", "tabs\tand\ttabs",
    "line one\nline two\n\n\nline five", "windows\r\nnewlines\r\n", "don't won't I'm you're we've they'll I'd",
    "DON'T SHOUT", "1234567890", "3.14159 + 2.71828 = 5.85987", "version 1.2.3-rc4", "0x1F 0b1010 1e-9",
    "def add(a, b):\n    return a + b\n", "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)", "SELECT * FROM users WHERE id = 42;",
    '{"key": [1, 2, {"nested": null}]}', "<div class=\"x\">&amp;</div>", "naïve café résumé", "Ünïcödé ÀÉÎÕÜ",
    "e\u0301 vs \u00e9 (combining accent)", "Привет, мир!", "مرحبا بالعالم", "שלום עולם", "こんにちは世界",
    "你好，世界！我们今天学习编程。", "안녕하세요 세계", "🦙🚀🔥 emoji 👩‍💻 🧑🏽‍🚀 🇫🇷", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math ∑∫√∞ ≠ ≤",
    "ꙮ rare glyphs ᚠᛇᚻ", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "text <|endoftext|> more", "<tool_call>{\"name\": \"f\"}</tool_call>", "<|fim_prefix|>a<|fim_suffix|>b<|fim_middle|>",
    "[PAD151665] literal", "    \n    \n\t\t  \n", "a\u00a0b\u2003c\u200bd", "!!!???...,,,;;;", "\\n is not a newline",
]


@pytest.fixture(scope="module")
def qwen(qwen_gguf):
    return Tokenizer.from_files(*tokenizer_files_from_gguf(GGUFFile(qwen_gguf)))


@pytest.fixture(scope="module")
def hf(qwen_gguf):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(str(qwen_gguf.parent), gguf_file=qwen_gguf.name)


@pytest.mark.slow
def test_encode_decode_like_transformers(qwen, hf):
    assert len(TEXTS) >= 30
    for text in TEXTS:
        ids = qwen.encode(text)
        assert ids == hf.encode(text), text
        for skip in (True, False):
            assert qwen.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text


@pytest.mark.slow
def test_vocabulary_like_transformers(qwen, hf):
    assert qwen.vocab_size == len(hf) == 151936
    assert qwen.eos_token_ids == frozenset({151645, 151643})
    assert qwen.add_bos_token is False
    for i in (0, 1000, 151643, 151657, 151664, 151935):
        assert qwen.id_to_token(i) == hf.convert_ids_to_tokens(i)


CONVERSATIONS = [
    [{"role": "system", "content": "You write Python."}, {"role": "user", "content": "Reverse a list."}],
    [{"role": "user", "content": "What is 2 + 2?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Write `print(\"héllo 🦙\")`\n\n```py\nx = 1\n```"},
    ],
    [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "two"},
    ],
]


@pytest.mark.slow
@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_chat_template_like_transformers(qwen, hf, messages):
    for prompt in (True, False):
        expected = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        assert qwen.apply_chat_template(messages, add_generation_prompt=prompt) == expected


@pytest.mark.slow
def test_stream_decoder_on_qwen(qwen):
    split = qwen.encode("𝔘𝔫𝔦")
    assert any(qwen.decode([i]).endswith("\ufffd") for i in split)  # the case under test happens
    for text in TEXTS:
        ids = qwen.encode(text)
        assert stream(qwen, ids)[1] == qwen.decode(ids), text
