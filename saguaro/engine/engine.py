"""The step-wise engine: requests join and leave between rounds, in every mode.

`add_request` queues a request; each `step` admits waiting requests while KV rows are free,
prefills them a chunk at a time, and runs one decode / verify round over every running row.
The KV pool is allocated once; a request that finds it full waits for a row.

Rows of the pool: running sequences first (0..R-1, the order the strategy sees), then the ones
still prefilling. A prefilled sequence joins the running ones as the next row, so nothing moves.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass

import torch

from saguaro.engine.build import Parts, build_parts
from saguaro.engine.logprobs import TokenLogprob, round_logprobs
from saguaro.engine.sequence import Sequence
from saguaro.errors import ClosedError, InvalidRequestError
from saguaro.loading.bundled import DEFAULT_TARGET
from saguaro.metrics import GenerationMetrics
from saguaro.sampling.params import SamplingParams
from saguaro.tokenizer import StreamDecoder, check_text

log = logging.getLogger(__name__)
Prompt = str | list[int]
DEFAULT_MAX_SEQ_LEN = 2048


@dataclass
class RequestOutput:
    """What one step produced for one request."""

    request_id: str
    new_token_ids: list[int]
    text: str  # the new text: never past a stop string, nor any part of one still being matched
    finished: bool
    finish_reason: str | None  # "eos", "length" or "stop" once finished
    metrics: GenerationMetrics | None = None  # once finished
    logprobs: list[TokenLogprob] | None = None  # per new token, when the request asked (params.logprobs)


class _TextState:
    """Per request: the stable text so far and how much of it was handed out."""

    def __init__(self, decoder: StreamDecoder):
        self.decoder = decoder
        self.text = ""
        self.sent = 0


class Engine:
    def __init__(self, target: str = DEFAULT_TARGET, draft: str | None = None, mode: str = "ar", *,
                 max_batch: int = 8, max_seq_len: int | None = None, prefill_chunk: int = 512, **options):
        """`options` are LLM's model and mode options (see saguaro.engine.build.build_parts).

        max_batch: sequences decoded together. max_seq_len: KV slots per sequence (prompt plus
        new tokens; default min(model context, 2048)), so the pool holds max_batch x max_seq_len
        tokens. prefill_chunk: prompt tokens prefilled per step at most, so a long prompt delays
        the running requests by one chunk per round.
        """
        self._setup(build_parts(target, draft, mode, **options), max_batch, max_seq_len, prefill_chunk)

    @classmethod
    def from_parts(cls, parts: Parts, max_batch: int = 8, max_seq_len: int | None = None,
                   prefill_chunk: int = 512) -> "Engine":
        """An engine around an already loaded target and strategy."""
        engine = object.__new__(cls)
        engine._setup(parts, max_batch, max_seq_len, prefill_chunk)
        return engine

    def _setup(self, parts: Parts, max_batch: int, max_seq_len: int | None, prefill_chunk: int) -> None:
        for name, value in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk), ("max_seq_len", max_seq_len)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InvalidRequestError(f"{name} must be an integer >= 1, got {value!r}")
        self.target, self.strategy, self.tokenizer = parts.target, parts.strategy, parts.tokenizer
        self.config, self.options, self.quantization = parts.config, parts.options, parts.quantization
        self.mode = parts.options.mode
        self.prefill_chunk = prefill_chunk
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.running: list[Sequence] = []
        self._requests: dict[str, Sequence] = {}
        self._texts: dict[str, _TextState] = {}
        self.closed = False
        self.max_batch, self.max_seq_len, self.cache = 0, 0, None
        self._allocate(max_batch, min(self.max_context, max_seq_len or DEFAULT_MAX_SEQ_LEN))

    @property
    def max_context(self) -> int:
        return self.config.max_position_embeddings

    # ---- the KV pool ----------------------------------------------------------------------------

    def _allocate(self, max_batch: int, max_seq_len: int) -> None:
        capacity = max_seq_len + self.strategy.extra_slots
        self.cache = None  # release the old pool first
        self.cache = self.target.new_cache(0, capacity, max_batch)
        self.strategy.open(max_batch, capacity)
        captured = self.target.capture(self.cache)
        if captured:
            log.info("captured %d CUDA graphs of the target's forwards", captured)
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        log.info("KV pool: %d rows x %d slots", max_batch, capacity)

    def reserve(self, rows: int, seq_len: int) -> None:
        """Grow the pool to at least `rows` x `seq_len` (only while no request is in flight)."""
        if rows <= self.max_batch and seq_len <= self.max_seq_len:
            return
        if self.has_unfinished():
            raise InvalidRequestError("the KV pool can only grow while no request is in flight")
        self._allocate(max(rows, self.max_batch), max(seq_len, self.max_seq_len))

    # ---- requests -------------------------------------------------------------------------------

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """A prompt as token ids, checked; raises InvalidRequestError (text that is not valid
        UTF-8, such as a lone surrogate, is refused: see saguaro.tokenizer.check_text)."""
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(check_text(prompt))
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.target.vocab_size]
            if bad:
                raise InvalidRequestError(f"token ids out of range [0, {self.target.vocab_size}): {bad[:5]}")
        else:
            raise InvalidRequestError("a prompt is a string or a list of token ids")
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        return ids

    def check_request(self, ids: list[int], params, pool: bool = True) -> SamplingParams:
        """The request's params (defaults for None), checked against the context and, with
        `pool`, against the pool's slots per sequence; raises InvalidRequestError."""
        self._check_open()
        if params is None:
            params = SamplingParams()
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError("params must be SamplingParams")
        need = len(ids) + params.max_tokens
        if need > self.max_context:
            raise InvalidRequestError(
                f"prompt of {len(ids)} tokens plus max_tokens {params.max_tokens} exceeds the "
                f"model's context of {self.max_context} tokens"
            )
        if pool and need > self.max_seq_len:
            raise InvalidRequestError(
                f"prompt of {len(ids)} tokens plus max_tokens {params.max_tokens} exceeds this engine's "
                f"{self.max_seq_len} tokens per sequence (max_seq_len)"
            )
        return params

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None) -> str:
        """Queue a request; returns its id. Bad input raises InvalidRequestError and changes nothing;
        a closed engine raises ClosedError."""
        self._check_open()
        ids = self.prompt_ids(prompt)
        params = self.check_request(ids, params)
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not isinstance(request_id, str) or not request_id:
            raise InvalidRequestError(f"request_id must be a non-empty string, got {request_id!r}")
        if request_id in self._requests:
            raise InvalidRequestError(f"request {request_id!r} is already running")
        seq = Sequence(ids, params, params.make_generator(self.target.device), self.tokenizer.eos_token_ids,
                       decode=self.tokenizer.decode, request_id=request_id)
        seq.timing["arrival"] = time.perf_counter()
        self._requests[request_id] = seq
        self._texts[request_id] = _TextState(StreamDecoder(self.tokenizer))
        self.waiting.append(seq)
        return request_id

    def abort(self, request_id: str) -> bool:
        """Drop a request and free its state now; False if it is unknown or already done."""
        seq = self._requests.pop(request_id, None) if isinstance(request_id, str) else None
        if seq is None:
            return False
        self._texts.pop(request_id)
        seq.finish_reason = "abort"
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.prefilling:
            row = len(self.running) + self.prefilling.index(seq)
            self.cache.keep_rows([r for r in range(self.cache.batch) if r != row])
            self.prefilling.remove(seq)
        else:
            j = self.running.index(seq)
            self._drop_running([i for i in range(len(self.running)) if i != j])
        return True

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    def close(self) -> None:
        """Stop the strategy (SSD: shut its draft worker down); later requests raise ClosedError."""
        if self.closed:
            return
        self.closed = True
        self.strategy.close()

    def _check_open(self) -> None:
        if self.closed:
            raise ClosedError("this engine is closed (close() was called); create a new one")

    # ---- one round ------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Admit, prefill one chunk, then one decode / verify round for every running row."""
        self._check_open()
        self._admit()
        self._prefill()
        if not self.running:
            return []
        n = len(self.running)
        proposals = self.strategy.step(self.running, self.cache.window(0, n))
        taken = [seq.commit(p) for seq, p in zip(self.running, proposals)]
        logprobs = self._logprobs(taken)
        outputs, keep = [], []
        for j, seq in enumerate(self.running):
            if seq.finished:
                seq.timing["decode_s"] = time.perf_counter() - seq.timing["joined"]
                self.strategy.finish(seq)
            else:
                keep.append(j)
            if taken[j] or seq.finished:
                outputs.append(self._output(seq, taken[j], logprobs.get(j)))
        if len(keep) < n:
            self._drop_running(keep)
        return outputs

    def _admit(self) -> None:
        while self.waiting and self.cache.batch < self.max_batch:
            seq = self.waiting.popleft()
            self.cache.add_rows(1)
            seq.timing["admitted"] = time.perf_counter()
            self.prefilling.append(seq)

    def _prefill(self) -> None:
        """Feed up to `prefill_chunk` prompt tokens (first come, first served), then let the
        leading fully prefilled sequences join the running ones."""
        budget, base = self.prefill_chunk, len(self.running)
        for i, seq in enumerate(self.prefilling):
            take = min(len(seq.prompt) - 1 - seq.prefilled, budget)
            if take <= 0:
                continue
            # The cache holds the trunk minus its last token: each round feeds that token first.
            row = self.cache.window(base + i, base + i + 1)
            self.target.feed(row, [seq.prompt[seq.prefilled : seq.prefilled + take]])
            seq.prefilled += take
            budget -= take
            if budget == 0:
                break
        done = 0
        while done < len(self.prefilling) and self.prefilling[done].prefilled == len(self.prefilling[done].prompt) - 1:
            done += 1
        if not done:
            return
        joined, self.prefilling = self.prefilling[:done], self.prefilling[done:]
        self.running += joined
        self.strategy.join(joined)
        now = time.perf_counter()
        for seq in joined:
            seq.timing.update(joined=now, prefill_s=now - seq.timing["admitted"])

    def _drop_running(self, keep: list[int]) -> None:
        """Running rows not in `keep` leave the pool and the strategy; prefilling rows stay."""
        n = len(self.running)
        self.cache.keep_rows(keep + list(range(n, self.cache.batch)))
        for j in set(range(n)) - set(keep):
            self._requests.pop(self.running[j].request_id, None)
        self.running = [self.running[j] for j in keep]
        self.strategy.keep_rows(keep)

    # ---- outputs --------------------------------------------------------------------------------

    def _logprobs(self, taken: list[list[int]]) -> dict[int, list[TokenLogprob]]:
        """Running row -> its new tokens' logprobs, for the rows that asked (one host copy)."""
        rows = [j for j, s in enumerate(self.running) if s.params.logprobs is not None]
        if not rows:
            return {}
        logits = self.strategy.round_logits[torch.tensor(rows, device=self.strategy.round_logits.device)]
        found = round_logprobs(logits, [taken[j] for j in rows], [self.running[j].params.logprobs for j in rows])
        return dict(zip(rows, found))

    def _output(self, seq: Sequence, taken: list[int], logprobs: list[TokenLogprob] | None = None) -> RequestOutput:
        state = self._texts[seq.request_id]
        state.text += "".join(state.decoder.push(t) for t in taken)
        if seq.finished:
            state.text += state.decoder.flush()
        end = len(state.text)
        if seq.text_end is not None:
            end = min(end, seq.text_end)
        elif not seq.finished and seq.params.stop:
            # Hold back what could still turn out to be the start of a stop string.
            end -= max(len(s) for s in seq.params.stop) - 1
        end = max(end, state.sent)
        piece, state.sent = state.text[state.sent : end], end
        metrics = None
        if seq.finished:
            self._texts.pop(seq.request_id)
            metrics = self.metrics(seq)
        return RequestOutput(seq.request_id, list(taken), piece, seq.finished, seq.finish_reason, metrics, logprobs)

    def metrics(self, seq: Sequence) -> GenerationMetrics:
        return GenerationMetrics(
            mode=self.mode,
            prefill_s=seq.timing.get("prefill_s", 0.0),
            decode_s=seq.timing.get("decode_s", 0.0),
            prompt_tokens=len(seq.prompt),
            decode_tokens=len(seq.output),
            speculation=seq.stats,
            extra=dict(seq.extra),
        )

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
