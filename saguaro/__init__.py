"""Saguaro: LLM inference with exact autoregressive, speculative and speculative-speculative decoding."""

from saguaro.errors import InvalidRequestError, ModelLoadError, SaguaroError
from saguaro.sampling.params import SamplingParams


def __getattr__(name):
    # LLM pulls in torch and the loaders; import it lazily so `import saguaro` stays cheap.
    if name in ("LLM", "GenerationResult"):
        from saguaro import llm

        return getattr(llm, name)
    raise AttributeError(name)


__all__ = ["LLM", "GenerationResult", "SamplingParams", "SaguaroError", "ModelLoadError", "InvalidRequestError"]
