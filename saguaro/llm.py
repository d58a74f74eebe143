"""The Python API: `LLM(target, draft, mode)` with generate, stream and chat, a blocking client
of the step-wise `Engine` (saguaro.engine.engine)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Iterator, Sequence as Seq

from saguaro.engine.engine import Engine, Prompt
from saguaro.engine.logprobs import TokenLogprob
from saguaro.errors import ClosedError, InvalidRequestError
from saguaro.loading.bundled import DEFAULT_TARGET
from saguaro.metrics import GenerationMetrics
from saguaro.sampling.params import SamplingParams
from saguaro.tokenizer import check_text

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


class _CallLock:
    """Serialises an LLM's calls across threads: one Engine and one worker link carry one call at
    a time (two interleaved calls garbled the SSD link). A call from the thread that already holds
    it (a generate() inside a loop over stream()) would wait for itself forever, so it is refused."""

    def __init__(self):
        self._lock = threading.Lock()
        self._owner: int | None = None

    def __enter__(self):
        if self._owner == threading.get_ident():
            raise InvalidRequestError("this LLM is already running a call in this thread (a stream() not "
                                      "yet consumed or closed); finish it first")
        self._lock.acquire()
        self._owner = threading.get_ident()
        return self

    def __exit__(self, *exc) -> None:
        self._owner = None
        self._lock.release()

    def held_here(self) -> bool:
        return self._owner == threading.get_ident()


class LLM:
    """Blocking generation on top of an `Engine` of its own, whose KV pool grows to fit the
    largest call (it is reused, not reallocated, by calls that fit).

    Thread-safe: calls from several threads run one after another. Prompts are str (valid
    UTF-8: text with lone surrogates or undecodable bytes is refused) or lists of token ids; bad
    input raises InvalidRequestError, and any call after close() raises ClosedError.
    """

    def __init__(self, target: str = DEFAULT_TARGET, draft: str | None = None, mode: str = "ar", **options):
        """`options`: see saguaro.engine.build.build_parts (k, dtype, device, threads, cores,
        SSD knobs, quantize_target, quantize_draft)."""
        self._calls = _CallLock()
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
        with self._calls:
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
        """Yields text as it is produced for one prompt. The call holds the LLM from the first
        item until the stream is exhausted or closed."""
        with self._calls:
            for out in self._run(list(self._submit([prompt], params))):
                if out.text:
                    yield out.text

    def chat(self, messages: list[dict], params: SamplingParams | None = None) -> GenerationResult:
        """One conversation through the model's chat template."""
        return self.generate([self.chat_prompt(messages)], params)[0]

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """`messages`: a list of {"role": str, "content": str}; raises InvalidRequestError otherwise."""
        self._check_open()
        if not isinstance(messages, (list, tuple)) or not messages:
            raise InvalidRequestError("messages must be a non-empty list of {'role': ..., 'content': ...}")
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise InvalidRequestError(f"each message needs a str 'role' and a str 'content', got {m!r:.80}")
            check_text(m["content"], "a message")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def close(self) -> None:
        """Shut the engine (and an SSD draft worker) down; waits for a call in flight in another
        thread. Later calls raise ClosedError."""
        if self._calls.held_here():  # a stream of this thread left open: it ends with ClosedError
            self.engine.close()
            return
        with self._calls:
            self.engine.close()

    def _check_open(self) -> None:
        if self.engine.closed:
            raise ClosedError("this LLM is closed (close() was called); create a new one")

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- requests -------------------------------------------------------------------------------

    def _submit(self, prompts, params) -> dict[str, list[int]]:
        """Check every request first (a bad one adds none), size the pool, then queue them all.
        Returns each request id with its prompt's token ids, in order."""
        self._check_open()
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise InvalidRequestError(f"prompts must be a str, a list of token ids, or a list of those; "
                                      f"got {type(prompts).__name__}")
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
