"""OpenAI's two logprobs formats, from the engine's per-token figures (saguaro.engine.logprobs).

Completions use the legacy lists (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`);
chat uses `content`, one entry per token with its UTF-8 bytes. A token's text is its own decode,
so a character split across tokens shows as a replacement character, as in OpenAI's replies.
"""

from __future__ import annotations


def _text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def chat_logprobs(tokenizer, items) -> dict:
    def entry(token_id: int, logprob: float) -> dict:
        text = _text(tokenizer, token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    content = [{**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(i, v) for i, v in lp.top]} for lp in items]
    return {"content": content, "refusal": None}


def completion_logprobs(tokenizer, items, offset: int = 0) -> dict:
    """`offset`: where this piece starts in the choice's text (streamed chunks continue it)."""
    tokens, offsets = [], []
    for lp in items:
        tokens.append(_text(tokenizer, lp.token_id))
        offsets.append(offset)
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{_text(tokenizer, i): v for i, v in lp.top} for lp in items],
        "text_offset": offsets,
    }
