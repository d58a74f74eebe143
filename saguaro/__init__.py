"""Saguaro: LLM inference with exact autoregressive, speculative and speculative-speculative decoding."""

from saguaro.errors import InvalidRequestError, ModelLoadError, SaguaroError
from saguaro.sampling.params import SamplingParams


def __getattr__(name):
    # LLM and Engine pull in torch and the loaders; import them lazily so `import saguaro` stays cheap.
    if name in ("LLM", "GenerationResult"):
        from saguaro import llm

        return getattr(llm, name)
    if name in ("Engine", "RequestOutput"):
        from saguaro.engine import engine

        return getattr(engine, name)
    raise AttributeError(name)


__all__ = ["LLM", "GenerationResult", "Engine", "RequestOutput", "SamplingParams", "SaguaroError", "ModelLoadError", "InvalidRequestError"]
