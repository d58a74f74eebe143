"""Saguaro: LLM inference with exact autoregressive, speculative and speculative-speculative decoding."""

from saguaro.errors import InvalidRequestError, ModelLoadError, SaguaroError


def __getattr__(name):
    # Everything else pulls in torch; import it lazily so `import saguaro` stays cheap (and the
    # command line can turn a Ctrl-C during torch's import into a clean exit).
    if name == "SamplingParams":
        from saguaro.sampling.params import SamplingParams

        return SamplingParams
    if name in ("LLM", "GenerationResult"):
        from saguaro import llm

        return getattr(llm, name)
    if name in ("Engine", "RequestOutput"):
        from saguaro.engine import engine

        return getattr(engine, name)
    raise AttributeError(name)


__all__ = ["LLM", "GenerationResult", "Engine", "RequestOutput", "SamplingParams", "SaguaroError", "ModelLoadError", "InvalidRequestError"]
