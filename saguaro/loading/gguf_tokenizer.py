"""Rebuild a Hugging Face `tokenizer.json` + `tokenizer_config.json` from a GGUF file's metadata.

Only byte-level BPE vocabularies (`tokenizer.ggml.model == "gpt2"`) are supported.
"""

from __future__ import annotations

import logging
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from saguaro.errors import ModelLoadError
from saguaro.loading.gguf_reader import GGUFFile

log = logging.getLogger(__name__)

# llama.cpp's token types (gguf.TokenType); only these two become added tokens.
_CONTROL = 3
_USER_DEFINED = 4

_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Same as Qwen2 except that digits are grouped in runs of up to three.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# `tokenizer.ggml.pre` -> the split regex its merges were learned with (llama.cpp's names).
PRE_TOKENIZER_SPLITS: dict[str, str] = {
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "gpt-2": _GPT2_SPLIT,
}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character table that byte-level BPE vocabularies are spelled in."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in kept}
    # Bytes without a printable Latin-1 glyph (controls, space, ...) get code points past 255, in byte order.
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _split_merges(merges: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for merge in merges:
        left, sep, right = merge.partition(" ")
        if not sep or not left or not right or " " in right:
            raise ModelLoadError(f"GGUF tokenizer has a malformed merge {merge!r}")
        pairs.append((left, right))
    return pairs


def _post_processor(bos: str | None, eos: str | None, add_bos: bool, add_eos: bool,
                    ids: dict[str, int]) -> processors.TemplateProcessing:
    """A template that adds exactly the bos/eos the config asks for (and nothing when it asks none)."""
    if add_bos and bos is None:
        log.warning("tokenizer asks for a bos token but defines none; not adding one")
        add_bos = False
    if add_eos and eos is None:
        log.warning("tokenizer asks for an eos token but defines none; not adding one")
        add_eos = False
    head = [f"{bos}:0"] if add_bos else []
    tail = [f"{eos}:0"] if add_eos else []
    single = [*head, "$A:0", *tail]
    pair = [*single, *(f"{bos}:1" for _ in head), "$B:1", *(f"{eos}:1" for _ in tail)]
    used = {t: ids[t] for t, wanted in ((bos, add_bos), (eos, add_eos)) if wanted}
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(used.items()))


def _added_tokens(tokens: list[str], token_types: list[int], alphabet: set[str],
                  vocab: dict[str, int]) -> tuple[list[AddedToken], list[AddedToken]]:
    """(special, plain) added tokens: CONTROL ones are special, USER_DEFINED ones plain.

    A CONTROL token spelled outside the byte alphabet is a mislabel (no real byte-level token can be
    spelled that way) and would grow the vocabulary past the model's, so it is dropped.
    """
    special, plain = [], []
    for token, kind in zip(tokens, token_types):
        if kind == _CONTROL and set(token) <= alphabet:
            special.append(AddedToken(token, normalized=False, special=True))
        elif kind == _USER_DEFINED and token in vocab:
            plain.append(AddedToken(token, normalized=False, special=False))
    return special, plain


def tokenizer_files_from_gguf(reader: GGUFFile) -> tuple[str, dict]:
    """(tokenizer.json text, tokenizer_config.json dict) equivalent to the GGUF's tokenizer."""
    kind = reader.field("tokenizer.ggml.model")
    if kind == "llama":
        raise ModelLoadError(
            "GGUF tokenizer 'llama' (sentencepiece) is unsupported; only byte-level BPE ('gpt2') is"
        )
    if kind != "gpt2":
        raise ModelLoadError(f"GGUF tokenizer model {kind!r} is unsupported; only byte-level BPE ('gpt2') is")
    pre = reader.field("tokenizer.ggml.pre")
    if pre not in PRE_TOKENIZER_SPLITS:
        raise ModelLoadError(
            f"GGUF pre-tokenizer {pre!r} is unknown, so its text splitting cannot be reproduced; "
            f"known: {', '.join(sorted(PRE_TOKENIZER_SPLITS))}"
        )
    tokens: list[str] = reader.field("tokenizer.ggml.tokens")
    merges = reader.field("tokenizer.ggml.merges")
    if not tokens or not merges:
        raise ModelLoadError("GGUF byte-level BPE tokenizer lacks tokenizer.ggml.tokens or tokenizer.ggml.merges")
    token_types: list[int] = reader.field("tokenizer.ggml.token_type", [])

    table = byte_alphabet()
    alphabet = set(table.values())
    # Tokens written as raw text are respelled in the byte alphabet, which is what the BPE model matches.
    vocab = {
        t if set(t) <= alphabet else "".join(table[b] for b in t.encode("utf-8")): i for i, t in enumerate(tokens)
    }
    if len(vocab) != len(tokens):
        log.warning("GGUF vocabulary spells %d tokens twice; the later ids win", len(tokens) - len(vocab))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=_split_merges(merges), fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    special, plain = _added_tokens(tokens, token_types, alphabet, vocab)
    tok.add_special_tokens(special)
    tok.add_tokens(plain)

    def token_at(key: str) -> str | None:
        index = reader.field(f"tokenizer.ggml.{key}")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    config: dict[str, Any] = {
        "bos_token": token_at("bos_token_id"),
        "eos_token": token_at("eos_token_id"),
        "pad_token": token_at("padding_token_id"),
        "unk_token": token_at("unknown_token_id"),
        # llama.cpp's default for byte-level BPE is no bos unless the file says otherwise.
        "add_bos_token": bool(reader.field("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(reader.field("tokenizer.ggml.add_eos_token", False)),
    }
    template = reader.field("tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    arch = reader.field("general.architecture")
    context = reader.field(f"{arch}.context_length") if arch else None
    if context:
        config["model_max_length"] = int(context)
    tok.post_processor = _post_processor(
        config["bos_token"], config["eos_token"], config["add_bos_token"], config["add_eos_token"],
        {t: tok.token_to_id(t) for t in (config["bos_token"], config["eos_token"]) if t is not None},
    )
    log.info("built %s/%s tokenizer from GGUF: %d tokens, %d added", kind, pre, tok.get_vocab_size(),
             len(special) + len(plain))
    return tok.to_str(), config
