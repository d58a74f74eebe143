"""Builds the decoding strategy chosen at construction from validated options.

The modes are "ar", "sd" and "ssd"; the draft is a model reference or "ngram".
"""

from __future__ import annotations

from dataclasses import dataclass

from saguaro.engine.runner import ModelRunner
from saguaro.errors import InvalidRequestError
from saguaro.tokenizer import Tokenizer

MODES = ("ar", "sd", "ssd")
NGRAM = "ngram"


@dataclass(frozen=True)
class StrategyOptions:
    mode: str = "ar"
    k: int | None = None  # lookahead; None picks the mode's default (SSD: from the budget)
    draft_is_ngram: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise InvalidRequestError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.k is not None and not (isinstance(self.k, int) and 1 <= self.k <= 32):
            raise InvalidRequestError(f"k must be an integer in 1..32, got {self.k!r}")

    @property
    def needs_draft_model(self) -> bool:
        return self.mode != "ar" and not self.draft_is_ngram


def build_strategy(opts: StrategyOptions, target: ModelRunner, tokenizer: Tokenizer, draft, device, dtype):
    from saguaro.strategies.ar import ARStrategy

    if opts.mode == "ar":
        return ARStrategy(target)
    if opts.mode == "sd":
        from saguaro.strategies.sd import SDStrategy

        return SDStrategy(target, _drafter(target, tokenizer, draft, device, dtype), opts.k or 4)
    raise InvalidRequestError(f"mode {opts.mode!r} is not available yet")


def _drafter(target: ModelRunner, tokenizer: Tokenizer, draft: str, device, dtype):
    if draft == NGRAM:
        from saguaro.drafters.prompt_lookup import NgramDrafter

        return NgramDrafter()
    from saguaro.drafters.model_drafter import ModelDrafter
    from saguaro.loading.loader import load_model

    loaded = load_model(draft, device=device, dtype=dtype)
    check_same_tokenizer(tokenizer, loaded.tokenizer)
    return ModelDrafter(ModelRunner(loaded.decoder), target.vocab_size)


def check_same_tokenizer(target: Tokenizer, draft: Tokenizer) -> None:
    if target.vocab_size != draft.vocab_size or any(
        target.id_to_token(i) != draft.id_to_token(i) for i in range(0, target.vocab_size, 97)
    ):
        raise InvalidRequestError("the draft's tokenizer differs from the target's; speculative modes need the same one")
