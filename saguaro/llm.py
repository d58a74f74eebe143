"""The Python API: `LLM(target, draft, mode)` with generate, stream and chat.

The decoding strategy is picked once here; the generation loop is the same for every mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence as Seq

import torch

from saguaro.engine.generate import run_batch
from saguaro.engine.runner import ModelRunner
from saguaro.engine.sequence import Sequence
from saguaro.errors import InvalidRequestError
from saguaro.loading.bundled import DEFAULT_DRAFT, DEFAULT_TARGET
from saguaro.loading.loader import load_model
from saguaro.metrics import GenerationMetrics
from saguaro.sampling.params import SamplingParams
from saguaro.strategies.factory import NGRAM, StrategyOptions, build_strategy
from saguaro.ssd.placement import parse_cores, pin_process, split_cores
from saguaro.tokenizer import StreamDecoder

log = logging.getLogger(__name__)
Prompt = str | list[int]


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated tokens only
    finish_reason: str
    prompt_token_ids: list[int]
    metrics: GenerationMetrics

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "finish_reason": self.finish_reason,
            "metrics": self.metrics.to_dict(),
        }


class LLM:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        draft: str | None = None,
        mode: str = "ar",
        k: int | None = None,
        dtype: str = "auto",
        device: str = "cpu",
        threads: int | None = None,
        target_cores=None,
        draft_cores=None,
        draft_device: str | None = None,
        fanout="flat",
        saguaro_c: float = 1.0,
        backup: str = "auto",
        worker_timeout: float = 30.0,
        fault_after_rounds: int | None = None,
        draft_head_tokens: int | None = None,
        ssd_worker: str = "auto",
        quantize_target: str = "auto",
        quantize_draft: str = "auto",
    ):
        """`target_cores` pins the engine (the whole of it in AR and SD); `draft_cores` and
        `draft_device` place SSD's draft worker. See StrategyOptions for the SSD knobs.
        `quantize_target` / `quantize_draft`: auto (a GGUF at about its own precision, a float
        checkpoint as is), none, int8 or int4 weight-only kernels on CPU (saguaro.quant)."""
        if threads is not None:
            if threads < 1:
                raise InvalidRequestError(f"threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        cores = parse_cores(target_cores)
        draft_cores = parse_cores(draft_cores)
        if mode == "ssd" and ssd_worker != "thread" and (draft_device or device) == "cpu" and str(device) == "cpu":
            cores, draft_cores = split_cores(cores, draft_cores)
        self.options = StrategyOptions(
            mode=mode, k=k, draft_is_ngram=draft == NGRAM,
            draft_cores=tuple(draft_cores) if draft_cores else None, draft_device=draft_device,
            fanout=fanout, saguaro_c=saguaro_c, backup=backup, worker_timeout=worker_timeout,
            fault_after_rounds=fault_after_rounds, draft_head_tokens=draft_head_tokens, ssd_worker=ssd_worker,
            draft_quantize=quantize_draft,
        )
        pin_process(cores)
        if self.options.needs_draft_model and draft is None:
            draft = DEFAULT_DRAFT if target == DEFAULT_TARGET else None
            if draft is None:
                raise InvalidRequestError(f"mode {mode!r} needs a draft model (draft=...)")
        self.mode = mode
        loaded = load_model(target, device=device, dtype=dtype, quantize=quantize_target)
        self.quantization = loaded.quantization
        self.tokenizer = loaded.tokenizer
        self.config = loaded.config
        self.target = ModelRunner(loaded.decoder)
        self.strategy = build_strategy(self.options, self.target, self.tokenizer, draft, device, dtype)

    @property
    def max_context(self) -> int:
        return self.config.max_position_embeddings

    # ---- requests ---------------------------------------------------------------------------

    def _prompt_ids(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and all(isinstance(t, int) for t in prompt):
            ids = list(prompt)
            bad = [t for t in ids if not 0 <= t < self.target.vocab_size]
            if bad:
                raise InvalidRequestError(f"token ids out of range [0, {self.target.vocab_size}): {bad[:5]}")
        else:
            raise InvalidRequestError("a prompt is a string or a list of token ids")
        if not ids:
            raise InvalidRequestError("the prompt is empty")
        return ids

    def _sequences(self, prompts: Seq[Prompt], params) -> list[Sequence]:
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise InvalidRequestError("no prompts given")
        if params is None:
            params = SamplingParams()
        plist = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise InvalidRequestError(f"{len(plist)} sampling params for {len(prompts)} prompts")
        seqs = []
        for prompt, p in zip(prompts, plist):
            if not isinstance(p, SamplingParams):
                raise InvalidRequestError("params must be SamplingParams")
            ids = self._prompt_ids(prompt)
            if len(ids) + p.max_tokens > self.max_context:
                raise InvalidRequestError(
                    f"prompt of {len(ids)} tokens plus max_tokens {p.max_tokens} exceeds the "
                    f"model's context of {self.max_context} tokens"
                )
            gen = p.make_generator(self.target.device)
            seqs.append(Sequence(ids, p, gen, self.tokenizer.eos_token_ids, decode=self.tokenizer.decode))
        return seqs

    def _result(self, s: Sequence) -> GenerationResult:
        text = self.tokenizer.decode(s.output)
        if s.text_end is not None:
            text = text[: s.text_end]
        metrics = GenerationMetrics(
            mode=self.mode,
            prefill_s=s.timing.get("prefill_s", 0.0),
            decode_s=s.timing.get("decode_s", 0.0),
            prompt_tokens=len(s.prompt),
            decode_tokens=len(s.output),
            speculation=s.stats,
            extra=dict(s.extra),
        )
        return GenerationResult(text, list(s.output), s.finish_reason or "length", list(s.prompt), metrics)

    # ---- public API ---------------------------------------------------------------------------

    def generate(self, prompts: Prompt | Seq[Prompt], params=None) -> list[GenerationResult]:
        """One result per prompt; several prompts decode together as a batch."""
        seqs = self._sequences(prompts, params)
        for _ in run_batch(self.target, self.strategy, seqs):
            pass
        return [self._result(s) for s in seqs]

    def stream(self, prompt: Prompt, params: SamplingParams | None = None) -> Iterator[str]:
        """Yields text as it is produced for one prompt."""
        seqs = self._sequences([prompt], params)
        decoder = StreamDecoder(self.tokenizer)
        emitted = 0
        for _, tokens in run_batch(self.target, self.strategy, seqs):
            piece = "".join(decoder.push(t) for t in tokens)
            piece, emitted = _clip_to_stop(seqs[0], piece, emitted)
            if piece:
                yield piece
        tail, emitted = _clip_to_stop(seqs[0], decoder.flush(), emitted)
        if tail:
            yield tail

    def chat(self, messages: list[dict], params: SamplingParams | None = None) -> GenerationResult:
        """One conversation through the model's chat template."""
        return self.generate([self.chat_prompt(messages)], params)[0]

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def close(self) -> None:
        self.strategy.close()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clip_to_stop(seq: Sequence, piece: str, emitted: int) -> tuple[str, int]:
    """Never stream text past a stop string: once it is found, only what precedes it is emitted."""
    if seq.text_end is not None:
        piece = piece[: max(0, seq.text_end - emitted)]
    return piece, emitted + len(piece)
