"""The Python API: `LLM(target, draft, mode)` with generate, stream and chat, a blocking client
of the step-wise `Engine` (saguaro.engine.engine)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence as Seq

from saguaro.engine.engine import Engine, Prompt
from saguaro.engine.logprobs import TokenLogprob
from saguaro.errors import InvalidRequestError
from saguaro.loading.bundled import DEFAULT_TARGET
from saguaro.metrics import GenerationMetrics
from saguaro.sampling.params import SamplingParams

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated tokens only
    finish_reason: str
    prompt_token_ids: list[int]
    metrics: GenerationMetrics
    logprobs: list[TokenLogprob] | None = None  # per generated token, when params.logprobs is set

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "metrics": self.metrics.to_dict(),
        }


class LLM:
    """Blocking generation on top of an `Engine` of its own, whose KV pool grows to fit the
    largest call (it is reused, not reallocated, by calls that fit)."""

    def __init__(self, target: str = DEFAULT_TARGET, draft: str | None = None, mode: str = "ar", **options):
        """`options`: see saguaro.engine.build.build_parts (k, dtype, device, threads, cores,
        SSD knobs, quantize_target, quantize_draft)."""
        self.engine = Engine(target, draft, mode, max_batch=1, max_seq_len=256, **options)
        self.mode = mode
        self.tokenizer = self.engine.tokenizer
        self.config = self.engine.config
        self.target = self.engine.target
        self.quantization = self.engine.quantization
        self.options = self.engine.options

    @property
    def strategy(self):
        return self.engine.strategy

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    # ---- public API ---------------------------------------------------------------------------

    def generate(self, prompts: Prompt | Seq[Prompt], params=None) -> list[GenerationResult]:
        """One result per prompt; several prompts decode together as a batch."""
        prompt_ids = self._submit(prompts, params)
        tokens = {rid: [] for rid in prompt_ids}
        texts = {rid: [] for rid in prompt_ids}
        logprobs = {rid: None for rid in prompt_ids}
        results = {}
        for out in self._run(list(prompt_ids)):
            rid = out.request_id
            tokens[rid] += out.new_token_ids
            texts[rid].append(out.text)
            if out.logprobs is not None:
                logprobs[rid] = (logprobs[rid] or []) + out.logprobs
            if out.finished:
                results[rid] = GenerationResult("".join(texts[rid]), tokens[rid], out.finish_reason,
                                                prompt_ids[rid], out.metrics, logprobs[rid])
        return [results[rid] for rid in prompt_ids]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yields text as it is produced for one prompt."""
        for out in self._run(list(self._submit([prompt], params))):
            if out.text:
                yield out.text

    def chat(self, messages: list[dict], params: SamplingParams | None = None) -> GenerationResult:
        """One conversation through the model's chat template."""
        return self.generate([self.chat_prompt(messages)], params)[0]

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- requests -------------------------------------------------------------------------------

    def _submit(self, prompts, params) -> dict[str, list[int]]:
        """Check every request first (a bad one adds none), size the pool, then queue them all.
        Returns each request id with its prompt's token ids, in order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise InvalidRequestError("no prompts given")
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise InvalidRequestError(f"{len(plist)} sampling params for {len(prompts)} prompts")
        engine = self.engine
        ids = [engine.prompt_ids(p) for p in prompts]
        plist = [engine.check_request(i, p, pool=False) for i, p in zip(ids, plist)]
        engine.reserve(len(prompts), max(len(i) + p.max_tokens for i, p in zip(ids, plist)))
        return {engine.add_request(i, p): i for i, p in zip(ids, plist)}

    def _run(self, ids: list[str]) -> Iterator:
        """Step the engine until these requests finish; abort them if the caller stops early."""
        pending = set(ids)
        try:
            while pending:
                for out in self.engine.step():
                    yield out
                    if out.finished:
                        pending.discard(out.request_id)
        finally:
            for rid in pending:
                self.engine.abort(rid)
